/* lpoollib.c: tokend.pool: tokens minted ahead, refilled in the background by every worker, each handed out once. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "list.h"
#include "llib.h"
#include "log.h"
#include "loop.h"
#include "ltoken.h"
#include "metrics.h"
#include "pool.h"

#define LPOOL_CLASS "tokend.pool"
#define LPOOL_TICK_MS 1000 /* how often a worker looks whether its pools need tokens */

typedef struct lpool_refill lpool_refill;

/* One refill mint in flight. */
typedef struct lpool_mint {
    lpool_refill *refill;
    upstream_call *call;
    list_node link; /* in its refill's mints */
} lpool_mint;

/* A worker's share of keeping a pool full: a timer that asks the pool what to mint, and
 * the mints under way. It stops when its host retires (a reload, the module's server
 * stopping); the pool itself goes on. */
struct lpool_refill {
    pool *p;
    loop *lp;
    upstream *up;
    loop_timer tick;
    list_node mints;
    int stopped;
};

typedef struct lpool {
    pool *p;
    lhost *h;
    lpool_refill *refill; /* NULL outside a server */
} lpool;

static void lpool_schedule(lpool_refill *r, long after_ms);

static void lpool_mint_done(void *ud, const upstream_result *res) {
    lpool_mint *m = ud;
    lpool_refill *r = m->refill;
    uint64_t now = loop_now_ms();
    list_remove(&m->link);
    free(m);
    metrics_upstream(res->failure, res->elapsed_ms);
    if (res->token) {
        pool_minted(r->p, now, res->token, res->expires_in_seconds, 1);
    } else if (pool_failed(r->p, now, res->failure, res->retry_after, 1)) {
        failure_kind kind;
        long wait = 0;
        pool_breaker(r->p, now, &kind, &wait);
        log_msg(LOG_WARN,
                "token pool: the upstream failed (%s: %s); refills pause for %ld s (this line comes at "
                "most once a minute; tokend_pool_breaker_open shows the state)",
                res->kind, res->error, wait);
    }
    lpool_schedule(r, 0);
}

/* Starts what the pool says is missing. */
static void lpool_on_tick(void *ud) {
    lpool_refill *r = ud;
    pool_params params = pool_get_params(r->p);
    int n = pool_plan(r->p, loop_now_ms());
    for (int i = 0; i < n; i++) {
        lpool_mint *m = calloc(1, sizeof *m);
        if (!upstream_has_key(r->up)) {
            free(m);
            pool_failed(r->p, loop_now_ms(), FAILURE_NO_KEY, -1, 1);
            continue;
        }
        if (!m || !(m->call = upstream_mint(r->up, params.expires_in_s, params.max_session_s, lpool_mint_done, m))) {
            free(m);
            pool_abandoned(r->p);
            continue;
        }
        m->refill = r;
        list_insert_after(&r->mints, &m->link);
    }
    lpool_schedule(r, LPOOL_TICK_MS);
}

static void lpool_schedule(lpool_refill *r, long after_ms) {
    if (!r->stopped) loop_timer_start(r->lp, &r->tick, after_ms, lpool_on_tick, r);
}

/* The host retires: this worker stops refilling; its mints in flight are given up. */
static void lpool_on_retire(void *ud) {
    lpool_refill *r = ud;
    r->stopped = 1;
    loop_timer_stop(r->lp, &r->tick);
    for (list_node *n; (n = list_first(&r->mints));) {
        lpool_mint *m = list_entry(n, lpool_mint, link);
        list_remove(n);
        upstream_cancel(m->call);
        pool_abandoned(r->p);
        free(m);
    }
}

/* Starts this worker's refill of u's pool, when it serves and has not yet. */
static void lpool_start_refill(lpool *u) {
    const lhost_world *w = lhost_world_of(u->h);
    if (!w->serves || lhost_retired(u->h) || (u->refill && !u->refill->stopped)) return;
    lpool_refill *r = u->refill ? u->refill : calloc(1, sizeof *r);
    if (!r) return;
    memset(r, 0, sizeof *r);
    list_init(&r->mints);
    r->p = u->p;
    r->lp = w->lp;
    r->up = w->up;
    u->refill = r;
    lhost_on_retire(u->h, lpool_on_retire, r);
    lpool_schedule(r, 0);
}

static int lpool_gc(lua_State *L) {
    lpool *u = luaL_checkudata(L, 1, LPOOL_CLASS);
    if (u->refill) {
        lpool_on_retire(u->refill);
        free(u->refill);
        u->refill = NULL;
    }
    return 0;
}

/* Reads t.field as a whole number of seconds in [min, max] (dflt when absent); raises otherwise. */
static long lpool_opt(lua_State *L, const char *field, long dflt, long min, long max) {
    lua_getfield(L, 1, field);
    long v = dflt;
    if (!lua_isnil(L, -1)) {
        int isint = 0;
        lua_Integer n = lua_tointegerx(L, -1, &isint);
        if (!isint || n < min || n > max)
            luaL_error(L, "tokend.pool: %s must be a whole number, %d..%d", field, (int)min, (int)max);
        v = (long)n;
    }
    lua_pop(L, 1);
    return v;
}

/* tokend.pool{name = N, size = S, expires_in_seconds = 600, min_remaining_seconds = 30,
 * max_session_duration_seconds = M} -> pool */
static int lpool_new(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    char err[200];
    luaL_checktype(L, 1, LUA_TTABLE);
    lhost_check_loading(L, h, "pool");
    lua_getfield(L, 1, "name");
    const char *name = luaL_optstring(L, -1, "default");
    for (const char *c = name; *c; c++)
        if (!(*c == '_' || *c == '-' || *c == '.' || (*c >= '0' && *c <= '9') ||
              ((*c | 32) >= 'a' && (*c | 32) <= 'z')))
            return luaL_error(L, "tokend.pool: name \"%s\" may hold letters, digits, '_', '-' and '.' only", name);
    pool_params params = {
        .size = lpool_opt(L, "size", -1, -1000000, 1000000),
        .expires_in_s = lpool_opt(L, "expires_in_seconds", UPSTREAM_EXPIRES_MAX, UPSTREAM_EXPIRES_MIN,
                                  UPSTREAM_EXPIRES_MAX),
        .min_remaining_s = lpool_opt(L, "min_remaining_seconds", 30, 0, UPSTREAM_EXPIRES_MAX),
        .max_session_s = lpool_opt(L, "max_session_duration_seconds", 0, UPSTREAM_SESSION_MIN, UPSTREAM_SESSION_MAX),
    };
    if (params.size == -1) return luaL_error(L, "tokend.pool: size is required");
    pool *p = pool_open(lhost_world_of(h)->pools, *name ? name : "default", &params, err, sizeof err);
    if (!p) return luaL_error(L, "tokend.pool: %s", err);
    lpool *u = lua_newuserdatauv(L, sizeof *u, 0);
    memset(u, 0, sizeof *u);
    u->p = p;
    u->h = h;
    luaL_setmetatable(L, LPOOL_CLASS);
    lua_pushvalue(L, -1); /* kept until the state closes: its refill must outlive the host's retirement */
    luaL_ref(L, LUA_REGISTRYINDEX);
    lpool_start_refill(u);
    return 1;
}

/* What the result of a mint on demand does to the pool: counted, and a failure opens the
 * breaker. */
static void lpool_observe(void *ud, const upstream_result *r) {
    pool *p = ud;
    if (r->token) pool_minted(p, loop_now_ms(), r->token, r->expires_in_seconds, 0);
    else if (pool_failed(p, loop_now_ms(), r->failure, r->retry_after, 0))
        log_msg(LOG_WARN, "token pool: the upstream failed (%s: %s); refills pause (at most one line a minute)",
                r->kind, r->error);
}

/* pool:take() -> token, info (info.pooled) | nil, err, upstream_status, failure */
static int lpool_take(lua_State *L) {
    lpool *u = luaL_checkudata(L, 1, LPOOL_CLASS);
    const lhost_world *world;
    char token[POOL_MAX_TOKEN];
    long remaining = 0, retry = 0;
    failure_kind kind;
    pool_params params = pool_get_params(u->p);
    lhost_wait_begin(u->h, L, "pool:take", &world); /* raises where a mint could not wait */
    lpool_start_refill(u);
    uint64_t now = loop_now_ms();
    upstream_result r;
    memset(&r, 0, sizeof r);
    ltoken_audit audit;
    ltoken_audit_capture(L, u->h, params.expires_in_s, params.max_session_s, &audit);
    if (pool_take(u->p, now, token, sizeof token, &remaining) > 0) {
        if (u->refill) lpool_schedule(u->refill, 0);
        r.token = token;
        r.expires_in_seconds = remaining;
        r.retry_after = -1;
        audit.pooled = 1;
        int n = ltoken_push_outcome(L, &r, &audit);
        explicit_bzero(token, sizeof token);
        return n;
    }
    if (pool_breaker(u->p, now, &kind, &retry)) { /* a failing upstream is not asked again now */
        r.failure = kind;
        r.kind = failure_name(kind);
        r.error = "the upstream failed recently: the token pool waits before asking again";
        r.retry_after = retry;
        r.elapsed_ms = -1;
        audit.quiet = 1;
        return ltoken_push_outcome(L, &r, &audit);
    }
    return ltoken_mint(L, u->h, "pool:take", params.expires_in_s, params.max_session_s, lpool_observe, u->p);
}

void lpoollib_open(lua_State *L, lhost *h) {
    static const luaL_Reg methods[] = { { "take", lpool_take }, { NULL, NULL } };
    static const luaL_Reg fns[] = { { "pool", lpool_new }, { NULL, NULL } };
    llib_class(L, LPOOL_CLASS, methods, lpool_gc);
    llib_register(L, h, fns);
}
