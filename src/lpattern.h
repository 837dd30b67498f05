/* lpattern.h: string.find, match, gmatch and gsub with Lua 5.4's patterns, counting their steps against the instruction budget. */
#ifndef TOKEND_LPATTERN_H
#define TOKEND_LPATTERN_H

#include <stddef.h>

typedef struct lua_State lua_State;

/* Sets find, match, gmatch and gsub into the table on top of L's stack (the string
 * library): the same results as Lua's own, but every step of a search is charged to the
 * current instruction budget (lbudget.h), and a search past it raises the budget's error. */
void lpattern_open(lua_State *L);

/* Searches s[0..ls) for the Lua pattern p[0..lp) from C, as string.find(s, p) would, in at
 * most about max_steps steps. Returns 1 when it is found, 0 when not, -1 for a malformed
 * pattern or a search past max_steps. */
int lpattern_search(const char *s, size_t ls, const char *p, size_t lp, long max_steps);

#endif
