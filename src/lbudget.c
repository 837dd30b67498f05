/* lbudget.c: the instruction budget of the Lua code a worker runs now, shared by the count hook and the C functions that loop. */
#define _GNU_SOURCE
#include <stdio.h>
#include <time.h>

#include "lbudget.h"

#define LBUDGET_TIME_BASE_MS 1000 /* the time of any budget, plus 1 µs per instruction of its limit */

/* The budget of the code running on this worker thread now (NULL: none). */
static _Thread_local lbudget *lbudget_now;

/* Monotonic milliseconds from the coarse clock (read without a system call). */
static uint64_t lbudget_clock_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t lbudget_time_ms(const lbudget *b) {
    return LBUDGET_TIME_BASE_MS + (uint64_t)b->limit / 1000u;
}

lbudget *lbudget_enter(lbudget *b) {
    lbudget *old = lbudget_now;
    if (b && b != old) b->entered_ms = lbudget_clock_ms();
    lbudget_now = b;
    return old;
}

lbudget *lbudget_current(void) {
    return lbudget_now;
}

int lbudget_charge(long n) {
    lbudget *b = lbudget_now;
    if (!b) return 0;
    if (b->exhausted) return -1;
    if (n > b->limit - b->used) { /* b->used + n would pass the limit (and might overflow) */
        b->used = b->limit;
        b->exhausted = 1;
        return -1;
    }
    b->used += n;
    return 0;
}

int lbudget_tick(long n) {
    lbudget *b = lbudget_now;
    if (lbudget_charge(n) < 0) return -1;
    if (!b) return 0;
    uint64_t ran = lbudget_clock_ms() - b->entered_ms, time = lbudget_time_ms(b);
    if (ran >= time) {
        b->exhausted = 2;
        return -1;
    }
    return ran >= time / 2 ? 1 : 0;
}

const char *lbudget_why(const lbudget *b, char *buf, size_t len) {
    if (b && b->exhausted == 2)
        snprintf(buf, len, LBUDGET_ERROR " (%ld instructions: it ran past their time, %llu ms)", b->limit,
                 (unsigned long long)lbudget_time_ms(b));
    else snprintf(buf, len, LBUDGET_ERROR " (%ld instructions)", b ? b->limit : 0L);
    return buf;
}
