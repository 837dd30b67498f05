/* envfile.h: the .env file parser and the environment: lookups, and a variable forgotten. */
#ifndef TOKEND_ENVFILE_H
#define TOKEND_ENVFILE_H

#include <stddef.h>

typedef struct envfile envfile;

/* Parses .env text: "NAME=value" lines, blank lines, "# comments", an optional
 * "export " prefix, values in single quotes (literal) or double quotes (\n \t \" \\
 * escapes), and unquoted values that end at " #". Later lines win. On error returns
 * -1 and err says "line N: why". */
int envfile_parse(const char *text, size_t len, envfile **out, char *err, size_t errlen);

/* Reads and parses a file. A missing file is an error (errno text in err). */
int envfile_load(const char *path, envfile **out, char *err, size_t errlen);

/* Whether every user may read path (mode o+r), when it holds settings such as the key.
 * Returns 1 or 0 with *mode set to its permission bits, or -1 when stat fails. */
int envfile_world_readable(const char *path, unsigned int *mode);

/* Returns the value of name in the parsed file, or NULL. */
const char *envfile_get(const envfile *env, const char *name);

/* Returns the file's value of name, or NULL, and remembers that it was read (safe from
 * several threads: the server's scripts read through it). */
const char *envfile_read(envfile *env, const char *name);

/* Wipes the value of name (the key, once it is in C memory elsewhere): it reads as "". */
void envfile_wipe(envfile *env, const char *name);

/* 1 when entry i was read through envfile_read. */
int envfile_was_read(envfile *env, size_t i);

/* Returns getenv(name) when set, else the file's value (env may be NULL), else NULL. */
const char *envfile_lookup(const envfile *env, const char *name);

/* Number of entries, and the name of entry i (for reporting unknown settings). */
size_t envfile_count(const envfile *env);
const char *envfile_name(const envfile *env, size_t i);

/* Removes the variable name from the environment and from the initial environment block
 * the kernel shows as /proc/PID/environ (the entry, not only its value; the block keeps
 * its size, zero-filled at the end). Returns 0, or -1 when out of memory. */
int envfile_forget(const char *name);

/* Wipes the values (they may hold the API key) and frees. NULL is allowed. */
void envfile_free(envfile *env);

#endif
