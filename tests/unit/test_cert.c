/* test_cert.c: the development CA's certificates: when a leaf fits (signer, names in any order, time left), key pairs, names, as tables. */
#include <stdlib.h>

#include "cert.h"
#include "check.h"
#include "devca.h"

/* Fills names from a list ending with NULL. */
static void names_of(cert_names *n, const char *const *list) {
    memset(n, 0, sizeof *n);
    for (; *list; list++) cert_names_add(n, *list);
}

static void test_names(void) {
    cert_names n;
    memset(&n, 0, sizeof n);
    CHECK(cert_names_add(&n, "localhost") == 0 && cert_names_add(&n, "LOCALHOST") == 0 && n.n == 1, "no twice");
    CHECK(cert_names_add(&n, "") == -1, "empty");
    char long_name[CERT_NAME_LEN + 8];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    CHECK(cert_names_add(&n, long_name) == -1, "too long");
    for (int i = 0; n.n < CERT_MAX_NAMES; i++) {
        char name[32];
        snprintf(name, sizeof name, "n%d.test", i);
        cert_names_add(&n, name);
    }
    CHECK(cert_names_add(&n, "one-more.test") == -1, "full");

    /* The development names: loopback first, the allowed hosts' names but "*". */
    devca_names(" devbox.test,*, *.example.dev ,10.1.2.3", &n);
    CHECK_STR(n.v[0], "localhost", "first");
    CHECK_STR(n.v[1], "127.0.0.1", "second");
    CHECK_STR(n.v[2], "::1", "third");
    int box = 0, wild = 0, star = 0, ip = 0;
    for (size_t i = 0; i < n.n; i++) {
        box |= strcmp(n.v[i], "devbox.test") == 0;
        wild |= strcmp(n.v[i], "*.example.dev") == 0;
        star |= strcmp(n.v[i], "*") == 0;
        ip |= strcmp(n.v[i], "10.1.2.3") == 0;
    }
    CHECK(box && wild && ip && !star, "allowed hosts: %d %d %d %d", box, wild, ip, star);
}

static void test_leaves(void) {
    char *ca = NULL, *ca_key = NULL, *other = NULL, *other_key = NULL, *leaf = NULL, *leaf_key = NULL, err[256];
    static const char *const made_for[] = { "localhost", "127.0.0.1", "::1", "devbox.test", NULL };
    cert_names names;
    names_of(&names, made_for);
    CHECK(cert_make_ca("test CA", &ca, &ca_key, err, sizeof err) == 0, "%s", err);
    CHECK(cert_make_ca("another CA", &other, &other_key, err, sizeof err) == 0, "%s", err);
    CHECK(cert_make_leaf(ca, ca_key, &names, 397, &leaf, &leaf_key, err, sizeof err) == 0, "%s", err);
    if (!leaf) return;
    static const struct {
        const char *names[6];
        int ca_is_other;
        int min_days;
        int fits;
    } cases[] = {
        { { "localhost", "127.0.0.1", "::1", "devbox.test" }, 0, 30, 1 },
        { { "devbox.test", "::1", "localhost", "127.0.0.1" }, 0, 30, 1 },              /* any order */
        { { "DEVBOX.TEST", "0:0::1", "localhost", "127.0.0.1" }, 0, 30, 1 },           /* case, address spelling */
        { { "localhost", "127.0.0.1", "::1" }, 0, 30, 0 },                             /* a name less */
        { { "localhost", "127.0.0.1", "::1", "devbox.test", "192.0.2.7" }, 0, 30, 0 }, /* a new address */
        { { "localhost", "127.0.0.1", "::1", "other.test" }, 0, 30, 0 },
        { { "localhost", "127.0.0.1", "::1", "devbox.test" }, 1, 30, 0 },  /* another CA */
        { { "localhost", "127.0.0.1", "::1", "devbox.test" }, 0, 400, 0 }, /* too little time left */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cert_names want;
        memset(&want, 0, sizeof want);
        for (size_t j = 0; j < 6 && cases[i].names[j]; j++) cert_names_add(&want, cases[i].names[j]);
        int fits = cert_leaf_fits(leaf, cases[i].ca_is_other ? other : ca, &want, cases[i].min_days);
        CHECK(fits == cases[i].fits, "case %zu: fits %d, want %d", i, fits, cases[i].fits);
    }
    CHECK(cert_pair_fits(leaf, leaf_key, 0) == 1, "the leaf and its key");
    CHECK(cert_pair_fits(leaf, ca_key, 0) == 0, "the leaf and another key");
    CHECK(cert_pair_fits(ca, ca_key, 1) == 1, "the CA and its key");
    CHECK(cert_pair_fits(leaf, leaf_key, 1) == 0, "a leaf is no CA");
    CHECK(cert_pair_fits("garbage", leaf_key, 0) == 0, "not PEM");
    char fingerprint[96], expires[16];
    CHECK(cert_describe(ca, fingerprint, expires) == 0 && strlen(fingerprint) == 95 && fingerprint[2] == ':' &&
                  strlen(expires) == 10,
          "describe: %s %s", fingerprint, expires);
    CHECK(cert_describe("garbage", fingerprint, expires) == -1, "describe garbage");
    cert_names none;
    memset(&none, 0, sizeof none);
    char *x = NULL, *y = NULL;
    CHECK(cert_make_leaf(ca, ca_key, &none, 397, &x, &y, err, sizeof err) == -1 && !x && !y, "no names");
    cert_pem_free(ca);
    cert_pem_free(ca_key);
    cert_pem_free(other);
    cert_pem_free(other_key);
    cert_pem_free(leaf);
    cert_pem_free(leaf_key);
}

int main(void) {
    test_names();
    test_leaves();
    return check_report("unit.cert");
}
