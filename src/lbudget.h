/* lbudget.h: the instruction budget of the Lua code a worker runs now, shared by the count hook and the C functions that loop. */
#ifndef TOKEND_LBUDGET_H
#define TOKEND_LBUDGET_H

/* The instructions a piece of Lua code (a request's handler, a timer, the script's top
 * level) may still run. Counted by a hook on every coroutine of the state, and by the
 * pattern functions for their matching steps. Once exhausted it stays exhausted: that
 * code stops, whatever it does to catch the error. */
typedef struct lbudget {
    long used;
    long limit;
    int exhausted;
} lbudget;

/* The text a budget error carries. */
#define LBUDGET_ERROR "instruction limit exceeded"

/* Makes b the budget of the code this thread runs from now on (NULL: none); returns the
 * previous one. */
lbudget *lbudget_enter(lbudget *b);

/* Charges n steps of work to the current budget. Returns 0, or -1 once it is exhausted
 * (always 0 when there is no current budget). */
int lbudget_charge(long n);

/* The limit of the current budget (0 when there is none), for error messages. */
long lbudget_limit(void);

#endif
