/* cert.c: certificates with OpenSSL: a key pair's files checked, a development CA and the leaves it signs. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "cert.h"

#define CERT_FILE_MAX (1024 * 1024) /* a PEM file larger than this is not read */
#define CERT_CA_DAYS 3650
#define CERT_LEAF_MAX_DAYS 397 /* browsers refuse server certificates valid longer than 398 days */

int cert_names_add(cert_names *names, const char *name) {
    for (size_t i = 0; i < names->n; i++)
        if (strcasecmp(names->v[i], name) == 0) return 0;
    if (names->n == CERT_MAX_NAMES || strlen(name) >= CERT_NAME_LEN || !*name) return -1;
    snprintf(names->v[names->n++], CERT_NAME_LEN, "%s", name);
    return 0;
}

void cert_pem_free(char *pem) {
    if (!pem) return;
    explicit_bzero(pem, strlen(pem));
    free(pem);
}

/* OpenSSL's last error as text (or what when it has none). */
static const char *cert_ssl_error(const char *what) {
    static _Thread_local char buf[256];
    unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (!e) return what;
    ERR_error_string_n(e, buf, sizeof buf);
    return buf;
}

/* Never asks for a pass phrase: an encrypted key is refused. */
static int cert_no_password(char *buf, int size, int rwflag, void *ud) {
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)ud;
    return -1;
}

char *cert_read_file(const char *path, char *err, size_t errlen) {
    char *text = NULL;
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0) {
        snprintf(err, errlen, "\"%s\": %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > CERT_FILE_MAX) {
        snprintf(err, errlen, "\"%s\": %s", path, S_ISREG(st.st_mode) ? "larger than 1 MiB" : "not a file");
        goto out;
    }
    if (!(text = malloc((size_t)st.st_size + 1))) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    ssize_t got = read(fd, text, (size_t)st.st_size);
    if (got != st.st_size) {
        snprintf(err, errlen, "\"%s\": %s", path, got < 0 ? strerror(errno) : "changed while being read");
        explicit_bzero(text, (size_t)st.st_size);
        free(text);
        text = NULL;
        goto out;
    }
    text[got] = '\0';
out:
    if (fd >= 0) close(fd);
    return text;
}

/* The first certificate of a PEM text, or NULL. */
static X509 *cert_parse(const char *pem) {
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, cert_no_password, NULL) : NULL;
    BIO_free(b);
    return x;
}

/* A private key from a PEM text (never encrypted), or NULL. */
static EVP_PKEY *cert_parse_key(const char *pem) {
    BIO *b = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, cert_no_password, NULL) : NULL;
    BIO_free(b);
    return k;
}

/* What a memory BIO holds, as a NUL-terminated string from malloc (NULL when out of memory). */
static char *cert_bio_text(BIO *b) {
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *text = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (!text) return NULL;
    memcpy(text, data, (size_t)n);
    text[n] = '\0';
    return text;
}

/* The certificate and the key as PEM texts. Returns 0, or -1 when out of memory. */
static int cert_to_pem(X509 *x, EVP_PKEY *k, char **cert_pem, char **key_pem) {
    BIO *bc = BIO_new(BIO_s_mem()), *bk = BIO_new(BIO_s_mem());
    int ok = bc && bk && (!x || PEM_write_bio_X509(bc, x)) &&
            (!k || PEM_write_bio_PrivateKey(bk, k, NULL, NULL, 0, NULL, NULL));
    *cert_pem = ok && x ? cert_bio_text(bc) : NULL;
    *key_pem = ok && k ? cert_bio_text(bk) : NULL;
    if (bk) {
        char *data;
        long n = BIO_get_mem_data(bk, &data);
        if (n > 0) OPENSSL_cleanse(data, (size_t)n);
    }
    BIO_free(bc);
    BIO_free(bk);
    if (ok && (!x || *cert_pem) && (!k || *key_pem)) return 0;
    free(*cert_pem);
    cert_pem_free(*key_pem);
    *cert_pem = *key_pem = NULL;
    return -1;
}

int cert_read_pair(const char *cert_file, const char *key_file, char **cert_pem, char **key_pem, int *expired,
                   char *err, size_t errlen) {
    char *cert_text = NULL, *key_text = NULL, *unused = NULL;
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    int rc = -1;
    *cert_pem = *key_pem = NULL;
    *expired = 0;
    if (!(cert_text = cert_read_file(cert_file, err, errlen)) || !(key_text = cert_read_file(key_file, err, errlen)))
        goto out;
    if (!(x = cert_parse(cert_text))) {
        snprintf(err, errlen, "\"%s\" holds no PEM certificate (-----BEGIN CERTIFICATE-----): %s", cert_file,
                 cert_ssl_error("not PEM"));
        goto out;
    }
    if (!(k = cert_parse_key(key_text))) {
        int encrypted = strstr(key_text, "ENCRYPTED") != NULL;
        snprintf(err, errlen, "\"%s\" holds no usable private key%s", key_file,
                 encrypted ? ": it is encrypted (decrypt it: openssl pkey -in KEY -out KEY.plain)"
                           : " (PEM: -----BEGIN PRIVATE KEY-----)");
        ERR_clear_error();
        goto out;
    }
    if (X509_check_private_key(x, k) != 1) {
        snprintf(err, errlen, "the key \"%s\" does not belong to the certificate \"%s\"", key_file, cert_file);
        ERR_clear_error();
        goto out;
    }
    if (cert_to_pem(NULL, k, &unused, key_pem) < 0) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    *expired = X509_cmp_current_time(X509_get0_notAfter(x)) < 0 || X509_cmp_current_time(X509_get0_notBefore(x)) > 0;
    *cert_pem = cert_text;
    cert_text = NULL;
    rc = 0;
out:
    free(cert_text);
    if (key_text) cert_pem_free(key_text);
    X509_free(x);
    EVP_PKEY_free(k);
    return rc;
}

/* Adds the extension name = value (OpenSSL's configuration syntax) to x, issued by issuer.
 * Returns 0 or -1. */
static int cert_add_ext(X509 *x, X509 *issuer, int nid, const char *value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    int ok = ext && X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

/* A new certificate for key, named cn (and organisation o), valid from an hour ago for
 * days, with a random serial number; unsigned. NULL when OpenSSL fails. */
static X509 *cert_new(EVP_PKEY *key, const char *cn, const char *o, int days) {
    X509 *x = X509_new();
    unsigned char serial[16];
    BIGNUM *bn = NULL;
    if (!x || RAND_bytes(serial, sizeof serial) != 1) goto fail;
    serial[0] &= 0x7f; /* positive */
    if (!(bn = BN_bin2bn(serial, sizeof serial, NULL)) || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x))) goto fail;
    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_set_version(x, 2) || !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400) || !X509_set_pubkey(x, key) ||
        !X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)o, -1, -1, 0) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0))
        goto fail;
    BN_free(bn);
    return x;
fail:
    BN_free(bn);
    X509_free(x);
    return NULL;
}

/* Hands out x and key as PEM once made says every step of making x worked; otherwise, or
 * out of memory, writes why into err ("cannot make <what>: ...") and returns -1. */
static int cert_export(X509 *x, EVP_PKEY *key, int made, const char *what, char **cert_pem, char **key_pem, char *err,
                       size_t errlen) {
    if (!made) {
        snprintf(err, errlen, "cannot make %s: %s", what, cert_ssl_error("OpenSSL failed"));
        return -1;
    }
    if (cert_to_pem(x, key, cert_pem, key_pem) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

int cert_make_ca(const char *cn, char **cert_pem, char **key_pem, char *err, size_t errlen) {
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *x = key ? cert_new(key, cn, "tokend development CA", CERT_CA_DAYS) : NULL;
    *cert_pem = *key_pem = NULL;
    int made = x && X509_set_issuer_name(x, X509_get_subject_name(x)) &&
            cert_add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") == 0 &&
            cert_add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") == 0 &&
            cert_add_ext(x, x, NID_subject_key_identifier, "hash") == 0 && X509_sign(x, key, EVP_sha256());
    int rc = cert_export(x, key, made, "a CA certificate", cert_pem, key_pem, err, errlen);
    X509_free(x);
    EVP_PKEY_free(key);
    return rc;
}

/* The subjectAltName value for names: "DNS:a, IP:1.2.3.4, ...". NULL when out of memory. */
static char *cert_san_text(const cert_names *names) {
    size_t cap = names->n * (CERT_NAME_LEN + 6) + 1, o = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
    s[0] = '\0';
    for (size_t i = 0; i < names->n; i++) {
        unsigned char bin[16];
        int ip = inet_pton(AF_INET, names->v[i], bin) == 1 || inet_pton(AF_INET6, names->v[i], bin) == 1;
        o += (size_t)snprintf(s + o, cap - o, "%s%s:%s", i ? ", " : "", ip ? "IP" : "DNS", names->v[i]);
    }
    return s;
}

int cert_make_leaf(const char *ca_cert_pem, const char *ca_key_pem, const cert_names *names, int days, char **cert_pem,
                   char **key_pem, char *err, size_t errlen) {
    X509 *ca = cert_parse(ca_cert_pem), *x = NULL;
    EVP_PKEY *ca_key = cert_parse_key(ca_key_pem), *key = NULL;
    char *san = cert_san_text(names);
    int rc = -1;
    *cert_pem = *key_pem = NULL;
    const char *why = !san ? "out of memory" : !names->n ? "no names" : !ca || !ca_key ? "the CA is unreadable" : NULL;
    if (why) {
        snprintf(err, errlen, "cannot make a certificate: %s", why);
        goto out;
    }
    if (days > CERT_LEAF_MAX_DAYS) days = CERT_LEAF_MAX_DAYS;
    int made = (key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256")) &&
            (x = cert_new(key, names->v[0], "tokend development certificate", days)) &&
            X509_set_issuer_name(x, X509_get_subject_name(ca)) &&
            cert_add_ext(x, ca, NID_basic_constraints, "critical,CA:FALSE") == 0 &&
            cert_add_ext(x, ca, NID_key_usage, "critical,digitalSignature") == 0 &&
            cert_add_ext(x, ca, NID_ext_key_usage, "serverAuth") == 0 &&
            cert_add_ext(x, ca, NID_authority_key_identifier, "keyid") == 0 &&
            cert_add_ext(x, ca, NID_subject_alt_name, san) == 0 && X509_sign(x, ca_key, EVP_sha256());
    rc = cert_export(x, key, made, "a certificate", cert_pem, key_pem, err, errlen);
out:
    free(san);
    X509_free(ca);
    X509_free(x);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(key);
    return rc;
}

/* 1 when the certificate's subjectAltName holds exactly names. */
static int cert_covers_exactly(X509 *x, const cert_names *names) {
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int n = gens ? sk_GENERAL_NAME_num(gens) : 0, ok = gens && (size_t)n == names->n;
    for (int i = 0; ok && i < n; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        char text[CERT_NAME_LEN] = "";
        if (g->type == GEN_DNS) {
            const unsigned char *d = ASN1_STRING_get0_data(g->d.dNSName);
            int len = ASN1_STRING_length(g->d.dNSName);
            if (len > 0 && len < (int)sizeof text) snprintf(text, sizeof text, "%.*s", len, (const char *)d);
        } else if (g->type == GEN_IPADD) {
            int len = ASN1_STRING_length(g->d.iPAddress);
            const unsigned char *d = ASN1_STRING_get0_data(g->d.iPAddress);
            if (len == 4 || len == 16) inet_ntop(len == 4 ? AF_INET : AF_INET6, d, text, sizeof text);
        }
        int found = 0;
        for (size_t j = 0; j < names->n && !found; j++) {
            unsigned char a[16], b[16];
            int fam = strchr(text, ':') ? AF_INET6 : AF_INET;
            if (g->type == GEN_IPADD)
                found = inet_pton(fam, names->v[j], a) == 1 && inet_pton(fam, text, b) == 1 &&
                        memcmp(a, b, fam == AF_INET ? 4 : 16) == 0;
            else found = *text && strcasecmp(text, names->v[j]) == 0;
        }
        ok = found;
    }
    GENERAL_NAMES_free(gens);
    return ok;
}

int cert_leaf_fits(const char *cert_pem, const char *ca_cert_pem, const cert_names *names, int min_days) {
    X509 *x = cert_parse(cert_pem), *ca = cert_parse(ca_cert_pem);
    EVP_PKEY *ca_pub = ca ? X509_get0_pubkey(ca) : NULL;
    time_t soon = time(NULL) + (time_t)min_days * 86400;
    int ok = x && ca_pub && X509_verify(x, ca_pub) == 1 && X509_cmp_time(X509_get0_notAfter(x), &soon) > 0 &&
            X509_cmp_current_time(X509_get0_notBefore(x)) < 0 && cert_covers_exactly(x, names);
    ERR_clear_error();
    X509_free(x);
    X509_free(ca);
    return ok;
}

int cert_pair_fits(const char *cert_pem, const char *key_pem, int ca) {
    X509 *x = cert_parse(cert_pem);
    EVP_PKEY *k = cert_parse_key(key_pem);
    int ok = x && k && X509_check_private_key(x, k) == 1;
    if (ok && ca) ok = X509_check_ca(x) >= 1 && X509_cmp_current_time(X509_get0_notAfter(x)) > 0;
    ERR_clear_error();
    X509_free(x);
    EVP_PKEY_free(k);
    return ok;
}

int cert_describe(const char *cert_pem, char *out, char *expires) {
    X509 *x = cert_parse(cert_pem);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    struct tm tm;
    int rc = -1;
    if (!x || !X509_digest(x, EVP_sha256(), md, &len) || !ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm)) goto out;
    for (unsigned int i = 0; i < len; i++) snprintf(out + 3 * i, 4, "%02X%s", md[i], i + 1 < len ? ":" : "");
    strftime(expires, 16, "%Y-%m-%d", &tm);
    rc = 0;
out:
    ERR_clear_error();
    X509_free(x);
    return rc;
}
