/* lstate.h: a Lua 5.4 state for tokend: capped memory, an instruction budget, text-only loaders. */
#ifndef TOKEND_LSTATE_H
#define TOKEND_LSTATE_H

#include <stddef.h>

typedef struct lua_State lua_State;

/* The instructions a piece of Lua code (a request's handler, a timer, the script's top
 * level) may still run. Counted by a hook on every coroutine of the state, and by the
 * pattern functions for their matching steps. Once exhausted it stays exhausted: the hook
 * stops that code whatever it does to catch the error. */
typedef struct lstate_budget {
    long used;
    long limit;
    int exhausted;
} lstate_budget;

/* Creates a state whose memory is capped at memory_limit bytes, with the standard
 * libraries, cjson and cjson.safe preloaded, every loader refusing bytecode, pcall and
 * xpcall unable to catch an exhausted budget, debug.sethook refused (the hook is the
 * budget's), and the string pattern functions counting their steps. NULL when out of
 * memory; err says why. */
lua_State *lstate_new(size_t memory_limit, char *err, size_t errlen);

/* Closes a state made by lstate_new and frees its memory. NULL is allowed. */
void lstate_close(lua_State *L);

/* Bytes the state holds now. */
size_t lstate_memory(lua_State *L);

/* Puts the budget's count hook on a coroutine (coroutines created by Lua code inherit it). */
void lstate_limit_thread(lua_State *co);

/* Makes b the budget of the code this thread runs from now on (NULL: none); returns the
 * previous one. */
lstate_budget *lstate_budget_enter(lstate_budget *b);

/* Charges n steps of work done in C on behalf of Lua code to the current budget. Returns
 * 0, or -1 once the budget is exhausted. */
int lstate_budget_charge(long n);

/* Resumes co (its nargs arguments on its stack) under budget b, like lua_resume. When the
 * budget ran out while co was yieldable, co was suspended by the hook: the result is then
 * LUA_ERRRUN with an error message on co's stack, and co must not be resumed again. */
int lstate_resume(lua_State *co, lua_State *from, int nargs, int *nres, lstate_budget *b);

/* The text a budget error carries. */
#define LSTATE_BUDGET_ERROR "instruction limit exceeded"

#endif
