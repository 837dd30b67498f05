/* loop.h: one epoll event loop per worker thread: file descriptor watches and timers. */
#ifndef TOKEND_LOOP_H
#define TOKEND_LOOP_H

#include <stdint.h>

#define LOOP_READ 1u
#define LOOP_WRITE 2u

typedef struct loop loop;
typedef void loop_fd_fn(void *ud, int fd, unsigned events);
typedef void loop_timer_fn(void *ud);

/* A timer owned by the caller (no allocation); zero-initialise before first use. */
typedef struct loop_timer {
    uint64_t due_ms;
    size_t heap_index; /* 0 = not armed, else 1-based index in the heap */
    loop_timer_fn *fn;
    void *ud;
} loop_timer;

/* Creates a loop. Returns NULL when out of memory or file descriptors. */
loop *loop_create(void);
void loop_free(loop *lp);

/* Watches fd for LOOP_READ and/or LOOP_WRITE (level-triggered), replacing any earlier
 * watch of fd. events == 0 removes the watch. Returns 0, or -1 with errno set. */
int loop_watch(loop *lp, int fd, unsigned events, loop_fd_fn *fn, void *ud);

/* Parks a watched fd: its events are no longer dispatched, but it stays registered with
 * the kernel, so that watching it again with the same events, function and data costs no
 * system call (a keep-alive socket between two uses). The first event on a parked fd
 * removes the watch. Only for an fd whose owner removes the watch before closing it:
 * a parked fd closed behind the loop's back and reused would look watched but not be. */
void loop_park(loop *lp, int fd);

/* Forgets what the loop knew of fd without a system call: for a number the kernel just
 * handed out again, whose earlier watch (if any) ended when its file was closed. */
void loop_forget(loop *lp, int fd);

/* Arms t to call fn(ud) once, after_ms from now; re-arming moves it. Returns 0 or -1 (no memory). */
int loop_timer_start(loop *lp, loop_timer *t, long after_ms, loop_timer_fn *fn, void *ud);
/* Disarms t if armed. */
void loop_timer_stop(loop *lp, loop_timer *t);

/* Waits for events up to max_wait_ms (-1: until the next timer or event), dispatches
 * them and the due timers. Returns the number of events dispatched, or -1 on a fatal
 * epoll error. */
int loop_run_once(loop *lp, long max_wait_ms);

/* Runs the loop until *flag becomes non-zero (set by a callback). Returns 0, or -1 on a
 * fatal epoll error. */
int loop_run_until(loop *lp, const int *flag);

/* Runs the timers that are due, without waiting for events. */
void loop_run_due(loop *lp);

/* The epoll descriptor: readable when the loop has something to do (for a host's poll). */
int loop_fd(const loop *lp);

/* Milliseconds until the next timer is due (0 if overdue), or -1 when none is armed. */
long loop_next_timeout_ms(const loop *lp);

/* Wakes a loop blocked in loop_run_once. Safe from signal handlers and other threads. */
void loop_wake(loop *lp);

/* Monotonic milliseconds, and microseconds. */
uint64_t loop_now_ms(void);
uint64_t loop_now_us(void);

#endif
