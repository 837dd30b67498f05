/* hashtab.h: intrusive chained hash tables, keyed per table with SipHash-2-4 (for policy.c and shdict.c). */
#ifndef TOKEND_HASHTAB_H
#define TOKEND_HASHTAB_H

#include <stddef.h>
#include <stdint.h>

/* The link an element holds to be in a table. The table owns no element: the caller
 * allocates, frees, and removes each one from the table before freeing it. */
typedef struct hashtab_node {
    struct hashtab_node *next; /* the next node of its slot */
    uint64_t hash;
} hashtab_node;

/* The element of type holding node n in its member. */
#define hashtab_entry(n, type, member) ((type *)(void *)((char *)(n)-offsetof(type, member)))

typedef struct hashtab hashtab;

/* Creates an empty table with a random hash key of its own (so nobody outside can choose
 * keys that collide). NULL when out of memory. The table is not thread-safe. */
hashtab *hashtab_create(void);

/* Frees the table, not its elements (remove or free them first: they are the caller's). */
void hashtab_free(hashtab *t);

/* The table's hash of len bytes (SipHash-2-4 under the table's key). */
uint64_t hashtab_hash(const hashtab *t, const void *key, size_t len);

/* Tells whether node n is the element for key (len bytes): 1 when it is. */
typedef int hashtab_match_fn(const hashtab_node *n, const void *key, size_t len);

/* The node with this hash for which match says 1, or NULL. */
hashtab_node *hashtab_find(const hashtab *t, uint64_t hash, hashtab_match_fn *match, const void *key, size_t len);

/* Adds node n (in no table) under hash, which must be hashtab_hash of its key; the caller
 * has made sure its key is not there yet. The slots double when the table holds more
 * nodes than slots; should that allocation fail, chains get longer (still correct). */
void hashtab_insert(hashtab *t, hashtab_node *n, uint64_t hash);

/* Takes node n, which is in t, out of it. */
void hashtab_remove(hashtab *t, hashtab_node *n);

/* Nodes in the table. */
size_t hashtab_count(const hashtab *t);

/* SipHash-2-4 of len bytes under a 16-byte key (little-endian, as its paper). */
uint64_t hashtab_siphash(const unsigned char key[16], const void *data, size_t len);

#endif
