/* config.h: the .env file parser and settings lookup (real environment first). */
#ifndef TOKEND_CONFIG_H
#define TOKEND_CONFIG_H

#include <stddef.h>

typedef struct config_env config_env;

/* Parses .env text: "NAME=value" lines, blank lines, "# comments", an optional
 * "export " prefix, values in single quotes (literal) or double quotes (\n \t \" \\
 * escapes), and unquoted values that end at " #". Later lines win. On error returns
 * -1 and err says "line N: why". */
int config_env_parse(const char *text, size_t len, config_env **out, char *err, size_t errlen);

/* Reads and parses a file. A missing file is an error (errno text in err). */
int config_env_load(const char *path, config_env **out, char *err, size_t errlen);

/* Returns the value of name in the parsed file, or NULL. */
const char *config_env_get(const config_env *env, const char *name);

/* Returns getenv(name) when set, else the file's value (env may be NULL), else NULL. */
const char *config_lookup(const config_env *env, const char *name);

/* Number of entries, and the name of entry i (for reporting unknown settings). */
size_t config_env_count(const config_env *env);
const char *config_env_name(const config_env *env, size_t i);

/* Wipes the values (they may hold the API key) and frees. NULL is allowed. */
void config_env_free(config_env *env);

#endif
