/* gzcache.c: gzip-compressed copies of files, made once and kept in memory by entity tag, within a bound. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "gzcache.h"
#include "list.h"

#define GZCACHE_LEVEL 6 /* zlib's default: most of the gain, a fraction of level 9's time */
#define GZCACHE_BUCKETS 4096

struct gzcache_entry {
    list_node recency;    /* in gzcache_lru, most recently used first */
    gzcache_entry *hnext; /* the next in its hash bucket */
    size_t bucket;
    char *key;
    unsigned char *data;
    size_t len;
    int refs; /* the cache's own (while listed) and each holder's */
};

static pthread_mutex_t gzcache_lock = PTHREAD_MUTEX_INITIALIZER;
static list_node gzcache_lru = { &gzcache_lru, &gzcache_lru };
static gzcache_entry *gzcache_buckets[GZCACHE_BUCKETS];
static size_t gzcache_total;

/* Drops a reference; frees the entry at the last. Call with the lock held. */
static void gzcache_unref(gzcache_entry *e) {
    if (--e->refs > 0) return;
    free(e->key);
    free(e->data);
    free(e);
}

static size_t gzcache_bucket(const char *key) {
    size_t h = 5381;
    for (; *key; key++) h = h * 33 + (unsigned char)*key;
    return h % GZCACHE_BUCKETS;
}

/* The listed entry of key, or NULL. Call with the lock held. */
static gzcache_entry *gzcache_find(const char *key) {
    gzcache_entry *e = gzcache_buckets[gzcache_bucket(key)];
    while (e && strcmp(e->key, key) != 0) e = e->hnext;
    return e;
}

/* Takes e out of the list and its bucket. Call with the lock held. */
static void gzcache_unlink(gzcache_entry *e) {
    gzcache_entry **pp = &gzcache_buckets[e->bucket];
    while (*pp && *pp != e) pp = &(*pp)->hnext;
    if (*pp) *pp = e->hnext;
    e->hnext = NULL;
    list_remove(&e->recency);
    gzcache_total -= e->len;
}

/* Lists e first, in its bucket. Call with the lock held. */
static void gzcache_push_front(gzcache_entry *e) {
    e->hnext = gzcache_buckets[e->bucket];
    gzcache_buckets[e->bucket] = e;
    list_insert_after(&gzcache_lru, &e->recency);
    gzcache_total += e->len;
}

/* Compresses size bytes of fd into a new entry (one reference, for the caller). */
static gzcache_entry *gzcache_compress(const char *key, int fd, size_t size) {
    gzcache_entry *e = calloc(1, sizeof *e);
    unsigned char *in = malloc(size ? size : 1);
    z_stream z;
    int ok = 0, started = 0;
    memset(&z, 0, sizeof z);
    if (!e || !in || pread(fd, in, size, 0) != (ssize_t)size) goto out;
    if (deflateInit2(&z, GZCACHE_LEVEL, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) goto out;
    started = 1;
    size_t cap = deflateBound(&z, (uLong)size);
    if (!(e->data = malloc(cap)) || !(e->key = strdup(key))) goto out;
    z.next_in = in;
    z.avail_in = (uInt)size;
    z.next_out = e->data;
    z.avail_out = (uInt)cap;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END || z.total_out >= size) goto out; /* no gain: send it as it is */
    e->len = z.total_out;
    e->refs = 1;
    ok = 1;
out:
    if (started) deflateEnd(&z);
    free(in);
    if (!ok && e) {
        free(e->data);
        free(e->key);
        free(e);
        e = NULL;
    }
    return e;
}

gzcache_entry *gzcache_get(const char *key, int fd, size_t size) {
    gzcache_entry *e;
    pthread_mutex_lock(&gzcache_lock);
    if ((e = gzcache_find(key))) {
        gzcache_unlink(e);
        gzcache_push_front(e);
        e->refs++;
        pthread_mutex_unlock(&gzcache_lock);
        return e;
    }
    pthread_mutex_unlock(&gzcache_lock);
    if (!(e = gzcache_compress(key, fd, size))) return NULL; /* outside the lock: it takes time */
    pthread_mutex_lock(&gzcache_lock);
    e->bucket = gzcache_bucket(key);
    if (!gzcache_find(key) && e->len <= GZCACHE_MAX_BYTES) { /* not made by another worker meanwhile: keep it */
        for (list_node *n; (n = list_last(&gzcache_lru)) && gzcache_total + e->len > GZCACHE_MAX_BYTES;) {
            gzcache_entry *old = list_entry(n, gzcache_entry, recency);
            gzcache_unlink(old);
            gzcache_unref(old);
        }
        e->refs++;
        gzcache_push_front(e);
    }
    pthread_mutex_unlock(&gzcache_lock);
    return e;
}

const void *gzcache_data(const gzcache_entry *e, size_t *len) {
    *len = e->len;
    return e->data;
}

void gzcache_release(void *entry) {
    if (!entry) return;
    pthread_mutex_lock(&gzcache_lock);
    gzcache_unref(entry);
    pthread_mutex_unlock(&gzcache_lock);
}
