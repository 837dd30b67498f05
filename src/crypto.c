/* crypto.c: OpenSSL's primitives as tokend uses them: digests, HMAC, base64, random bytes, keys and JWS signatures. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "crypto.h"

#define CRYPTO_RSA_MIN_BITS 2048

struct crypto_key {
    EVP_PKEY *pkey;
    crypto_key_kind kind;
    BIGNUM *order; /* EC keys: the order n of the curve's group, and n / 2 */
    BIGNUM *half_order;
};

static const EVP_MD *crypto_md(const char *hash) {
    if (strcmp(hash, "sha1") == 0) return EVP_sha1();
    if (strcmp(hash, "sha256") == 0) return EVP_sha256();
    if (strcmp(hash, "sha384") == 0) return EVP_sha384();
    if (strcmp(hash, "sha512") == 0) return EVP_sha512();
    return NULL;
}

size_t crypto_digest(const char *hash, const void *data, size_t len, unsigned char out[CRYPTO_MAX_DIGEST]) {
    const EVP_MD *md = crypto_md(hash);
    unsigned int n = 0;
    if (!md || EVP_Digest(data, len, out, &n, md, NULL) != 1) return 0;
    return n;
}

void crypto_hex(const void *in, size_t len, char *out) {
    static const char digits[] = "0123456789abcdef";
    const unsigned char *p = in;
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * len] = '\0';
}

size_t crypto_hmac(const char *hash, const void *key, size_t keylen, const void *data, size_t len,
                   unsigned char out[CRYPTO_MAX_DIGEST]) {
    const EVP_MD *md = crypto_md(hash);
    unsigned int n = 0;
    static const unsigned char empty[1];
    if (!md || !HMAC(md, keylen ? key : empty, (int)keylen, data, len, out, &n)) return 0;
    return n;
}

/* ---- base64 ---- */

static const char crypto_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char crypto_b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t crypto_base64_encode(const void *in, size_t len, char *out, int url) {
    const unsigned char *p = in;
    const char *alphabet = url ? crypto_b64url : crypto_b64;
    size_t o = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = alphabet[v >> 6 & 63];
        out[o++] = alphabet[v & 63];
    }
    if (i < len) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < len ? (unsigned)p[i + 1] << 8 : 0);
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        if (i + 1 < len) out[o++] = alphabet[v >> 6 & 63];
        else if (!url) out[o++] = '=';
        if (!url) out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

static int crypto_b64_value(char c, int url) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == (url ? '-' : '+')) return 62;
    if (c == (url ? '_' : '/')) return 63;
    return -1;
}

int crypto_base64_decode(const char *in, size_t len, unsigned char *out, size_t *outlen, int url) {
    size_t pad = 0, o = 0;
    while (len && in[len - 1] == '=' && pad < 2) {
        len--;
        pad++;
    }
    if (len % 4 == 1 || (pad && (len + pad) % 4 != 0)) return -1;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = crypto_b64_value(in[i], url);
        if (v < 0) return -1;
        acc = acc << 6 | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits & 0xFF);
        }
    }
    if (bits && (acc & ((1u << bits) - 1))) return -1; /* leftover bits must be zero */
    *outlen = o;
    return 0;
}

int crypto_random(void *out, size_t n) {
    return n > (size_t)0x7fffffff || RAND_bytes(out, (int)n) != 1 ? -1 : 0;
}

int crypto_equal(const void *a, size_t alen, const void *b, size_t blen) {
    return alen == blen && CRYPTO_memcmp(a, b, alen) == 0;
}

/* ---- keys ---- */

/* Wraps pkey (taken) after checking its kind. NULL with err set. */
static crypto_key *crypto_key_wrap(EVP_PKEY *pkey, char *err, size_t errlen) {
    crypto_key_kind kind;
    char group[64] = "";
    size_t glen = 0;
    switch (EVP_PKEY_get_base_id(pkey)) {
    case EVP_PKEY_RSA:
        if (EVP_PKEY_get_bits(pkey) < CRYPTO_RSA_MIN_BITS) {
            snprintf(err, errlen, "RSA keys need %d bits or more (this one has %d)", CRYPTO_RSA_MIN_BITS,
                     EVP_PKEY_get_bits(pkey));
            goto fail;
        }
        kind = CRYPTO_KEY_RSA;
        break;
    case EVP_PKEY_EC:
        EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &glen);
        if (strcmp(group, "prime256v1") == 0) kind = CRYPTO_KEY_EC_P256;
        else if (strcmp(group, "secp384r1") == 0) kind = CRYPTO_KEY_EC_P384;
        else {
            snprintf(err, errlen, "EC keys must be on P-256 or P-384 (not %s)", group[0] ? group : "this curve");
            goto fail;
        }
        break;
    case EVP_PKEY_ED25519: kind = CRYPTO_KEY_ED25519; break;
    default: snprintf(err, errlen, "the key is not RSA, EC (P-256, P-384) or Ed25519"); goto fail;
    }
    crypto_key *k = calloc(1, sizeof *k);
    if (!k) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    k->pkey = pkey;
    k->kind = kind;
    if (kind == CRYPTO_KEY_EC_P256 || kind == CRYPTO_KEY_EC_P384) {
        EC_GROUP *g = EC_GROUP_new_by_curve_name(kind == CRYPTO_KEY_EC_P256 ? NID_X9_62_prime256v1 : NID_secp384r1);
        k->order = g ? BN_dup(EC_GROUP_get0_order(g)) : NULL;
        k->half_order = BN_new();
        EC_GROUP_free(g);
        if (!k->order || !k->half_order || BN_rshift1(k->half_order, k->order) != 1) {
            snprintf(err, errlen, "out of memory");
            crypto_key_free(k);
            return NULL;
        }
    }
    return k;
fail:
    EVP_PKEY_free(pkey);
    return NULL;
}

crypto_key *crypto_key_from_pem(const char *pem, size_t len, int private_key, char *err, size_t errlen) {
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *pkey = NULL;
    if (!bio) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (private_key) {
        pkey = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    } else if (!(pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL))) {
        (void)BIO_reset(bio);
        X509 *cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (cert) pkey = X509_get_pubkey(cert);
        X509_free(cert);
    }
    BIO_free(bio);
    if (!pkey) {
        snprintf(err, errlen, private_key ? "not a PEM private key" : "not a PEM public key or certificate");
        return NULL;
    }
    return crypto_key_wrap(pkey, err, errlen);
}

/* Builds a public key of type name from params. NULL with err set. */
static crypto_key *crypto_key_from_params(const char *name, OSSL_PARAM_BLD *bld, char *err, size_t errlen) {
    OSSL_PARAM *params = bld ? OSSL_PARAM_BLD_to_param(bld) : NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, name, NULL);
    EVP_PKEY *pkey = NULL;
    crypto_key *k = NULL;
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) {
        snprintf(err, errlen, "the %s key's members do not make a key", name);
        goto out;
    }
    k = crypto_key_wrap(pkey, err, errlen);
out:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return k;
}

crypto_key *crypto_key_rsa(const unsigned char *n, size_t nlen, const unsigned char *e, size_t elen, char *err,
                           size_t errlen) {
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    BIGNUM *bn = BN_bin2bn(n, (int)nlen, NULL), *be = BN_bin2bn(e, (int)elen, NULL);
    crypto_key *k = NULL;
    if (bld && bn && be && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
        k = crypto_key_from_params("RSA", bld, err, errlen);
    else snprintf(err, errlen, "out of memory");
    BN_free(bn);
    BN_free(be);
    OSSL_PARAM_BLD_free(bld);
    return k;
}

crypto_key *crypto_key_ec(const char *crv, const unsigned char *x, size_t xlen, const unsigned char *y, size_t ylen,
                          char *err, size_t errlen) {
    unsigned char point[1 + 2 * 48];
    const char *group = strcmp(crv, "P-256") == 0 ? "prime256v1" : strcmp(crv, "P-384") == 0 ? "secp384r1" : NULL;
    size_t size = group && group[0] == 'p' ? 32 : 48;
    if (!group || xlen != size || ylen != size) {
        snprintf(err, errlen,
                 group ? "the EC key's x and y have the wrong length" : "EC keys must be on P-256 or P-384");
        return NULL;
    }
    point[0] = 0x04; /* uncompressed */
    memcpy(point + 1, x, size);
    memcpy(point + 1 + size, y, size);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    crypto_key *k = NULL;
    if (bld && OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, 1 + 2 * size))
        k = crypto_key_from_params("EC", bld, err, errlen);
    else snprintf(err, errlen, "out of memory");
    OSSL_PARAM_BLD_free(bld);
    return k;
}

crypto_key *crypto_key_okp(const char *crv, const unsigned char *x, size_t xlen, char *err, size_t errlen) {
    if (strcmp(crv, "Ed25519") != 0 || xlen != 32) {
        snprintf(err, errlen,
                 strcmp(crv, "Ed25519") != 0 ? "OKP keys must be Ed25519" : "the Ed25519 key is not 32 bytes");
        return NULL;
    }
    EVP_PKEY *pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, xlen);
    if (!pkey) {
        snprintf(err, errlen, "the Ed25519 key's x does not make a key");
        return NULL;
    }
    return crypto_key_wrap(pkey, err, errlen);
}

crypto_key_kind crypto_key_kind_of(const crypto_key *k) {
    return k->kind;
}

void crypto_key_free(crypto_key *k) {
    if (!k) return;
    EVP_PKEY_free(k->pkey);
    BN_free(k->order);
    BN_free(k->half_order);
    free(k);
}

/* ---- JWS ---- */

/* What an algorithm name means: its hash, its key kind, and how it signs. */
typedef struct crypto_alg {
    const char *name;
    const char *hash; /* NULL for EdDSA */
    int hmac;
    int pss;
    int ec_size; /* bytes of r and of s for ES* */
    crypto_key_kind kind;
} crypto_alg;

static const crypto_alg crypto_algs[] = {
    { "HS256", "sha256", 1, 0, 0, 0 },
    { "HS384", "sha384", 1, 0, 0, 0 },
    { "HS512", "sha512", 1, 0, 0, 0 },
    { "RS256", "sha256", 0, 0, 0, CRYPTO_KEY_RSA },
    { "RS384", "sha384", 0, 0, 0, CRYPTO_KEY_RSA },
    { "RS512", "sha512", 0, 0, 0, CRYPTO_KEY_RSA },
    { "PS256", "sha256", 0, 1, 0, CRYPTO_KEY_RSA },
    { "ES256", "sha256", 0, 0, 32, CRYPTO_KEY_EC_P256 },
    { "ES384", "sha384", 0, 0, 48, CRYPTO_KEY_EC_P384 },
    { "EdDSA", NULL, 0, 0, 0, CRYPTO_KEY_ED25519 },
};

static const crypto_alg *crypto_alg_of(const char *name) {
    for (size_t i = 0; i < sizeof crypto_algs / sizeof crypto_algs[0]; i++)
        if (strcmp(crypto_algs[i].name, name) == 0) return &crypto_algs[i];
    return NULL;
}

int crypto_jws_fits(const char *alg, crypto_key_kind kind) {
    const crypto_alg *a = crypto_alg_of(alg);
    return a && !a->hmac && a->kind == kind;
}

/* Prepares ctx to sign or verify with alg and key (PSS padding for PS*). Returns 1 or 0. */
static int crypto_jws_init(EVP_MD_CTX *ctx, const crypto_alg *a, const crypto_key *key, int sign) {
    EVP_PKEY_CTX *pctx = NULL;
    const EVP_MD *md = a->hash ? crypto_md(a->hash) : NULL;
    int ok = sign ? EVP_DigestSignInit(ctx, &pctx, md, NULL, key->pkey)
                  : EVP_DigestVerifyInit(ctx, &pctx, md, NULL, key->pkey);
    if (ok == 1 && a->pss)
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
                EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1;
    return ok == 1;
}

/* Turns a raw r||s signature of an ES* algorithm with key into DER. Returns its length, or
 * 0 when it is not one, or s is in its high form (above n / 2: only low-S signatures
 * count, so that a signature cannot be changed into another valid one, n - s). */
static size_t crypto_ec_to_der(const crypto_key *key, const unsigned char *sig, size_t siglen, int size,
                               unsigned char *der, size_t cap) {
    if (siglen != (size_t)size * 2) return 0;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, size, NULL), *s = BN_bin2bn(sig + size, size, NULL);
    size_t n = 0;
    if (es && r && s && BN_cmp(s, key->half_order) <= 0 && ECDSA_SIG_set0(es, r, s) == 1) {
        r = s = NULL; /* owned by es now */
        int len = i2d_ECDSA_SIG(es, NULL);
        unsigned char *p = der;
        if (len > 0 && (size_t)len <= cap) n = (size_t)i2d_ECDSA_SIG(es, &p);
    }
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    return n;
}

/* Turns a DER ECDSA signature by key into raw r||s of size bytes each, s in its low form
 * (n - s when s is above n / 2). Returns 2 * size or 0. */
static size_t crypto_ec_from_der(const crypto_key *key, const unsigned char *der, size_t len, int size,
                                 unsigned char *out) {
    const unsigned char *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)len);
    BIGNUM *low = NULL;
    const BIGNUM *s = es ? ECDSA_SIG_get0_s(es) : NULL;
    size_t n = 0;
    if (s && BN_cmp(s, key->half_order) > 0) {
        if (!(low = BN_new()) || BN_sub(low, key->order, s) != 1) goto out;
        s = low;
    }
    if (s && BN_bn2binpad(ECDSA_SIG_get0_r(es), out, size) == size && BN_bn2binpad(s, out + size, size) == size)
        n = (size_t)size * 2;
out:
    BN_free(low);
    ECDSA_SIG_free(es);
    return n;
}

int crypto_jws_verify(const char *alg, const crypto_key *key, const void *secret, size_t secretlen, const void *input,
                      size_t inlen, const unsigned char *sig, size_t siglen) {
    const crypto_alg *a = crypto_alg_of(alg);
    if (!a) return 0;
    if (a->hmac) {
        unsigned char mac[CRYPTO_MAX_DIGEST];
        size_t n = secret ? crypto_hmac(a->hash, secret, secretlen, input, inlen, mac) : 0;
        return n && crypto_equal(mac, n, sig, siglen);
    }
    if (!key || key->kind != a->kind) return 0;
    unsigned char der[CRYPTO_MAX_SIGNATURE];
    if (a->ec_size) {
        if (!(siglen = crypto_ec_to_der(key, sig, siglen, a->ec_size, der, sizeof der))) return 0;
        sig = der;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && crypto_jws_init(ctx, a, key, 0) && EVP_DigestVerify(ctx, sig, siglen, input, inlen) == 1;
    EVP_MD_CTX_free(ctx);
    return ok;
}

size_t crypto_jws_sign(const char *alg, const crypto_key *key, const void *secret, size_t secretlen, const void *input,
                       size_t inlen, unsigned char *sig) {
    const crypto_alg *a = crypto_alg_of(alg);
    if (!a) return 0;
    if (a->hmac) return secret ? crypto_hmac(a->hash, secret, secretlen, input, inlen, sig) : 0;
    if (!key || key->kind != a->kind) return 0;
    unsigned char der[CRYPTO_MAX_SIGNATURE];
    size_t len = sizeof der;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && crypto_jws_init(ctx, a, key, 1) && EVP_DigestSign(ctx, der, &len, input, inlen) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok) return 0;
    if (a->ec_size) return crypto_ec_from_der(key, der, len, a->ec_size, sig);
    memcpy(sig, der, len);
    return len;
}
