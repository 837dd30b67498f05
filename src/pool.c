/* pool.c: tokens minted ahead and handed out once: pools shared by all workers, their refill plan and circuit breaker. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "list.h"
#include "pool.h"
#include "upstream.h"

#define POOL_MAX_POOLS 32
#define POOL_MAX_NAME 64
#define POOL_BACKOFF_FIRST_MS 1000
#define POOL_BACKOFF_MAX_MS 60000
#define POOL_LOG_EVERY_MS 60000 /* a failing upstream is logged at most once a minute */

typedef struct pool_token {
    char *text;
    uint64_t expires_ms; /* monotonic */
} pool_token;

struct pool {
    pool_registry *reg;
    char name[POOL_MAX_NAME];
    pool_params params;
    pool_token *ready; /* a ring of params.size slots */
    size_t head, count;
    int minting; /* planned mints not ended */
    /* the breaker */
    int failures;           /* in a row */
    uint64_t open_until_ms; /* 0: closed */
    int trial;              /* a half-open trial is under way */
    failure_kind last_failure;
    uint64_t last_log_ms;
    /* counters */
    unsigned long long taken, on_demand, dropped, minted;
};

struct pool_registry {
    pthread_mutex_t lock;
    pool *pools[POOL_MAX_POOLS];
    int n;
    list_node link; /* in pool_all, for pool_metrics */
};

static pthread_mutex_t pool_all_lock = PTHREAD_MUTEX_INITIALIZER;
static list_node pool_all = { &pool_all, &pool_all }; /* every registry */

static void pool_wipe(pool_token *t) {
    if (!t->text) return;
    explicit_bzero(t->text, strlen(t->text));
    free(t->text);
    t->text = NULL;
}

/* Drops every token (counted). Call with the lock held. */
static void pool_empty(pool *p) {
    for (size_t i = 0; i < p->count; i++) pool_wipe(&p->ready[(p->head + i) % (size_t)p->params.size]);
    p->dropped += p->count;
    p->head = p->count = 0;
}

/* Drops the tokens at the front with less than min_remaining left. Call with the lock held. */
static void pool_drop_stale(pool *p, uint64_t now_ms) {
    uint64_t min_ms = (uint64_t)p->params.min_remaining_s * 1000;
    while (p->count) {
        pool_token *t = &p->ready[p->head];
        if (t->expires_ms > now_ms && t->expires_ms - now_ms >= min_ms) break;
        pool_wipe(t);
        p->head = (p->head + 1) % (size_t)p->params.size;
        p->count--;
        p->dropped++;
    }
}

pool_registry *pool_registry_create(void) {
    pool_registry *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    pthread_mutex_init(&r->lock, NULL);
    pthread_mutex_lock(&pool_all_lock);
    list_insert_after(&pool_all, &r->link);
    pthread_mutex_unlock(&pool_all_lock);
    return r;
}

void pool_registry_free(pool_registry *r) {
    if (!r) return;
    pthread_mutex_lock(&pool_all_lock);
    list_remove(&r->link);
    pthread_mutex_unlock(&pool_all_lock);
    for (int i = 0; i < r->n; i++) {
        pool_empty(r->pools[i]);
        free(r->pools[i]->ready);
        free(r->pools[i]);
    }
    pthread_mutex_destroy(&r->lock);
    free(r);
}

static int pool_check(const pool_params *p, char *err, size_t errlen) {
    if (p->size < 1 || p->size > POOL_MAX_SIZE)
        snprintf(err, errlen, "size must be 1..%d (a pool of 0 is no pool: leave it out)", POOL_MAX_SIZE);
    else if (p->min_remaining_s < 0 || p->min_remaining_s >= p->expires_in_s)
        snprintf(err, errlen, "min_remaining_seconds must be 0 or more and less than expires_in_seconds");
    else if (upstream_check_token_args(p->expires_in_s, p->max_session_s, err, errlen) < 0) return -1;
    else return 0;
    return -1;
}

pool *pool_open(pool_registry *r, const char *name, const pool_params *params, char *err, size_t errlen) {
    pool *p = NULL;
    if (pool_check(params, err, errlen) < 0) return NULL;
    if (strlen(name) >= POOL_MAX_NAME) {
        snprintf(err, errlen, "pool names are at most %d bytes", POOL_MAX_NAME - 1);
        return NULL;
    }
    pthread_mutex_lock(&r->lock);
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->pools[i]->name, name) == 0) p = r->pools[i];
    if (p && memcmp(&p->params, params, sizeof *params) != 0) {
        pool_token *ring = calloc((size_t)params->size, sizeof *ring);
        if (!ring) {
            snprintf(err, errlen, "out of memory");
            p = NULL;
            goto out;
        }
        pool_empty(p); /* other parameters: the tokens made with the old ones go */
        free(p->ready);
        p->ready = ring;
        p->params = *params;
    } else if (!p) {
        if (r->n == POOL_MAX_POOLS) {
            snprintf(err, errlen, "too many pools (at most %d)", POOL_MAX_POOLS);
            goto out;
        }
        if (!(p = calloc(1, sizeof *p)) || !(p->ready = calloc((size_t)params->size, sizeof *p->ready))) {
            free(p);
            p = NULL;
            snprintf(err, errlen, "out of memory");
            goto out;
        }
        p->reg = r;
        snprintf(p->name, sizeof p->name, "%s", name);
        p->params = *params;
        r->pools[r->n++] = p;
    }
out:
    pthread_mutex_unlock(&r->lock);
    return p;
}

pool_params pool_get_params(pool *p) {
    pthread_mutex_lock(&p->reg->lock);
    pool_params params = p->params;
    pthread_mutex_unlock(&p->reg->lock);
    return params;
}

int pool_take(pool *p, uint64_t now_ms, char *out, size_t cap, long *remaining_s) {
    int rc = 0;
    pthread_mutex_lock(&p->reg->lock);
    pool_drop_stale(p, now_ms);
    if (p->count) {
        pool_token *t = &p->ready[p->head];
        size_t len = strlen(t->text);
        rc = len < cap ? 1 : -1;
        if (rc > 0) {
            memcpy(out, t->text, len + 1);
            *remaining_s = (long)((t->expires_ms - now_ms) / 1000);
            p->taken++;
        }
        pool_wipe(t); /* handed out once, or never (one that does not fit is dropped) */
        if (rc < 0) p->dropped++;
        p->head = (p->head + 1) % (size_t)p->params.size;
        p->count--;
    }
    pthread_mutex_unlock(&p->reg->lock);
    return rc;
}

int pool_plan(pool *p, uint64_t now_ms) {
    int n = 0;
    pthread_mutex_lock(&p->reg->lock);
    pool_drop_stale(p, now_ms);
    long missing = p->params.size - (long)p->count - p->minting;
    if (p->open_until_ms && now_ms < p->open_until_ms) missing = 0;        /* open */
    else if (p->open_until_ms) missing = p->trial || missing <= 0 ? 0 : 1; /* half-open: one trial */
    if (missing > 0) {
        n = (int)missing;
        p->minting += n;
        if (p->open_until_ms) p->trial = 1;
    }
    pthread_mutex_unlock(&p->reg->lock);
    return n;
}

void pool_minted(pool *p, uint64_t now_ms, const char *token, long expires_in_s, int planned) {
    pthread_mutex_lock(&p->reg->lock);
    p->failures = 0;
    p->open_until_ms = 0;
    p->trial = 0;
    if (planned) {
        p->minting--;
        p->minted++;
        char *copy = strdup(token);
        if (copy && p->count < (size_t)p->params.size && strlen(token) < POOL_MAX_TOKEN) {
            pool_token *t = &p->ready[(p->head + p->count) % (size_t)p->params.size];
            t->text = copy;
            t->expires_ms = now_ms + (uint64_t)expires_in_s * 1000;
            p->count++;
        } else if (copy) {
            explicit_bzero(copy, strlen(copy));
            free(copy);
            p->dropped++;
        }
    } else {
        p->on_demand++;
    }
    pthread_mutex_unlock(&p->reg->lock);
}

int pool_failed(pool *p, uint64_t now_ms, failure_kind kind, long retry_after_s, int planned) {
    int log = 0;
    pthread_mutex_lock(&p->reg->lock);
    if (planned) p->minting--;
    p->trial = 0;
    p->last_failure = kind;
    uint64_t backoff = POOL_BACKOFF_FIRST_MS << (p->failures < 6 ? p->failures : 6);
    if (backoff > POOL_BACKOFF_MAX_MS) backoff = POOL_BACKOFF_MAX_MS;
    if (retry_after_s > 0 && (uint64_t)retry_after_s * 1000 > backoff) backoff = (uint64_t)retry_after_s * 1000;
    p->failures++;
    p->open_until_ms = now_ms + backoff;
    if (!p->last_log_ms || now_ms - p->last_log_ms >= POOL_LOG_EVERY_MS) {
        p->last_log_ms = now_ms;
        log = 1;
    }
    pthread_mutex_unlock(&p->reg->lock);
    return log;
}

void pool_abandoned(pool *p) {
    pthread_mutex_lock(&p->reg->lock);
    p->minting--;
    if (p->trial) p->trial = 0;
    pthread_mutex_unlock(&p->reg->lock);
}

int pool_breaker(pool *p, uint64_t now_ms, failure_kind *kind, long *retry_after_s) {
    pthread_mutex_lock(&p->reg->lock);
    int open = p->open_until_ms && now_ms < p->open_until_ms;
    if (open) {
        *kind = p->last_failure;
        *retry_after_s = (long)((p->open_until_ms - now_ms + 999) / 1000);
    }
    pthread_mutex_unlock(&p->reg->lock);
    return open;
}

/* One counter family: HELP, TYPE, then a series per pool. which: the value to show. */
static void pool_family(metrics_write_fn *write, void *ud, const char *name, const char *type, const char *help,
                        int which) {
    char line[256];
    int n = snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    write(ud, line, (size_t)n);
    pthread_mutex_lock(&pool_all_lock);
    for (list_node *l = list_first(&pool_all); l; l = list_next(&pool_all, l)) {
        pool_registry *r = list_entry(l, pool_registry, link);
        pthread_mutex_lock(&r->lock);
        for (int i = 0; i < r->n; i++) {
            const pool *p = r->pools[i];
            unsigned long long v = which == 0 ? p->count
                    : which == 1              ? p->taken
                    : which == 2              ? p->on_demand
                    : which == 3              ? p->dropped
                    : which == 4              ? p->minted
                                              : p->open_until_ms != 0;
            n = snprintf(line, sizeof line, "%s{pool=\"%s\"} %llu\n", name, p->name, v);
            if (n > 0 && (size_t)n < sizeof line) write(ud, line, (size_t)n);
        }
        pthread_mutex_unlock(&r->lock);
    }
    pthread_mutex_unlock(&pool_all_lock);
}

void pool_metrics(metrics_write_fn *write, void *ud) {
    pool_family(write, ud, "tokend_pool_ready", "gauge", "Tokens ready in the pool.", 0);
    pool_family(write, ud, "tokend_pool_taken_total", "counter", "Tokens handed out from the pool.", 1);
    pool_family(write, ud, "tokend_pool_minted_on_demand_total", "counter",
                "Tokens minted for a take that found the pool empty.", 2);
    pool_family(write, ud, "tokend_pool_dropped_total", "counter",
                "Tokens dropped unused: stale, or the pool's parameters changed.", 3);
    pool_family(write, ud, "tokend_pool_refilled_total", "counter", "Tokens minted into the pool.", 4);
    pool_family(write, ud, "tokend_pool_breaker_open", "gauge",
                "1 while refills pause after upstream failures (takes fail fast when the pool is empty).", 5);
}
