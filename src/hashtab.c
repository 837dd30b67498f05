/* hashtab.c: intrusive chained hash tables, keyed per table with SipHash-2-4 (for policy.c and shdict.c). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto.h"
#include "hashtab.h"

#define HASHTAB_FIRST_SLOTS 16

struct hashtab {
    hashtab_node **slots;
    size_t nslots; /* a power of two */
    size_t count;
    unsigned char key[16];
};

hashtab *hashtab_create(void) {
    hashtab *t = calloc(1, sizeof *t);
    if (!t || !(t->slots = calloc(HASHTAB_FIRST_SLOTS, sizeof *t->slots))) {
        free(t);
        return NULL;
    }
    t->nslots = HASHTAB_FIRST_SLOTS;
    if (crypto_random(t->key, sizeof t->key) < 0) {
        /* No randomness: still a working table, but keys are easier to make collide. */
        uint64_t seed = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)t;
        memcpy(t->key, &seed, sizeof seed);
    }
    return t;
}

void hashtab_free(hashtab *t) {
    if (!t) return;
    free(t->slots);
    free(t);
}

#define HASHTAB_ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))

static void hashtab_sipround(uint64_t v[4]) {
    v[0] += v[1];
    v[1] = HASHTAB_ROTL(v[1], 13) ^ v[0];
    v[0] = HASHTAB_ROTL(v[0], 32);
    v[2] += v[3];
    v[3] = HASHTAB_ROTL(v[3], 16) ^ v[2];
    v[0] += v[3];
    v[3] = HASHTAB_ROTL(v[3], 21) ^ v[0];
    v[2] += v[1];
    v[1] = HASHTAB_ROTL(v[1], 17) ^ v[2];
    v[2] = HASHTAB_ROTL(v[2], 32);
}

/* n (<= 8) bytes as a little-endian number. */
static uint64_t hashtab_le(const unsigned char *p, size_t n) {
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) x |= (uint64_t)p[i] << (8 * i);
    return x;
}

uint64_t hashtab_siphash(const unsigned char key[16], const void *data, size_t len) {
    const unsigned char *p = data;
    uint64_t k0 = hashtab_le(key, 8), k1 = hashtab_le(key + 8, 8);
    uint64_t v[4] = { k0 ^ 0x736f6d6570736575ULL, k1 ^ 0x646f72616e646f6dULL, k0 ^ 0x6c7967656e657261ULL,
                      k1 ^ 0x7465646279746573ULL };
    size_t whole = len & ~(size_t)7;
    for (size_t i = 0; i <= whole; i += 8) {
        /* Every 8 bytes, then the last 0..7 with the length in the top byte. */
        uint64_t m = i < whole ? hashtab_le(p + i, 8) : hashtab_le(p + i, len - whole) | (uint64_t)len << 56;
        v[3] ^= m;
        hashtab_sipround(v);
        hashtab_sipround(v);
        v[0] ^= m;
    }
    v[2] ^= 0xff;
    for (int i = 0; i < 4; i++) hashtab_sipround(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

uint64_t hashtab_hash(const hashtab *t, const void *key, size_t len) {
    return hashtab_siphash(t->key, key, len);
}

hashtab_node *hashtab_find(const hashtab *t, uint64_t hash, hashtab_match_fn *match, const void *key, size_t len) {
    hashtab_node *n = t->slots[hash & (t->nslots - 1)];
    while (n && !(n->hash == hash && match(n, key, len))) n = n->next;
    return n;
}

/* Doubles the slots; on failure the table keeps its slots (longer chains). */
static void hashtab_grow(hashtab *t) {
    size_t n = t->nslots * 2;
    hashtab_node **slots = calloc(n, sizeof *slots);
    if (!slots) return;
    for (size_t i = 0; i < t->nslots; i++) {
        for (hashtab_node *e = t->slots[i], *next; e; e = next) {
            next = e->next;
            e->next = slots[e->hash & (n - 1)];
            slots[e->hash & (n - 1)] = e;
        }
    }
    free(t->slots);
    t->slots = slots;
    t->nslots = n;
}

void hashtab_insert(hashtab *t, hashtab_node *n, uint64_t hash) {
    hashtab_node **slot = &t->slots[hash & (t->nslots - 1)];
    n->hash = hash;
    n->next = *slot;
    *slot = n;
    if (++t->count > t->nslots) hashtab_grow(t);
}

void hashtab_remove(hashtab *t, hashtab_node *n) {
    hashtab_node **pp = &t->slots[n->hash & (t->nslots - 1)];
    while (*pp != n) pp = &(*pp)->next;
    *pp = n->next;
    n->next = NULL;
    t->count--;
}

size_t hashtab_count(const hashtab *t) {
    return t->count;
}
