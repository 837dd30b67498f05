/* shdict.h: dictionaries in C memory shared by all workers: strings, numbers and booleans with TTLs, least recently used out first. */
#ifndef TOKEND_SHDICT_H
#define TOKEND_SHDICT_H

#include <stddef.h>
#include <stdint.h>

#define SHDICT_MAX_KEY (64 * 1024)
#define SHDICT_MAX_VALUE (1024 * 1024)

typedef struct shdict_registry shdict_registry;
typedef struct shdict shdict;

typedef enum shdict_type { SHDICT_NONE, SHDICT_STRING, SHDICT_NUMBER, SHDICT_BOOLEAN } shdict_type;

/* A value. From shdict_get, a string is a copy the caller frees. */
typedef struct shdict_value {
    shdict_type type;
    char *s;
    size_t len;
    double n;               /* a number, or a boolean as 0 or 1 */
} shdict_value;

/* Results of the operations that store. */
#define SHDICT_STORED 0
#define SHDICT_EVICTED 1    /* stored; least recently used entries went to make room */
#define SHDICT_EXISTS 2     /* add: the key is there */
#define SHDICT_NOT_FOUND 3  /* incr without an initial value on a missing key */
#define SHDICT_NOT_NUMBER 4 /* incr on a value that is not a number */
#define SHDICT_NO_MEMORY (-1)

/* The dictionaries of a server, by name; they outlive reloads. */
shdict_registry *shdict_registry_create(void);
void shdict_registry_free(shdict_registry *s);

/* Finds or creates the dictionary name, holding at most capacity entries (a later call
 * with another capacity changes it). NULL with err set (no memory, bad capacity). */
shdict *shdict_open(shdict_registry *s, const char *name, size_t capacity, char *err, size_t errlen);

/* Every operation takes the monotonic time in milliseconds, and is atomic. ttl_ms 0 means
 * the entry does not expire. */
int shdict_get(shdict *d, const char *key, size_t klen, uint64_t now_ms, shdict_value *out);
int shdict_set(shdict *d, const char *key, size_t klen, const shdict_value *v, uint64_t ttl_ms, uint64_t now_ms);
int shdict_add(shdict *d, const char *key, size_t klen, const shdict_value *v, uint64_t ttl_ms, uint64_t now_ms);
/* Adds by to the number at key (init + by when absent and init is not NULL, with ttl_ms);
 * *out gets the new value. */
int shdict_incr(shdict *d, const char *key, size_t klen, double by, const double *init, uint64_t ttl_ms,
                uint64_t now_ms, double *out);
void shdict_delete(shdict *d, const char *key, size_t klen);
/* Milliseconds the entry has left: 0 when it does not expire, -1 when it is absent. */
int64_t shdict_ttl(shdict *d, const char *key, size_t klen, uint64_t now_ms);

/* Entries held now (expired ones included until they are found). */
size_t shdict_count(shdict *d);

#endif
