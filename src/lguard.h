/* lguard.h: the standard library functions tokend replaces so that the instruction budget holds and scripts stay in their limits: coroutine resumes, finalizers, C work charged up front, the upvalues of C functions. */
#ifndef TOKEND_LGUARD_H
#define TOKEND_LGUARD_H

typedef struct lua_State lua_State;

/* Replaces, in the standard libraries already opened in L (luaL_openlibs):
 * - coroutine.resume, coroutine.wrap's functions and coroutine.close: they raise the
 *   budget's error before and after they run a coroutine once the current budget is
 *   spent, so the hook's yield (which suspends only the innermost coroutine) reaches the
 *   code that runs it and no loop resumes it again;
 * - setmetatable and debug.setmetatable refuse a metatable with a __gc field, and an object
 *   whose metatable has one (Lua runs finalizers with hooks off: the budget cannot stop
 *   one); getmetatable and debug.getmetatable do not hand out a metatable whose __gc is a C
 *   function (the C libraries' objects: changing it would make a script's function their
 *   finalizer); debug.getregistry is refused (it holds those metatables);
 * - the functions whose C loops are long for one call (string.rep, upper, lower, reverse,
 *   byte; table.concat, unpack, insert, remove, move, sort; utf8.len, codepoint): they
 *   charge their work to the current budget before doing it and raise the budget's error
 *   instead of starting work past it.
 * Raises on a library missing from L (a memory error, or libraries not opened). */
void lguard_open(lua_State *L);

#define LGUARD_COPY_BYTES 64 /* bytes copied by memcpy per instruction of the budget */

/* Charges steps instructions of C work (a library function's loop over its input) to the
 * current budget before the work is done; raises the budget's error instead when the
 * budget is spent or the charge passes it. Does nothing when no budget is current. */
void lguard_charge(lua_State *L, size_t steps);

/* Raises the error of a spent instruction budget (never returns). */
int lguard_budget_error(lua_State *L);

#endif
