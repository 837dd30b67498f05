/* lpolicylib.c: tokend.limiter and tokend.origins: who may ask, and how often. */
#include <string.h>

#include "llib.h"
#include "loop.h"

#define LPOLICY_LIMITER "tokend.limiter"
#define LPOLICY_ORIGINS "tokend.origins"
#define LPOLICY_MAX_ORIGINS 64

typedef struct lpolicy_limiter {
    policy_buckets *buckets;
    int id;
} lpolicy_limiter;

typedef struct lpolicy_origins {
    policy_origins *list;
} lpolicy_origins;

/* tokend.limiter{name = "token", rate = 10, per = 60, burst = 5}: a token bucket per client,
 * shared by every worker (the same name gives the same buckets). */
static int lpolicy_limiter_new(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    char err[200];
    luaL_checktype(L, 1, LUA_TTABLE);
    lhost_check_loading(L, h, "limiter");
    lua_getfield(L, 1, "name");
    const char *name = lua_tostring(L, -1);
    luaL_argcheck(L, name != NULL, 1, "name (a string) is required");
    double rate = llib_opt_number(L, 1, "rate", -1, "limiter");
    double per = llib_opt_number(L, 1, "per", 60, "limiter");
    double burst = llib_opt_number(L, 1, "burst", rate, "limiter");
    policy_buckets *buckets = lhost_world_of(h)->buckets;
    int id = policy_limiter(buckets, name, rate, per, burst, err, sizeof err);
    if (id < 0) return luaL_error(L, "%s", err);
    lpolicy_limiter *lim = lua_newuserdatauv(L, sizeof *lim, 0);
    lim->buckets = buckets;
    lim->id = id;
    luaL_setmetatable(L, LPOLICY_LIMITER);
    return 1;
}

/* limiter:take(key) -> true | false, retry_after_seconds */
static int lpolicy_limiter_take(lua_State *L) {
    lpolicy_limiter *lim = luaL_checkudata(L, 1, LPOLICY_LIMITER);
    const char *key = luaL_checkstring(L, 2);
    long retry = 0;
    if (policy_take(lim->buckets, lim->id, key, loop_now_ms(), &retry)) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_pushinteger(L, retry);
    return 2;
}

static int lpolicy_origins_gc(lua_State *L) {
    lpolicy_origins *o = luaL_checkudata(L, 1, LPOLICY_ORIGINS);
    policy_origins_free(o->list);
    o->list = NULL;
    return 0;
}

/* tokend.origins{"https://app.example.com", "http://localhost:*"}: who may call from a page. */
static int lpolicy_origins_new(lua_State *L) {
    const char *pats[LPOLICY_MAX_ORIGINS];
    char err[300];
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = luaL_len(L, 1);
    luaL_argcheck(L, n <= LPOLICY_MAX_ORIGINS, 1, "at most 64 origins");
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, 1, i);
        pats[i - 1] = lua_tostring(L, -1);
        if (!pats[i - 1]) return luaL_error(L, "origin %d is not a string", (int)i);
        lua_pop(L, 1);      /* the string stays alive: the table holds it */
    }
    lpolicy_origins *o = lua_newuserdatauv(L, sizeof *o, 0);
    o->list = NULL;
    luaL_setmetatable(L, LPOLICY_ORIGINS);
    if (policy_origins_parse(pats, (size_t)n, &o->list, err, sizeof err) < 0) return luaL_error(L, "%s", err);
    return 1;
}

/* Classifies req's Origin; leaves nothing on the stack. */
static int lpolicy_origin_of(lua_State *L, lpolicy_origins *o, const char **origin) {
    luaL_checktype(L, 2, LUA_TTABLE);
    *origin = llib_field_string(L, 2, "headers", "origin", NULL);
    return policy_origin_check(o->list, *origin, llib_field_string(L, 2, "headers", "host", NULL), "http");
}

/* origins:check(req) -> headers (CORS headers to add, maybe none) | nil, err */
static int lpolicy_origins_check(lua_State *L) {
    lpolicy_origins *o = luaL_checkudata(L, 1, LPOLICY_ORIGINS);
    const char *origin;
    int verdict = lpolicy_origin_of(L, o, &origin);
    if (verdict == POLICY_ORIGIN_DENIED) return llib_fail(L, "this origin may not request tokens");
    lua_createtable(L, 0, 2);
    if (verdict == POLICY_ORIGIN_ALLOWED) {
        lua_pushstring(L, origin);
        lua_setfield(L, -2, "Access-Control-Allow-Origin");
        lua_pushliteral(L, "Origin");
        lua_setfield(L, -2, "Vary");
    }
    return 1;
}

/* origins:preflight(req, "GET") -> status, body, headers: the answer to a CORS OPTIONS. */
static int lpolicy_origins_preflight(lua_State *L) {
    lpolicy_origins *o = luaL_checkudata(L, 1, LPOLICY_ORIGINS);
    const char *methods = luaL_optstring(L, 3, "GET");
    const char *origin;
    int verdict = lpolicy_origin_of(L, o, &origin);
    const char *asked = llib_field_string(L, 2, "headers", "access-control-request-method", NULL);
    int method_ok = asked && *asked && strstr(methods, asked) != NULL;
    if (verdict == POLICY_ORIGIN_DENIED || verdict == POLICY_ORIGIN_NONE || !method_ok) {
        lua_pushinteger(L, 403);
        lua_createtable(L, 0, 1);
        lua_pushstring(L, verdict == POLICY_ORIGIN_DENIED ? "this origin may not request tokens"
                          : "not a valid CORS preflight request");
        lua_setfield(L, -2, "error");
        lua_createtable(L, 0, 1);
        lua_pushliteral(L, "Origin");
        lua_setfield(L, -2, "Vary");
        return 3;
    }
    lua_pushinteger(L, 204);
    lua_pushnil(L);
    lua_createtable(L, 0, 5);
    lua_pushstring(L, origin);
    lua_setfield(L, -2, "Access-Control-Allow-Origin");
    lua_pushstring(L, methods);
    lua_setfield(L, -2, "Access-Control-Allow-Methods");
    const char *want = llib_field_string(L, 2, "headers", "access-control-request-headers", NULL);
    if (want) {
        lua_pushstring(L, want);
        lua_setfield(L, -2, "Access-Control-Allow-Headers");
    }
    lua_pushliteral(L, "600");
    lua_setfield(L, -2, "Access-Control-Max-Age");
    lua_pushliteral(L, "Origin");
    lua_setfield(L, -2, "Vary");
    return 3;
}

void lpolicylib_open(lua_State *L, lhost *h) {
    static const luaL_Reg limiter_methods[] = { { "take", lpolicy_limiter_take }, { NULL, NULL } };
    static const luaL_Reg origins_methods[] = {
        { "check", lpolicy_origins_check }, { "preflight", lpolicy_origins_preflight }, { NULL, NULL },
    };
    static const luaL_Reg fns[] = { { "limiter", lpolicy_limiter_new }, { "origins", lpolicy_origins_new }, { NULL, NULL } };
    llib_class(L, LPOLICY_LIMITER, limiter_methods, NULL);
    llib_class(L, LPOLICY_ORIGINS, origins_methods, lpolicy_origins_gc);
    llib_register(L, h, fns);
}
