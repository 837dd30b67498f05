/* lcryptolib.c: tokend.crypto: hashes, HMAC, hex and base64, random bytes, constant-time equality. */
#include "crypto.h"
#include "llib.h"

#define LCRYPTO_MAX_RANDOM (1 << 20) /* random_bytes asks for at most 1 MiB at once */

/* tokend.crypto.sha256(s) -> 32 raw bytes */
static int lcrypto_sha256(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned char out[CRYPTO_MAX_DIGEST];
    size_t n = crypto_digest("sha256", s, len, out);
    if (!n) return luaL_error(L, "tokend.crypto.sha256: OpenSSL failed");
    lua_pushlstring(L, (const char *)out, n);
    return 1;
}

/* tokend.crypto.hmac_sha256(key, s) -> 32 raw bytes */
static int lcrypto_hmac_sha256(lua_State *L) {
    size_t klen, len;
    const char *key = luaL_checklstring(L, 1, &klen);
    const char *s = luaL_checklstring(L, 2, &len);
    unsigned char out[CRYPTO_MAX_DIGEST];
    size_t n = crypto_hmac("sha256", key, klen, s, len, out);
    if (!n) return luaL_error(L, "tokend.crypto.hmac_sha256: OpenSSL failed");
    lua_pushlstring(L, (const char *)out, n);
    return 1;
}

/* tokend.crypto.hex(s) -> lower-case hexadecimal */
static int lcrypto_hex(lua_State *L) {
    size_t len;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    luaL_Buffer b;
    crypto_hex(s, len, luaL_buffinitsize(L, &b, len * 2 + 1));
    luaL_pushresultsize(&b, len * 2);
    return 1;
}

static int lcrypto_encode(lua_State *L, int url) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, crypto_base64_size(len));
    luaL_pushresultsize(&b, crypto_base64_encode(s, len, out, url));
    return 1;
}

static int lcrypto_decode(lua_State *L, int url) {
    size_t len, n = 0;
    const char *s = luaL_checklstring(L, 1, &len);
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
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, (size_t)n);
    if (crypto_random(out, (size_t)n) < 0) return llib_fail(L, "the system's random source failed");
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* tokend.crypto.equal(a, b) -> whether a == b, in time that does not tell where they differ */
static int lcrypto_equal(lua_State *L) {
    size_t alen, blen;
    const char *a = luaL_checklstring(L, 1, &alen);
    const char *b = luaL_checklstring(L, 2, &blen);
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
