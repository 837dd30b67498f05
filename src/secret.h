/* secret.h: the process's secrets (tokend.secret): values held in C memory, out of the environment and the logs. */
#ifndef TOKEND_SECRET_H
#define TOKEND_SECRET_H

#include <stddef.h>

struct envfile;

typedef struct secret secret;

#define SECRET_MIN_BYTES 8 /* shorter values could not be told from other text to redact them */
#define SECRET_NAME_MAX 128

/* Declares the secret name for the whole process. The first declaration takes its value
 * from the environment, else from env (the .env file, may be NULL), as tokend.env reads
 * them; copies it into C memory; registers it with the log's redaction; removes the
 * variable from the environment (and /proc/PID/environ) and wipes it in env. A later
 * declaration of the same name, from any thread, finds that secret (and wipes the name in
 * its own env). Sets *out and returns 0; returns -1 with err set for a name that is not an
 * identifier, a variable that is not set (or empty), a value shorter than
 * SECRET_MIN_BYTES or holding a control character, or no memory. Thread-safe. */
int secret_declare(const char *name, struct envfile *env, const secret **out, char *err, size_t errlen);

/* Registers value (copied) as the secret name unless one of that name exists: for a value
 * tokend took before any script ran (the AssemblyAI key). Returns 0, or -1 when out of
 * memory. */
int secret_adopt(const char *name, const char *value);

/* The secret declared as name, or NULL. */
const secret *secret_find(const char *name);

/* Wipes, in env, the values of every secret declared so far (a .env file read again). */
void secret_wipe_env(struct envfile *env);

/* The secret's name. */
const char *secret_name(const secret *s);

/* The secret's bytes and their length: valid for the process's life; never copy them
 * anywhere Lua, a log or an answer could reach. */
const char *secret_value(const secret *s, size_t *len);

#endif
