/* lcryptolib.c: tokend.crypto: hashes, HMAC, hex and base64, random bytes, constant-time equality. */
#include "crypto.h"
#include "lguard.h"
#include "llib.h"

#define LCRYPTO_MAX_RANDOM (1 << 20) /* random_bytes asks for at most 1 MiB at once */
#define LCRYPTO_HASH_BYTES 16        /* bytes hashed per instruction of the budget (a copy does 64) */

/* String argument i, its work (len bytes at bytes_per_step each) charged to the budget
 * first: a loop over hashes of a large string ends at the budget like Lua code does. */
static const char *lcrypto_arg(lua_State *L, int i, size_t *len, size_t bytes_per_step) {
    const char *s = luaL_checklstring(L, i, len);
    lguard_charge(L, *len / bytes_per_step + 1);
    return s;
}

/* tokend.crypto.sha256(s) -> 32 raw bytes */
static int lcrypto_sha256(lua_State *L) {
    size_t len;
    const char *s = lcrypto_arg(L, 1, &len, LCRYPTO_HASH_BYTES);
    unsigned char out[CRYPTO_MAX_DIGEST];
    size_t n = crypto_digest("sha256", s, len, out);
    if (!n) return luaL_error(L, "tokend.crypto.sha256: OpenSSL failed");
    lua_pushlstring(L, (const char *)out, n);
    return 1;
}

/* tokend.crypto.hmac_sha256(key, s) -> 32 raw bytes */
static int lcrypto_hmac_sha256(lua_State *L) {
    size_t klen, len;
    const char *key = lcrypto_arg(L, 1, &klen, LCRYPTO_HASH_BYTES);
    const char *s = lcrypto_arg(L, 2, &len, LCRYPTO_HASH_BYTES);
    unsigned char out[CRYPTO_MAX_DIGEST];
    size_t n = crypto_hmac("sha256", key, klen, s, len, out);
    if (!n) return luaL_error(L, "tokend.crypto.hmac_sha256: OpenSSL failed");
    lua_pushlstring(L, (const char *)out, n);
    return 1;
}

/* tokend.crypto.hex(s) -> lower-case hexadecimal */
static int lcrypto_hex(lua_State *L) {
    size_t len;
    const unsigned char *s = (const unsigned char *)lcrypto_arg(L, 1, &len, LGUARD_COPY_BYTES / 2);
    luaL_Buffer b;
    crypto_hex(s, len, luaL_buffinitsize(L, &b, len * 2 + 1));
    luaL_pushresultsize(&b, len * 2);
    return 1;
}

static int lcrypto_encode(lua_State *L, int url) {
    size_t len;
    const char *s = lcrypto_arg(L, 1, &len, LGUARD_COPY_BYTES / 2);
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, crypto_base64_size(len));
    luaL_pushresultsize(&b, crypto_base64_encode(s, len, out, url));
    return 1;
}

static int lcrypto_decode(lua_State *L, int url) {
    size_t len, n = 0;
    const char *s = lcrypto_arg(L, 1, &len, LGUARD_COPY_BYTES / 2);
    luaL_Buffer b;
    unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, len * 3 / 4 + 3);
    if (crypto_base64_decode(s, len, out, &n, url) < 0) return llib_fail(L, url ? "not base64url" : "not base64");
    luaL_pushresultsize(&b, n);
    return 1;
}

static int lcrypto_base64_encode(lua_State *L) {
    return lcrypto_encode(L, 0);
}
static int lcrypto_base64_decode(lua_State *L) {
    return lcrypto_decode(L, 0);
}
static int lcrypto_base64url_encode(lua_State *L) {
    return lcrypto_encode(L, 1);
}
static int lcrypto_base64url_decode(lua_State *L) {
    return lcrypto_decode(L, 1);
}

/* tokend.crypto.random_bytes(n) -> n bytes from the operating system's CSPRNG */
static int lcrypto_random_bytes(lua_State *L) {
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 0 && n <= LCRYPTO_MAX_RANDOM, 1, "must be 0..1048576");
    lguard_charge(L, (size_t)n / LCRYPTO_HASH_BYTES + 1);
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, (size_t)n);
    if (crypto_random(out, (size_t)n) < 0) return llib_fail(L, "the system's random source failed");
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* tokend.crypto.equal(a, b) -> whether a == b, in time that does not tell where they differ */
static int lcrypto_equal(lua_State *L) {
    size_t alen, blen;
    const char *a = lcrypto_arg(L, 1, &alen, LGUARD_COPY_BYTES);
    const char *b = lcrypto_arg(L, 2, &blen, LGUARD_COPY_BYTES);
    lua_pushboolean(L, crypto_equal(a, alen, b, blen));
    return 1;
}

void lcryptolib_open(lua_State *L, lhost *h) {
    static const luaL_Reg fns[] = {
        { "sha256", lcrypto_sha256 },
        { "hmac_sha256", lcrypto_hmac_sha256 },
        { "hex", lcrypto_hex },
        { "base64_encode", lcrypto_base64_encode },
        { "base64_decode", lcrypto_base64_decode },
        { "base64url_encode", lcrypto_base64url_encode },
        { "base64url_decode", lcrypto_base64url_decode },
        { "random_bytes", lcrypto_random_bytes },
        { "equal", lcrypto_equal },
        { NULL, NULL },
    };
    lua_newtable(L);
    llib_register(L, h, fns);
    lua_setfield(L, -2, "crypto");
}
