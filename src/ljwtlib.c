/* ljwtlib.c: tokend.jwt.verify and tokend.jwt.sign: JSON Web Tokens checked against a secret, keys, or an identity provider's JWKS. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto.h"
#include "fetch.h"
#include "llib.h"
#include "log.h"
#include "shdict.h"

#define LJWT_MAX_BYTES 8192             /* tokens longer than this are refused unread */
#define LJWT_LEEWAY_S 30                /* clock skew allowed on exp and nbf */
#define LJWT_JWKS_TTL_S 600             /* a JWKS is fetched again after this */
#define LJWT_REFETCH_S 30               /* an unknown kid refetches at most this often, all workers together */
#define LJWT_FETCH_MS 3000              /* deadline of a JWKS fetch */
#define LJWT_FAILED_S 30                /* after a failed fetch, the next waits this long */
#define LJWT_JWKS_MAX (256 * 1024)
#define LJWT_MAX_KEYS 64
#define LJWT_VERIFIED_SLOTS 256         /* signatures a key set remembers having verified */
#define LJWT_KEYSET "tokend.jwt.keyset"
#define LJWT_CACHE "tokend.jwt.jwks"
#define LJWT_KEYS_CACHE "tokend.jwt.keys"   /* options table -> its parsed keys (weak) */
#define LJWT_SHARED "tokend.jwt"            /* the shared dictionary of refetch times */
#define LJWT_SHARED_BYTES (8 * 1024 * 1024) /* its byte bound: JWKS documents are a few KiB */

extern int luaopen_cjson_safe(lua_State *L);

/* ---- key sets ---- */

typedef struct ljwt_key {
    char kid[128];                      /* "" when the key has none */
    char alg[16];                       /* the JWK's alg, "" when none */
    crypto_key *key;
} ljwt_key;

/* A token whose signature a key of the set verified: the SHA-256 of its whole text. */
typedef struct ljwt_verified {
    unsigned char digest[32];
    size_t key;                         /* the key's index + 1; 0: an empty slot */
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
    }       /* "oct" keys are never taken from a key set: a public JWKS holds no secrets */
    if (!key) return 0;
    ljwt_key *k = &ks->keys[ks->n++];
    const char *kid = llib_field_string(L, idx, NULL, "kid", NULL);
    const char *alg = llib_field_string(L, idx, NULL, "alg", NULL);
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
    if (lua_getfield(L, idx, "keys") == LUA_TTABLE) {                 /* a JWK Set */
        for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, -1); i++) {
            lua_rawgeti(L, -1, i);
            ljwt_add_jwk(L, -1, ks, err, sizeof err);
            lua_pop(L, 1);
        }
    } else if (!ljwt_add_jwk(L, idx, ks, err, sizeof err)) {        /* one JWK, or PEM strings */
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

/* ---- checking a token against keys ---- */

/* A token split into its parts, with the header's alg and kid. */
typedef struct ljwt_token {
    const char *text;
    size_t signed_len;                  /* header.payload */
    const char *payload;
    size_t payload_len;
    unsigned char sig[CRYPTO_MAX_SIGNATURE];
    size_t sig_len;
    size_t len;                         /* of text */
    char alg[16];
    char kid[128];
} ljwt_token;

/* Splits and decodes the header of text. Returns NULL, or why it is not a JWT. */
static const char *ljwt_split(lua_State *L, const char *text, size_t len, ljwt_token *t) {
    const char *dot1 = memchr(text, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - text)) : NULL;
    if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - text))) return "not a JWT (three dot-separated parts)";
    size_t hlen = (size_t)(dot1 - text), slen = len - (size_t)(dot2 + 1 - text);
    unsigned char header[1024];
    size_t n;
    if (hlen / 4 * 3 + 3 > sizeof header || crypto_base64_decode(text, hlen, header, &n, 1) < 0)
        return "the JWT header is not base64url";
    if (slen / 4 * 3 + 3 > sizeof t->sig || crypto_base64_decode(dot2 + 1, slen, t->sig, &t->sig_len, 1) < 0)
        return "the JWT signature is not base64url";
    ljwt_json_decode(L, (const char *)header, n);
    if (!lua_istable(L, -1)) return "the JWT header is not a JSON object";
    const char *alg = llib_field_string(L, -1, NULL, "alg", NULL);
    const char *kid = llib_field_string(L, -1, NULL, "kid", NULL);
    lua_getfield(L, -1, "crit");
    int has_crit = !lua_isnil(L, -1);
    lua_pop(L, 2);
    if (!alg || strlen(alg) >= sizeof t->alg) return "the JWT header has no alg";
    if (has_crit) return "the JWT header has critical extensions tokend does not know";
    if (kid && strlen(kid) >= sizeof t->kid) return "the JWT kid is too long";
    t->text = text;
    t->len = len;
    t->signed_len = (size_t)(dot2 - text);
    t->payload = dot1 + 1;
    t->payload_len = (size_t)(dot2 - dot1 - 1);
    snprintf(t->alg, sizeof t->alg, "%s", alg);
    snprintf(t->kid, sizeof t->kid, "%s", kid ? kid : "");
    return NULL;
}

/* 1 when alg is among opts.algorithms (opts at index 2), or, without that list, when
 * deflt allows it. "none" never is. */
static int ljwt_alg_allowed(lua_State *L, const char *alg, int deflt) {
    if (strcmp(alg, "none") == 0) return 0;
    if (lua_getfield(L, 2, "algorithms") != LUA_TTABLE) {
        lua_pop(L, 1);
        return deflt;
    }
    int found = 0;
    for (lua_Integer i = 1; !found && i <= (lua_Integer)lua_rawlen(L, -1); i++) {
        lua_rawgeti(L, -1, i);
        const char *a = lua_tostring(L, -1);
        found = a && strcmp(a, alg) == 0;
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

/* The signature is good: decodes the claims and checks exp, nbf, iss and aud. Pushes
 * the claims, or nil and why. */
static int ljwt_check_claims(lua_State *L, const ljwt_token *t) {
    unsigned char *payload = lua_newuserdatauv(L, t->payload_len / 4 * 3 + 3, 0);
    size_t n;
    if (crypto_base64_decode(t->payload, t->payload_len, payload, &n, 1) < 0) return llib_fail(L, "the JWT payload is not base64url");
    ljwt_json_decode(L, (const char *)payload, n);
    if (!lua_istable(L, -1)) return llib_fail(L, "the JWT payload is not a JSON object");
    int claims = lua_gettop(L);
    double leeway = ljwt_opt_seconds(L, "leeway_seconds", LJWT_LEEWAY_S);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double now = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    lua_getfield(L, claims, "exp");
    if (lua_isnil(L, -1)) {
        lua_getfield(L, 2, "require_exp");
        int optional = lua_isboolean(L, -1) && !lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (!optional) return llib_fail(L, "the token has no exp (expiry)");
    } else if (!lua_isnumber(L, -1)) {
        return llib_fail(L, "the token's exp is not a number");
    } else if (now >= lua_tonumber(L, -1) + leeway) {      /* valid before exp (RFC 7519 4.1.4) */
        return llib_fail(L, "the token expired");
    }
    lua_getfield(L, claims, "nbf");
    if (!lua_isnil(L, -1) && (!lua_isnumber(L, -1) || now + leeway < lua_tonumber(L, -1)))
        return llib_fail(L, "the token is not valid yet (nbf)");
    if (lua_getfield(L, 2, "issuer") != LUA_TNIL) {
        lua_getfield(L, claims, "iss");
        if (!lua_rawequal(L, -1, -2) || lua_type(L, -1) != LUA_TSTRING) return llib_fail(L, "the token's issuer is not the one expected");
    }
    if (lua_getfield(L, 2, "audience") != LUA_TNIL) {
        int wanted = lua_gettop(L);
        lua_getfield(L, claims, "aud");
        if (!ljwt_claim_matches(L, wanted)) return llib_fail(L, "the token's audience is not the one expected");
    }
    lua_settop(L, claims);
    return 1;
}

/* Checks t's signature against the keys of ks (a kid selects among them; a signature
 * ks verified before is not checked again) or the secret of opts; pushes the claims or
 * nil, err. */
static int ljwt_check(lua_State *L, const ljwt_token *t, ljwt_keyset *ks) {
    size_t slen = 0;
    const char *secret = llib_field_string(L, 2, NULL, "secret", &slen);
    if (secret) {
        if (strncmp(t->alg, "HS", 2) != 0 || !ljwt_alg_allowed(L, t->alg, 1))
            return llib_fail(L, "the token's algorithm %s is not allowed with a secret", t->alg);
        if (!crypto_jws_verify(t->alg, NULL, secret, slen, t->text, t->signed_len, t->sig, t->sig_len))
            return llib_fail(L, "the token's signature is not valid");
        return ljwt_check_claims(L, t);
    }
    int tried = 0;
    unsigned char digest[CRYPTO_MAX_DIGEST];
    ljwt_verified *seen = NULL;
    if (ks && crypto_digest("sha256", t->text, t->len, digest) == sizeof seen->digest)
        seen = &ks->verified[(digest[0] | (size_t)digest[1] << 8) % LJWT_VERIFIED_SLOTS];
    for (size_t i = 0; ks && i < ks->n; i++) {
        const ljwt_key *k = &ks->keys[i];
        if (t->kid[0] && k->kid[0] && strcmp(t->kid, k->kid) != 0) continue;
        if (t->kid[0] && !k->kid[0] && ks->n > 1) continue;
        if (k->alg[0] && strcmp(k->alg, t->alg) != 0) continue;
        if (!crypto_jws_fits(t->alg, crypto_key_kind_of(k->key)) || !ljwt_alg_allowed(L, t->alg, 1)) continue;
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
    if (!tried) return llib_fail(L, "no key fits the token (alg %s%s%s)", t->alg, t->kid[0] ? ", kid " : "", t->kid);
    return llib_fail(L, "the token's signature is not valid");
}

/* ---- JWKS from an identity provider ---- */

/* A verification waiting for a JWKS fetch. */
typedef struct ljwt_pending {
    struct ljwt_jwks *jwks;
    lhost_waiter *w;
    int call_ref;                       /* registry: {token, opts} */
    struct ljwt_pending *next;
} ljwt_pending;

/* What one state knows of one JWKS URL. A userdata in the cache table. */
typedef struct ljwt_jwks {
    struct ljwt_cache *cache;
    char url[512];
    int keyset_ref;                     /* registry: the keys, LUA_NOREF before the first fetch */
    uint64_t fetched_ms;                /* when they were fetched */
    uint64_t ttl_ms;                    /* jwks_ttl of the last call */
    uint64_t failed_ms;                 /* the last failed fetch, 0 when it worked */
    char error[300];
    fetch_call *fetching;
    ljwt_pending *waiters;
    struct ljwt_jwks *next;             /* the cache's list */
} ljwt_jwks;

/* The JWKS URLs of one state: a registry userdata, with a retire hook. */
typedef struct ljwt_cache {
    lhost *h;
    lua_State *L;
    ljwt_jwks *first;
    int stopped;
    shdict *shared;                     /* LJWT_SHARED once opened (see ljwt_shared) */
} ljwt_cache;

static int ljwt_verify_now(lua_State *L, const ljwt_token *t, int opts, ljwt_jwks *j);

/* Ends every wait on j with the keys it has now (or its error). */
static void ljwt_wake_all(ljwt_jwks *j);

static void ljwt_cancel_fetch(ljwt_jwks *j) {
    if (j->fetching) fetch_cancel(j->fetching);
    j->fetching = NULL;
}

static void ljwt_cache_on_retire(void *ud) {
    ljwt_cache *c = ud;
    c->stopped = 1;
    for (ljwt_jwks *j = c->first; j; j = j->next) {
        if (!j->fetching) continue;
        ljwt_cancel_fetch(j);
        snprintf(j->error, sizeof j->error, "the script was replaced while the JWKS was being fetched");
        j->failed_ms = loop_now_ms();
        ljwt_wake_all(j);
    }
}

static int ljwt_jwks_gc(lua_State *L) {
    ljwt_jwks *j = lua_touserdata(L, 1);
    ljwt_cancel_fetch(j);
    return 0;
}

/* The cache entry of url, made when first asked (pushes nothing). */
static ljwt_jwks *ljwt_jwks_of(lua_State *L, lhost *h, const char *url) {
    ljwt_cache *c;
    if (lua_getfield(L, LUA_REGISTRYINDEX, LJWT_CACHE) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        c = lua_newuserdatauv(L, sizeof *c, 0);
        *c = (ljwt_cache){ h, lhost_state(h), NULL, 0, NULL };
        lua_rawseti(L, -2, 0);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, LJWT_CACHE);
        lhost_on_retire(h, ljwt_cache_on_retire, c);
    }
    lua_rawgeti(L, -1, 0);
    c = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (lua_getfield(L, -1, url) == LUA_TUSERDATA) {
        ljwt_jwks *j = lua_touserdata(L, -1);
        lua_pop(L, 2);
        return j;
    }
    lua_pop(L, 1);
    ljwt_jwks *j = lua_newuserdatauv(L, sizeof *j, 0);
    memset(j, 0, sizeof *j);
    j->cache = c;
    j->keyset_ref = LUA_NOREF;
    snprintf(j->url, sizeof j->url, "%s", url);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, ljwt_jwks_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, -2, url);
    lua_pop(L, 1);
    j->next = c->first;
    c->first = j;
    return j;
}

/* Parses a fetched JWK Set into j's keys (protected; argument 1 is j, 2 the JSON text). */
static int ljwt_store_keys(lua_State *L) {
    ljwt_jwks *j = lua_touserdata(L, 1);
    size_t len;
    const char *text = lua_tolstring(L, 2, &len);
    ljwt_json_decode(L, text, len);
    if (!lua_istable(L, -1)) return luaL_error(L, "the JWKS is not JSON");
    if (lua_getfield(L, -1, "keys") != LUA_TTABLE) return luaL_error(L, "the JWKS has no keys");
    lua_pop(L, 1);
    ljwt_push_keyset_of(L, -1);
    luaL_unref(L, LUA_REGISTRYINDEX, j->keyset_ref);
    j->keyset_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

/* Pushes the outcome of a waiting verification (through lhost_wake): the token checked
 * against the keys j has now, or j's error. */
static int ljwt_push_pending(lua_State *L, void *ud) {
    ljwt_pending *p = ud;
    ljwt_token t;
    size_t len;
    lua_settop(L, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->call_ref);
    lua_rawgeti(L, 1, 1);
    lua_rawgeti(L, 1, 2);
    lua_remove(L, 1);           /* 1 token, 2 opts */
    const char *text = lua_tolstring(L, 1, &len);
    const char *why = ljwt_split(L, text, len, &t);
    if (why) return llib_fail(L, "%s", why);
    return ljwt_verify_now(L, &t, 2, p->jwks);
}

static void ljwt_wake_all(ljwt_jwks *j) {
    ljwt_pending *p = j->waiters;
    j->waiters = NULL;
    while (p) {
        ljwt_pending *next = p->next;
        lhost_wake(p->w, ljwt_push_pending, p);
        luaL_unref(j->cache->L, LUA_REGISTRYINDEX, p->call_ref);
        free(p);
        p = next;
    }
}

/* The dictionary all workers share: JWKS documents ("doc <url>", kept jwks_ttl) and the
 * time of each URL's last fetch ("refetch <url>", kept LJWT_REFETCH_S). */
static shdict *ljwt_shared(ljwt_cache *c) {
    char err[200];
    /* Opened once per state: every verification consults it, and opening takes the lock
     * of the registry all workers share. NULL (out of memory) is tried again next time. */
    if (!c->shared) c->shared = shdict_open(lhost_world_of(c->h)->shared, LJWT_SHARED, 1024, LJWT_SHARED_BYTES, err,
                                            sizeof err);
    return c->shared;
}

/* Gives the other workers a fetched document, and starts the refetch interval. */
static void ljwt_share(ljwt_jwks *j, const char *body, size_t len, uint64_t now) {
    shdict *d = ljwt_shared(j->cache);
    char key[600];
    if (!d || len > SHDICT_MAX_VALUE) return;
    shdict_value doc = { SHDICT_STRING, (char *)body, len, 0 }, one = { SHDICT_NUMBER, NULL, 0, 1 };
    snprintf(key, sizeof key, "doc %s", j->url);
    shdict_set(d, key, strlen(key), &doc, j->ttl_ms, now);
    snprintf(key, sizeof key, "refetch %s", j->url);
    shdict_set(d, key, strlen(key), &one, LJWT_REFETCH_S * 1000, now);
    snprintf(key, sizeof key, "failed %s", j->url);
    shdict_delete(d, key, strlen(key));
}

/* Tells the other workers the last fetch failed, and why, for LJWT_FAILED_S. */
static void ljwt_share_failure(ljwt_jwks *j, uint64_t now) {
    shdict *d = ljwt_shared(j->cache);
    char key[600];
    shdict_value why = { SHDICT_STRING, j->error, strlen(j->error), 0 };
    snprintf(key, sizeof key, "failed %s", j->url);
    if (d) shdict_set(d, key, strlen(key), &why, LJWT_FAILED_S * 1000, now);
}

/* Learns of a fetch that failed lately in another worker. Returns 1 then. */
static int ljwt_failed_elsewhere(ljwt_jwks *j, uint64_t now) {
    shdict *d = ljwt_shared(j->cache);
    char key[600];
    shdict_value why;
    snprintf(key, sizeof key, "failed %s", j->url);
    if (!d || shdict_get(d, key, strlen(key), now, &why) < 0 || why.type != SHDICT_STRING) return 0;
    snprintf(j->error, sizeof j->error, "%s", why.s);
    free(why.s);
    int64_t left = shdict_ttl(d, key, strlen(key), now);
    j->failed_ms = now - (LJWT_FAILED_S * 1000 - (uint64_t)(left > 0 ? left : 0));
    return 1;
}

/* Takes the document another worker fetched, if there is a fresh one. Returns 1 then. */
static int ljwt_adopt(lua_State *L, ljwt_jwks *j, uint64_t now) {
    shdict *d = ljwt_shared(j->cache);
    char key[600];
    shdict_value doc;
    snprintf(key, sizeof key, "doc %s", j->url);
    if (!d || shdict_get(d, key, strlen(key), now, &doc) < 0 || doc.type != SHDICT_STRING) return 0;
    lua_pushcfunction(L, ljwt_store_keys);
    lua_pushlightuserdata(L, j);
    lua_pushlstring(L, doc.s, doc.len);
    free(doc.s);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        lua_pop(L, 1);
        return 0;
    }
    j->fetched_ms = now;
    return 1;
}

static void ljwt_on_fetched(void *ud, const fetch_result *r) {
    ljwt_jwks *j = ud;
    lua_State *L = j->cache->L;
    j->fetching = NULL;
    uint64_t now = loop_now_ms();
    if (r->failure != FAILURE_NONE || r->status != 200) {
        if (r->failure != FAILURE_NONE) snprintf(j->error, sizeof j->error, "the JWKS fetch failed: %s", r->error);
        else snprintf(j->error, sizeof j->error, "the JWKS fetch answered HTTP %ld", r->status);
        j->failed_ms = now;
    } else {
        lua_pushcfunction(L, ljwt_store_keys);
        lua_pushlightuserdata(L, j);
        lua_pushlstring(L, r->body, r->body_len);
        if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
            snprintf(j->error, sizeof j->error, "the JWKS is unusable: %s", lua_tostring(L, -1));
            lua_pop(L, 1);
            j->failed_ms = now;
        } else {
            j->fetched_ms = now;
            j->failed_ms = 0;
            ljwt_share(j, r->body, r->body_len, now);
        }
    }
    if (j->failed_ms) {
        log_msg(LOG_WARN, "jwt: %s: %s", j->url, j->error);
        ljwt_share_failure(j, now);
    }
    ljwt_wake_all(j);
}

/* Starts fetching j's JWKS unless a fetch is going on. Returns 0, or -1 (j->error set). */
static int ljwt_fetch(ljwt_jwks *j, const lhost_world *world) {
    if (j->fetching) return 0;
    if (j->cache->stopped) {
        snprintf(j->error, sizeof j->error, "the script was replaced by a reload");
        return -1;
    }
    fetch_request rq = { .url = j->url, .timeout_ms = LJWT_FETCH_MS, .max_body = LJWT_JWKS_MAX };
    if (!(j->fetching = fetch_start(world->client, &rq, ljwt_on_fetched, j))) {
        snprintf(j->error, sizeof j->error, "out of memory fetching the JWKS");
        return -1;
    }
    return 0;
}

static void ljwt_pending_cancel(void *op) {
    ljwt_pending *p = op;
    for (ljwt_pending **pp = &p->jwks->waiters; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    luaL_unref(p->jwks->cache->L, LUA_REGISTRYINDEX, p->call_ref);
    free(p);
}

/* Checks t with the keys j has (opts at index opts), or fails with j's error. */
static int ljwt_verify_now(lua_State *L, const ljwt_token *t, int opts, ljwt_jwks *j) {
    (void)opts;
    if (j->keyset_ref == LUA_NOREF) return llib_fail(L, "%s", j->error[0] ? j->error : "no JWKS yet");
    lua_rawgeti(L, LUA_REGISTRYINDEX, j->keyset_ref);
    ljwt_keyset *ks = lua_touserdata(L, -1);
    lua_pop(L, 1);          /* the registry keeps it */
    return ljwt_check(L, t, ks);
}

/* 1 when j's keys hold t's kid (or t has none). */
static int ljwt_knows_kid(lua_State *L, ljwt_jwks *j, const ljwt_token *t) {
    if (!t->kid[0] || j->keyset_ref == LUA_NOREF) return j->keyset_ref != LUA_NOREF;
    lua_rawgeti(L, LUA_REGISTRYINDEX, j->keyset_ref);
    const ljwt_keyset *ks = lua_touserdata(L, -1);
    lua_pop(L, 1);
    for (size_t i = 0; i < ks->n; i++)
        if (strcmp(ks->keys[i].kid, t->kid) == 0) return 1;
    return 0;
}

/* Verifies with a JWKS URL: at once with the keys in hand; else waits for a fetch. Keys
 * past jwks_ttl are used while a fetch renews them; an unknown kid fetches again at most
 * once per LJWT_REFETCH_S for all workers; a failed fetch is not retried for LJWT_FAILED_S. */
static int ljwt_verify_jwks(lua_State *L, lhost *h, const ljwt_token *t, const char *url) {
    const lhost_world *world;
    ljwt_jwks *j = ljwt_jwks_of(L, h, url);
    uint64_t now = loop_now_ms();
    uint64_t ttl_ms = j->ttl_ms = (uint64_t)(ljwt_opt_seconds(L, "jwks_ttl", LJWT_JWKS_TTL_S) * 1000);
    if ((j->keyset_ref == LUA_NOREF || now - j->fetched_ms >= ttl_ms) && !j->fetching) ljwt_adopt(L, j, now);
    int have = j->keyset_ref != LUA_NOREF;
    if (!j->fetching && !(j->failed_ms && now - j->failed_ms < LJWT_FAILED_S * 1000)) ljwt_failed_elsewhere(j, now);
    int failed_lately = j->failed_ms && now - j->failed_ms < LJWT_FAILED_S * 1000;
    if (have && ljwt_knows_kid(L, j, t)) {
        if (now - j->fetched_ms >= ttl_ms && !failed_lately) ljwt_fetch(j, lhost_world_of(h));  /* renewed meanwhile */
        return ljwt_verify_now(L, t, 2, j);
    }
    if (failed_lately && !have) return llib_fail(L, "%s", j->error);
    if (have) {         /* an unknown kid: the provider may have rotated its keys */
        char key[600];
        shdict_value one = { SHDICT_NUMBER, NULL, 0, 1 };
        shdict *refetches = ljwt_shared(j->cache);
        snprintf(key, sizeof key, "refetch %s", url);
        if (failed_lately || !refetches ||
            shdict_add(refetches, key, strlen(key), &one, LJWT_REFETCH_S * 1000, now) == SHDICT_EXISTS)
            return llib_fail(L, "no key has the token's kid %s (the JWKS was fetched lately)", t->kid);
    }
    lhost_waiter *w = lhost_wait_begin(h, L, "tokend.jwt.verify", &world);
    if (ljwt_fetch(j, world) < 0) return llib_fail(L, "%s", j->error);
    ljwt_pending *p = malloc(sizeof *p);
    if (!p) return llib_fail(L, "out of memory");
    lua_createtable(L, 2, 0);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, 2);
    p->call_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    p->jwks = j;
    p->w = w;
    p->next = j->waiters;
    j->waiters = p;
    return lhost_wait(w, L, ljwt_pending_cancel, p);
}

/* tokend.jwt.verify(token, {secret | keys | jwks_url, algorithms, issuer, audience,
 * leeway_seconds = 30, max_bytes = 8192, jwks_ttl = 600, require_exp = true})
 * -> claims | nil, err */
static int ljwt_verify(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    size_t len;
    luaL_checktype(L, 1, LUA_TSTRING);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    const char *text = lua_tolstring(L, 1, &len);
    double max_bytes = llib_opt_number(L, 2, "max_bytes", LJWT_MAX_BYTES, "tokend.jwt");
    size_t secretlen = 0;
    const char *secret = llib_field_string(L, 2, NULL, "secret", &secretlen);
    const char *url = llib_field_string(L, 2, NULL, "jwks_url", NULL);
    lua_getfield(L, 2, "keys");
    int has_keys = !lua_isnil(L, -1);
    lua_pop(L, 1);
    luaL_argcheck(L, (secret != NULL) + has_keys + (url != NULL) == 1, 2, "give one of secret, keys or jwks_url");
    luaL_argcheck(L, !secret || secretlen > 0, 2, "the secret is empty");
    luaL_argcheck(L, !url || strncmp(url, "https://", 8) == 0 || strncmp(url, "http://", 7) == 0, 2,
                  "jwks_url must be an http:// or https:// URL");
    if ((double)len > max_bytes) return llib_fail(L, "the token is larger than %d bytes", (int)max_bytes);
    ljwt_token t;
    const char *why = ljwt_split(L, text, len, &t);
    if (why) return llib_fail(L, "%s", why);
    if (url) return ljwt_verify_jwks(L, h, &t, url);
    if (secret) return ljwt_check(L, &t, NULL);
    /* Keys given by the script: parsed once per options table. */
    lua_getfield(L, LUA_REGISTRYINDEX, LJWT_KEYS_CACHE);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, -2) != LUA_TUSERDATA) {
        lua_pop(L, 1);
        lua_getfield(L, 2, "keys");
        ljwt_push_keyset_of(L, -1);
        lua_remove(L, -2);
        lua_pushvalue(L, 2);
        lua_pushvalue(L, -2);
        lua_rawset(L, -4);
    }
    ljwt_keyset *ks = lua_touserdata(L, -1);
    return ljwt_check(L, &t, ks);
}

/* tokend.jwt.sign(claims, {secret = ... | private_key = PEM, alg = ..., kid = ...}) -> token */
static int ljwt_sign(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    size_t klen = 0, slen = 0;
    const char *pem = llib_field_string(L, 2, NULL, "private_key", &klen);
    const char *secret = llib_field_string(L, 2, NULL, "secret", &slen);
    const char *alg = llib_field_string(L, 2, NULL, "alg", NULL);
    const char *kid = llib_field_string(L, 2, NULL, "kid", NULL);
    char err[200];
    luaL_argcheck(L, (pem != NULL) != (secret != NULL), 2, "give a secret or a private_key");
    luaL_argcheck(L, !secret || slen > 0, 2, "the secret is empty");
    crypto_key *key = NULL;
    if (pem) {
        if (!(key = crypto_key_from_pem(pem, klen, 1, err, sizeof err))) return luaL_error(L, "tokend.jwt.sign: %s", err);
        static const char *const defaults[] = { "RS256", "ES256", "ES384", "EdDSA" };
        if (!alg) alg = defaults[crypto_key_kind_of(key)];
    } else if (!alg) {
        alg = "HS256";
    }
    int fits = secret ? strncmp(alg, "HS", 2) == 0 && (strcmp(alg, "HS256") == 0 || strcmp(alg, "HS384") == 0 ||
                                                     strcmp(alg, "HS512") == 0)
                      : crypto_jws_fits(alg, crypto_key_kind_of(key));
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
    lua_getfield(L, -1, "decode");
    lua_setfield(L, LUA_REGISTRYINDEX, LJWT_DECODE);
    lua_getfield(L, -1, "encode");
    lua_setfield(L, LUA_REGISTRYINDEX, "tokend.jwt.encode");
    lua_pop(L, 1);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, LJWT_KEYS_CACHE);
    lua_newtable(L);
    llib_register(L, h, fns);
    lua_setfield(L, -2, "jwt");
}
