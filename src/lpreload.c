/* lpreload.c: the parts of tokend written in Lua (src/lua), embedded at build time and preloaded into every state. */
#include <lua.h>
#include <lauxlib.h>

#include "lpreload.h"

/* package.preload's loader of one embedded module (upvalue: its index). */
static int lpreload_load(lua_State *L) {
    const lpreload_module *m = &lpreload_modules[lua_tointeger(L, lua_upvalueindex(1))];
    lua_pushfstring(L, "@%s", m->file);
    if (luaL_loadbufferx(L, m->text, m->len, lua_tostring(L, -1), "t") != LUA_OK) return lua_error(L);
    lua_pushstring(L, m->name);
    lua_call(L, 1, 1);
    return 1;
}

void lpreload_open(lua_State *L) {
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (size_t i = 0; i < lpreload_count; i++) {
        lua_pushinteger(L, (lua_Integer)i);
        lua_pushcclosure(L, lpreload_load, 1);
        lua_setfield(L, -2, lpreload_modules[i].name);
    }
    lua_pop(L, 1);
}
