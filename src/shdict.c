/* shdict.c: dictionaries in C memory shared by all workers, with TTLs, bounded in entries and bytes, least recently used out first. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hashtab.h"
#include "list.h"
#include "shdict.h"

#define SHDICT_MAX_DICTS 64
#define SHDICT_NAME_MAX 64
#define SHDICT_EVICT_PROBE 8 /* the least recently used entries looked at for an expired one */

typedef struct shdict_entry {
    hashtab_node node;   /* in the dictionary's table */
    list_node recency;   /* in the dictionary's list, most recently used first */
    uint64_t expires_ms; /* 0: never */
    shdict_type type;
    double n;
    size_t klen, vlen;
    char data[]; /* key, then a string value */
} shdict_entry;

/* The overhead counted covers the entry, its allocation's header and its hash slot. */
_Static_assert(sizeof(shdict_entry) + 24 <= SHDICT_ENTRY_OVERHEAD, "SHDICT_ENTRY_OVERHEAD is too small");

struct shdict {
    pthread_mutex_t lock;
    char name[SHDICT_NAME_MAX];
    size_t capacity;
    unsigned long long max_bytes, bytes;
    hashtab *table;
    list_node recency;
    unsigned long long evicted, visited;
};

struct shdict_registry {
    pthread_mutex_t lock;
    shdict *dicts[SHDICT_MAX_DICTS];
    size_t n;
};

shdict_registry *shdict_registry_create(void) {
    shdict_registry *s = calloc(1, sizeof *s);
    if (s) pthread_mutex_init(&s->lock, NULL);
    return s;
}

/* The bytes an entry counts against the byte bound. */
static unsigned long long shdict_entry_bytes(size_t klen, size_t vlen) {
    return (unsigned long long)klen + vlen + SHDICT_ENTRY_OVERHEAD;
}

static void shdict_remove(shdict *d, shdict_entry *e) {
    hashtab_remove(d->table, &e->node);
    list_remove(&e->recency);
    d->bytes -= shdict_entry_bytes(e->klen, e->vlen);
    free(e);
}

static void shdict_free(shdict *d) {
    for (list_node *n; (n = list_first(&d->recency));) shdict_remove(d, list_entry(n, shdict_entry, recency));
    hashtab_free(d->table);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

void shdict_registry_free(shdict_registry *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) shdict_free(s->dicts[i]);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static int shdict_expired(const shdict_entry *e, uint64_t now_ms) {
    return e->expires_ms && e->expires_ms <= now_ms;
}

/* Drops one entry, in constant time: an expired one among the SHDICT_EVICT_PROBE least
 * recently used, else the least recently used. Returns 1 when a live entry went. */
static int shdict_evict(shdict *d, uint64_t now_ms) {
    list_node *victim = list_last(&d->recency);
    int probed = 0, expired = 0;
    for (list_node *n = victim; n && probed < SHDICT_EVICT_PROBE && !expired; n = list_prev(&d->recency, n), probed++) {
        d->visited++;
        if (shdict_expired(list_entry(n, shdict_entry, recency), now_ms)) {
            victim = n;
            expired = 1;
        }
    }
    shdict_remove(d, list_entry(victim, shdict_entry, recency));
    if (!expired) d->evicted++;
    return !expired;
}

/* Makes room for an entry of need bytes (0: none, to apply new bounds): entries go until
 * one more entry fits both bounds. Returns 1 when a live entry had to go. The caller has
 * checked that need alone fits max_bytes. */
static int shdict_make_room(shdict *d, unsigned long long need, uint64_t now_ms) {
    int evicted = 0;
    size_t room = need ? 1 : 0;
    while (!list_empty(&d->recency) && (hashtab_count(d->table) + room > d->capacity || d->bytes + need > d->max_bytes))
        evicted |= shdict_evict(d, now_ms);
    return evicted;
}

shdict *shdict_open(shdict_registry *s, const char *name, size_t capacity, unsigned long long max_bytes, char *err,
                    size_t errlen) {
    shdict *d = NULL;
    if (capacity < 1 || capacity > 100000000) {
        snprintf(err, errlen, "capacity must be 1..100000000 entries");
        return NULL;
    }
    if (max_bytes < SHDICT_MIN_BYTES || max_bytes > SHDICT_MAX_BYTES) {
        snprintf(err, errlen, "max_bytes must be %d..%llu", SHDICT_MIN_BYTES, SHDICT_MAX_BYTES);
        return NULL;
    }
    if (strlen(name) >= SHDICT_NAME_MAX) {
        snprintf(err, errlen, "the dictionary name is too long (at most %d bytes)", SHDICT_NAME_MAX - 1);
        return NULL;
    }
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->n && !d; i++)
        if (strcmp(s->dicts[i]->name, name) == 0) d = s->dicts[i];
    if (d) {
        /* A reloaded script may change the bounds: they hold from now on. */
        pthread_mutex_lock(&d->lock);
        d->capacity = capacity;
        d->max_bytes = max_bytes;
        shdict_make_room(d, 0, 0);
        pthread_mutex_unlock(&d->lock);
        goto out;
    }
    if (s->n == SHDICT_MAX_DICTS) {
        snprintf(err, errlen, "too many shared dictionaries (at most %d)", SHDICT_MAX_DICTS);
        goto out;
    }
    if (!(d = calloc(1, sizeof *d)) || !(d->table = hashtab_create())) {
        free(d);
        d = NULL;
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    pthread_mutex_init(&d->lock, NULL);
    snprintf(d->name, sizeof d->name, "%s", name);
    d->capacity = capacity;
    d->max_bytes = max_bytes;
    list_init(&d->recency);
    s->dicts[s->n++] = d;
out:
    pthread_mutex_unlock(&s->lock);
    return d;
}

/* Whether an entry is the one for key. */
static int shdict_entry_is(const hashtab_node *n, const void *key, size_t klen) {
    const shdict_entry *e = hashtab_entry(n, const shdict_entry, node);
    return e->klen == klen && memcmp(e->data, key, klen) == 0;
}

/* The live entry for key (an expired one is removed), moved to the front; or NULL. */
static shdict_entry *shdict_find(shdict *d, const char *key, size_t klen, uint64_t now_ms) {
    hashtab_node *n = hashtab_find(d->table, hashtab_hash(d->table, key, klen), shdict_entry_is, key, klen);
    shdict_entry *e = n ? hashtab_entry(n, shdict_entry, node) : NULL;
    if (!e) return NULL;
    if (shdict_expired(e, now_ms)) {
        shdict_remove(d, e);
        return NULL;
    }
    list_move_front(&d->recency, &e->recency);
    return e;
}

/* The bytes key = v would count. */
static unsigned long long shdict_need(size_t klen, const shdict_value *v) {
    return shdict_entry_bytes(klen, v->type == SHDICT_STRING ? v->len : 0);
}

/* Stores key = v as a new entry (the key is absent, the entry fits max_bytes alone). */
static int shdict_insert(shdict *d, const char *key, size_t klen, const shdict_value *v, uint64_t ttl_ms,
                         uint64_t now_ms) {
    size_t vlen = v->type == SHDICT_STRING ? v->len : 0;
    int evicted = shdict_make_room(d, shdict_need(klen, v), now_ms);
    shdict_entry *e = malloc(sizeof *e + klen + vlen + 1);
    if (!e) return SHDICT_NO_MEMORY;
    e->expires_ms = ttl_ms ? now_ms + ttl_ms : 0;
    e->type = v->type;
    e->n = v->n;
    e->klen = klen;
    e->vlen = vlen;
    memcpy(e->data, key, klen);
    if (vlen) memcpy(e->data + klen, v->s, vlen);
    e->data[klen + vlen] = '\0';
    hashtab_insert(d->table, &e->node, hashtab_hash(d->table, key, klen));
    list_insert_after(&d->recency, &e->recency);
    d->bytes += shdict_entry_bytes(klen, vlen);
    return evicted ? SHDICT_EVICTED : SHDICT_STORED;
}

int shdict_get(shdict *d, const char *key, size_t klen, uint64_t now_ms, shdict_value *out) {
    int rc = 0;
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&d->lock);
    shdict_entry *e = shdict_find(d, key, klen, now_ms);
    if (e) {
        out->type = e->type;
        out->n = e->n;
        if (e->type == SHDICT_STRING) {
            if ((out->s = malloc(e->vlen + 1))) {
                memcpy(out->s, e->data + e->klen, e->vlen + 1);
                out->len = e->vlen;
            } else {
                out->type = SHDICT_NONE;
                rc = SHDICT_NO_MEMORY;
            }
        }
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

int shdict_set(shdict *d, const char *key, size_t klen, const shdict_value *v, uint64_t ttl_ms, uint64_t now_ms) {
    int rc = SHDICT_TOO_BIG;
    pthread_mutex_lock(&d->lock);
    if (v->type != SHDICT_NONE && shdict_need(klen, v) > d->max_bytes) goto out;
    shdict_entry *e = shdict_find(d, key, klen, now_ms);
    if (e) shdict_remove(d, e);
    rc = v->type == SHDICT_NONE ? SHDICT_STORED : shdict_insert(d, key, klen, v, ttl_ms, now_ms);
out:
    pthread_mutex_unlock(&d->lock);
    return rc;
}

int shdict_add(shdict *d, const char *key, size_t klen, const shdict_value *v, uint64_t ttl_ms, uint64_t now_ms) {
    int rc;
    pthread_mutex_lock(&d->lock);
    if (shdict_find(d, key, klen, now_ms)) rc = SHDICT_EXISTS;
    else if (shdict_need(klen, v) > d->max_bytes) rc = SHDICT_TOO_BIG;
    else rc = shdict_insert(d, key, klen, v, ttl_ms, now_ms);
    pthread_mutex_unlock(&d->lock);
    return rc;
}

int shdict_incr(shdict *d, const char *key, size_t klen, double by, const double *init, uint64_t ttl_ms,
                uint64_t now_ms, double *out) {
    int rc = SHDICT_STORED;
    pthread_mutex_lock(&d->lock);
    shdict_entry *e = shdict_find(d, key, klen, now_ms);
    shdict_value v = { SHDICT_NUMBER, NULL, 0, (init ? *init : 0) + by };
    if (e && e->type != SHDICT_NUMBER) {
        rc = SHDICT_NOT_NUMBER;
    } else if (e) {
        e->n += by;
        *out = e->n;
    } else if (!init) {
        rc = SHDICT_NOT_FOUND;
    } else if (shdict_need(klen, &v) > d->max_bytes) {
        rc = SHDICT_TOO_BIG;
    } else {
        rc = shdict_insert(d, key, klen, &v, ttl_ms, now_ms);
        *out = v.n;
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

void shdict_delete(shdict *d, const char *key, size_t klen) {
    pthread_mutex_lock(&d->lock);
    shdict_entry *e = shdict_find(d, key, klen, 0);
    if (e) shdict_remove(d, e);
    pthread_mutex_unlock(&d->lock);
}

int64_t shdict_ttl(shdict *d, const char *key, size_t klen, uint64_t now_ms) {
    pthread_mutex_lock(&d->lock);
    shdict_entry *e = shdict_find(d, key, klen, now_ms);
    int64_t left = !e ? -1 : e->expires_ms ? (int64_t)(e->expires_ms - now_ms) : 0;
    pthread_mutex_unlock(&d->lock);
    return left;
}

void shdict_stats_of(shdict *d, shdict_stats *out) {
    pthread_mutex_lock(&d->lock);
    out->entries = hashtab_count(d->table);
    out->bytes = d->bytes;
    out->evicted = d->evicted;
    out->visited = d->visited;
    pthread_mutex_unlock(&d->lock);
}

void shdict_metrics(shdict_registry *s, metrics_write_fn *write, void *ud) {
    static const char *const families[][3] = {
        { "tokend_shared_entries", "gauge", "Entries a shared dictionary in C holds (expired ones until dropped)." },
        { "tokend_shared_bytes", "gauge", "Bytes a shared dictionary in C holds, as its max_bytes counts them." },
        { "tokend_shared_evictions_total", "counter", "Live entries a shared dictionary in C dropped to make room." },
    };
    struct {
        char name[SHDICT_NAME_MAX];
        unsigned long long v[3];
    } seen[SHDICT_MAX_DICTS];
    size_t n;
    /* Copied out first: write may raise a Lua error, which must not leave a lock held. */
    pthread_mutex_lock(&s->lock);
    for (n = 0; n < s->n; n++) {
        shdict_stats st;
        shdict_stats_of(s->dicts[n], &st);
        memcpy(seen[n].name, s->dicts[n]->name, sizeof seen[n].name);
        seen[n].v[0] = st.entries;
        seen[n].v[1] = st.bytes;
        seen[n].v[2] = st.evicted;
    }
    pthread_mutex_unlock(&s->lock);
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        metrics_family(write, ud, families[f][0], families[f][1], families[f][2]);
        for (size_t i = 0; i < n; i++) metrics_sample(write, ud, families[f][0], "dict", seen[i].name, seen[i].v[f]);
    }
}
