/* test_netaddr.c: addresses, keys, trusted proxies and the client behind them, as tables. */
#include <stdlib.h>

#include "check.h"
#include "netaddr.h"

static void test_parse_and_keys(void) {
    static const struct {
        const char *in;
        int rc;
        const char *text, *key;
    } cases[] = {
        { "192.0.2.1", 0, "192.0.2.1", "192.0.2.1" },
        { "::ffff:192.0.2.1", 0, "192.0.2.1", "192.0.2.1" },
        { "::FFFF:c000:0201", 0, "192.0.2.1", "192.0.2.1" },
        { "::1", 0, "::1", "::/64" },
        { "2001:db8:1:2:3:4:5:6", 0, "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64" },
        { "::ffff:1.2.3", -1, "", "::ffff:1.2.3" },
        { "1.2.3.4:80", -1, "", "1.2.3.4:80" },
        { "", -1, "", "" },
        { "localhost", -1, "", "localhost" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        netaddr a;
        char text[NETADDR_TEXT], key[NETADDR_TEXT];
        int rc = netaddr_parse(cases[i].in, &a);
        CHECK(rc == cases[i].rc, "parse %s: %d", cases[i].in, rc);
        if (rc == 0) {
            netaddr_format(&a, text, sizeof text);
            CHECK_STR(text, cases[i].text, cases[i].in);
        }
        netaddr_key(cases[i].in, key, sizeof key);
        CHECK_STR(key, cases[i].key, cases[i].in);
    }
}

static void test_proxies(void) {
    char err[200];
    netaddr_nets *p = NULL;
    CHECK(netaddr_nets_parse("127.0.0.1, 10.0.0.0/8 ::1,fd00::/8 ::ffff:172.16.0.0/108", &p, err, sizeof err) == 0,
          "%s", err);
    /* peer, X-Forwarded-For lines joined by '|', client */
    static const struct {
        const char *peer, *xff, *client;
    } cases[] = {
        { "203.0.113.9", "1.2.3.4", "203.0.113.9" }, /* not a proxy: XFF ignored */
        { "127.0.0.1", NULL, "127.0.0.1" },
        { "127.0.0.1", "198.51.100.7", "198.51.100.7" },
        { "127.0.0.1", "6.6.6.6, 198.51.100.7", "198.51.100.7" },  /* right-most untrusted */
        { "127.0.0.1", "198.51.100.7, 10.1.2.3", "198.51.100.7" }, /* skip trusted hops */
        { "127.0.0.1", "10.0.0.1, 10.0.0.2", "10.0.0.1" },         /* all trusted: the left-most */
        { "127.0.0.1", "garbage, 198.51.100.7", "198.51.100.7" },
        { "127.0.0.1", "198.51.100.7, garbage", "127.0.0.1" }, /* malformed: untrusted */
        { "127.0.0.1", "198.51.100.7, ", "127.0.0.1" },        /* empty item: untrusted */
        { "127.0.0.1", "198.51.100.7,,10.0.0.1", "127.0.0.1" },
        { "127.0.0.1", "", "127.0.0.1" },
        { "127.0.0.1", " 2001:db8::5 ", "2001:db8::5" },
        { "127.0.0.1", "::ffff:198.51.100.8", "198.51.100.8" }, /* mapped: as IPv4 */
        { "127.0.0.1", "198.51.100.9, ::ffff:10.0.0.7", "198.51.100.9" },
        { "127.0.0.1", "198.51.100.9, 172.16.3.4", "198.51.100.9" }, /* ::ffff:172.16/108 is 172.16/12 */
        { "::1", "fd00::1, 2001:db8::7", "2001:db8::7" },
        { "11.0.0.1", "1.1.1.1", "11.0.0.1" },
        { "127.0.0.1", "6.6.6.6|198.51.100.7", "198.51.100.7" }, /* two header lines: the last counts */
        { "127.0.0.1", "198.51.100.7|10.0.0.3", "198.51.100.7" },
        { "127.0.0.1", "6.6.6.6|6.6.6.7|198.51.100.7, 10.0.0.1|127.0.0.1", "198.51.100.7" }, /* hops on lines */
        { "127.0.0.1", "198.51.100.7|", "127.0.0.1" },
        { "127.0.0.1", "1.2.3.4:5678", "127.0.0.1" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[NETADDR_TEXT], buf[256];
        const char *values[8];
        size_t n = 0;
        if (cases[i].xff) {
            snprintf(buf, sizeof buf, "%s", cases[i].xff);
            for (char *s = buf, *bar;; s = bar + 1) {
                values[n++] = s;
                if (!(bar = strchr(s, '|'))) break;
                *bar = '\0';
            }
        }
        netaddr_client(p, cases[i].peer, values, n, out, sizeof out);
        CHECK_STR(out, cases[i].client, cases[i].xff ? cases[i].xff : "(none)");
    }
    /* A header far longer than any fixed buffer: the proxy's address at its right end counts. */
    size_t pad = 20000;
    char *big = malloc(pad + 64);
    memset(big, 'a', pad);
    snprintf(big + pad, 64, "1.1.1.1, 198.51.100.99");
    big[0] = '9';
    const char *one[] = { big };
    char out[NETADDR_TEXT];
    netaddr_client(p, "127.0.0.1", one, 1, out, sizeof out);
    CHECK_STR(out, "198.51.100.99", "padded header");
    free(big);
    CHECK(netaddr_nets_contain(p, "::ffff:127.0.0.1"), "a mapped peer is the IPv4 proxy");
    netaddr_nets_free(p);
    static const char *bad[] = {
        "localhost",
        "10.0.0.0/33",
        "1.2.3",
        "::1/129",
        "10.0.0.0/",
        "::ffff:1.2.3.4/64",
        "10.0.0.1, aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        CHECK(netaddr_nets_parse(bad[i], &p, err, sizeof err) < 0 && strstr(err, "not an IP address"), "%s: %s", bad[i],
              err);
    }
    CHECK(netaddr_nets_parse("", &p, err, sizeof err) == 0 && !netaddr_nets_contain(p, "127.0.0.1"), "empty list");
    netaddr_nets_free(p);
}

int main(void) {
    test_parse_and_keys();
    test_proxies();
    return check_report("netaddr");
}
