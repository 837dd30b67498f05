/* lbudget.c: the instruction budget of the Lua code a worker runs now, shared by the count hook and the C functions that loop. */
#include <stddef.h>

#include "lbudget.h"

/* The budget of the code running on this worker thread now (NULL: none). */
static _Thread_local lbudget *lbudget_now;

lbudget *lbudget_enter(lbudget *b) {
    lbudget *old = lbudget_now;
    lbudget_now = b;
    return old;
}

int lbudget_charge(long n) {
    lbudget *b = lbudget_now;
    if (!b) return 0;
    if (!b->exhausted && (b->used += n) > b->limit) b->exhausted = 1;
    return b->exhausted ? -1 : 0;
}

long lbudget_limit(void) {
    return lbudget_now ? lbudget_now->limit : 0;
}
