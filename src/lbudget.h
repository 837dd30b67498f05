/* lbudget.h: the instruction budget of the Lua code a worker runs now, shared by the count hook and the C functions that loop. */
#ifndef TOKEND_LBUDGET_H
#define TOKEND_LBUDGET_H

#include <stddef.h>
#include <stdint.h>

/* The instructions a piece of Lua code (a request's handler, a timer, the script's top
 * level) may still run. Counted by a hook on every coroutine of the state; work done in C
 * is charged too: the pattern functions' matching steps, the long loops of library
 * functions (lguard.h) and the large blocks the state allocates (lstate.c). Once exhausted
 * it stays exhausted: that code stops, whatever it does to catch the error. Zero-initialise
 * it and set limit. */
typedef struct lbudget {
    long used;
    long limit;
    int exhausted;       /* 1: its instructions are spent; 2: its time (lbudget_tick) */
    uint64_t entered_ms; /* when it last became the current budget */
} lbudget;

/* The text a budget error carries. */
#define LBUDGET_ERROR "instruction limit exceeded"

/* Makes b the budget of the code this thread runs from now on (NULL: none); returns the
 * previous one. */
lbudget *lbudget_enter(lbudget *b);

/* The current budget, or NULL. */
lbudget *lbudget_current(void);

/* Charges n >= 0 steps of work to the current budget. Returns 0, or -1 once it is
 * exhausted: the charge that passes the limit exhausts it (always 0 when there is no
 * current budget). lbudget_charge(0) tells whether it is spent. */
int lbudget_charge(long n);

/* What the count hook does: charges n, and looks at the clock, the last line of defence
 * against work no count sees (a C function that runs long for one call, an instruction that
 * copies a million values). Code that has run a second plus a microsecond per instruction
 * of its limit since its budget was entered has spent it too. Returns -1 once spent, 1
 * past half of that time (the caller should look at every instruction), 0 otherwise. */
int lbudget_tick(long n);

/* Writes into buf (len bytes) why b is spent: LBUDGET_ERROR and its limit. Returns buf. */
const char *lbudget_why(const lbudget *b, char *buf, size_t len);

#endif
