/* lproxylib.c: tokend.proxy: paths forwarded to an HTTP(S) backend (a developer's API server, say). */
#include <string.h>

#include "llib.h"
#include "proxy.h"

#define LPROXY_TIMEOUT_MS 30000
#define LPROXY_MAX_TIMEOUT_MS 600000

/* Reads opts.headers (names to strings or numbers; false removes a header the client sent)
 * into o, the lines kept alive in a table left on the stack. Raises on a bad one. */
static void lproxy_headers(lua_State *L, proxy_options *o) {
    lua_newtable(L);
    if (lua_getfield(L, 3, "headers") == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    luaL_argcheck(L, lua_istable(L, -1), 3, "headers must be a table of names to strings");
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        int removes = lua_isboolean(L, -1) && !lua_toboolean(L, -1);
        if (lua_type(L, -2) != LUA_TSTRING ||
            (!removes && lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
            luaL_error(L, "tokend.proxy: headers map names to strings, numbers or false");
        luaL_argcheck(L, o->nheaders < PROXY_MAX_HEADERS, 3, "at most 32 headers");
        if (removes) lua_pushfstring(L, "%s:", lua_tostring(L, -2));
        else lua_pushfstring(L, "%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
        o->headers[o->nheaders++] = lua_tostring(L, -1);
        lua_rawseti(L, -5, (lua_Integer)o->nheaders); /* the line lives in the table */
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* tokend.proxy(prefix, url[, {strip_prefix = false, timeout_ms = 30000, headers = {...}}]) */
static int lproxy_proxy(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    const char *prefix = luaL_checkstring(L, 1), *url = luaL_checkstring(L, 2);
    proxy_options o;
    char err[512];
    memset(&o, 0, sizeof o);
    o.timeout_ms = LPROXY_TIMEOUT_MS;
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    else {
        lua_settop(L, 2);
        lua_newtable(L);
    }
    lua_settop(L, 3);
    lhost_check_loading(L, h, "proxy");
    lua_pushnil(L);
    while (lua_next(L, 3)) {
        const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
        if (strcmp(name, "strip_prefix") != 0 && strcmp(name, "timeout_ms") != 0 && strcmp(name, "headers") != 0)
            luaL_argerror(L, 3, "unknown option (strip_prefix, timeout_ms and headers are known)");
        lua_pop(L, 1);
    }
    lua_getfield(L, 3, "strip_prefix");
    o.strip_prefix = lua_toboolean(L, -1);
    if (lua_getfield(L, 3, "timeout_ms") != LUA_TNIL) {
        lua_Integer t = 0;
        luaL_argcheck(L, lua_isinteger(L, -1) && (t = lua_tointeger(L, -1)) >= 1 && t <= LPROXY_MAX_TIMEOUT_MS, 3,
                      "timeout_ms must be an integer between 1 and 600000");
        o.timeout_ms = (long)t;
    }
    lproxy_headers(L, &o);
    if (lhost_add_proxy(h, prefix, url, &o, err, sizeof err) < 0) return luaL_error(L, "tokend.proxy: %s", err);
    return 0;
}

void lproxylib_open(lua_State *L, lhost *h) {
    static const luaL_Reg fns[] = { { "proxy", lproxy_proxy }, { NULL, NULL } };
    llib_register(L, h, fns);
}
