/* test_shdict.c: shared dictionaries: operations, TTLs, the entry and byte bounds, eviction cost, as tables. */
#include <stdlib.h>

#include "check.h"
#include "shdict.h"

#define MIB (1024 * 1024)

static shdict_value str(const char *s, size_t len) {
    shdict_value v = { SHDICT_STRING, (char *)s, len, 0 };
    return v;
}

static shdict_value num(double n) {
    shdict_value v = { SHDICT_NUMBER, NULL, 0, n };
    return v;
}

/* 1 when key holds a string of len bytes. */
static int has_string(shdict *d, const char *key, size_t len, uint64_t now) {
    shdict_value v;
    int ok = shdict_get(d, key, strlen(key), now, &v) == 0 && v.type == SHDICT_STRING && v.len == len;
    free(v.s);
    return ok;
}

static int absent(shdict *d, const char *key, uint64_t now) {
    shdict_value v;
    return shdict_get(d, key, strlen(key), now, &v) == 0 && v.type == SHDICT_NONE;
}

static void test_operations(void) {
    char err[200];
    shdict_registry *r = shdict_registry_create();
    shdict *d = shdict_open(r, "ops", 100, MIB, err, sizeof err);
    CHECK(d != NULL, "%s", err);
    CHECK(shdict_open(r, "ops", 100, MIB, err, sizeof err) == d, "the same name, the same dictionary");
    CHECK(shdict_open(r, "bad", 0, MIB, err, sizeof err) == NULL && strstr(err, "capacity"), "%s", err);
    CHECK(shdict_open(r, "bad", 1, 1023, err, sizeof err) == NULL && strstr(err, "max_bytes"), "%s", err);
    uint64_t t = 1000;
    shdict_value v = str("hello", 5), one = num(1);
    double out = 0, init = 10;
    CHECK(shdict_set(d, "a", 1, &v, 0, t) == SHDICT_STORED, "set");
    CHECK(has_string(d, "a", 5, t), "get");
    CHECK(shdict_add(d, "a", 1, &one, 0, t) == SHDICT_EXISTS, "add on a present key");
    CHECK(shdict_incr(d, "a", 1, 1, NULL, 0, t, &out) == SHDICT_NOT_NUMBER, "incr on a string");
    CHECK(shdict_incr(d, "n", 1, 1, NULL, 0, t, &out) == SHDICT_NOT_FOUND, "incr without init");
    CHECK(shdict_incr(d, "n", 1, 2, &init, 0, t, &out) == SHDICT_STORED && out == 12, "incr with init: %g", out);
    CHECK(shdict_incr(d, "n", 1, 3, &init, 0, t, &out) == SHDICT_STORED && out == 15, "incr again: %g", out);
    CHECK(shdict_set(d, "e", 1, &one, 500, t) == SHDICT_STORED, "set with a TTL");
    CHECK(shdict_ttl(d, "e", 1, t + 100) == 400, "400 ms left");
    CHECK(shdict_ttl(d, "a", 1, t) == 0 && shdict_ttl(d, "zz", 2, t) == -1, "no TTL; absent");
    CHECK(absent(d, "e", t + 500), "expired at its TTL");
    CHECK(shdict_add(d, "e", 1, &one, 0, t + 500) == SHDICT_STORED, "add over an expired entry");
    shdict_delete(d, "a", 1);
    CHECK(absent(d, "a", t), "deleted");
    shdict_value none = { SHDICT_NONE, NULL, 0, 0 };
    CHECK(shdict_set(d, "n", 1, &none, 0, t) == SHDICT_STORED && absent(d, "n", t), "set to none deletes");
    shdict_stats st;
    shdict_stats_of(d, &st);
    CHECK(st.entries == 1 && st.bytes == 1 + SHDICT_ENTRY_OVERHEAD, "one entry of 1 + %d bytes: %zu, %llu",
          SHDICT_ENTRY_OVERHEAD, st.entries, st.bytes);
    shdict_registry_free(r);
}

static void test_entry_bound(void) {
    char err[200];
    shdict_registry *r = shdict_registry_create();
    shdict *d = shdict_open(r, "small", 2, MIB, err, sizeof err);
    shdict_value one = num(1);
    uint64_t t = 1000;
    CHECK(shdict_set(d, "a", 1, &one, 0, t) == SHDICT_STORED, "a");
    CHECK(shdict_set(d, "b", 1, &one, 0, t) == SHDICT_STORED, "b");
    CHECK(!absent(d, "a", t), "a used: b is the least recently used");
    CHECK(shdict_set(d, "c", 1, &one, 0, t) == SHDICT_EVICTED, "c makes room");
    CHECK(absent(d, "b", t) && !absent(d, "a", t) && !absent(d, "c", t), "b went");
    /* An expired entry goes before a live one, and that is no eviction. */
    CHECK(shdict_set(d, "x", 1, &one, 100, t) == SHDICT_EVICTED, "x (a went)");
    CHECK(shdict_set(d, "y", 1, &one, 0, t + 200) == SHDICT_STORED,
          "y at t + 200: the expired x goes, not c, the least recently used");
    CHECK(!absent(d, "c", t + 200) && !absent(d, "y", t + 200), "c and y");
    /* Reopened with a smaller capacity: the least recently used go at once. */
    CHECK(shdict_open(r, "small", 1, MIB, err, sizeof err) == d, "reopened");
    shdict_stats st;
    shdict_stats_of(d, &st);
    CHECK(st.entries == 1 && !absent(d, "y", t + 200), "y, the most recently used, alone is left: %zu", st.entries);
    shdict_registry_free(r);
}

static void test_byte_bound(void) {
    char err[200];
    shdict_registry *r = shdict_registry_create();
    shdict *d = shdict_open(r, "big", 10000, 8 * MIB, err, sizeof err);
    char *mib = malloc(MIB);
    memset(mib, 'x', MIB);
    shdict_value big = str(mib, MIB), small = str(mib, 10);
    uint64_t t = 1000;
    char key[32];
    shdict_stats st;
    /* 200 values of 1 MiB: the dictionary keeps the last 7 (with their overhead, 8 do not fit). */
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof key, "k%d", i);
        int rc = shdict_set(d, key, strlen(key), &big, 0, t);
        CHECK(rc == (i < 7 ? SHDICT_STORED : SHDICT_EVICTED), "%s: %d", key, rc);
        shdict_stats_of(d, &st);
        if (st.bytes > 8 * MIB) break;
    }
    shdict_stats_of(d, &st);
    CHECK(st.bytes <= 8 * MIB && st.entries == 7, "%llu bytes in %zu entries", st.bytes, st.entries);
    CHECK(has_string(d, "k199", MIB, t) && absent(d, "k192", t), "the newest stay, the oldest went");
    CHECK(shdict_set(d, "s", 1, &small, 0, t) == SHDICT_STORED, "a small value fits in what is left");
    CHECK(shdict_set(d, "k200", 4, &big, 0, t) == SHDICT_EVICTED, "a large one again makes room");
    shdict_stats_of(d, &st);
    CHECK(st.entries == 8 && st.bytes <= 8 * MIB && absent(d, "k193", t), "%zu entries", st.entries);
    /* An entry larger than the bound alone is refused, and changes nothing. */
    shdict *tiny = shdict_open(r, "tiny", 100, 50000, err, sizeof err);
    shdict_value kept = str("kept", 4), huge = str(mib, 200000);
    double out, init = 0;
    CHECK(shdict_set(tiny, "k", 1, &kept, 0, t) == SHDICT_STORED, "small");
    CHECK(shdict_set(tiny, "k", 1, &huge, 0, t) == SHDICT_TOO_BIG, "set too big");
    CHECK(shdict_add(tiny, "h", 1, &huge, 0, t) == SHDICT_TOO_BIG, "add too big");
    CHECK(shdict_incr(tiny, mib, 49990, 1, &init, 0, t, &out) == SHDICT_TOO_BIG, "a key too big for incr");
    CHECK(has_string(tiny, "k", 4, t), "the old value stays");
    shdict_stats_of(tiny, &st);
    CHECK(st.entries == 1 && st.evicted == 0, "nothing went: %zu, %llu", st.entries, st.evicted);
    /* Reopened with a smaller byte bound: entries go at once until it holds. */
    CHECK(shdict_open(r, "big", 10000, 3 * MIB, err, sizeof err) == d, "reopened");
    shdict_stats_of(d, &st);
    CHECK(st.bytes <= 3 * MIB && st.entries == 3, "%llu bytes, %zu entries", st.bytes, st.entries);
    CHECK(has_string(d, "k200", MIB, t) && has_string(d, "s", 10, t) && has_string(d, "k199", MIB, t),
          "the most recently used stay");
    free(mib);
    shdict_registry_free(r);
}

/* Inserting into a full dictionary looks at a few entries per insert, not at all of them
 * (it used to scan the whole dictionary for expired entries, under the lock). */
static void test_eviction_cost(void) {
    char err[200];
    enum { N = 2000 };
    shdict_registry *r = shdict_registry_create();
    shdict *d = shdict_open(r, "full", N, MIB, err, sizeof err);
    shdict_value one = num(1);
    char key[32];
    shdict_stats st;
    for (int i = 0; i < 2 * N; i++) {
        snprintf(key, sizeof key, "k%d", i);
        shdict_set(d, key, strlen(key), &one, i % 2 ? 0 : 3600 * 1000, 1000);
    }
    shdict_stats_of(d, &st);
    CHECK(st.entries == N && st.evicted == N, "%zu entries, %llu evicted", st.entries, st.evicted);
    CHECK(st.visited <= 8ULL * N, "%llu entries looked at for %d inserts into a full dictionary", st.visited, N);
    shdict_registry_free(r);
}

int main(void) {
    test_operations();
    test_entry_bound();
    test_byte_bound();
    test_eviction_cost();
    return check_report("shdict");
}
