/* test_policy.c: token buckets, connection counts, trusted proxies and origins, as tables. */
#include <stdlib.h>

#include "check.h"
#include "policy.h"

static void test_buckets(void) {
    char err[200];
    policy_buckets *b = policy_buckets_create(3);
    int id = policy_limiter(b, "token", 10, 60, 5, err, sizeof err);
    CHECK(id >= 0, "%s", err);
    CHECK(policy_limiter(b, "token", 10, 60, 5, err, sizeof err) == id, "same name and values: same limiter");
    int other = policy_limiter(b, "other", 1, 1, 1, err, sizeof err);
    CHECK(other >= 0 && other != id, "another name, another limiter");
    CHECK(policy_limiter(b, "bad", 0, 60, 5, err, sizeof err) < 0, "rate 0 refused");
    CHECK(policy_limiter(b, "bad", 1, 60, 0.5, err, sizeof err) < 0, "burst < 1 refused");
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
    /* Full table (3 keys): a fourth active client is refused; once buckets refill, room returns. */
    CHECK(policy_buckets_size(b) == 3, "three keys, got %zu", policy_buckets_size(b));
    CHECK(policy_take(b, id, "9.9.9.9", t, &retry) == 0, "table full of active clients");
    CHECK(policy_take(b, id, "9.9.9.9", t + 3600 * 1000, &retry) == 1, "idle buckets are swept");
    /* A reloaded script redefines the limiter: new values, same buckets. */
    CHECK(policy_limiter(b, "token", 60, 60, 2, err, sizeof err) == id, "redefined in place");
    uint64_t t2 = t + 3600 * 1000;
    CHECK(policy_take(b, id, "9.9.9.9", t2, &retry) == 1, "capped to the new burst of 2: first");
    CHECK(policy_take(b, id, "9.9.9.9", t2, &retry) == 1, "capped to the new burst of 2: second");
    CHECK(policy_take(b, id, "9.9.9.9", t2, &retry) == 0 && retry == 1, "one a second now: retry %ld", retry);
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
}

static void test_proxies(void) {
    char err[200];
    policy_proxies *p = NULL;
    CHECK(policy_proxies_parse("127.0.0.1, 10.0.0.0/8 ::1,fd00::/8", &p, err, sizeof err) == 0, "%s", err);
    static const struct { const char *remote, *xff, *client; } cases[] = {
        { "203.0.113.9", "1.2.3.4", "203.0.113.9" },            /* not a proxy: XFF ignored */
        { "127.0.0.1", NULL, "127.0.0.1" },
        { "127.0.0.1", "198.51.100.7", "198.51.100.7" },
        { "127.0.0.1", "6.6.6.6, 198.51.100.7", "198.51.100.7" },   /* right-most untrusted */
        { "127.0.0.1", "198.51.100.7, 10.1.2.3", "198.51.100.7" },  /* skip trusted hops */
        { "127.0.0.1", "10.0.0.1, 10.0.0.2", "10.0.0.1" },
        { "127.0.0.1", "garbage, 198.51.100.7", "198.51.100.7" },
        { "127.0.0.1", "198.51.100.7, garbage", "127.0.0.1" },
        { "127.0.0.1", "", "127.0.0.1" },
        { "127.0.0.1", " 2001:db8::5 ", "2001:db8::5" },
        { "::1", "fd00::1, 2001:db8::7", "2001:db8::7" },
        { "11.0.0.1", "1.1.1.1", "11.0.0.1" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[64];
        policy_client_address(p, cases[i].remote, cases[i].xff, out, sizeof out);
        CHECK_STR(out, cases[i].client, cases[i].xff ? cases[i].xff : "(none)");
    }
    policy_proxies_free(p);
    static const char *bad[] = { "localhost", "10.0.0.0/33", "1.2.3", "::1/129", "10.0.0.0/",
                                 "10.0.0.1, aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        CHECK(policy_proxies_parse(bad[i], &p, err, sizeof err) < 0 && strstr(err, "not an IP address"), "%s: %s", bad[i], err);
    }
    CHECK(policy_proxies_parse("", &p, err, sizeof err) == 0 && !policy_proxy_trusted(p, "127.0.0.1"), "empty list");
    policy_proxies_free(p);
}

static void test_origins(void) {
    char err[200];
    const char *pats[] = { "http://localhost:*", "https://app.example.com", "https://*.example.org", "http://[::1]:*" };
    policy_origins *o = NULL;
    CHECK(policy_origins_parse(pats, 4, &o, err, sizeof err) == 0, "%s", err);
    static const struct { const char *origin, *host; int want; } cases[] = {
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
        CHECK(got == cases[i].want, "%s (host %s): got %d, want %d", cases[i].origin, cases[i].host, got, cases[i].want);
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
    test_conns();
    test_proxies();
    test_origins();
    return check_report("policy");
}
