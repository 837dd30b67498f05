/* llib.h: what the parts of the tokend Lua API share: registration, classes, results. */
#ifndef TOKEND_LLIB_H
#define TOKEND_LLIB_H

#include <lua.h>
#include <lauxlib.h>

#include "lhost.h"

/* The host of a function registered with llib_register (its first upvalue). */
#define LLIB_HOST(L) ((lhost *)lua_touserdata((L), lua_upvalueindex(1)))

/* A part of the API: adds its functions to the module table on top of L's stack. */
typedef void llib_open_fn(lua_State *L, lhost *h);

/* Sets fns into the table on top of the stack, each with h as its upvalue. */
void llib_register(lua_State *L, lhost *h, const luaL_Reg *fns);

/* Creates the metatable of a userdata class: methods as its __index, gc (may be NULL) as
 * its __gc, and a hidden metatable. Does nothing when it exists already. */
void llib_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc);

/* Returns nil and a formatted message: a runtime failure, as io.open reports one. */
int llib_fail(lua_State *L, const char *fmt, ...);

/* Reads t[field] as a number (dflt when nil); raises naming what when it is not one. */
double llib_opt_number(lua_State *L, int t, const char *field, double dflt, const char *what);

/* Reads t[field] (or t[table][field] when table is not NULL) of the table at stack index
 * idx as a string, kept alive by that table; NULL when it is not a string. */
const char *llib_field_string(lua_State *L, int idx, const char *table, const char *field, size_t *len);

#endif
