/* lroutelib.c: tokend.route, tokend.static and tokend.before: what the script answers. */
#include <ctype.h>
#include <string.h>

#include "llib.h"
#include "lpattern.h"
#include "router.h"

/* Reads tokend.route's options at stack index idx ({audit = true, log = false | N}) into
 * o; raises on an unknown or bad one. */
static void lroute_options(lua_State *L, int idx, router_opts *o) {
    *o = (router_opts){ 0, 1 };
    if (lua_isnoneornil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
        if (strcmp(name, "audit") == 0) {
            o->audit = lua_toboolean(L, -1);
        } else if (strcmp(name, "log") == 0) {
            lua_Integer every = lua_isboolean(L, -1) ? lua_toboolean(L, -1) : lua_tointeger(L, -1);
            luaL_argcheck(L, (lua_isboolean(L, -1) || lua_isinteger(L, -1)) && every >= 0 && every <= 1000000, idx,
                          "log is true, false (errors only) or N (one success in N)");
            o->log_every = (unsigned)every;
        } else {
            luaL_argerror(L, idx, "unknown option (audit and log are known)");
        }
        lua_pop(L, 1);
    }
}

/* tokend.route(method, path, handler[, {audit = true, log = false | N}]) */
static int lroute_route(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    size_t mlen;
    const char *method = luaL_checklstring(L, 1, &mlen);
    const char *path = luaL_checkstring(L, 2);
    char upper[16], err[256];
    luaL_checktype(L, 3, LUA_TFUNCTION);
    router_opts opts;
    lroute_options(L, 4, &opts);
    lhost_check_loading(L, h, "route");
    luaL_argcheck(L, mlen > 0 && mlen < sizeof upper, 1, "not an HTTP method");
    for (size_t i = 0; i <= mlen; i++) upper[i] = (char)toupper((unsigned char)method[i]);
    if (lhost_add_route(h, L, upper, path, 3, &opts, err, sizeof err) < 0)
        return luaL_error(L, "tokend.route: %s", err);
    return 0;
}

/* Adds the origin of the WebSocket URL ws (scheme and authority) to b, after a space. */
static void lroute_add_origin(luaL_Buffer *b, const char *ws) {
    const char *host = strstr(ws, "://");
    size_t origin = host ? (size_t)(host + 3 - ws) + strcspn(host + 3, "/") : strlen(ws);
    luaL_addchar(b, ' ');
    luaL_addlstring(b, ws, origin);
}

/* The Content-Security-Policy HTML pages get unless the script says otherwise: the page's
 * own origin for everything, and the streaming WebSocket's origins to connect to (the
 * default one and the data zones'). */
static void lroute_push_default_csp(lua_State *L, const lhost_info *info) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "default-src 'self'; connect-src 'self'");
    lroute_add_origin(&b, info->websocket_url);
    for (size_t i = 0; i < info->nregions; i++) lroute_add_origin(&b, info->regions[i].endpoints.websocket_url);
    luaL_addstring(&b, "; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'");
    luaL_pushresult(&b);
}

/* Reads the options of tokend.static at stack index 3 into o (strings stay alive on the
 * stack or in the options table); raises on a bad one. */
static void lroute_static_options(lua_State *L, lhost *h, static_options *o) {
    o->max_age = -1;
    o->index = "index.html";
    o->live_reload = lhost_world_of(h)->info->dev;
    if (lua_isnil(L, 3) || lua_getfield(L, 3, "csp") == LUA_TNIL) {
        lroute_push_default_csp(L, lhost_world_of(h)->info);
    } else if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
        lua_pushnil(L); /* csp = false: none */
    } else {
        luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 3, "csp must be a string or false");
        lua_pushvalue(L, -1);
    }
    o->csp = lua_tostring(L, -1);
    if (lua_isnil(L, 3)) return;
    if (lua_getfield(L, 3, "max_age") != LUA_TNIL) {
        lua_Integer age = 0;
        luaL_argcheck(L, lua_isinteger(L, -1) && (age = lua_tointeger(L, -1)) >= 0 && age <= 31536000, 3,
                      "max_age must be whole seconds, 0..31536000");
        o->max_age = (long)age;
    }
    if (lua_getfield(L, 3, "index") != LUA_TNIL) {
        luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING || (lua_isboolean(L, -1) && !lua_toboolean(L, -1)), 3,
                      "index must be a file name or false");
        o->index = lua_tostring(L, -1);
    }
    if (lua_getfield(L, 3, "fallback") != LUA_TNIL) {
        luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 3, "fallback must be a file's path in the folder");
        o->fallback = lua_tostring(L, -1);
    }
    if (lua_getfield(L, 3, "immutable") != LUA_TNIL) {
        luaL_argcheck(L, lua_istable(L, -1), 3, "immutable must be a list of Lua patterns");
        lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
        luaL_argcheck(L, n <= STATIC_MAX_IMMUTABLE, 3, "at most 32 immutable patterns");
        for (lua_Integer i = 1; i <= n; i++) {
            size_t len;
            lua_rawgeti(L, -1, i);
            const char *pat = lua_tolstring(L, -1, &len);
            luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 3, "immutable patterns are strings");
            if (lpattern_search("/", 1, pat, len, 100000) < 0)
                luaL_error(L, "tokend.static: immutable pattern \"%s\" is malformed", pat);
            o->immutable[o->nimmutable++] = pat;
            lua_pop(L, 1); /* the list keeps it alive */
        }
    }
}

/* tokend.static(prefix, dir[, {csp = "..." | false, max_age = s, immutable = {...}, index = "..." | false,
 * fallback = "index.html"}]) */
static int lroute_static(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    const char *prefix = luaL_checkstring(L, 1);
    const char *dir = luaL_checkstring(L, 2);
    static_options o;
    char err[512];
    memset(&o, 0, sizeof o);
    lhost_check_loading(L, h, "static");
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 3);
    lroute_static_options(L, h, &o);
    if (lhost_add_static(h, prefix, dir, &o, err, sizeof err) < 0) return luaL_error(L, "tokend.static: %s", err);
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
        { "route", lroute_route },
        { "static", lroute_static },
        { "before", lroute_before },
        { NULL, NULL },
    };
    llib_register(L, h, fns);
}
