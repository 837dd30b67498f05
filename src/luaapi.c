/* luaapi.c: the `tokend` Lua module that scripts require. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#include "log.h"
#include "luaapi.h"

#define LAPI_HOST(L) ((host *)lua_touserdata((L), lua_upvalueindex(1)))

static void lapi_check_loading(lua_State *L, host *h, const char *fn) {
    if (!host_loading(h)) luaL_error(L, "tokend.%s can only be called while the script loads", fn);
}

/* tokend.route(method, path, handler) */
static int lapi_route(lua_State *L) {
    host *h = LAPI_HOST(L);
    size_t mlen;
    const char *method = luaL_checklstring(L, 1, &mlen);
    const char *path = luaL_checkstring(L, 2);
    char upper[16], err[256];
    luaL_checktype(L, 3, LUA_TFUNCTION);
    lapi_check_loading(L, h, "route");
    luaL_argcheck(L, mlen > 0 && mlen < sizeof upper, 1, "not an HTTP method");
    for (size_t i = 0; i <= mlen; i++) upper[i] = (char)toupper((unsigned char)method[i]);
    lua_pushvalue(L, 3);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (router_add(host_router(h), upper, path, ref, err, sizeof err) < 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        return luaL_error(L, "%s", err);
    }
    return 0;
}

/* tokend.static(prefix, dir) */
static int lapi_static(lua_State *L) {
    host *h = LAPI_HOST(L);
    const char *prefix = luaL_checkstring(L, 1);
    const char *dir = luaL_checkstring(L, 2);
    char err[512];
    lapi_check_loading(L, h, "static");
    if (static_mount(host_statics(h), prefix, dir, err, sizeof err) < 0) return luaL_error(L, "%s", err);
    return 0;
}

/* tokend.before(fn) */
static int lapi_before(lua_State *L) {
    host *h = LAPI_HOST(L);
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lapi_check_loading(L, h, "before");
    host_add_before(h, L, 1);
    return 0;
}

/* tokend.generate_temp_token(expires_in_seconds[, {max_session_duration_seconds = M}]) */
static int lapi_generate_temp_token(lua_State *L) {
    host *h = LAPI_HOST(L);
    lua_Integer expires = luaL_checkinteger(L, 1);
    lua_Integer max_session = 0;
    luaL_argcheck(L, expires >= 1 && expires <= 600, 1, "expires_in_seconds must be between 1 and 600");
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 2)) {
            if (lua_type(L, -2) != LUA_TSTRING || strcmp(lua_tostring(L, -2), "max_session_duration_seconds") != 0)
                return luaL_argerror(L, 2, "unknown option (only max_session_duration_seconds is known)");
            lua_pop(L, 1);
        }
        lua_getfield(L, 2, "max_session_duration_seconds");
        if (!lua_isnil(L, -1)) {
            int isint = 0;
            max_session = lua_tointegerx(L, -1, &isint);
            luaL_argcheck(L, isint && max_session >= 60 && max_session <= 10800, 2,
                          "max_session_duration_seconds must be an integer between 60 and 10800");
        }
        lua_pop(L, 1);
    }
    if (!upstream_has_key(host_upstream(h))) {
        lua_pushnil(L);
        lua_pushliteral(L, "no AssemblyAI API key is configured (set ASSEMBLYAI_API_KEY in the environment or in .env)");
        lua_pushnil(L);
        lua_createtable(L, 0, 1);
        lua_pushliteral(L, "no_key");
        lua_setfield(L, -2, "kind");
        return 4;
    }
    return host_await_token(h, L, (long)expires, (long)max_session);
}

/* tokend.log.<level>(...): arguments joined by spaces, like print. */
static int lapi_log(lua_State *L) {
    int level = (int)lua_tointeger(L, lua_upvalueindex(1));
    int n = lua_gettop(L);
    if (!log_enabled(level)) return 0;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1) luaL_addchar(&b, ' ');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    log_msg(level, "%s", lua_tostring(L, -1));
    return 0;
}

static int lapi_readonly(lua_State *L) {
    return luaL_error(L, "tokend.config is read-only");
}

static int lapi_config_pairs(lua_State *L) {
    lua_getglobal(L, "next");
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "__index");
    lua_remove(L, -2);
    lua_pushnil(L);
    return 3;
}

/* Pushes the read-only tokend.config proxy. */
static void lapi_push_config(lua_State *L, const host_info *in) {
    lua_newtable(L);                          /* proxy */
    lua_createtable(L, 0, 4);                 /* its metatable */
    lua_createtable(L, 0, 12);                /* the values */
    lua_pushstring(L, in->host);
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, in->port);
    lua_setfield(L, -2, "port");
    lua_pushstring(L, in->script);
    lua_setfield(L, -2, "script");
    lua_pushstring(L, in->public_dir);
    lua_setfield(L, -2, "public");
    lua_pushstring(L, in->streaming_url);
    lua_setfield(L, -2, "streaming_url");
    lua_pushstring(L, in->token_url);
    lua_setfield(L, -2, "token_url");
    lua_pushstring(L, in->websocket_url);
    lua_setfield(L, -2, "websocket_url");
    lua_pushinteger(L, in->workers);
    lua_setfield(L, -2, "workers");
    lua_pushinteger(L, in->worker);
    lua_setfield(L, -2, "worker");
    lua_pushboolean(L, in->api_key_configured);
    lua_setfield(L, -2, "api_key_configured");
    lua_pushliteral(L, TOKEND_VERSION);
    lua_setfield(L, -2, "version");
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, lapi_readonly);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, lapi_config_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
}

int lapi_push_module(lua_State *L, host *h) {
    static const luaL_Reg fns[] = {
        { "route", lapi_route },
        { "static", lapi_static },
        { "before", lapi_before },
        { "generate_temp_token", lapi_generate_temp_token },
        { NULL, NULL },
    };
    static const char *const levels[] = { "debug", "info", "warn", "error" };
    luaL_newlibtable(L, fns);
    lua_pushlightuserdata(L, h);
    luaL_setfuncs(L, fns, 1);
    lua_createtable(L, 0, 4);
    for (int i = 0; i < 4; i++) {
        lua_pushinteger(L, i);
        lua_pushcclosure(L, lapi_log, 1);
        lua_setfield(L, -2, levels[i]);
    }
    lua_setfield(L, -2, "log");
    lapi_push_config(L, host_get_info(h));
    lua_setfield(L, -2, "config");
    lua_pushliteral(L, TOKEND_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
