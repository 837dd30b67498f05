/* lroutelib.c: tokend.route, tokend.static and tokend.before: what the script answers. */
#include <ctype.h>

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

/* tokend.static(prefix, dir) */
static int lroute_static(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    const char *prefix = luaL_checkstring(L, 1);
    const char *dir = luaL_checkstring(L, 2);
    char err[512];
    lhost_check_loading(L, h, "static");
    if (lhost_add_static(h, prefix, dir, err, sizeof err) < 0) return luaL_error(L, "%s", err);
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
