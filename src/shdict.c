/* shdict.c: dictionaries in C memory shared by all workers: strings, numbers and booleans with TTLs, least recently used out first. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shdict.h"

#define SHDICT_MAX_DICTS 64
#define SHDICT_NAME_MAX 64

typedef struct shdict_entry {
    struct shdict_entry *chain;         /* next in the hash slot */
    struct shdict_entry *newer, *older; /* the recency list */
    uint64_t hash;
    uint64_t expires_ms;                /* 0: never */
    shdict_type type;
    double n;
    size_t klen, vlen;
    char data[];                        /* key, then a string value */
} shdict_entry;

struct shdict {
    pthread_mutex_t lock;
    char name[SHDICT_NAME_MAX];
    size_t capacity;
    shdict_entry **slots;
    size_t nslots, count;
    shdict_entry *newest, *oldest;
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

static void shdict_free(shdict *d) {
    for (shdict_entry *e = d->newest, *next; e; e = next) {
        next = e->older;
        free(e);
    }
    free(d->slots);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

void shdict_registry_free(shdict_registry *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) shdict_free(s->dicts[i]);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

shdict *shdict_open(shdict_registry *s, const char *name, size_t capacity, char *err, size_t errlen) {
    shdict *d = NULL;
    if (capacity < 1 || capacity > 100000000) {
        snprintf(err, errlen, "capacity must be 1..100000000 entries");
        return NULL;
    }
    if (strlen(name) >= SHDICT_NAME_MAX) {
        snprintf(err, errlen, "the dictionary name is too long (at most %d bytes)", SHDICT_NAME_MAX - 1);
        return NULL;
    }
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->dicts[i]->name, name) == 0) {
            d = s->dicts[i];
            pthread_mutex_lock(&d->lock);
            d->capacity = capacity;     /* a reloaded script may change it; extra entries go as they age */
            pthread_mutex_unlock(&d->lock);
            goto out;
        }
    }
    if (s->n == SHDICT_MAX_DICTS) {
        snprintf(err, errlen, "too many shared dictionaries (at most %d)", SHDICT_MAX_DICTS);
        goto out;
    }
    if (!(d = calloc(1, sizeof *d)) || !(d->slots = calloc(64, sizeof *d->slots))) {
        free(d);
        d = NULL;
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    pthread_mutex_init(&d->lock, NULL);
    snprintf(d->name, sizeof d->name, "%s", name);
    d->capacity = capacity;
    d->nslots = 64;
    s->dicts[s->n++] = d;
out:
    pthread_mutex_unlock(&s->lock);
    return d;
}

/* FNV-1a. */
static uint64_t shdict_hash(const char *key, size_t klen) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < klen; i++) h = (h ^ (unsigned char)key[i]) * 1099511628211ULL;
    return h;
}

static void shdict_unlist(shdict *d, shdict_entry *e) {
    if (e->newer) e->newer->older = e->older;
    else d->newest = e->older;
    if (e->older) e->older->newer = e->newer;
    else d->oldest = e->newer;
    e->newer = e->older = NULL;
}

static void shdict_list_front(shdict *d, shdict_entry *e) {
    e->older = d->newest;
    e->newer = NULL;
    if (d->newest) d->newest->newer = e;
    d->newest = e;
    if (!d->oldest) d->oldest = e;
}

static void shdict_remove(shdict *d, shdict_entry *e) {
    shdict_entry **pp = &d->slots[e->hash & (d->nslots - 1)];
    while (*pp != e) pp = &(*pp)->chain;
    *pp = e->chain;
    shdict_unlist(d, e);
    d->count--;
    free(e);
}

/* The live entry for key (an expired one is removed), moved to the front; or NULL. */
static shdict_entry *shdict_find(shdict *d, const char *key, size_t klen, uint64_t now_ms) {
    uint64_t h = shdict_hash(key, klen);
    shdict_entry *e = d->slots[h & (d->nslots - 1)];
    while (e && !(e->hash == h && e->klen == klen && memcmp(e->data, key, klen) == 0)) e = e->chain;
    if (!e) return NULL;
    if (e->expires_ms && e->expires_ms <= now_ms) {
        shdict_remove(d, e);
        return NULL;
    }
    shdict_unlist(d, e);
    shdict_list_front(d, e);
    return e;
}

static void shdict_grow(shdict *d) {
    size_t n = d->nslots * 2;
    shdict_entry **slots = calloc(n, sizeof *slots);
    if (!slots) return;     /* longer chains, still correct */
    for (size_t i = 0; i < d->nslots; i++) {
        for (shdict_entry *e = d->slots[i], *next; e; e = next) {
            next = e->chain;
            e->chain = slots[e->hash & (n - 1)];
            slots[e->hash & (n - 1)] = e;
        }
    }
    free(d->slots);
    d->slots = slots;
    d->nslots = n;
}

/* Makes room for one more entry: expired ones first, then the least recently used.
 * Returns 1 when a live entry had to go. */
static int shdict_make_room(shdict *d, uint64_t now_ms) {
    int evicted = 0;
    for (shdict_entry *e = d->oldest, *newer; e && d->count >= d->capacity; e = newer) {
        newer = e->newer;
        if (e->expires_ms && e->expires_ms <= now_ms) shdict_remove(d, e);
    }
    while (d->count >= d->capacity && d->oldest) {
        shdict_remove(d, d->oldest);
        evicted = 1;
    }
    return evicted;
}

/* Stores key = v as a new entry (the key is absent). */
static int shdict_insert(shdict *d, const char *key, size_t klen, const shdict_value *v, uint64_t ttl_ms,
                         uint64_t now_ms) {
    size_t vlen = v->type == SHDICT_STRING ? v->len : 0;
    int evicted = shdict_make_room(d, now_ms);
    shdict_entry *e = malloc(sizeof *e + klen + vlen + 1);
    if (!e) return SHDICT_NO_MEMORY;
    e->hash = shdict_hash(key, klen);
    e->expires_ms = ttl_ms ? now_ms + ttl_ms : 0;
    e->type = v->type;
    e->n = v->n;
    e->klen = klen;
    e->vlen = vlen;
    memcpy(e->data, key, klen);
    if (vlen) memcpy(e->data + klen, v->s, vlen);
    e->data[klen + vlen] = '\0';
    e->chain = d->slots[e->hash & (d->nslots - 1)];
    d->slots[e->hash & (d->nslots - 1)] = e;
    shdict_list_front(d, e);
    if (++d->count > d->nslots) shdict_grow(d);
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
    pthread_mutex_lock(&d->lock);
    shdict_entry *e = shdict_find(d, key, klen, now_ms);
    if (e) shdict_remove(d, e);
    int rc = v->type == SHDICT_NONE ? SHDICT_STORED : shdict_insert(d, key, klen, v, ttl_ms, now_ms);
    pthread_mutex_unlock(&d->lock);
    return rc;
}

int shdict_add(shdict *d, const char *key, size_t klen, const shdict_value *v, uint64_t ttl_ms, uint64_t now_ms) {
    pthread_mutex_lock(&d->lock);
    int rc = shdict_find(d, key, klen, now_ms) ? SHDICT_EXISTS : shdict_insert(d, key, klen, v, ttl_ms, now_ms);
    pthread_mutex_unlock(&d->lock);
    return rc;
}

int shdict_incr(shdict *d, const char *key, size_t klen, double by, const double *init, uint64_t ttl_ms,
                uint64_t now_ms, double *out) {
    int rc = SHDICT_STORED;
    pthread_mutex_lock(&d->lock);
    shdict_entry *e = shdict_find(d, key, klen, now_ms);
    if (e && e->type != SHDICT_NUMBER) {
        rc = SHDICT_NOT_NUMBER;
    } else if (e) {
        e->n += by;
        *out = e->n;
    } else if (!init) {
        rc = SHDICT_NOT_FOUND;
    } else {
        shdict_value v = { SHDICT_NUMBER, NULL, 0, *init + by };
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

size_t shdict_count(shdict *d) {
    pthread_mutex_lock(&d->lock);
    size_t n = d->count;
    pthread_mutex_unlock(&d->lock);
    return n;
}
