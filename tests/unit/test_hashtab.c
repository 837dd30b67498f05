/* test_hashtab.c: the keyed hash (SipHash-2-4's published vectors) and the intrusive table, as tables. */
#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "hashtab.h"

/* SipHash-2-4 with the key 00 01 .. 0f over the messages 00 01 .. (len - 1), from the
 * reference implementation's vectors. */
static void test_siphash(void) {
    static const struct {
        size_t len;
        uint64_t want;
    } cases[] = {
        { 0, 0x726fdb47dd0e0e31ULL },  { 1, 0x74f839c593dc67fdULL },  { 7, 0xab0200f58b01d137ULL },
        { 8, 0x93f5f5799a932462ULL },  { 9, 0x9e0082df0ba9e4b0ULL },  { 15, 0xa129ca6149be45e5ULL },
        { 16, 0x3f2acc7f57c29bdbULL }, { 63, 0x958a324ceb064572ULL },
    };
    unsigned char key[16], msg[64];
    for (int i = 0; i < 16; i++) key[i] = (unsigned char)i;
    for (int i = 0; i < 64; i++) msg[i] = (unsigned char)i;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint64_t got = hashtab_siphash(key, msg, cases[i].len);
        CHECK(got == cases[i].want, "%zu bytes: got %016llx", cases[i].len, (unsigned long long)got);
    }
}

typedef struct item {
    hashtab_node node;
    int key;
} item;

static int item_is(const hashtab_node *n, const void *key, size_t len) {
    (void)len;
    return hashtab_entry(n, const item, node)->key == *(const int *)key;
}

static item *find(hashtab *t, int key) {
    hashtab_node *n = hashtab_find(t, hashtab_hash(t, &key, sizeof key), item_is, &key, sizeof key);
    return n ? hashtab_entry(n, item, node) : NULL;
}

static void test_table(void) {
    enum { N = 5000 };
    hashtab *t = hashtab_create(), *other = hashtab_create();
    CHECK(t && other, "created");
    int k = 42;
    CHECK(hashtab_hash(t, &k, sizeof k) == hashtab_hash(t, &k, sizeof k), "a table hashes alike every time");
    CHECK(hashtab_hash(t, &k, sizeof k) != hashtab_hash(other, &k, sizeof k), "each table has a key of its own");
    item *items = calloc(N, sizeof *items);
    for (int i = 0; i < N; i++) {
        items[i].key = i;
        hashtab_insert(t, &items[i].node, hashtab_hash(t, &i, sizeof i));
    }
    CHECK(hashtab_count(t) == N, "%zu nodes", hashtab_count(t));
    int missing = 0;
    for (int i = 0; i < N; i++) missing += find(t, i) != &items[i];
    CHECK(missing == 0, "every node found after the slots doubled: %d missing", missing);
    CHECK(find(t, N) == NULL, "an absent key");
    for (int i = 0; i < N; i += 2) hashtab_remove(t, &items[i].node);
    CHECK(hashtab_count(t) == N / 2, "%zu left", hashtab_count(t));
    int wrong = 0;
    for (int i = 0; i < N; i++) wrong += find(t, i) != (i % 2 ? &items[i] : NULL);
    CHECK(wrong == 0, "removed ones are gone, the others stay: %d wrong", wrong);
    /* Nodes of equal hashes are told apart by match. */
    item a = { .key = -1 }, b = { .key = -2 };
    hashtab_insert(other, &a.node, 7);
    hashtab_insert(other, &b.node, 7);
    int ka = -1, kb = -2, kc = -3;
    CHECK(hashtab_find(other, 7, item_is, &ka, sizeof ka) == &a.node, "a");
    CHECK(hashtab_find(other, 7, item_is, &kb, sizeof kb) == &b.node, "b");
    CHECK(hashtab_find(other, 7, item_is, &kc, sizeof kc) == NULL, "neither");
    hashtab_remove(other, &b.node);
    CHECK(hashtab_find(other, 7, item_is, &ka, sizeof ka) == &a.node && hashtab_count(other) == 1, "a stays");
    hashtab_free(other);
    hashtab_free(t);
    free(items);
}

int main(void) {
    test_siphash();
    test_table();
    return check_report("hashtab");
}
