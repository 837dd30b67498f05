/* lhosttask.c: the Lua host's tasks: each request's handler, timer and hook runs on a coroutine of its own with its budget, waits on the outside world, and ends in an answer or a callback. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#include "audit.h"
#include "lhostint.h"
#include "log.h"
#include "lstate.h"
#include "url.h"

#define LHOST_POOLED_COROUTINES 4096 /* finished coroutines kept for the next requests */

static void lhosttask_done(lhost_task *t);
static void lhosttask_answer_unhandled(lhost *h, http_request *req, int route_status, const char *allow);

/* ---- tasks ---- */

/* Sets (t) or clears (NULL) the task the coroutine on top of h->L's stack runs for. */
static void lhosttask_set_of(lhost *h, lhost_task *t) {
    lua_State *L = h->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->tasks_ref);
    lua_pushvalue(L, -2);
    if (t) lua_pushlightuserdata(L, t);
    else lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

/* The task whose coroutine L is, or NULL. */
static lhost_task *lhosttask_of(lhost *h, lua_State *L) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->tasks_ref);
    lua_pushthread(L);
    lua_rawget(L, -2);
    lhost_task *t = lua_touserdata(L, -1);
    lua_pop(L, 2);
    return t;
}

/* A new task, linked in the host's live list. NULL when out of memory. */
static lhost_task *lhosttask_new(lhost *h) {
    lhost_task *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    h->running++;
    list_insert_after(&h->live, &t->link);
    t->h = h;
    t->co_ref = t->req_ref = t->handler_ref = t->fn_ref = t->takeover_ref = LUA_NOREF;
    t->budget.limit = h->instruction_limit;
    t->wait.h = h;
    t->wait.task = t;
    return t;
}

/* Takes a pooled coroutine or creates one for t, leaving it on top of L's stack. */
static lua_State *lhosttask_coroutine(lhost *h, lhost_task *t) {
    lua_State *L = h->L, *co;
    if (h->npooled) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, h->pooled[h->npooled - 1]);
        co = lua_tothread(L, -1);
        t->co_ref = h->pooled[--h->npooled];
    } else {
        co = lua_newthread(L);
        lstate_limit_thread(co);
        lua_pushvalue(L, -1);
        t->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    t->co = co;
    lhosttask_set_of(h, t);
    return co;
}

/* Keeps a task's coroutine for a later task if it ran to its end (a fresh one costs a
 * thread, a stack and garbage); drops it otherwise. */
static void lhosttask_pool_coroutine(lhost *h, lhost_task *t) {
    /* Whatever the coroutine does later (a script may have kept it and resume it), it is
     * no longer this task's. */
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, t->co_ref);
    lhosttask_set_of(h, NULL);
    lua_pop(h->L, 1);
    if (lua_status(t->co) == LUA_OK && h->npooled < LHOST_POOLED_COROUTINES) {
        if (!h->pooled && !(h->pooled = malloc(LHOST_POOLED_COROUTINES * sizeof *h->pooled))) goto drop;
        lua_settop(t->co, 0);
        h->pooled[h->npooled++] = t->co_ref;
        return;
    }
drop:
    luaL_unref(h->L, LUA_REGISTRYINDEX, t->co_ref);
}

/* lua_pcall(L, nargs, 0, 0) under the task's budget: converting what a handler left (its
 * results, req.log) may run its metamethods. */
static int lhosttask_pcall_budgeted(lhost_task *t, lua_State *L, int nargs) {
    lbudget *outer = lbudget_enter(&t->budget);
    int rc = lua_pcall(L, nargs, 0, 0);
    lbudget_enter(outer);
    return rc;
}

/* lrequest_who(L, 2, argument 1): req's fields may come from a script's metamethods,
 * which may raise or loop. */
static int lhosttask_who_protected(lua_State *L) {
    lrequest_who(L, 2, lua_touserdata(L, 1));
    return 0;
}

/* Writes the audit line of an audited route's request that was answered without a mint
 * (refused by the script, or failed before it asked for a token). */
static void lhosttask_audit_refusal(lhost_task *t) {
    lua_State *L = t->h->L;
    audit_who who;
    memset(&who, 0, sizeof who);
    snprintf(who.client, sizeof who.client, "%s", t->req->client);
    if (t->req_ref != LUA_NOREF && lua_checkstack(L, 8)) {
        lua_pushcfunction(L, lhosttask_who_protected);
        lua_pushlightuserdata(L, &who);
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->req_ref);
        if (lhosttask_pcall_budgeted(t, L, 2) != LUA_OK) lua_pop(L, 1);
    }
    audit_refusal(&who, t->status, t->status == 500 ? "internal server error" : t->answer.reason);
}

/* Ends a request's takeover: start(ud, req) when taken is 1, else drop(ud); its value's
 * reference is released. */
static void lhosttask_takeover_end(lhost_task *t, int taken) {
    if (!t->takeover) return;
    lhost_takeover_fn *start = t->takeover;
    lhost_cancel_fn *drop = t->takeover_drop;
    void *ud = t->takeover_ud;
    t->takeover = NULL;
    luaL_unref(t->h->L, LUA_REGISTRYINDEX, t->takeover_ref);
    t->takeover_ref = LUA_NOREF;
    if (taken) start(ud, t->req);
    else drop(ud);
}

/* Ends a task: unlinked, its coroutine pooled or dropped, its refs released; a request
 * gets its req.log fields on its access line, a spawned function's callback is called. */
static void lhosttask_done(lhost_task *t) {
    lhost *h = t->h;
    list_remove(&t->link);
    if (t->audit && !t->minted && t->status) lhosttask_audit_refusal(t);
    if (t->req && t->req_ref != LUA_NOREF) {
        lua_pushcfunction(h->L, lrequest_log_fields);
        lua_pushlightuserdata(h->L, t->req);
        lua_rawgeti(h->L, LUA_REGISTRYINDEX, t->req_ref);
        if (lhosttask_pcall_budgeted(t, h->L, 2) != LUA_OK) lua_pop(h->L, 1);
    }
    if (t->co_ref != LUA_NOREF) lhosttask_pool_coroutine(h, t);
    luaL_unref(h->L, LUA_REGISTRYINDEX, t->req_ref);
    lhosttask_takeover_end(t, 0);
    http_response_free(t->answer.resp);
    h->running--;
    lhost_task_done_fn *done = t->done;
    lhost_call_done_fn *call_done = t->reported ? NULL : t->call_done;
    void *done_ud = t->done_ud;
    int ok = t->ok;
    free(t);
    if (done) done(done_ud, ok);
    if (call_done) call_done(done_ud, 0, NULL, 0);
}

/* Answers a request that no handler answered: HEAD of a GET route (the route exists; its
 * handler, which may mint a token, does not run for a HEAD), 405, a proxied backend's
 * answer, a static file, or 404. */
static void lhosttask_answer_unhandled(lhost *h, http_request *req, int route_status, const char *allow) {
    if (route_status == ROUTER_FOUND) {
        http_response *resp = http_response_bytes("", 0, NULL);
        if (resp) http_response_header(resp, "Cache-Control", "no-store");
        http_request_respond(req, 200, resp, 0);
    } else if (route_status == ROUTER_METHOD_NOT_ALLOWED) {
        http_request_fail_allow(req, allow);
    } else if (proxy_serve(h->proxies, h->world->client, req)) {
        return;
    } else if (static_serve(h->statics, req)) {
        snprintf(req->route, sizeof req->route, "static");
    } else {
        http_request_fail(req, 404, "not found");
    }
}

/* Ends a task that failed: a request answers 500; why goes to the log. */
static void lhosttask_fail(lhost_task *t, const char *why) {
    if (t->req) {
        log_msg(LOG_ERROR, "%s %s: %s", t->req->method, t->req->path, why);
        http_request_fail(t->req, 500, "internal server error");
        t->status = 500;
    } else {
        log_msg(LOG_ERROR, "%s: %s", t->what, why);
    }
    lhosttask_done(t);
}

/* Logs the error of a failed coroutine with its traceback (protected; argument 1 is the
 * task). */
static int lhosttask_log_traceback(lua_State *L) {
    lhost_task *t = lua_touserdata(L, 1);
    luaL_traceback(L, t->co, lhost_error_text(t->co, -1), 0);
    if (t->req) log_msg(LOG_ERROR, "%s %s: handler failed: %s", t->req->method, t->req->path, lua_tostring(L, -1));
    else log_msg(LOG_ERROR, "%s failed: %s", t->what, lua_tostring(L, -1));
    return 0;
}

/* Takes a coroutine for a request and pushes onto it the handler and req, or (runner,
 * befores, handler, req) when before hooks run first (protected; argument 1 is the task). */
static int lhosttask_start_request(lua_State *L) {
    lhost_task *t = lua_touserdata(L, 1);
    lhost *h = t->h;
    lua_State *co = lhosttask_coroutine(h, t);
    lua_pop(L, 1);
    int direct = h->nbefores == 0 && t->handler_ref != LUA_NOREF;
    if (!direct) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, h->runner_ref);
        lua_rawgeti(L, LUA_REGISTRYINDEX, h->befores_ref);
    }
    if (t->handler_ref != LUA_NOREF) lua_rawgeti(L, LUA_REGISTRYINDEX, t->handler_ref);
    else lua_pushboolean(L, 0);
    t->bad_query = lrequest_push(L, t->req, &t->match, h->max_query_args);
    lua_pushvalue(L, -1);
    t->req_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->nargs = direct ? 1 : 3;
    lua_xmove(L, co, t->nargs + 1);
    return 0;
}

/* Takes a coroutine for a spawned function and pushes the function onto it (protected;
 * argument 1 is the task). */
static int lhosttask_start_spawned(lua_State *L) {
    lhost_task *t = lua_touserdata(L, 1);
    lua_State *co = lhosttask_coroutine(t->h, t);
    lua_pop(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->fn_ref);
    t->nargs = t->push ? t->push(L, t->push_ud) : 0;
    lua_xmove(L, co, 1 + t->nargs);
    return 0;
}

/* The handler returned (its nres results on its coroutine): when the first is the value
 * of its takeover, the request is handed over (returns 1); else the takeover is dropped. */
static int lhosttask_take_over(lhost_task *t, int nres) {
    lua_State *co = t->co;
    int taken = 0;
    if (nres >= 1 && lua_checkstack(co, 1)) {
        lua_rawgeti(co, LUA_REGISTRYINDEX, t->takeover_ref);
        taken = lua_rawequal(co, -1, -(nres + 1));
        lua_pop(co, 1);
    }
    if (!taken) {
        lhosttask_takeover_end(t, 0);
        return 0;
    }
    lhosttask_takeover_end(t, 1); /* the request is the takeover's now */
    lhosttask_done(t);
    return 1;
}

/* Turns the finished coroutine's nres results into the answer (or, for a spawned
 * function, ends it). */
static void lhosttask_finish(lhost_task *t, int nres) {
    lua_State *co = t->co;
    if (!t->req) {
        t->ok = 1;
        if (t->call_done) {
            t->reported = 1;
            t->call_done(t->done_ud, 1, co, nres);
        }
        lhosttask_done(t);
        return;
    }
    if (t->takeover && lhosttask_take_over(t, nres)) return;
    if (nres > 3) {
        lua_pop(co, nres - 3);
        nres = 3;
    }
    if (nres == 0 || lua_isnil(co, -nres)) {
        if (t->handler_ref != LUA_NOREF) {
            lhosttask_fail(t, "the handler returned no status");
            return;
        }
        lhosttask_answer_unhandled(t->h, t->req, t->route_status, t->allow);
        lhosttask_done(t);
        return;
    }
    lua_pushcfunction(co, lrequest_build_response);
    t->answer.encode_ref = t->h->encode_ref;
    lua_pushlightuserdata(co, &t->answer);
    lua_rotate(co, -(nres + 2), 2);
    if (lhosttask_pcall_budgeted(t, co, nres + 1) != LUA_OK) {
        char why[600];
        snprintf(why, sizeof why, "%s", lhost_error_text(co, -1));
        lhosttask_fail(t, why);
        return;
    }
    http_request_respond(t->req, t->answer.status, t->answer.resp, t->answer.bytes);
    t->status = t->answer.status;
    t->answer.resp = NULL;
    lhosttask_done(t);
}

/* Runs start (a task's set-up: its coroutine and arguments) in a protected call. Returns 0,
 * or -1 after failing t with "<failed>: <the error>" (t is gone then). */
static int lhosttask_start(lhost_task *t, lua_CFunction start, const char *failed) {
    lua_State *L = t->h->L;
    if (lhost_protected(L, start, t, 0) == LUA_OK) return 0;
    char why[600];
    snprintf(why, sizeof why, "%s: %s", failed, lhost_error_text(L, -1));
    lua_pop(L, 1);
    lhosttask_fail(t, why);
    return -1;
}

/* Resumes the task's coroutine with nargs values on its stack. */
static void lhosttask_resume(lhost_task *t, int nargs) {
    int nres = 0;
    int rc = lstate_resume(t->co, t->h->L, nargs, &nres, &t->budget);
    if (rc == LUA_YIELD) {
        if (t->wait.op) return; /* waiting on the outside world */
        lhosttask_fail(t,
                       t->req ? "the handler yielded outside a tokend call that waits"
                              : "it yielded outside a tokend call that waits");
        return;
    }
    if (rc != LUA_OK) {
        if (lhost_protected(t->h->L, lhosttask_log_traceback, t, 0) != LUA_OK) {
            log_msg(LOG_ERROR, "%s: %s", t->req ? t->req->path : t->what, lhost_error_text(t->co, -1));
            lua_pop(t->h->L, 1);
        }
        if (t->req) {
            http_request_fail(t->req, 500, "internal server error");
            t->status = 500;
        }
        lhosttask_done(t);
        return;
    }
    lhosttask_finish(t, nres);
}

void lhost_dispatch(void *ud, http_request *req) {
    lhost *h = ud;
    router_result match;
    char allow[96];
    size_t raw_len = strcspn(req->target, "?");
    int found = router_match(h->routes, req->method, req->target, raw_len, &match, allow, sizeof allow);
    int runs_handler = found == ROUTER_FOUND && !match.head_of_get;
    if (found == ROUTER_FOUND) {
        snprintf(req->route, sizeof req->route, "%s", match.pattern);
        req->log_every = match.opts.log_every;
    }
    if (!runs_handler && h->nbefores == 0) {
        lhosttask_answer_unhandled(h, req, found, allow);
        return;
    }
    lhost_task *t = lhosttask_new(h);
    if (!t) {
        http_request_fail(req, 503, "out of memory");
        return;
    }
    t->req = req;
    t->route_status = found;
    snprintf(t->allow, sizeof t->allow, "%s", allow);
    t->handler_ref = runs_handler ? match.handler : LUA_NOREF;
    t->audit = runs_handler && match.opts.audit;
    t->match = match;
    if (lhosttask_start(t, lhosttask_start_request, "cannot start the handler") < 0) return;
    if (t->bad_query) {
        http_request_fail(req, 400,
                          t->bad_query == URL_ERR_TOO_MANY ? "too many query arguments" : "malformed query string");
        lhosttask_done(t);
        return;
    }
    lhosttask_resume(t, t->nargs);
}

/* Makes the task that runs fn_ref (its arguments from push, when given) and starts its
 * coroutine. NULL when out of memory or when it cannot start (logged, and failed without
 * telling a caller: the caller hears of it by the NULL). */
static lhost_task *lhosttask_begin(lhost *h, int fn_ref, const char *what, lhost_push_fn *push, void *push_ud) {
    lhost_task *t = lhosttask_new(h);
    if (!t) {
        log_msg(LOG_ERROR, "%s: out of memory", what);
        return NULL;
    }
    t->fn_ref = fn_ref;
    t->what = what;
    t->push = push;
    t->push_ud = push_ud;
    return lhosttask_start(t, lhosttask_start_spawned, "cannot start") < 0 ? NULL : t;
}

int lhost_spawn(lhost *h, int fn_ref, const char *what, lhost_task_done_fn *done, void *ud) {
    lhost_task *t = lhosttask_begin(h, fn_ref, what, NULL, NULL);
    if (!t) return -1;
    t->done = done;
    t->done_ud = ud;
    lhosttask_resume(t, t->nargs);
    return 0;
}

int lhost_call(lhost *h, int fn_ref, const char *what, lhost_push_fn *push, void *push_ud, lhost_call_done_fn *done,
               void *ud) {
    lhost_task *t = lhosttask_begin(h, fn_ref, what, push, push_ud);
    if (!t) return -1;
    t->call_done = done;
    t->done_ud = ud;
    lhosttask_resume(t, t->nargs);
    return 0;
}

void lhost_hold(lhost *h) {
    h->running++;
}

void lhost_release(lhost *h) {
    h->running--;
}

void lhost_request_takeover(lhost *h, lua_State *L, int idx, lhost_takeover_fn *start, lhost_cancel_fn *drop,
                            void *ud) {
    lhost_task *t = lhosttask_of(h, L);
    if (!t || !t->req) {
        drop(ud);
        luaL_error(L, "only a request handler can hand its request over");
        return;
    }
    lhosttask_takeover_end(t, 0); /* an earlier one is dropped */
    lua_pushvalue(L, idx);
    t->takeover_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->takeover = start;
    t->takeover_drop = drop;
    t->takeover_ud = ud;
}

void lhost_request_minted(lhost *h, lua_State *L) {
    lhost_task *t = lhosttask_of(h, L);
    if (t && t->req) t->minted = 1;
}

void lhost_push_request(lhost *h, lua_State *L) {
    lhost_task *t = lhosttask_of(h, L);
    if (t && t->req_ref != LUA_NOREF) lua_rawgeti(L, LUA_REGISTRYINDEX, t->req_ref);
    else lua_pushnil(L);
}

/* ---- waiting on the outside world ---- */

lhost_waiter *lhost_wait_begin(lhost *h, lua_State *L, const char *fn, const lhost_world **world) {
    lhost_task *t = lhosttask_of(h, L);
    if (t && lua_isyieldable(L)) {
        *world = h->world;
        return &t->wait;
    }
    if (!t && !h->owns_state && !h->blocking.op) {
        /* The Lua module outside a request: the application waits for the answer. */
        memset(&h->blocking, 0, sizeof h->blocking);
        h->blocking.h = h;
        h->blocking.L = L;
        *world = h->own_world;
        return &h->blocking;
    }
    luaL_error(L,
               "%s must be called from a request handler or a timer (not while the script loads, nor "
               "inside a coroutine of its own or a callback from C)",
               fn);
    return NULL;
}

int lhost_wait(lhost_waiter *w, lua_State *L, lhost_cancel_fn *cancel, void *op) {
    w->cancel = cancel;
    w->op = op;
    w->woken = 0;
    w->since_us = loop_now_us();
    if (w->task) return lua_yield(L, 0);
    int top = lua_gettop(L);
    if (loop_run_until(w->h->own_world->lp, &w->woken) < 0) {
        cancel(op);
        w->op = NULL;
        return luaL_error(L, "tokend: the event loop failed while waiting");
    }
    if (w->nres < 0) return lua_error(L); /* the push failed: its error is on top */
    return lua_gettop(L) - top;
}

/* Calls push(L, ud) in protected mode (arguments: push, ud). */
static int lhosttask_push_protected(lua_State *L) {
    lhost_push_fn *push = (lhost_push_fn *)(uintptr_t)lua_touserdata(L, 1);
    void *ud = lua_touserdata(L, 2);
    lua_settop(L, 0);
    return push(L, ud);
}

/* Runs push onto L protected; returns the number of values, or -1 with the error on top. */
static int lhosttask_push_results(lua_State *L, lhost_push_fn *push, void *ud) {
    int top = lua_gettop(L);
    lua_pushcfunction(L, lhosttask_push_protected);
    lua_pushlightuserdata(L, (void *)(uintptr_t)push);
    lua_pushlightuserdata(L, ud);
    if (lua_pcall(L, 2, LUA_MULTRET, 0) != LUA_OK) return -1;
    return lua_gettop(L) - top;
}

void lhost_wake(lhost_waiter *w, lhost_push_fn *push, void *ud) {
    lhost_task *t = w->task;
    w->op = NULL;
    w->woken = 1;
    if (!t) {
        w->nres = lhosttask_push_results(w->L, push, ud);
        return;
    }
    if (t->req) {
        double waited = (double)(loop_now_us() - w->since_us) / 1000.0;
        t->req->upstream_ms = (t->req->upstream_ms < 0 ? 0 : t->req->upstream_ms) + waited;
    }
    lua_State *L = t->h->L;
    int top = lua_gettop(L);
    int n = lhosttask_push_results(L, push, ud);
    if (n < 0 || !lua_checkstack(t->co, n)) {
        char why[600];
        snprintf(why, sizeof why, "cannot return the results of a call: %s",
                 n < 0 ? lhost_error_text(L, -1) : "out of memory");
        lua_settop(L, top);
        lhosttask_fail(t, why);
        return;
    }
    lua_xmove(L, t->co, n);
    lhosttask_resume(t, n);
}

/* Abandons the tasks still running: what they wait for is cancelled, their callbacks are
 * not called, and a request's HTTP side is answered by the HTTP front's own shutdown. */
void lhosttask_drop_all(lhost *h) {
    for (list_node *n; (n = list_first(&h->live));) {
        lhost_task *t = list_entry(n, lhost_task, link);
        list_remove(n);
        if (t->wait.op) t->wait.cancel(t->wait.op);
        http_response_free(t->answer.resp);
        if (!h->owns_state && t->co_ref != LUA_NOREF) {
            lua_rawgeti(h->L, LUA_REGISTRYINDEX, t->co_ref);
            lhosttask_set_of(h, NULL);
            lua_pop(h->L, 1);
            luaL_unref(h->L, LUA_REGISTRYINDEX, t->co_ref);
            luaL_unref(h->L, LUA_REGISTRYINDEX, t->req_ref);
        }
        free(t);
        h->running--;
    }
}
