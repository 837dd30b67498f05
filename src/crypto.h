/* crypto.h: OpenSSL's primitives as tokend uses them: digests, HMAC, base64, random bytes, keys and JWS signatures. */
#ifndef TOKEND_CRYPTO_H
#define TOKEND_CRYPTO_H

#include <stddef.h>

#define CRYPTO_MAX_DIGEST 64      /* SHA-512 */
#define CRYPTO_MAX_SIGNATURE 1024 /* an RSA-8192 signature */

/* The hash functions by name: "sha1" (for names, such as a Redis script's), "sha256",
 * "sha384", "sha512". Each returns the digest's
 * length, or 0 for an unknown name or an OpenSSL failure. */
size_t crypto_digest(const char *hash, const void *data, size_t len, unsigned char out[CRYPTO_MAX_DIGEST]);
size_t crypto_hmac(const char *hash, const void *key, size_t keylen, const void *data, size_t len,
                   unsigned char out[CRYPTO_MAX_DIGEST]);

/* Writes len bytes as lower-case hexadecimal into out (room for 2 * len + 1). */
void crypto_hex(const void *in, size_t len, char *out);

/* Base64 (RFC 4648 section 4, padded) or base64url (section 5, unpadded). out must hold
 * crypto_base64_size(len) bytes; returns the length written (NUL-terminated). */
#define crypto_base64_size(len) (((len) + 2) / 3 * 4 + 1)
size_t crypto_base64_encode(const void *in, size_t len, char *out, int url);

/* Decodes base64 or base64url (padding optional, nothing else but the alphabet) into out,
 * which must hold len * 3 / 4 + 3 bytes. Returns 0 and sets *outlen, or -1 for a bad
 * character, bad padding or a length no encoding gives. */
int crypto_base64_decode(const char *in, size_t len, unsigned char *out, size_t *outlen, int url);

/* Fills out with n bytes from the operating system's CSPRNG. Returns 0 or -1. */
int crypto_random(void *out, size_t n);

/* 1 when a and b are equal, comparing in time independent of where they differ. */
int crypto_equal(const void *a, size_t alen, const void *b, size_t blen);

/* ---- keys ---- */

typedef struct crypto_key crypto_key;

typedef enum crypto_key_kind {
    CRYPTO_KEY_RSA,
    CRYPTO_KEY_EC_P256,
    CRYPTO_KEY_EC_P384,
    CRYPTO_KEY_ED25519,
} crypto_key_kind;

/* A public key from PEM (SPKI "PUBLIC KEY", or a certificate), or a private key from PEM
 * when private_key is 1. RSA keys must have 2048 bits or more. NULL with err set. */
crypto_key *crypto_key_from_pem(const char *pem, size_t len, int private_key, char *err, size_t errlen);

/* Public keys from JWK members (RFC 7518, 8037), already base64url-decoded: RSA (n, e),
 * EC (crv "P-256" or "P-384", x, y), OKP (crv "Ed25519", x). NULL with err set. */
crypto_key *crypto_key_rsa(const unsigned char *n, size_t nlen, const unsigned char *e, size_t elen, char *err,
                           size_t errlen);
crypto_key *crypto_key_ec(const char *crv, const unsigned char *x, size_t xlen, const unsigned char *y, size_t ylen,
                          char *err, size_t errlen);
crypto_key *crypto_key_okp(const char *crv, const unsigned char *x, size_t xlen, char *err, size_t errlen);

crypto_key_kind crypto_key_kind_of(const crypto_key *k);
void crypto_key_free(crypto_key *k);

/* ---- JWS signatures (RFC 7515, 7518, 8037) ---- */

/* 1 when alg may be used with a key of this kind: RS256/384/512 and PS256 with RSA,
 * ES256 with P-256, ES384 with P-384, EdDSA with Ed25519. HMAC algorithms take a secret,
 * never a key. */
int crypto_jws_fits(const char *alg, crypto_key_kind kind);

/* Verifies sig over input with alg: HS256/384/512 with secret, else with key. Returns 1
 * when valid, 0 otherwise (a wrong signature, an alg that does not fit, an ES256 or ES384
 * signature whose s is above half the curve's order: only the low-S form of a signature
 * counts, so that no one can make a second valid signature, n - s, from a first). */
int crypto_jws_verify(const char *alg, const crypto_key *key, const void *secret, size_t secretlen, const void *input,
                      size_t inlen, const unsigned char *sig, size_t siglen);

/* Signs input with alg (the secret for HS*, a private key otherwise) into sig (room for
 * CRYPTO_MAX_SIGNATURE bytes, in JWS form: raw r||s for ES*, s in its low form). Returns
 * its length, or 0. */
size_t crypto_jws_sign(const char *alg, const crypto_key *key, const void *secret, size_t secretlen, const void *input,
                       size_t inlen, unsigned char *sig);

#endif
