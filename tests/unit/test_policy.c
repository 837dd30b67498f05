/* test_policy.c: token buckets, connection counts, Host and Origin allow-lists, as tables. */
#include <stdlib.h>

#include "check.h"
#include "policy.h"

static void test_buckets(void) {
    char err[200];
    policy_buckets *b = policy_buckets_create(3);
    int id = policy_limiter(b, "token", 10, 60, 5, 0, err, sizeof err);
    CHECK(id >= 0, "%s", err);
    CHECK(policy_limiter(b, "token", 10, 60, 5, 0, err, sizeof err) == id, "same name and values: same limiter");
    int other = policy_limiter(b, "other", 1, 1, 1, 0, err, sizeof err);
    CHECK(other >= 0 && other != id, "another name, another limiter");
    CHECK(policy_limiter(b, "bad", 0, 60, 5, 0, err, sizeof err) < 0, "rate 0 refused");
    CHECK(policy_limiter(b, "bad", 1, 60, 0.5, 0, err, sizeof err) < 0, "burst < 1 refused");
    long retry = 0;
    uint64_t t = 1000000;
    for (int i = 0; i < 5; i++) CHECK(policy_take(b, id, "1.2.3.4", t, &retry) == 1, "burst token %d", i);
    CHECK(policy_take(b, id, "1.2.3.4", t, &retry) == 0, "sixth at once is refused");
    CHECK(retry == 6, "one token every 6 s: retry %ld", retry);
    CHECK(policy_take(b, id, "5.6.7.8", t, &retry) == 1, "another client has its own bucket");
    CHECK(policy_take(b, id, "1.2.3.4", t + 5999, &retry) == 0 && retry == 1, "not yet: retry %ld", retry);
    CHECK(policy_take(b, id, "1.2.3.4", t + 6000, &retry) == 1, "refilled after 6 s");
    /* IPv6 clients count per /64. */
    CHECK(policy_take(b, id, "2001:db8:1:2::1", t, &retry) == 1, "v6 first");
    for (int i = 0; i < 4; i++) policy_take(b, id, "2001:db8:1:2::1", t, &retry);
    CHECK(policy_take(b, id, "2001:db8:1:2:ffff::9", t, &retry) == 0, "same /64 shares the bucket");
    /* Dual-stack sockets: IPv4 clients arrive as ::ffff:a.b.c.d, each its own bucket. */
    policy_buckets *dual = policy_buckets_create(10);
    int d = policy_limiter(dual, "token", 10, 60, 5, 0, err, sizeof err);
    for (int i = 0; i < 5; i++) CHECK(policy_take(dual, d, "::ffff:198.51.100.1", t, &retry) == 1, "mapped %d", i);
    CHECK(policy_take(dual, d, "198.51.100.1", t, &retry) == 0, "the mapped address is the IPv4 client");
    CHECK(policy_take(dual, d, "::ffff:198.51.100.2", t, &retry) == 1, "another IPv4 client is not in that bucket");
    CHECK(policy_take(dual, d, "::1", t, &retry) == 1, "nor is ::1");
    policy_buckets_free(dual);
    /* A full limiter (3 keys) forgets its least recently used client for a new one: here
     * 5.6.7.8 (the IPv6 client and 1.2.3.4 were used after it). */
    policy_stats st;
    CHECK(policy_limiter_stats(b, id, &st) == 0 && st.keys == 3, "three keys, got %zu", st.keys);
    CHECK(policy_take(b, id, "9.9.9.9", t, &retry) == 1, "a new client in a full limiter is not refused");
    CHECK(policy_limiter_stats(b, id, &st) == 0 && st.keys == 3 && st.evicted == 1, "%zu keys, %llu evicted", st.keys,
          st.evicted);
    CHECK(policy_take(b, id, "1.2.3.4", t + 6000, &retry) == 0, "1.2.3.4 (empty) is still known");
    CHECK(policy_limiter_stats(b, id, &st) == 0 && st.keys == 3 && st.evicted == 1, "it was not evicted");
    /* Forgotten, 5.6.7.8 starts with a full burst again (the IPv6 client makes room). */
    for (int i = 0; i < 5; i++) CHECK(policy_take(b, id, "5.6.7.8", t, &retry) == 1, "fresh burst %d", i);
    CHECK(policy_take(b, id, "5.6.7.8", t, &retry) == 0, "then limited again");
    CHECK(policy_take(b, id, "2001:db8:1:2::1", t, &retry) == 1, "and so does the IPv6 client, evicted in turn");
    CHECK(policy_limiter_stats(b, id, &st) == 0 && st.keys == 3 && st.evicted == 3, "%llu evicted", st.evicted);
    /* The other limiter has a table of its own: the full one does not crowd it out. */
    CHECK(policy_take(b, other, "1.2.3.4", t, &retry) == 1, "another limiter, same key: its own bucket");
    CHECK(policy_limiter_stats(b, other, &st) == 0 && st.keys == 1 && st.evicted == 0, "%zu keys", st.keys);
    CHECK(policy_limiter_stats(b, 99, &st) < 0, "unknown id");
    /* A reloaded script redefines the limiter: new values, same buckets. */
    CHECK(policy_limiter(b, "token", 60, 60, 2, 0, err, sizeof err) == id, "redefined in place");
    CHECK(policy_take(b, id, "5.6.7.8", t, &retry) == 0, "the buckets survived the redefinition");
    uint64_t t2 = t + 3600 * 1000;
    CHECK(policy_take(b, id, "5.6.7.8", t2, &retry) == 1, "capped to the new burst of 2: first");
    CHECK(policy_take(b, id, "5.6.7.8", t2, &retry) == 1, "capped to the new burst of 2: second");
    CHECK(policy_take(b, id, "5.6.7.8", t2, &retry) == 0 && retry == 1, "one a second now: retry %ld", retry);
    /* ... and with a smaller max_keys, the least recently used go at once. */
    CHECK(policy_limiter(b, "token", 60, 60, 2, 1, err, sizeof err) == id, "max_keys 1");
    CHECK(policy_limiter_stats(b, id, &st) == 0 && st.keys == 1, "%zu keys", st.keys);
    CHECK(policy_take(b, id, "5.6.7.8", t2, &retry) == 0, "the most recently used stayed");
    policy_buckets_free(b);
}

/* Many clients through a small limiter: each new one looks at a few entries at most, and
 * a full bucket goes before a client that still has a limit to keep. */
static void test_eviction(void) {
    char err[200];
    long retry = 0;
    uint64_t t = 1000000;
    policy_buckets *b = policy_buckets_create(100000);
    int login = policy_limiter(b, "login", 1, 3600, 1, 100, err, sizeof err);
    int token = policy_limiter(b, "token", 1, 3600, 1, 0, err, sizeof err);
    CHECK(login >= 0 && token >= 0, "%s", err);
    char key[32];
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof key, "user%d", i);
        CHECK(policy_take(b, login, key, t, &retry) == 1, "%s is new", key);
    }
    policy_stats st;
    CHECK(policy_limiter_stats(b, login, &st) == 0 && st.keys == 100 && st.evicted == 9900, "%zu keys, %llu evicted",
          st.keys, st.evicted);
    CHECK(st.visited <= 8 * 9900ULL, "a few entries looked at per new client: %llu", st.visited);
    CHECK(policy_take(b, login, "user9999", t, &retry) == 0, "the most recent name is still limited");
    CHECK(policy_take(b, token, "203.0.113.1", t, &retry) == 1, "the token limiter is not full");
    /* A refilled bucket carries no information: it goes before the least recently used. */
    policy_buckets *small = policy_buckets_create(100);
    int id = policy_limiter(small, "x", 1, 1, 2, 3, err, sizeof err);
    policy_take(small, id, "a", t, &retry);
    policy_take(small, id, "a", t, &retry); /* a: empty, full again at t + 2000 */
    policy_take(small, id, "b", t, &retry); /* b: 1 token left, full again at t + 1000 */
    policy_take(small, id, "c", t, &retry);
    policy_take(small, id, "c", t, &retry); /* c: empty */
    /* At t + 1500, a is the least recently used but holds 1.5 tokens; b is full: b goes. */
    CHECK(policy_take(small, id, "d", t + 1500, &retry) == 1, "d");
    CHECK(policy_limiter_stats(small, id, &st) == 0 && st.keys == 3 && st.evicted == 0, "a full bucket went (%llu)",
          st.evicted);
    CHECK(policy_take(small, id, "a", t + 1500, &retry) == 1 && policy_take(small, id, "a", t + 1500, &retry) == 0,
          "a kept its state: 1.5 tokens, then 0.5");
    policy_buckets_free(small);
    policy_buckets_free(b);
}

static void test_conns(void) {
    policy_conns *c = policy_conns_create(2);
    CHECK(policy_conns_allowed(c, "1.1.1.1"), "first");
    policy_conns_opened(c, "1.1.1.1");
    policy_conns_opened(c, "1.1.1.1");
    CHECK(!policy_conns_allowed(c, "1.1.1.1"), "third refused");
    CHECK(policy_conns_allowed(c, "2.2.2.2"), "other address");
    policy_conns_closed(c, "1.1.1.1");
    CHECK(policy_conns_allowed(c, "1.1.1.1"), "after a close");
    policy_conns_free(c);
    policy_conns *unlimited = policy_conns_create(0);
    for (int i = 0; i < 100; i++) policy_conns_opened(unlimited, "1.1.1.1");
    CHECK(policy_conns_allowed(unlimited, "1.1.1.1"), "0 means no limit");
    policy_conns_free(unlimited);
    /* IPv6 counts per /64 (one /64 holds 2^64 addresses); IPv4-mapped addresses as IPv4. */
    policy_conns *v6 = policy_conns_create(2);
    policy_conns_opened(v6, "2001:db8:1:2::1");
    policy_conns_opened(v6, "2001:db8:1:2::2");
    CHECK(!policy_conns_allowed(v6, "2001:db8:1:2:ffff::3"), "a third address of the same /64 is refused");
    CHECK(policy_conns_allowed(v6, "2001:db8:1:3::1"), "another /64 is not");
    policy_conns_closed(v6, "2001:db8:1:2::1");
    CHECK(policy_conns_allowed(v6, "2001:db8:1:2::9"), "room again in the /64");
    policy_conns_opened(v6, "::ffff:192.0.2.1");
    policy_conns_opened(v6, "192.0.2.1");
    CHECK(!policy_conns_allowed(v6, "192.0.2.1"), "a mapped address is the IPv4 address");
    policy_conns_free(v6);
}

static void test_hosts(void) {
    char err[200];
    policy_hosts *h = NULL;
    CHECK(policy_hosts_parse("app.example.com, *.example.org", "tokend.lan", &h, err, sizeof err) == 0, "%s", err);
    static const struct {
        const char *host;
        int want;
    } cases[] = {
        { NULL, POLICY_HOST_ALLOWED }, /* HTTP/1.0 without Host */
        { "localhost", POLICY_HOST_ALLOWED },
        { "localhost:8000", POLICY_HOST_ALLOWED },
        { "LOCALHOST:8000", POLICY_HOST_ALLOWED },
        { "app.localhost:5173", POLICY_HOST_ALLOWED },
        { "127.0.0.1:8000", POLICY_HOST_ALLOWED },
        { "10.1.2.3", POLICY_HOST_ALLOWED },
        { "[::1]:8000", POLICY_HOST_ALLOWED },
        { "[2001:db8::1]", POLICY_HOST_ALLOWED },
        { "tokend.lan:8000", POLICY_HOST_ALLOWED }, /* the listen host */
        { "app.example.com", POLICY_HOST_ALLOWED },
        { "app.example.com.", POLICY_HOST_ALLOWED },
        { "a.b.example.org:443", POLICY_HOST_ALLOWED },
        { "example.org", POLICY_HOST_DENIED },
        { "rebind.attacker.example", POLICY_HOST_DENIED },
        { "localhost.attacker.example", POLICY_HOST_DENIED },
        { "127.0.0.1.nip.io:8000", POLICY_HOST_DENIED },
        { "evil.com:8000", POLICY_HOST_DENIED },
        { "", POLICY_HOST_MALFORMED },
        { "a b", POLICY_HOST_MALFORMED },
        { "user@localhost", POLICY_HOST_MALFORMED },
        { "localhost:80/x", POLICY_HOST_MALFORMED },
        { "localhost:", POLICY_HOST_MALFORMED },
        { "[::1", POLICY_HOST_MALFORMED },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int got = policy_host_check(h, cases[i].host);
        CHECK(got == cases[i].want, "host %s: got %d, want %d", cases[i].host ? cases[i].host : "(none)", got,
              cases[i].want);
    }
    policy_hosts_free(h);
    CHECK(policy_hosts_parse(NULL, "0.0.0.0", &h, err, sizeof err) == 0, "%s", err);
    CHECK(policy_host_check(h, "app.example.com") == POLICY_HOST_DENIED, "default: names are refused");
    CHECK(policy_host_check(h, "192.168.1.5:8000") == POLICY_HOST_ALLOWED, "default: addresses pass");
    policy_hosts_free(h);
    CHECK(policy_hosts_parse("*", "::", &h, err, sizeof err) == 0 &&
                  policy_host_check(h, "anything.test") == POLICY_HOST_ALLOWED,
          "* allows any name");
    policy_hosts_free(h);
    static const char *bad[] = { "a/b", "*.*.x", "x*.com", "http://x" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(policy_hosts_parse(bad[i], NULL, &h, err, sizeof err) < 0 && strstr(err, "not a host name"), "%s: %s",
              bad[i], err);
}

static void test_origins(void) {
    char err[200];
    const char *pats[] = { "http://localhost:*", "https://app.example.com", "https://*.example.org", "http://[::1]:*" };
    policy_origins *o = NULL;
    CHECK(policy_origins_parse(pats, 4, &o, err, sizeof err) == 0, "%s", err);
    static const struct {
        const char *origin, *host;
        int want;
    } cases[] = {
        { NULL, "localhost:8000", POLICY_ORIGIN_NONE },
        { "http://localhost:8000", "localhost:8000", POLICY_ORIGIN_SAME },
        { "http://LOCALHOST:8000", "localhost:8000", POLICY_ORIGIN_SAME },
        { "http://tokend.example:80", "tokend.example", POLICY_ORIGIN_SAME },
        { "http://localhost:3000", "127.0.0.1:8000", POLICY_ORIGIN_ALLOWED },
        { "http://localhost", "127.0.0.1:8000", POLICY_ORIGIN_ALLOWED },
        { "https://localhost:3000", "127.0.0.1:8000", POLICY_ORIGIN_DENIED },
        { "https://app.example.com", "x", POLICY_ORIGIN_ALLOWED },
        { "https://app.example.com:443", "x", POLICY_ORIGIN_ALLOWED },
        { "https://app.example.com:8443", "x", POLICY_ORIGIN_DENIED },
        { "https://evil-app.example.com", "x", POLICY_ORIGIN_DENIED },
        { "https://a.b.example.org", "x", POLICY_ORIGIN_ALLOWED },
        { "https://example.org", "x", POLICY_ORIGIN_DENIED },
        { "https://evilexample.org", "x", POLICY_ORIGIN_DENIED },
        { "http://[::1]:5173", "x", POLICY_ORIGIN_ALLOWED },
        { "null", "x", POLICY_ORIGIN_DENIED },
        { "http://evil.com", "evil.com.", POLICY_ORIGIN_DENIED },
        { "http://localhost:8000/path", "x", POLICY_ORIGIN_DENIED },
        { "http://user@localhost:8000", "x", POLICY_ORIGIN_DENIED },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int got = policy_origin_check(o, cases[i].origin, cases[i].host, "http");
        CHECK(got == cases[i].want, "%s (host %s): got %d, want %d", cases[i].origin, cases[i].host, got,
              cases[i].want);
    }
    policy_origins_free(o);
    const char *star[] = { "*" };
    CHECK(policy_origins_parse(star, 1, &o, err, sizeof err) == 0, "%s", err);
    CHECK(policy_origin_check(o, "https://anything.test", "x", "http") == POLICY_ORIGIN_ALLOWED, "* allows all");
    policy_origins_free(o);
    const char *bad[] = { "localhost", "http://", "http://a:b", "http://*.*.x", "ftp//x", "http://x*.com" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(policy_origins_parse(&bad[i], 1, &o, err, sizeof err) < 0, "%s refused", bad[i]);
}

int main(void) {
    test_buckets();
    test_eviction();
    test_conns();
    test_hosts();
    test_origins();
    return check_report("policy");
}
