/* llib.c: what the parts of the tokend Lua API share: registration, classes, results. */
#include <stdarg.h>

#include "llib.h"

void llib_register(lua_State *L, lhost *h, const luaL_Reg *fns) {
    lua_pushlightuserdata(L, h);
    luaL_setfuncs(L, fns, 1);
}

void llib_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc) {
    if (luaL_newmetatable(L, name)) {
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
        if (gc) {
            lua_pushcfunction(L, gc);
            lua_setfield(L, -2, "__gc");
        }
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
}

int llib_fail(lua_State *L, const char *fmt, ...) {
    va_list ap;
    luaL_pushfail(L);
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    return 2;
}

double llib_opt_number(lua_State *L, int t, const char *field, double dflt, const char *what) {
    lua_getfield(L, t, field);
    double v = dflt;
    if (!lua_isnil(L, -1)) {
        if (!lua_isnumber(L, -1)) luaL_error(L, "%s: option %s must be a number", what, field);
        v = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

const char *llib_field_string(lua_State *L, int idx, const char *table, const char *field, size_t *len) {
    int top = lua_gettop(L);
    const char *v = NULL;
    idx = lua_absindex(L, idx);
    if (table && lua_getfield(L, idx, table) != LUA_TTABLE) goto out;
    if (lua_getfield(L, table ? -1 : idx, field) == LUA_TSTRING) v = lua_tolstring(L, -1, len);
out:
    lua_settop(L, top);
    return v;
}
