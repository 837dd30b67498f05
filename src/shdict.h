/* shdict.h: dictionaries in C memory shared by all workers, with TTLs, bounded in entries and bytes, least recently used out first. */
#ifndef TOKEND_SHDICT_H
#define TOKEND_SHDICT_H

#include <stddef.h>
#include <stdint.h>

#include "metrics.h"

#define SHDICT_MAX_KEY (64 * 1024)
#define SHDICT_MAX_VALUE (1024 * 1024)
#define SHDICT_ENTRY_OVERHEAD 100     /* bytes an entry counts besides its key and value */
#define SHDICT_MIN_BYTES 1024         /* the smallest byte bound */
#define SHDICT_MAX_BYTES (1ULL << 40) /* the largest */

typedef struct shdict_registry shdict_registry;
typedef struct shdict shdict;

typedef enum shdict_type { SHDICT_NONE, SHDICT_STRING, SHDICT_NUMBER, SHDICT_BOOLEAN } shdict_type;

/* A value. From shdict_get, a string is a copy the caller frees. */
typedef struct shdict_value {
    shdict_type type;
    char *s;
    size_t len;
    double n; /* a number, or a boolean as 0 or 1 */
} shdict_value;

/* Results of the operations that store. */
#define SHDICT_STORED 0
#define SHDICT_EVICTED 1    /* stored; least recently used entries went to make room */
#define SHDICT_EXISTS 2     /* add: the key is there */
#define SHDICT_NOT_FOUND 3  /* incr without an initial value on a missing key */
#define SHDICT_NOT_NUMBER 4 /* incr on a value that is not a number */
#define SHDICT_TOO_BIG 5    /* the entry alone would exceed the byte bound: nothing changed */
#define SHDICT_NO_MEMORY (-1)

/* The dictionaries of a server, by name; they outlive reloads. */
shdict_registry *shdict_registry_create(void);
void shdict_registry_free(shdict_registry *s);

/* Finds or creates the dictionary name, holding at most capacity entries and max_bytes
 * bytes (each entry counts its key, its value and SHDICT_ENTRY_OVERHEAD). A later call with
 * other bounds changes them, and the least recently used entries go at once until they
 * hold. NULL with err set (no memory, a bound out of range, too many dictionaries). */
shdict *shdict_open(shdict_registry *s, const char *name, size_t capacity, unsigned long long max_bytes, char *err,
                    size_t errlen);

/* Every operation takes the monotonic time in milliseconds, and is atomic. ttl_ms 0 means
 * the entry does not expire. An expired entry is dropped when an operation finds it, or
 * when it is among the least recently used as room is made. Storing makes room in amortized
 * constant time: while a bound would be exceeded, an expired entry among the few least
 * recently used goes, else the least recently used (SHDICT_EVICTED). An entry larger than
 * the byte bound on its own is refused (SHDICT_TOO_BIG). */
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

/* What a dictionary holds and did. */
typedef struct shdict_stats {
    size_t entries;             /* expired ones included until they are dropped */
    unsigned long long bytes;   /* as the byte bound counts them */
    unsigned long long evicted; /* live entries that went to make room */
    unsigned long long visited; /* entries looked at to make room (a few per entry that went) */
} shdict_stats;

void shdict_stats_of(shdict *d, shdict_stats *out);

/* Writes tokend_shared_entries, tokend_shared_bytes and tokend_shared_evictions_total for
 * every dictionary of s. */
void shdict_metrics(shdict_registry *s, metrics_write_fn *write, void *ud);

#endif
