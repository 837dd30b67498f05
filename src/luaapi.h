/* luaapi.h: the `tokend` Lua module that scripts require. */
#ifndef TOKEND_LUAAPI_H
#define TOKEND_LUAAPI_H

#include "luahost.h"

/* Pushes the module table for host h (routes, static, before, generate_temp_token, log,
 * config). Raises a Lua error when out of memory. */
int lapi_push_module(lua_State *L, host *h);

/* Pushes a Lua function that answers requests by calling the C route r. */
void lapi_push_c_route(lua_State *L, host_c_route *r);

#endif
