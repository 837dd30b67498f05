/* ltokenlib.c: tokend.generate_temp_token: temporary tokens for the script, and their outcome. */
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>

#include "crypto.h"
#include "llib.h"
#include "log.h"
#include "lrequest.h"
#include "ltokenlib.h"
#include "metrics.h"


void ltoken_audit_capture(lua_State *L, lhost *h, long expires_in_s, long max_session_s, ltoken_audit *a) {
    memset(a, 0, sizeof *a);
    a->expires_in_s = expires_in_s;
    a->max_session_s = max_session_s;
    lhost_request_minted(h, L);         /* an audited route's answer needs no line of its own */
    lhost_push_request(h, L);
    if (lua_istable(L, -1)) lrequest_who(L, -1, &a->who);
    lua_pop(L, 1);
}

/* Writes the audit line of a token request: who asked, what for, and what came of it;
 * of the token itself only the first 8 hex digits of its SHA-256. */
static void ltoken_audit_write(const upstream_result *r, const ltoken_audit *a) {
    char hash[17] = "";
    unsigned char digest[CRYPTO_MAX_DIGEST];
    if (!log_enabled(LOG_INFO)) return;         /* no line: no hash of the token either */
    if (r->token && crypto_digest("sha256", r->token, strlen(r->token), digest)) crypto_hex(digest, 4, hash);
    audit_token(&a->who, r->token ? (a->pooled ? "pooled" : "minted") : r->kind,
                r->token ? r->expires_in_seconds : a->expires_in_s, a->max_session_s, hash);
}

int ltoken_push_outcome(lua_State *L, const upstream_result *r, const ltoken_audit *a) {
    if (!a || !a->pooled) metrics_upstream(r->failure, r->elapsed_ms);
    if (r->token) log_msg(LOG_DEBUG, "token minted in %.1f ms", r->elapsed_ms);
    else if (r->failure != FAILURE_NO_KEY && !(a && a->quiet))
        log_msg(LOG_WARN, "token request failed (%s): %s", r->kind, r->error);
    if (a) ltoken_audit_write(r, a);
    if (r->token) {
        lua_pushstring(L, r->token);
        lua_createtable(L, 0, 2);
        lua_pushinteger(L, r->expires_in_seconds);
        lua_setfield(L, -2, "expires_in_seconds");
        lua_pushboolean(L, a && a->pooled);
        lua_setfield(L, -2, "pooled");
        return 2;
    }
    lua_pushnil(L);
    lua_pushstring(L, r->error);
    if (r->http_status) lua_pushinteger(L, r->http_status);
    else lua_pushnil(L);
    lua_createtable(L, 0, 2);
    lua_pushstring(L, r->kind);
    lua_setfield(L, -2, "kind");
    if (r->retry_after >= 0) {
        lua_pushinteger(L, r->retry_after);
        lua_setfield(L, -2, "retry_after");
    }
    return 4;
}

/* Where a token is minted and its session streams: one of AssemblyAI's endpoints. */
typedef struct ltoken_target {
    const char *token_url;          /* NULL: the upstream's own (ASSEMBLYAI_STREAMING_URL) */
    const char *websocket_url;
    const char *region;             /* a data zone's name, or NULL */
    const char *product;            /* "streaming" or "voice_agent" */
} ltoken_target;

/* One token request in flight: its waiter, the audit context of its caller, where it was
 * minted and who wants to see the outcome. */
typedef struct ltoken_call {
    lhost_waiter *w;
    upstream_call *call;
    const upstream_result *result;
    ltoken_audit audit;
    ltoken_target target;
    ltoken_observe_fn *observe;
    void *observe_ud;
} ltoken_call;

/* Adds where the token goes to the info table on top (a success's second result). */
static void ltoken_describe(lua_State *L, const ltoken_target *t) {
    lua_pushstring(L, t->websocket_url);
    lua_setfield(L, -2, "websocket_url");
    lua_pushstring(L, t->product);
    lua_setfield(L, -2, "product");
    if (t->region) {
        lua_pushstring(L, t->region);
        lua_setfield(L, -2, "region");
    }
}

static int ltoken_push_result(lua_State *L, void *ud) {
    ltoken_call *c = ud;
    int n = ltoken_push_outcome(L, c->result, &c->audit);
    if (c->result->token && c->target.websocket_url) ltoken_describe(L, &c->target);
    return n;
}

static void ltoken_on_result(void *ud, const upstream_result *r) {
    ltoken_call *c = ud;
    c->result = r;
    if (c->observe) c->observe(c->observe_ud, r);
    lhost_wake(c->w, ltoken_push_result, c);
    free(c);
}

static void ltoken_cancel(void *op) {
    ltoken_call *c = op;
    upstream_cancel(c->call);
    free(c);
}

/* Finds the endpoint opts asks for (region = name, product = "streaming" | "voice_agent")
 * among the world's; raises for an unknown one. */
static void ltoken_find_target(lua_State *L, const lhost_info *in, const char *region, const char *product, int opts,
                               ltoken_target *t) {
    *t = (ltoken_target){ NULL, in->websocket_url, NULL, "streaming" };
    if (product && strcmp(product, "voice_agent") == 0) {
        if (region) luaL_argerror(L, opts, "the Voice Agent API has no region (ASSEMBLYAI_AGENTS_URL is its one endpoint)");
        *t = (ltoken_target){ in->agents->token_url, in->agents->websocket_url, NULL, "voice_agent" };
        return;
    }
    if (product && strcmp(product, "streaming") != 0)
        luaL_argerror(L, opts, lua_pushfstring(L, "unknown product %s (streaming or voice_agent)", product));
    if (!region) return;
    luaL_Buffer known;
    luaL_buffinit(L, &known);
    for (size_t i = 0; i < in->nregions; i++) {
        if (strcmp(in->regions[i].name, region) == 0) {
            luaL_pushresult(&known);
            lua_pop(L, 1);
            *t = (ltoken_target){ in->regions[i].endpoints.token_url, in->regions[i].endpoints.websocket_url,
                                  in->regions[i].name, "streaming" };
            return;
        }
        if (i) luaL_addstring(&known, ", ");
        luaL_addstring(&known, in->regions[i].name);
    }
    luaL_pushresult(&known);
    luaL_argerror(L, opts, lua_pushfstring(L, "unknown region %s (ASSEMBLYAI_REGION_URLS names: %s)", region,
                                           in->nregions ? lua_tostring(L, -1) : "none"));
}

/* Checks generate_temp_token's arguments at stack index idx (expires_in_seconds, then an
 * optional options table: max_session_duration_seconds, region, product); raises on a bad
 * one. */
static void ltoken_check_args(lua_State *L, int idx, long *expires_in_s, long *max_session_s, ltoken_target *t) {
    static const char *const known[] = { "max_session_duration_seconds", "region", "product" };
    char err[160];
    const char *region = NULL, *product = NULL;
    lua_Integer expires = luaL_checkinteger(L, idx);
    lua_Integer max_session = 0;
    int opts = idx + 1;
    if (!lua_isnoneornil(L, opts)) {
        luaL_checktype(L, opts, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, opts)) {
            size_t i = 0;
            while (i < 3 && !(lua_type(L, -2) == LUA_TSTRING && strcmp(lua_tostring(L, -2), known[i]) == 0)) i++;
            if (i == 3)
                luaL_argerror(L, opts, "unknown option (known: max_session_duration_seconds, region, product)");
            lua_pop(L, 1);
        }
        lua_getfield(L, opts, "max_session_duration_seconds");
        int isint = 1;
        if (!lua_isnil(L, -1)) max_session = lua_tointegerx(L, -1, &isint);
        if (!isint || (!lua_isnil(L, -1) && max_session == 0)) max_session = -1;   /* fails the check */
        lua_pop(L, 1);
        lua_getfield(L, opts, "region");
        luaL_argcheck(L, lua_isnil(L, -1) || lua_type(L, -1) == LUA_TSTRING, opts, "region must be a string");
        region = lua_tostring(L, -1);       /* the options table keeps it */
        lua_getfield(L, opts, "product");
        luaL_argcheck(L, lua_isnil(L, -1) || lua_type(L, -1) == LUA_TSTRING, opts, "product must be a string");
        product = lua_tostring(L, -1);
        lua_pop(L, 2);
    }
    if (expires < LONG_MIN / 2 || expires > LONG_MAX / 2) expires = -1;
    if (upstream_check_token_args((long)expires, 0, err, sizeof err) < 0) luaL_argerror(L, idx, err);
    if (upstream_check_token_args(UPSTREAM_EXPIRES_MIN, (long)max_session, err, sizeof err) < 0)
        luaL_argerror(L, opts, err);
    ltoken_find_target(L, lhost_world_of(LLIB_HOST(L))->info, region, product, opts, t);
    *expires_in_s = (long)expires;
    *max_session_s = (long)max_session;
}

/* ltoken_mint at target (NULL: the upstream's own endpoint). */
static int ltoken_mint_at(lua_State *L, lhost *h, const char *fn, const ltoken_target *target, long expires,
                          long max_session, ltoken_observe_fn *observe, void *observe_ud) {
    const lhost_world *world;
    lhost_waiter *w = lhost_wait_begin(h, L, fn, &world);
    ltoken_audit audit;
    ltoken_audit_capture(L, h, expires, max_session, &audit);
    if (!upstream_has_key(world->up)) {
        upstream_result r;
        upstream_no_key(&r);
        if (observe) observe(observe_ud, &r);
        return ltoken_push_outcome(L, &r, &audit);
    }
    ltoken_call *c = malloc(sizeof *c);
    if (!c) return llib_fail(L, "out of memory starting the token request");
    c->w = w;
    c->audit = audit;
    c->target = target ? *target : (ltoken_target){ NULL, NULL, NULL, NULL };
    c->observe = observe;
    c->observe_ud = observe_ud;
    c->call = target && target->token_url
        ? upstream_mint_at(world->up, target->token_url, expires, max_session, ltoken_on_result, c)
        : upstream_mint(world->up, expires, max_session, ltoken_on_result, c);
    if (!c->call) {
        free(c);
        return llib_fail(L, "out of memory starting the token request");
    }
    return lhost_wait(w, L, ltoken_cancel, c);
}

int ltoken_mint(lua_State *L, lhost *h, const char *fn, long expires, long max_session, ltoken_observe_fn *observe,
                void *observe_ud) {
    return ltoken_mint_at(L, h, fn, NULL, expires, max_session, observe, observe_ud);
}

/* tokend.generate_temp_token(expires_in_seconds[, {max_session_duration_seconds = M,
 * region = "eu", product = "streaming" | "voice_agent"}]) */
static int ltoken_generate(lua_State *L) {
    long expires, max_session;
    ltoken_target target;
    ltoken_check_args(L, 1, &expires, &max_session, &target);
    return ltoken_mint_at(L, LLIB_HOST(L), "tokend.generate_temp_token", &target, expires, max_session, NULL, NULL);
}

/* Reads t[field] as an integer >= 0 (0 when absent); raises otherwise. */
static long ltoken_opt_seconds(lua_State *L, const char *field) {
    lua_getfield(L, 1, field);
    int isint = 1;
    lua_Integer v = lua_isnil(L, -1) ? 0 : lua_tointegerx(L, -1, &isint);
    if (!isint || v < 0 || v > LONG_MAX / 2) luaL_error(L, "tokend.audit: %s must be a whole number of seconds", field);
    lua_pop(L, 1);
    return (long)v;
}

/* tokend.audit{provider, token | outcome, expires_in_seconds, max_session_duration_seconds}:
 * the audit line of a credential minted by a provider module (not generate_temp_token),
 * for the request running: who asked, the outcome ("minted" with a token, or the failure's
 * kind) and the first 8 hex digits of the token's SHA-256; an audited route then writes
 * no line of its own. */
static int ltoken_audit_lua(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    const char *provider = llib_field_string(L, 1, NULL, "provider", NULL);
    const char *outcome = llib_field_string(L, 1, NULL, "outcome", NULL);
    size_t tlen = 0;
    const char *token = llib_field_string(L, 1, NULL, "token", &tlen);
    luaL_argcheck(L, provider && *provider, 1, "provider must be a name");
    luaL_argcheck(L, token || outcome, 1, "give the token, or the outcome of a failure");
    if (!outcome) outcome = "minted";
    long expires = ltoken_opt_seconds(L, "expires_in_seconds"), session = ltoken_opt_seconds(L, "max_session_duration_seconds");
    ltoken_audit a;
    ltoken_audit_capture(L, h, expires, session, &a);
    char hash[17] = "";
    unsigned char digest[CRYPTO_MAX_DIGEST];
    if (token && crypto_digest("sha256", token, tlen, digest)) crypto_hex(digest, 4, hash);
    audit_token_of(&a.who, provider, outcome, expires, session, hash);
    return 0;
}

/* tokend.regions() -> { name = websocket_url, ... }: the data zones a script may mint in. */
static int ltoken_regions(lua_State *L) {
    const lhost_info *in = lhost_world_of(LLIB_HOST(L))->info;
    lua_createtable(L, 0, (int)in->nregions);
    for (size_t i = 0; i < in->nregions; i++) {
        lua_pushstring(L, in->regions[i].endpoints.websocket_url);
        lua_setfield(L, -2, in->regions[i].name);
    }
    return 1;
}

void ltokenlib_open(lua_State *L, lhost *h) {
    static const luaL_Reg fns[] = {
        { "generate_temp_token", ltoken_generate }, { "regions", ltoken_regions }, { "audit", ltoken_audit_lua },
        { NULL, NULL },
    };
    llib_register(L, h, fns);
}
