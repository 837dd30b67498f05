/* ljwtlib.c: tokend.jwt.verify and tokend.jwt.sign: JSON Web Tokens checked against a secret, keys, or an identity provider's JWKS. */
#define _GNU_SOURCE
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto.h"
#include "ljwks.h"
#include "llib.h"
#include "lsecret.h"

#define LJWT_MAX_BYTES 8192 /* tokens longer than this are refused unread */
#define LJWT_LEEWAY_S 30    /* clock skew allowed on exp and nbf */
#define LJWT_JWKS_TTL_S 600 /* a JWKS is fetched again after this */
#define LJWT_MAX_KEYS 64
#define LJWT_VERIFIED_SLOTS 256 /* signatures a key set remembers having verified */
#define LJWT_KEYSET "tokend.jwt.keyset"
#define LJWT_KEYSETS "tokend.jwt.keysets" /* registry: the content of opts.keys -> its key set; [0] their number */
#define LJWT_KEYSETS_MAX 64               /* key sets kept by content; one more empties the table */

extern int luaopen_cjson_safe(lua_State *L);

/* Returns nil, a formatted message and kind (what went wrong, for a policy to choose its
 * answer: "malformed", "bad_algorithm", "bad_signature", "unknown_key", "expired",
 * "not_yet_valid", "bad_issuer", "bad_audience" or "jwks_unavailable"). */
static int ljwt_fail(lua_State *L, const char *kind, const char *fmt, ...) {
    va_list ap;
    luaL_pushfail(L);
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_pushstring(L, kind);
    return 3;
}

/* ---- key sets ---- */

typedef struct ljwt_key {
    char kid[128]; /* "" when the key has none */
    char alg[16];  /* the JWK's alg, "" when none */
    crypto_key *key;
} ljwt_key;

/* A token whose signature a key of the set verified: the SHA-256 of its whole text. */
typedef struct ljwt_verified {
    unsigned char digest[32];
    size_t key; /* the key's index + 1; 0: an empty slot */
} ljwt_verified;

/* Parsed keys, a userdata (its __gc frees them), and the tokens they verified lately (a
 * client presents the same token on every /token call until it expires: its signature
 * is checked once; its algorithm and claims on every call). */
typedef struct ljwt_keyset {
    size_t n;
    ljwt_key keys[LJWT_MAX_KEYS];
    ljwt_verified verified[LJWT_VERIFIED_SLOTS];
} ljwt_keyset;

static int ljwt_keyset_gc(lua_State *L) {
    ljwt_keyset *ks = luaL_checkudata(L, 1, LJWT_KEYSET);
    for (size_t i = 0; i < ks->n; i++) crypto_key_free(ks->keys[i].key);
    ks->n = 0;
    return 0;
}

static ljwt_keyset *ljwt_keyset_new(lua_State *L) {
    ljwt_keyset *ks = lua_newuserdatauv(L, sizeof *ks, 0);
    memset(ks, 0, sizeof *ks);
    luaL_setmetatable(L, LJWT_KEYSET);
    return ks;
}

/* Decodes the base64url member name of the JWK at idx into buf; returns its length or -1. */
static long ljwt_jwk_bytes(lua_State *L, int idx, const char *name, unsigned char *buf, size_t cap) {
    size_t len, n = 0;
    const char *s = llib_field_string(L, idx, NULL, name, &len);
    if (!s || len / 4 * 3 + 3 > cap || crypto_base64_decode(s, len, buf, &n, 1) < 0) return -1;
    return (long)n;
}

/* Adds the JWK at idx to ks; a key tokend cannot use is skipped with why in err. Returns
 * 1 when added, 0 when skipped. */
static int ljwt_add_jwk(lua_State *L, int idx, ljwt_keyset *ks, char *err, size_t errlen) {
    unsigned char a[1024], b[1024];
    long alen, blen;
    crypto_key *key = NULL;
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx) || ks->n == LJWT_MAX_KEYS) return 0;
    const char *kty = llib_field_string(L, idx, NULL, "kty", NULL);
    const char *use = llib_field_string(L, idx, NULL, "use", NULL);
    const char *crv = llib_field_string(L, idx, NULL, "crv", NULL);
    if (!kty || (use && strcmp(use, "sig") != 0)) return 0;
    if (strcmp(kty, "RSA") == 0) {
        alen = ljwt_jwk_bytes(L, idx, "n", a, sizeof a);
        blen = ljwt_jwk_bytes(L, idx, "e", b, sizeof b);
        if (alen > 0 && blen > 0) key = crypto_key_rsa(a, (size_t)alen, b, (size_t)blen, err, errlen);
    } else if (strcmp(kty, "EC") == 0 && crv) {
        alen = ljwt_jwk_bytes(L, idx, "x", a, sizeof a);
        blen = ljwt_jwk_bytes(L, idx, "y", b, sizeof b);
        if (alen > 0 && blen > 0) key = crypto_key_ec(crv, a, (size_t)alen, b, (size_t)blen, err, errlen);
    } else if (strcmp(kty, "OKP") == 0 && crv) {
        alen = ljwt_jwk_bytes(L, idx, "x", a, sizeof a);
        if (alen > 0) key = crypto_key_okp(crv, a, (size_t)alen, err, errlen);
    } /* "oct" keys are never taken from a key set: a public JWKS holds no secrets */
    size_t kidlen = 0, alglen = 0;
    const char *kid = llib_field_string(L, idx, NULL, "kid", &kidlen);
    const char *alg = llib_field_string(L, idx, NULL, "alg", &alglen);
    if (key &&
        ((kid && (kidlen >= sizeof ks->keys[0].kid || strlen(kid) != kidlen)) ||
         (alg && (alglen >= sizeof ks->keys[0].alg || strlen(alg) != alglen)))) {
        snprintf(err, errlen, "a JWK's kid or alg is too long or holds a NUL byte"); /* not comparable exactly */
        crypto_key_free(key);
        key = NULL;
    }
    if (!key) return 0;
    ljwt_key *k = &ks->keys[ks->n++];
    snprintf(k->kid, sizeof k->kid, "%s", kid ? kid : "");
    snprintf(k->alg, sizeof k->alg, "%s", alg ? alg : "");
    k->key = key;
    return 1;
}

#define LJWT_DECODE "tokend.jwt.decode"

/* Decodes JSON text with cjson.safe (kept in the registry); pushes the value or nil. */
static void ljwt_json_decode(lua_State *L, const char *text, size_t len) {
    lua_getfield(L, LUA_REGISTRYINDEX, LJWT_DECODE);
    lua_pushlstring(L, text, len);
    lua_call(L, 1, 1);
}

/* Pushes a keyset made from what opts.keys holds at idx: a PEM public key (or a list of
 * them), a JWK Set ({keys = {...}}) or a JWK, as a table or JSON text. Raises when it
 * gives no usable key. */
static void ljwt_push_keyset_of(lua_State *L, int idx) {
    char err[200] = "no usable key";
    idx = lua_absindex(L, idx);
    ljwt_keyset *ks = ljwt_keyset_new(L);
    int set = lua_gettop(L);
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (strstr(s, "-----BEGIN")) {
            crypto_key *key = crypto_key_from_pem(s, len, 0, err, sizeof err);
            if (!key) luaL_error(L, "tokend.jwt: keys: %s", err);
            ks->keys[ks->n++] = (ljwt_key){ "", "", key };
            return;
        }
        ljwt_json_decode(L, s, len);
        if (!lua_istable(L, -1)) luaL_error(L, "tokend.jwt: keys is neither PEM nor JSON of a JWK or JWK Set");
        idx = lua_gettop(L);
    }
    luaL_argcheck(L, lua_istable(L, idx), 2, "keys must be PEM, a JWK Set or a JWK (table or JSON)");
    if (lua_getfield(L, idx, "keys") == LUA_TTABLE) { /* a JWK Set */
        for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, -1); i++) {
            lua_rawgeti(L, -1, i);
            ljwt_add_jwk(L, -1, ks, err, sizeof err);
            lua_pop(L, 1);
        }
    } else if (!ljwt_add_jwk(L, idx, ks, err, sizeof err)) { /* one JWK, or PEM strings */
        for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, idx); i++) {
            size_t len;
            lua_rawgeti(L, idx, i);
            const char *pem = lua_tolstring(L, -1, &len);
            crypto_key *key = pem && ks->n < LJWT_MAX_KEYS ? crypto_key_from_pem(pem, len, 0, err, sizeof err) : NULL;
            if (key) ks->keys[ks->n++] = (ljwt_key){ "", "", key };
            lua_pop(L, 1);
        }
    }
    if (ks->n == 0) luaL_error(L, "tokend.jwt: keys: %s", err);
    lua_settop(L, set);
}

/* The JWK members a key set is made of (see ljwt_add_jwk). */
static const char *const ljwt_jwk_members[] = { "kty", "use", "crv", "n", "e", "x", "y", "kid", "alg" };
#define LJWT_MEMBERS (sizeof ljwt_jwk_members / sizeof ljwt_jwk_members[0])

/* Adds s (len bytes; NULL: absent) to b, after a mark and its length, so that no two
 * lists of strings give the same bytes. */
static void ljwt_add_part(luaL_Buffer *b, const char *s, size_t len) {
    luaL_addchar(b, s ? '+' : '-');
    if (!s) return;
    luaL_addlstring(b, (const char *)&len, sizeof len);
    luaL_addlstring(b, s, len);
}

/* Adds the members of the JWK at the top of the stack to b, and pops it (and pop - 1
 * values under it). The members are read first: between two operations on b the stack
 * must be where b left it; the JWK keeps them. */
static void ljwt_add_jwk_content(lua_State *L, luaL_Buffer *b, int pop) {
    const char *v[LJWT_MEMBERS];
    size_t len[LJWT_MEMBERS];
    int jwk = lua_istable(L, -1);
    for (size_t m = 0; m < LJWT_MEMBERS; m++)
        v[m] = jwk ? llib_field_string(L, -1, NULL, ljwt_jwk_members[m], &len[m]) : NULL;
    lua_pop(L, pop);
    for (size_t m = 0; m < LJWT_MEMBERS; m++) ljwt_add_part(b, v[m], v[m] ? len[m] : 0);
}

/* Pushes the content of a keys table at idx: the strings ljwt_push_keyset_of reads from
 * it, in order (the members of each JWK of its keys list; or its own members as a JWK and
 * its list of PEM keys). It begins with a NUL byte, which keys given as text cannot. */
static void ljwt_push_keys_content(lua_State *L, int idx) {
    luaL_Buffer b;
    idx = lua_absindex(L, idx);
    lua_getfield(L, idx, "keys");
    lua_Integer n = lua_istable(L, -1) ? (lua_Integer)lua_rawlen(L, -1) : -1;
    lua_pop(L, 1);
    luaL_buffinit(L, &b);
    luaL_addchar(&b, '\0');
    luaL_addchar(&b, n >= 0 ? 'S' : 'K');
    for (lua_Integer i = 1; i <= n; i++) { /* a JWK Set */
        lua_getfield(L, idx, "keys");      /* each time: b may have moved the stack */
        lua_rawgeti(L, -1, i);
        ljwt_add_jwk_content(L, &b, 2);
    }
    if (n < 0) { /* one JWK, or PEM strings */
        lua_pushvalue(L, idx);
        ljwt_add_jwk_content(L, &b, 1);
        for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, idx); i++) {
            size_t len = 0;
            const char *pem = lua_rawgeti(L, idx, i) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
            lua_pop(L, 1); /* the table keeps the string */
            ljwt_add_part(&b, pem, len);
        }
    }
    luaL_pushresult(&b);
}

/* Pushes the key set of opts.keys (opts at index 2), parsed once per content and kept
 * (LJWT_KEYSETS_MAX of them): a script may reuse one options table for many key sets, or
 * change its keys in place, and each content has its own keys and its own memory of the
 * signatures they verified. Text is its own content (hashed once per string by Lua). */
static ljwt_keyset *ljwt_push_keyset_of_opts(lua_State *L) {
    lua_getfield(L, 2, "keys");
    int keys = lua_gettop(L);
    if (lua_getfield(L, LUA_REGISTRYINDEX, LJWT_KEYSETS) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, LJWT_KEYSETS);
    }
    int cache = lua_gettop(L);
    if (lua_type(L, keys) == LUA_TTABLE) ljwt_push_keys_content(L, keys);
    else lua_pushvalue(L, keys);
    int content = lua_gettop(L);
    lua_pushvalue(L, content);
    if (lua_rawget(L, cache) != LUA_TUSERDATA) {
        lua_pop(L, 1);
        lua_rawgeti(L, cache, 0);
        lua_Integer n = lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (n >= LJWT_KEYSETS_MAX) { /* a script making key sets without end: start again */
            lua_newtable(L);
            lua_pushvalue(L, -1);
            lua_setfield(L, LUA_REGISTRYINDEX, LJWT_KEYSETS);
            lua_replace(L, cache);
            n = 0;
        }
        ljwt_push_keyset_of(L, keys);
        lua_pushvalue(L, content);
        lua_pushvalue(L, -2);
        lua_rawset(L, cache);
        lua_pushinteger(L, n + 1);
        lua_rawseti(L, cache, 0);
    }
    lua_replace(L, keys);
    lua_settop(L, keys);
    return lua_touserdata(L, -1);
}

/* ---- checking a token against keys ---- */

/* A token split into its parts, with the header's alg and kid. */
typedef struct ljwt_token {
    const char *text;
    size_t signed_len; /* header.payload */
    const char *payload;
    size_t payload_len;
    unsigned char sig[CRYPTO_MAX_SIGNATURE];
    size_t sig_len;
    size_t len; /* of text */
    char alg[16];
    char kid[128];
} ljwt_token;

/* Splits text and decodes its header into t. Returns 0, or pushes nil, why, kind and
 * returns 3 when it is not a JWT tokend can read. */
static int ljwt_split(lua_State *L, const char *text, size_t len, ljwt_token *t) {
    const char *dot1 = memchr(text, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - text)) : NULL;
    if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - text)))
        return ljwt_fail(L, "malformed", "not a JWT (three dot-separated parts)");
    size_t hlen = (size_t)(dot1 - text), slen = len - (size_t)(dot2 + 1 - text);
    unsigned char header[1024];
    size_t n, alglen = 0, kidlen = 0;
    if (hlen / 4 * 3 + 3 > sizeof header || crypto_base64_decode(text, hlen, header, &n, 1) < 0)
        return ljwt_fail(L, "malformed", "the JWT header is not base64url");
    if (slen / 4 * 3 + 3 > sizeof t->sig || crypto_base64_decode(dot2 + 1, slen, t->sig, &t->sig_len, 1) < 0)
        return ljwt_fail(L, "malformed", "the JWT signature is not base64url");
    ljwt_json_decode(L, (const char *)header, n);
    if (!lua_istable(L, -1)) return ljwt_fail(L, "malformed", "the JWT header is not a JSON object");
    const char *alg = llib_field_string(L, -1, NULL, "alg", &alglen);
    const char *kid = llib_field_string(L, -1, NULL, "kid", &kidlen);
    lua_getfield(L, -1, "crit");
    int has_crit = !lua_isnil(L, -1);
    lua_pop(L, 2);
    if (!alg) return ljwt_fail(L, "malformed", "the JWT header has no alg");
    /* Compared exactly: a NUL byte would end the name early ("HS256\u0000..." is not HS256). */
    if (alglen >= sizeof t->alg || strlen(alg) != alglen)
        return ljwt_fail(L, "bad_algorithm", "the token's algorithm is not one tokend knows");
    if (has_crit) return ljwt_fail(L, "malformed", "the JWT header has critical extensions tokend does not know");
    if (kid && (kidlen >= sizeof t->kid || strlen(kid) != kidlen))
        return ljwt_fail(L, "malformed", "the JWT kid is too long or holds a NUL byte");
    t->text = text;
    t->len = len;
    t->signed_len = (size_t)(dot2 - text);
    t->payload = dot1 + 1;
    t->payload_len = (size_t)(dot2 - dot1 - 1);
    memcpy(t->alg, alg, alglen + 1);
    snprintf(t->kid, sizeof t->kid, "%s", kid ? kid : "");
    return 0;
}

/* opts.secret (opts at index 2) as bytes: a string, or a secret handle's, which stay in
 * C (tokend.secret). NULL when there is none. */
static const char *ljwt_opt_secret(lua_State *L, size_t *len) {
    const char *v = llib_field_string(L, 2, NULL, "secret", len);
    if (v) return v;
    lua_getfield(L, 2, "secret");
    const secret *s = lsecret_test(L, -1);
    lua_pop(L, 1);
    return s ? secret_value(s, len) : NULL;
}

/* 1 for the algorithms of a secret: HS256, HS384, HS512. */
static int ljwt_is_hmac(const char *alg) {
    return strcmp(alg, "HS256") == 0 || strcmp(alg, "HS384") == 0 || strcmp(alg, "HS512") == 0;
}

/* 1 when a token signed with alg may pass: alg is among opts.algorithms (opts at index 2;
 * without that list, any) and fits what opts holds: an HMAC algorithm with a secret, one
 * of a public key otherwise. "none" never does. */
static int ljwt_alg_usable(lua_State *L, const char *alg, int secret) {
    static const crypto_key_kind kinds[] = { CRYPTO_KEY_RSA, CRYPTO_KEY_EC_P256, CRYPTO_KEY_EC_P384,
                                             CRYPTO_KEY_ED25519 };
    int fits = secret && ljwt_is_hmac(alg);
    for (size_t i = 0; !secret && !fits && i < sizeof kinds / sizeof kinds[0]; i++)
        fits = crypto_jws_fits(alg, kinds[i]);
    if (!fits) return 0;
    if (lua_getfield(L, 2, "algorithms") != LUA_TTABLE) {
        lua_pop(L, 1);
        return 1;
    }
    int found = 0;
    for (lua_Integer i = 1; !found && i <= (lua_Integer)lua_rawlen(L, -1); i++) {
        size_t len = 0;
        lua_rawgeti(L, -1, i);
        const char *a = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        found = a && len == strlen(alg) && memcmp(a, alg, len) == 0;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return found;
}

/* Whether the claim at the top (a string, or a list of strings) holds one of the wanted
 * values at idx (a string or a list). */
static int ljwt_claim_matches(lua_State *L, int wanted) {
    int claim = lua_gettop(L), ok = 0;
    lua_Integer nc = lua_type(L, claim) == LUA_TTABLE ? (lua_Integer)lua_rawlen(L, claim) : 1;
    lua_Integer nw = lua_type(L, wanted) == LUA_TTABLE ? (lua_Integer)lua_rawlen(L, wanted) : 1;
    for (lua_Integer i = 1; i <= nc && !ok; i++) {
        if (lua_type(L, claim) == LUA_TTABLE) lua_rawgeti(L, claim, i);
        else lua_pushvalue(L, claim);
        for (lua_Integer j = 1; j <= nw && !ok; j++) {
            if (lua_type(L, wanted) == LUA_TTABLE) lua_rawgeti(L, wanted, j);
            else lua_pushvalue(L, wanted);
            ok = lua_type(L, -1) == LUA_TSTRING && lua_type(L, -2) == LUA_TSTRING && lua_rawequal(L, -1, -2);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    return ok;
}

/* Reads opts.<field> (opts at index 2) as a number of seconds. */
static double ljwt_opt_seconds(lua_State *L, const char *field, double dflt) {
    double v = llib_opt_number(L, 2, field, dflt, "tokend.jwt");
    if (v < 0 || v > 1e9) luaL_error(L, "tokend.jwt: %s must be 0 or more seconds", field);
    return v;
}

/* Reads the NumericDate claim name of the claims at idx into *v: a JSON number, finite
 * (RFC 7519 section 2; cjson is strict: NaN, Infinity and hex are not JSON). Returns 1,
 * 0 when absent, or -1 when it is something else (a string, a boolean, 1e999). */
static int ljwt_numeric_date(lua_State *L, int idx, const char *name, double *v) {
    int type = lua_getfield(L, idx, name);
    *v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (type == LUA_TNIL) return 0;
    return type == LUA_TNUMBER && isfinite(*v) ? 1 : -1;
}

/* The signature is good: decodes the claims and checks exp, nbf, iss and aud. Pushes
 * the claims, or nil, why and the kind of failure. */
static int ljwt_check_claims(lua_State *L, const ljwt_token *t) {
    unsigned char *payload = lua_newuserdatauv(L, t->payload_len / 4 * 3 + 3, 0);
    size_t n;
    double exp, nbf, iat;
    if (crypto_base64_decode(t->payload, t->payload_len, payload, &n, 1) < 0)
        return ljwt_fail(L, "malformed", "the JWT payload is not base64url");
    ljwt_json_decode(L, (const char *)payload, n);
    if (!lua_istable(L, -1)) return ljwt_fail(L, "malformed", "the JWT payload is not a JSON object");
    int claims = lua_gettop(L);
    double leeway = ljwt_opt_seconds(L, "leeway_seconds", LJWT_LEEWAY_S);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double now = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    int has_exp = ljwt_numeric_date(L, claims, "exp", &exp), has_nbf = ljwt_numeric_date(L, claims, "nbf", &nbf);
    if (has_exp < 0 || has_nbf < 0 || ljwt_numeric_date(L, claims, "iat", &iat) < 0)
        return ljwt_fail(L, "malformed", "the token's %s is not a NumericDate (a JSON number)",
                         has_exp < 0           ? "exp"
                                 : has_nbf < 0 ? "nbf"
                                               : "iat");
    if (!has_exp) {
        lua_getfield(L, 2, "require_exp");
        int optional = lua_isboolean(L, -1) && !lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (!optional) return ljwt_fail(L, "malformed", "the token has no exp (expiry)");
    } else if (now >= exp + leeway) { /* valid before exp (RFC 7519 4.1.4) */
        return ljwt_fail(L, "expired", "the token expired");
    }
    if (has_nbf && now + leeway < nbf) return ljwt_fail(L, "not_yet_valid", "the token is not valid yet (nbf)");
    if (lua_getfield(L, 2, "issuer") == LUA_TSTRING) { /* nil or false: not checked */
        lua_getfield(L, claims, "iss");
        if (!lua_rawequal(L, -1, -2) || lua_type(L, -1) != LUA_TSTRING)
            return ljwt_fail(L, "bad_issuer", "the token's issuer is not the one expected");
    }
    lua_settop(L, claims);
    int wanted = lua_getfield(L, 2, "audience");
    if (wanted == LUA_TSTRING || wanted == LUA_TTABLE) {
        lua_getfield(L, claims, "aud");
        if (!ljwt_claim_matches(L, claims + 1))
            return ljwt_fail(L, "bad_audience", "the token's audience is not the one expected");
    }
    lua_settop(L, claims);
    return 1;
}

/* Checks t's signature (its alg usable, see ljwt_alg_usable) against the keys of ks (a
 * kid selects among them; a signature ks verified before is not checked again) or the
 * secret of opts; pushes the claims, or nil, why and the kind of failure. */
static int ljwt_check(lua_State *L, const ljwt_token *t, ljwt_keyset *ks) {
    size_t slen = 0;
    const char *secret = ljwt_opt_secret(L, &slen);
    if (secret) {
        if (!crypto_jws_verify(t->alg, NULL, secret, slen, t->text, t->signed_len, t->sig, t->sig_len))
            return ljwt_fail(L, "bad_signature", "the token's signature is not valid");
        return ljwt_check_claims(L, t);
    }
    int tried = 0, kid_known = 0;
    unsigned char digest[CRYPTO_MAX_DIGEST];
    ljwt_verified *seen = NULL;
    if (ks && crypto_digest("sha256", t->text, t->len, digest) == sizeof seen->digest)
        seen = &ks->verified[(digest[0] | (size_t)digest[1] << 8) % LJWT_VERIFIED_SLOTS];
    for (size_t i = 0; ks && i < ks->n; i++) {
        const ljwt_key *k = &ks->keys[i];
        if (t->kid[0] && k->kid[0] && strcmp(t->kid, k->kid) != 0) continue;
        if (t->kid[0] && !k->kid[0] && ks->n > 1) continue;
        kid_known = 1;
        if (k->alg[0] && strcmp(k->alg, t->alg) != 0) continue;
        if (!crypto_jws_fits(t->alg, crypto_key_kind_of(k->key))) continue;
        tried = 1;
        if (seen && seen->key == i + 1 && memcmp(seen->digest, digest, sizeof seen->digest) == 0)
            return ljwt_check_claims(L, t);
        if (crypto_jws_verify(t->alg, k->key, NULL, 0, t->text, t->signed_len, t->sig, t->sig_len)) {
            if (seen) {
                memcpy(seen->digest, digest, sizeof seen->digest);
                seen->key = i + 1;
            }
            return ljwt_check_claims(L, t);
        }
    }
    if (!kid_known) return ljwt_fail(L, "unknown_key", "no key has the token's kid %s", t->kid);
    if (!tried)
        return ljwt_fail(L, "bad_algorithm", "no key fits the token (alg %s%s%s)", t->alg, t->kid[0] ? ", kid " : "",
                         t->kid);
    return ljwt_fail(L, "bad_signature", "the token's signature is not valid");
}

/* ---- keys from an identity provider's JWKS ---- */

/* Parses a fetched JWKS document (text at index 1) into a keyset (see ljwks_of). */
static int ljwt_parse_jwks(lua_State *L) {
    size_t len;
    const char *text = lua_tolstring(L, 1, &len);
    ljwt_json_decode(L, text, len);
    if (!lua_istable(L, -1)) return luaL_error(L, "the JWKS is not JSON");
    if (lua_getfield(L, -1, "keys") != LUA_TTABLE) return luaL_error(L, "the JWKS has no keys");
    lua_pop(L, 1);
    ljwt_push_keyset_of(L, -1);
    return 1;
}

/* 1 when the keys of ks hold t's kid, or t has none, or ks has one key without a kid (the
 * keys ljwt_check may try). */
static int ljwt_knows_kid(const ljwt_keyset *ks, const ljwt_token *t) {
    if (!t->kid[0] || (ks->n == 1 && !ks->keys[0].kid[0])) return 1;
    for (size_t i = 0; i < ks->n; i++)
        if (strcmp(ks->keys[i].kid, t->kid) == 0) return 1;
    return 0;
}

/* Ends a verification that waited for a fetch (see ljwks_wait): 1 token, 2 opts (the
 * copy made before the wait). Checks the token with the keys j has now; without keys, or
 * without its kid after a failed fetch, the provider is what failed. */
static int ljwt_resume(lua_State *L, ljwks *j) {
    ljwt_token t;
    size_t len;
    const char *text = lua_tolstring(L, 1, &len);
    int failed = ljwt_split(L, text, len, &t);
    if (failed) return failed;
    if (!ljwks_push(L, j)) return ljwt_fail(L, "jwks_unavailable", "%s", ljwks_error(j));
    ljwt_keyset *ks = lua_touserdata(L, -1);
    if (!ljwt_knows_kid(ks, &t) && ljwks_failed_lately(j))
        return ljwt_fail(L, "jwks_unavailable", "no key in hand has the token's kid %s, and %s", t.kid, ljwks_error(j));
    return ljwt_check(L, &t, ks);
}

/* Pushes a copy of what a check reads from opts (index 2) once the keys are chosen, for a
 * call about to wait: the script may change its table meanwhile. */
static void ljwt_push_opts_copy(lua_State *L) {
    static const char *const fields[] = { "algorithms", "issuer", "audience", "leeway_seconds", "require_exp" };
    lua_createtable(L, 0, 5);
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        lua_getfield(L, 2, fields[i]);
        lua_setfield(L, -2, fields[i]);
    }
}

/* Verifies with a JWKS URL: at once with the keys in hand; else waits for a fetch. Keys
 * past jwks_ttl are used while a fetch renews them; an unknown kid fetches again at most
 * once per LJWKS_REFETCH_S for all workers; a failed fetch is not retried for LJWKS_FAILED_S. */
static int ljwt_verify_jwks(lua_State *L, lhost *h, const ljwt_token *t, const char *url) {
    ljwks *j = ljwks_of(L, h, url, ljwt_parse_jwks);
    uint64_t ttl_ms = (uint64_t)(ljwt_opt_seconds(L, "jwks_ttl", LJWT_JWKS_TTL_S) * 1000);
    ljwt_keyset *ks = ljwks_keys(L, j, ttl_ms) ? lua_touserdata(L, -1) : NULL;
    if (ks && ljwt_knows_kid(ks, t)) {
        ljwks_renew(j, h);
        return ljwt_check(L, t, ks);
    }
    if (ljwks_failed_lately(j)) {
        if (!ks) return ljwt_fail(L, "jwks_unavailable", "%s", ljwks_error(j));
        return ljwt_fail(L, "jwks_unavailable", "no key in hand has the token's kid %s, and %s", t->kid,
                         ljwks_error(j));
    }
    if (ks && !ljwks_claim_refetch(j)) /* the provider may have rotated its keys: at most one look */
        return ljwt_fail(L, "unknown_key", "no key has the token's kid %s (the JWKS was fetched lately)", t->kid);
    lua_pushvalue(L, 1);
    ljwt_push_opts_copy(L);
    int n = ljwks_wait(L, h, j, "tokend.jwt.verify", 2, ljwt_resume);
    return n < 0 ? ljwt_fail(L, "jwks_unavailable", "%s", ljwks_error(j)) : n;
}

/* Raises unless opts[field] (opts at index 2) is a string, a list of them when list is 1,
 * or false; nil is allowed only when optional is 1. */
static void ljwt_check_expected(lua_State *L, const char *field, int list, int optional) {
    int type = lua_getfield(L, 2, field);
    int skip = type == LUA_TBOOLEAN && !lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (type == LUA_TNIL && !optional)
        luaL_error(L, "tokend.jwt.verify: %s is required with keys or jwks_url (false skips its check)", field);
    if (type != LUA_TNIL && !skip && type != LUA_TSTRING && !(list && type == LUA_TTABLE))
        luaL_error(L, "tokend.jwt.verify: %s must be a string%s or false", field, list ? ", a list of strings" : "");
}

/* tokend.jwt.verify(token, {secret | keys | jwks_url, algorithms, issuer, audience,
 * leeway_seconds = 30, max_bytes = 8192, jwks_ttl = 600, require_exp = true})
 * -> claims | nil, err, kind. With keys or jwks_url, issuer and audience are required
 * (false skips a check): a setting left unset must not turn a check off. */
static int ljwt_verify(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    size_t len;
    luaL_checktype(L, 1, LUA_TSTRING);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    const char *text = lua_tolstring(L, 1, &len);
    double max_bytes = llib_opt_number(L, 2, "max_bytes", LJWT_MAX_BYTES, "tokend.jwt");
    size_t secretlen = 0;
    const char *secret = ljwt_opt_secret(L, &secretlen);
    const char *url = llib_field_string(L, 2, NULL, "jwks_url", NULL);
    lua_getfield(L, 2, "keys");
    int has_keys = !lua_isnil(L, -1);
    lua_pop(L, 1);
    luaL_argcheck(L, (secret != NULL) + has_keys + (url != NULL) == 1, 2, "give one of secret, keys or jwks_url");
    luaL_argcheck(L, !secret || secretlen > 0, 2, "the secret is empty");
    luaL_argcheck(L, !url || strncmp(url, "https://", 8) == 0 || strncmp(url, "http://", 7) == 0, 2,
                  "jwks_url must be an http:// or https:// URL");
    ljwt_check_expected(L, "issuer", 0, secret != NULL);
    ljwt_check_expected(L, "audience", 1, secret != NULL);
    if ((double)len > max_bytes) return ljwt_fail(L, "malformed", "the token is larger than %d bytes", (int)max_bytes);
    ljwt_token t;
    int failed = ljwt_split(L, text, len, &t);
    if (failed) return failed;
    if (!ljwt_alg_usable(L, t.alg, secret != NULL))
        return ljwt_fail(L, "bad_algorithm", "the token's algorithm %s is not allowed with %s", t.alg,
                         secret ? "a secret" : "these keys");
    if (url) return ljwt_verify_jwks(L, h, &t, url);
    return ljwt_check(L, &t, secret ? NULL : ljwt_push_keyset_of_opts(L));
}

/* tokend.jwt.sign(claims, {secret = ... | private_key = PEM, alg = ..., kid = ...}) -> token */
static int ljwt_sign(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    size_t klen = 0, slen = 0;
    const char *pem = llib_field_string(L, 2, NULL, "private_key", &klen);
    const char *secret = ljwt_opt_secret(L, &slen);
    const char *alg = llib_field_string(L, 2, NULL, "alg", NULL);
    const char *kid = llib_field_string(L, 2, NULL, "kid", NULL);
    char err[200];
    luaL_argcheck(L, (pem != NULL) != (secret != NULL), 2, "give a secret or a private_key");
    luaL_argcheck(L, !secret || slen > 0, 2, "the secret is empty");
    crypto_key *key = NULL;
    if (pem) {
        if (!(key = crypto_key_from_pem(pem, klen, 1, err, sizeof err)))
            return luaL_error(L, "tokend.jwt.sign: %s", err);
        static const char *const defaults[] = { "RS256", "ES256", "ES384", "EdDSA" };
        if (!alg) alg = defaults[crypto_key_kind_of(key)];
    } else if (!alg) {
        alg = "HS256";
    }
    int fits = secret ? ljwt_is_hmac(alg) : crypto_jws_fits(alg, crypto_key_kind_of(key));
    if (!fits) {
        crypto_key_free(key);
        return luaL_error(L, "tokend.jwt.sign: alg %s does not fit the %s", alg, secret ? "secret" : "key");
    }
    /* header.payload, base64url, then the signature */
    lua_getfield(L, LUA_REGISTRYINDEX, "tokend.jwt.encode");
    lua_createtable(L, 0, 3);
    lua_pushstring(L, alg);
    lua_setfield(L, -2, "alg");
    lua_pushliteral(L, "JWT");
    lua_setfield(L, -2, "typ");
    if (kid) {
        lua_pushstring(L, kid);
        lua_setfield(L, -2, "kid");
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int part = 0; part < 2; part++) {
        lua_pushvalue(L, 3);
        if (part == 0) lua_pushvalue(L, 4);
        else lua_pushvalue(L, 1);
        if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_isstring(L, -1)) {
            crypto_key_free(key);
            return luaL_error(L, "tokend.jwt.sign: the claims cannot be JSON: %s", lua_tostring(L, -1));
        }
        size_t n;
        const char *json = lua_tolstring(L, -1, &n);
        char *enc = malloc(crypto_base64_size(n));
        if (!enc) {
            crypto_key_free(key);
            return luaL_error(L, "out of memory");
        }
        size_t elen = crypto_base64_encode(json, n, enc, 1);
        lua_pop(L, 1);
        if (part) luaL_addchar(&b, '.');
        luaL_addlstring(&b, enc, elen);
        free(enc);
    }
    luaL_pushresult(&b);
    size_t inlen;
    const char *input = lua_tolstring(L, -1, &inlen);
    unsigned char sig[CRYPTO_MAX_SIGNATURE];
    size_t siglen = crypto_jws_sign(alg, key, secret, slen, input, inlen, sig);
    crypto_key_free(key);
    if (!siglen) return luaL_error(L, "tokend.jwt.sign: signing failed");
    char enc[crypto_base64_size(CRYPTO_MAX_SIGNATURE)];
    crypto_base64_encode(sig, siglen, enc, 1);
    lua_pushfstring(L, "%s.%s", input, enc);
    return 1;
}

void ljwtlib_open(lua_State *L, lhost *h) {
    static const luaL_Reg fns[] = { { "verify", ljwt_verify }, { "sign", ljwt_sign }, { NULL, NULL } };
    llib_class(L, LJWT_KEYSET, (const luaL_Reg[]){ { NULL, NULL } }, ljwt_keyset_gc);
    lua_pushcfunction(L, luaopen_cjson_safe);
    lua_call(L, 0, 1);
    lua_getfield(L, -1, "decode_invalid_numbers"); /* this instance's: NaN, Infinity, hex are not JSON */
    lua_pushboolean(L, 0);
    lua_call(L, 1, 0);
    lua_getfield(L, -1, "decode");
    lua_setfield(L, LUA_REGISTRYINDEX, LJWT_DECODE);
    lua_getfield(L, -1, "encode");
    lua_setfield(L, LUA_REGISTRYINDEX, "tokend.jwt.encode");
    lua_pop(L, 1);
    lua_newtable(L);
    llib_register(L, h, fns);
    lua_setfield(L, -2, "jwt");
}
