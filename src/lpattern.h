/* lpattern.h: string.find, match, gmatch and gsub with Lua 5.4's patterns, counting their steps against the instruction budget. */
#ifndef TOKEND_LPATTERN_H
#define TOKEND_LPATTERN_H

typedef struct lua_State lua_State;

/* Sets find, match, gmatch and gsub into the table on top of L's stack (the string
 * library): the same results as Lua's own, but every step of a search is charged to the
 * current instruction budget (lbudget.h), and a search past it raises the budget's error. */
void lpattern_open(lua_State *L);

#endif
