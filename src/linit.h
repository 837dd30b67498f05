/* linit.h: the `tokend` Lua module: the list of its parts. */
#ifndef TOKEND_LINIT_H
#define TOKEND_LINIT_H

#include "lhost.h"

/* Pushes the module table for host h, built by every part of the API in turn (an
 * lhost_open_fn). Raises a Lua error when out of memory. */
int linit_push_module(lua_State *L, lhost *h);

#endif
