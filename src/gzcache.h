/* gzcache.h: gzip-compressed copies of files, made once and kept in memory by entity tag, within a bound. */
#ifndef TOKEND_GZCACHE_H
#define TOKEND_GZCACHE_H

#include <stddef.h>

typedef struct gzcache_entry gzcache_entry;

/* The compressed copy of the file open at fd (size bytes) known by key (its path and
 * entity tag: a changed file has another key): from the cache, or compressed now and
 * kept while the cache holds less than its bound (evicting the least recently used).
 * Process-wide and thread-safe. The caller holds a reference until gzcache_release.
 * NULL when the file cannot be read, compression does not shrink it, or memory is short. */
gzcache_entry *gzcache_get(const char *key, int fd, size_t size);

/* The compressed bytes of an entry. */
const void *gzcache_data(const gzcache_entry *e, size_t *len);

/* Drops a reference; the entry is freed once evicted and released by all. */
void gzcache_release(void *entry);

#define GZCACHE_MAX_BYTES (32u << 20)

#endif
