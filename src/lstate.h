/* lstate.h: a Lua 5.4 state for tokend: capped memory, an instruction budget, text-only loaders. */
#ifndef TOKEND_LSTATE_H
#define TOKEND_LSTATE_H

#include <stddef.h>

#include "lbudget.h"

typedef struct lua_State lua_State;

/* Creates a state whose memory is capped at memory_limit bytes, with the standard
 * libraries, cjson and cjson.safe preloaded, every loader refusing bytecode, pcall and
 * xpcall unable to catch an exhausted budget, debug.sethook refused (the hook is the
 * budget's), the string pattern functions counting their steps, the library functions of
 * lguard.h guarded, and the growth of large blocks charged to the current budget (one
 * instruction per 64 bytes; refused once it is spent). NULL when out of memory; err says
 * why. */
lua_State *lstate_new(size_t memory_limit, char *err, size_t errlen);

/* Closes a state made by lstate_new and frees its memory. NULL is allowed. */
void lstate_close(lua_State *L);

/* Puts the budget's count hook on a coroutine (coroutines created by Lua code inherit it). */
void lstate_limit_thread(lua_State *co);

/* Resumes co (its nargs arguments on its stack) under budget b, like lua_resume. When the
 * budget ran out while co was yieldable, co was suspended by the hook: the result is then
 * LUA_ERRRUN with an error message on co's stack, and co must not be resumed again. An
 * error the spent budget caused (a refused allocation) says so too. */
int lstate_resume(lua_State *co, lua_State *from, int nargs, int *nres, lbudget *b);

#endif
