/* loop.c: one epoll event loop per worker thread: file descriptor watches and timers. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "loop.h"

typedef struct loop_watch_slot {
    loop_fd_fn *fn;
    void *ud;
    unsigned events; /* registered with epoll */
    int parked;      /* registered, but its events are not wanted now */
} loop_watch_slot;

struct loop {
    int epfd;
    int wakefd;
    loop_watch_slot *slots; /* indexed by fd */
    int nslots;
    loop_timer **heap; /* 1-based binary min-heap on due_ms */
    size_t heap_len, heap_cap;
    uint64_t now_ms; /* the time of this round of dispatching */
    int dispatching;
};

uint64_t loop_now_ms(void) {
    return loop_now_us() / 1000u;
}

uint64_t loop_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int loop_grow_slots(loop *lp, int fd);

loop *loop_create(void) {
    loop *lp = calloc(1, sizeof *lp);
    if (!lp) return NULL;
    lp->epfd = epoll_create1(EPOLL_CLOEXEC);
    lp->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (lp->epfd < 0 || lp->wakefd < 0) goto fail;
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = -1 };
    if (epoll_ctl(lp->epfd, EPOLL_CTL_ADD, lp->wakefd, &ev) < 0) goto fail;
    /* Room for the first thousand descriptors now, so that watching a socket rarely has
     * to allocate while serving. */
    if (loop_grow_slots(lp, 1023) < 0) goto fail;
    return lp;
fail:
    loop_free(lp);
    return NULL;
}

void loop_free(loop *lp) {
    if (!lp) return;
    if (lp->epfd >= 0) close(lp->epfd);
    if (lp->wakefd >= 0) close(lp->wakefd);
    free(lp->slots);
    free(lp->heap);
    free(lp);
}

static int loop_grow_slots(loop *lp, int fd) {
    if (fd < lp->nslots) return 0;
    int n = lp->nslots ? lp->nslots : 64;
    while (n <= fd) n *= 2;
    loop_watch_slot *s = realloc(lp->slots, (size_t)n * sizeof *s);
    if (!s) return -1;
    memset(s + lp->nslots, 0, (size_t)(n - lp->nslots) * sizeof *s);
    lp->slots = s;
    lp->nslots = n;
    return 0;
}

int loop_watch(loop *lp, int fd, unsigned events, loop_fd_fn *fn, void *ud) {
    if (fd < 0) {
        errno = EBADF;
        return -1;
    }
    if (loop_grow_slots(lp, fd) < 0) {
        errno = ENOMEM;
        return -1;
    }
    loop_watch_slot *slot = &lp->slots[fd];
    if (slot->events == events && slot->fn == fn && slot->ud == ud) { /* nothing changes */
        slot->parked = 0;
        return 0;
    }
    struct epoll_event ev = { .events = 0, .data.fd = fd };
    if (events & LOOP_READ) ev.events |= EPOLLIN;
    if (events & LOOP_WRITE) ev.events |= EPOLLOUT;
    int op = slot->events ? (events ? EPOLL_CTL_MOD : EPOLL_CTL_DEL) : EPOLL_CTL_ADD;
    if (!slot->events && !events) return 0;
    if (epoll_ctl(lp->epfd, op, fd, &ev) < 0) {
        /* The fd may have been closed and reused behind our back: retry as a fresh add. */
        if (op == EPOLL_CTL_MOD && errno == ENOENT) op = EPOLL_CTL_ADD;
        else if (op == EPOLL_CTL_DEL && (errno == ENOENT || errno == EBADF)) op = -1;
        else if (op == EPOLL_CTL_ADD && errno == EEXIST) op = EPOLL_CTL_MOD;
        else return -1;
        if (op != -1 && epoll_ctl(lp->epfd, op, fd, &ev) < 0) return -1;
    }
    slot->events = events;
    slot->fn = events ? fn : NULL;
    slot->ud = events ? ud : NULL;
    slot->parked = 0;
    return 0;
}

void loop_forget(loop *lp, int fd) {
    if (fd >= 0 && fd < lp->nslots) memset(&lp->slots[fd], 0, sizeof lp->slots[fd]);
}

void loop_park(loop *lp, int fd) {
    if (fd >= 0 && fd < lp->nslots && lp->slots[fd].events) lp->slots[fd].parked = 1;
}

/* Heap helpers: keep heap[i]->heap_index == i. */
static void loop_heap_set(loop *lp, size_t i, loop_timer *t) {
    lp->heap[i] = t;
    t->heap_index = i;
}

static void loop_heap_up(loop *lp, size_t i) {
    loop_timer *t = lp->heap[i];
    while (i > 1 && lp->heap[i / 2]->due_ms > t->due_ms) {
        loop_heap_set(lp, i, lp->heap[i / 2]);
        i /= 2;
    }
    loop_heap_set(lp, i, t);
}

static void loop_heap_down(loop *lp, size_t i) {
    loop_timer *t = lp->heap[i];
    for (;;) {
        size_t c = i * 2;
        if (c > lp->heap_len) break;
        if (c + 1 <= lp->heap_len && lp->heap[c + 1]->due_ms < lp->heap[c]->due_ms) c++;
        if (lp->heap[c]->due_ms >= t->due_ms) break;
        loop_heap_set(lp, i, lp->heap[c]);
        i = c;
    }
    loop_heap_set(lp, i, t);
}

void loop_timer_stop(loop *lp, loop_timer *t) {
    size_t i = t->heap_index;
    if (!i) return;
    t->heap_index = 0;
    loop_timer *last = lp->heap[lp->heap_len--];
    if (i > lp->heap_len) return;
    loop_heap_set(lp, i, last);
    loop_heap_up(lp, i);
    loop_heap_down(lp, last->heap_index);
}

int loop_timer_start(loop *lp, loop_timer *t, long after_ms, loop_timer_fn *fn, void *ud) {
    loop_timer_stop(lp, t);
    if (lp->heap_len + 1 >= lp->heap_cap) {
        size_t cap = lp->heap_cap ? lp->heap_cap * 2 : 64;
        loop_timer **h = realloc(lp->heap, cap * sizeof *h);
        if (!h) return -1;
        lp->heap = h;
        lp->heap_cap = cap;
    }
    /* While dispatching, the round's time: timers are milliseconds anyway, and a clock read
     * per timer (several per upstream call) adds up. */
    t->due_ms = (lp->dispatching ? lp->now_ms : loop_now_ms()) + (uint64_t)(after_ms > 0 ? after_ms : 0);
    t->fn = fn;
    t->ud = ud;
    lp->heap_len++;
    loop_heap_set(lp, lp->heap_len, t);
    loop_heap_up(lp, lp->heap_len);
    return 0;
}

void loop_run_due(loop *lp) {
    uint64_t now = lp->now_ms = loop_now_ms();
    lp->dispatching = 1;
    while (lp->heap_len && lp->heap[1]->due_ms <= now) {
        loop_timer *t = lp->heap[1];
        loop_timer_stop(lp, t);
        t->fn(t->ud);
    }
    lp->dispatching = 0;
}

int loop_fd(const loop *lp) {
    return lp->epfd;
}

long loop_next_timeout_ms(const loop *lp) {
    if (!lp->heap_len) return -1;
    uint64_t now = loop_now_ms(), due = lp->heap[1]->due_ms;
    return due > now ? (long)(due - now) : 0;
}

int loop_run_once(loop *lp, long max_wait_ms) {
    struct epoll_event evs[256];
    long wait = max_wait_ms;
    long until = loop_next_timeout_ms(lp);
    if (until >= 0 && (wait < 0 || until < wait)) wait = until;
    int n = epoll_wait(lp->epfd, evs, 256, wait > 0x7fffffffL ? 0x7fffffff : (int)wait);
    if (n < 0) {
        if (errno != EINTR) return -1;
        n = 0;
    }
    lp->now_ms = loop_now_ms();
    lp->dispatching = 1;
    for (int i = 0; i < n; i++) {
        int fd = evs[i].data.fd;
        if (fd == -1) {
            uint64_t v;
            ssize_t r = read(lp->wakefd, &v, sizeof v);
            (void)r;
            continue;
        }
        if (fd >= lp->nslots || !lp->slots[fd].fn) continue;
        if (lp->slots[fd].parked) { /* something happened on an idle socket: stop watching */
            loop_watch(lp, fd, 0, NULL, NULL);
            continue;
        }
        unsigned what = 0;
        if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) what |= LOOP_READ;
        if (evs[i].events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) what |= LOOP_WRITE;
        lp->slots[fd].fn(lp->slots[fd].ud, fd, what);
    }
    loop_run_due(lp);
    return n;
}

int loop_run_until(loop *lp, const int *flag) {
    while (!*flag)
        if (loop_run_once(lp, -1) < 0) return -1;
    return 0;
}

void loop_wake(loop *lp) {
    uint64_t one = 1;
    ssize_t w = write(lp->wakefd, &one, sizeof one);
    (void)w;
}
