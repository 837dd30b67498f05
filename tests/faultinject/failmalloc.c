/* failmalloc.c: an LD_PRELOAD shim that makes allocations fail, to test that tokend answers
 * 500/503 or closes a connection instead of crashing when memory runs out.
 *   FAILMALLOC_EVERY=N      fail every Nth malloc/calloc/realloc (all threads together)
 *   FAILMALLOC_AFTER_MS=T   start T ms after the process starts (let start-up succeed)
 *   FAILMALLOC_FOR_MS=D     stop D ms later
 * Counts of failed calls are written to stderr at exit. */
#define _GNU_SOURCE
#include <errno.h>
#include <execinfo.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);

static long every = -1, after_ms, for_ms;
static long long start_ms;
static atomic_ulong calls, failed;

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A crash under injection prints where it happened (backtrace() needs no malloc once
 * primed), then dies of the same signal. */
static void failmalloc_on_fatal(int sig) {
    void *frames[48];
    int n = backtrace(frames, 48);
    static const char head[] = "failmalloc: fatal signal, backtrace:\n";
    ssize_t w = write(2, head, sizeof head - 1);
    (void)w;
    backtrace_symbols_fd(frames, n, 2);
    signal(sig, SIG_DFL);
    raise(sig);
}

__attribute__((constructor)) static void failmalloc_init(void) {
    void *prime[2];
    backtrace(prime, 2);
    signal(SIGSEGV, failmalloc_on_fatal);
    signal(SIGFPE, failmalloc_on_fatal);
    signal(SIGBUS, failmalloc_on_fatal);
    signal(SIGABRT, failmalloc_on_fatal);
    const char *e = getenv("FAILMALLOC_EVERY");
    every = e ? atol(e) : 0;
    after_ms = getenv("FAILMALLOC_AFTER_MS") ? atol(getenv("FAILMALLOC_AFTER_MS")) : 0;
    for_ms = getenv("FAILMALLOC_FOR_MS") ? atol(getenv("FAILMALLOC_FOR_MS")) : 1L << 40;
    start_ms = now_ms();
}

__attribute__((destructor)) static void failmalloc_report(void) {
    if (every > 0)
        fprintf(stderr, "failmalloc: %lu of %lu allocations failed\n", (unsigned long)failed, (unsigned long)calls);
}

/* A place for a debugger's breakpoint: every injected failure passes here. */
__attribute__((noinline)) void failmalloc_hit(void) {
    __asm__ volatile("");
}

static int failmalloc_now(void) {
    if (every <= 0) return 0;
    long long t = now_ms() - start_ms;
    if (t < after_ms || t > after_ms + for_ms) return 0;
    if (atomic_fetch_add(&calls, 1) % (unsigned long)every != (unsigned long)every - 1) return 0;
    atomic_fetch_add(&failed, 1);
    failmalloc_hit();
    errno = ENOMEM;
    return 1;
}

void *malloc(size_t n) {
    return failmalloc_now() ? NULL : __libc_malloc(n);
}
void *calloc(size_t n, size_t m) {
    return failmalloc_now() ? NULL : __libc_calloc(n, m);
}
void *realloc(void *p, size_t n) {
    return n && failmalloc_now() ? NULL : __libc_realloc(p, n);
}
