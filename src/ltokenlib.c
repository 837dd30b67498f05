/* ltokenlib.c: tokend.generate_temp_token, tokend.audit and tokend.regions: temporary tokens for the script. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llib.h"
#include "ltoken.h"

/* Finds the endpoint opts asks for (region = name, product = "streaming" | "voice_agent")
 * among the world's; raises for an unknown one. */
static void ltoken_find_target(lua_State *L, const lhost_info *in, const char *region, const char *product, int opts,
                               ltoken_target *t) {
    *t = (ltoken_target){ NULL, in->websocket_url, NULL, "streaming" };
    if (product && strcmp(product, "voice_agent") == 0) {
        if (region)
            luaL_argerror(L, opts, "the Voice Agent API has no region (ASSEMBLYAI_AGENTS_URL is its one endpoint)");
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
    luaL_argerror(L, opts,
                  lua_pushfstring(L, "unknown region %s (ASSEMBLYAI_REGION_URLS names: %s)", region,
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
            if (i == 3) luaL_argerror(L, opts, "unknown option (known: max_session_duration_seconds, region, product)");
            lua_pop(L, 1);
        }
        lua_getfield(L, opts, "max_session_duration_seconds");
        int isint = 1;
        if (!lua_isnil(L, -1)) max_session = lua_tointegerx(L, -1, &isint);
        if (!isint || (!lua_isnil(L, -1) && max_session == 0)) max_session = -1; /* fails the check */
        lua_pop(L, 1);
        lua_getfield(L, opts, "region");
        luaL_argcheck(L, lua_isnil(L, -1) || lua_type(L, -1) == LUA_TSTRING, opts, "region must be a string");
        region = lua_tostring(L, -1); /* the options table keeps it */
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
    long expires = ltoken_opt_seconds(L, "expires_in_seconds"),
         session = ltoken_opt_seconds(L, "max_session_duration_seconds");
    ltoken_audit a;
    ltoken_audit_capture(L, h, expires, session, &a);
    audit_token(&a.who, provider, outcome, expires, session, token, tlen);
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
        { "generate_temp_token", ltoken_generate },
        { "regions", ltoken_regions },
        { "audit", ltoken_audit_lua },
        { NULL, NULL },
    };
    llib_register(L, h, fns);
}
