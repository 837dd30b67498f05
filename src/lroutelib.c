/* lroutelib.c: tokend.route, tokend.static and tokend.before: what the script answers. */
#include <ctype.h>
#include <string.h>

#include "llib.h"

/* tokend.route(method, path, handler) */
static int lroute_route(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    size_t mlen;
    const char *method = luaL_checklstring(L, 1, &mlen);
    const char *path = luaL_checkstring(L, 2);
    char upper[16], err[256];
    luaL_checktype(L, 3, LUA_TFUNCTION);
    lhost_check_loading(L, h, "route");
    luaL_argcheck(L, mlen > 0 && mlen < sizeof upper, 1, "not an HTTP method");
    for (size_t i = 0; i <= mlen; i++) upper[i] = (char)toupper((unsigned char)method[i]);
    if (lhost_add_route(h, L, upper, path, 3, err, sizeof err) < 0) return luaL_error(L, "%s", err);
    return 0;
}

/* The Content-Security-Policy HTML pages get unless the script says otherwise: the page's
 * own origin for everything, and the streaming WebSocket's origin to connect to. */
static void lroute_push_default_csp(lua_State *L, const lhost_info *info) {
    const char *ws = info->websocket_url;
    const char *host = strstr(ws, "://");
    size_t origin = host ? (size_t)(host + 3 - ws) + strcspn(host + 3, "/") : strlen(ws);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "default-src 'self'; connect-src 'self' ");
    luaL_addlstring(&b, ws, origin);
    luaL_addstring(&b, "; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'");
    luaL_pushresult(&b);
}

/* tokend.static(prefix, dir[, {csp = "..." | false}]) */
static int lroute_static(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    const char *prefix = luaL_checkstring(L, 1);
    const char *dir = luaL_checkstring(L, 2);
    static_options o = { NULL };
    char err[512];
    lhost_check_loading(L, h, "static");
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 3);
    if (lua_isnil(L, 3) || lua_getfield(L, 3, "csp") == LUA_TNIL) {
        lroute_push_default_csp(L, lhost_world_of(h)->info);
    } else if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
        lua_pushnil(L);         /* csp = false: none */
    } else {
        luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 3, "csp must be a string or false");
        lua_pushvalue(L, -1);
    }
    o.csp = lua_tostring(L, -1);
    if (lhost_add_static(h, prefix, dir, &o, err, sizeof err) < 0) return luaL_error(L, "%s", err);
    return 0;
}

/* tokend.before(fn) */
static int lroute_before(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lhost_check_loading(L, h, "before");
    lhost_add_before(h, L, 1);
    return 0;
}

void lroutelib_open(lua_State *L, lhost *h) {
    static const luaL_Reg fns[] = {
        { "route", lroute_route }, { "static", lroute_static }, { "before", lroute_before }, { NULL, NULL },
    };
    llib_register(L, h, fns);
}
