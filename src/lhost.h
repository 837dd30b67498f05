/* lhost.h: the Lua host: a worker's Lua state and the life of each request on it, one coroutine each. */
#ifndef TOKEND_LHOST_H
#define TOKEND_LHOST_H

#include <stddef.h>

#include "http.h"
#include "loop.h"
#include "policy.h"
#include "proxy.h"
#include "router.h"
#include "static.h"
#include "upstream.h"
#include "url.h"

typedef struct lua_State lua_State;
typedef struct lhost lhost;
typedef struct lhost_waiter lhost_waiter;

/* Read-only settings shown to scripts as tokend.config (never the key). */
typedef struct lhost_info {
    const char *host;
    int port;
    const char *script;
    const char *public_dir;
    const char *streaming_url;
    const char *token_url;
    const char *websocket_url;
    int workers;
    int worker;
    int api_key_configured;
    int redis_configured;
    const url_region *regions; /* AssemblyAI's data zones by name (ASSEMBLYAI_REGION_URLS) */
    size_t nregions;
    const url_endpoints *agents; /* the Voice Agent API's endpoints (ASSEMBLYAI_AGENTS_URL) */
    int tls_port;                /* the port that speaks HTTPS, 0 when none */
    int dev;                     /* the development server (--dev) */
} lhost_info;

/* What a state's library calls reach: the worker's loop and clients, and the state all
 * workers share. Borrowed by the host; it must outlive it. */
typedef struct lhost_world {
    int serves; /* 1: a server's worker; 0: the Lua module's own, outside a server */
    loop *lp;
    fetch *client; /* outgoing HTTP (tokend.http) */
    upstream *up;
    policy_buckets *buckets;        /* the rate limiters' buckets, shared by all workers */
    struct shdict_registry *shared; /* tokend.shared's dictionaries, shared by all workers */
    struct pool_registry *pools;    /* tokend.pool's pools, idem */
    struct envfile *env;            /* the .env file tokend.env reads after the environment, or NULL */
    struct redis_client *redis;     /* the worker's connection to Redis, or NULL when none is configured */
    const lhost_info *info;
    struct relay_hub *relay; /* the worker's relayed sessions, or NULL outside a server */
} lhost_world;

/* Pushes the `tokend` module table for h onto L (raises on failure). */
typedef int lhost_open_fn(lua_State *L, lhost *h);

typedef struct lhost_options {
    const char *script;     /* the routes script (lhost_create only) */
    size_t memory_limit;    /* bytes the state may hold (lhost_create only) */
    long instruction_limit; /* VM instructions one request may run */
    size_t max_query_args;
    const lhost_world *world;   /* where library calls run */
    lhost_open_fn *open_module; /* require "tokend" (lhost_create only) */
} lhost_options;

/* Creates a state with its limits, makes `require "tokend"` give open_module's table and
 * runs the script (its top level may run ten times a request's instruction budget). On
 * failure returns -1 and err holds "file:line: message". */
int lhost_create(const lhost_options *o, lhost **out, char *err, size_t errlen);

/* Creates a host on an application's own state L (the Lua module): no script, no limits
 * on the application's own code, its globals untouched. o->world is the module's own:
 * outside requests, calls that wait on the outside world block on its loop. Routes may
 * be added until lhost_serve(). Returns 0, or -1 with err set. */
int lhost_attach(lua_State *L, const lhost_options *o, lhost **out, char *err, size_t errlen);

/* Attached hosts: serve requests with a worker's world; NULL goes back to the module's
 * own (routes may be added again; the retire hooks run, since what ran on the server
 * stops). */
void lhost_serve(lhost *h, const lhost_world *w);

/* Attached hosts: enter a worker's world while routes are still being added (scripts
 * see its settings); lhost_serve(h, w) then starts serving. */
void lhost_enter(lhost *h, const lhost_world *w);

/* Closes the state (not an application's). Calls still waiting are cancelled first;
 * their requests are answered by the HTTP front's own shutdown. NULL is allowed. */
void lhost_free(lhost *h);

/* Answers one HTTP request: before hooks, routes, proxies, static files (an http_dispatch_fn). */
void lhost_dispatch(void *h, http_request *req);

/* Requests and tasks still running or waiting. */
size_t lhost_running(const lhost *h);

/* Registers fn(ud), called once when the host retires: a reload replaced it, or it is
 * freed. The parts of the API stop what would run later (timers). */
void lhost_on_retire(lhost *h, void (*fn)(void *ud), void *ud);

/* Retires the host: its retire hooks run; what runs now finishes. */
void lhost_retire(lhost *h);
int lhost_retired(const lhost *h);

/* ---- for the parts of the Lua API ---- */

/* The state requests run on. */
lua_State *lhost_state(const lhost *h);

/* 1 while the script loads (routes, static mounts, hooks and limiters may be defined). */
int lhost_loading(const lhost *h);

/* The world library calls run in now. */
const lhost_world *lhost_world_of(const lhost *h);

/* Raises a Lua error naming fn unless the script is loading. */
void lhost_check_loading(lua_State *L, const lhost *h, const char *fn);

/* Adds a route answered by the function at stack index idx of L, with options o (NULL:
 * the defaults; see router_opts). method is upper case. Returns 0, or -1 with err set
 * (bad method or path, a route defined twice). */
int lhost_add_route(lhost *h, lua_State *L, const char *method, const char *path, int idx, const router_opts *o,
                    char *err, size_t errlen);

/* Serves the files under dir for paths under prefix. Returns 0, or -1 with err set. */
int lhost_add_static(lhost *h, const char *prefix, const char *dir, const static_options *o, char *err, size_t errlen);

/* Forwards the requests under prefix to the backend at url. Returns 0, or -1 with err set. */
int lhost_add_proxy(lhost *h, const char *prefix, const char *url, const proxy_options *o, char *err, size_t errlen);

/* Appends the function at stack index idx to the before hooks. */
void lhost_add_before(lhost *h, lua_State *L, int idx);

/* Notes that the request whose handler runs on L asked for a token (its audit line is
 * the mint's). Does nothing elsewhere. */
void lhost_request_minted(lhost *h, lua_State *L);

/* Pushes the req table of the request whose handler runs on L, or nil. */
void lhost_push_request(lhost *h, lua_State *L);

/* ---- tasks: Lua functions run outside requests (timers) ---- */

/* Called once a spawned function ends: ok is 1 when it returned, 0 when it failed (the
 * error and its traceback were logged). */
typedef void lhost_task_done_fn(void *ud, int ok);

/* Runs the function registered at fn_ref in the registry on a coroutine of its own, with
 * a request's instruction budget; it may wait on the outside world like a handler. what
 * names it in the log ("timer"). Returns 0, or -1 when it could not start (logged).
 * done(ud, ok) is called when it ends, unless the host is freed first. */
int lhost_spawn(lhost *h, int fn_ref, const char *what, lhost_task_done_fn *done, void *ud);

/* Called once a function run by lhost_call ends: ok 1 with its nres results on co's stack
 * (read them during the call; co is not the caller's), or ok 0, co NULL, when it failed
 * (raised, ran past its budget; logged) or could not start. */
typedef void lhost_call_done_fn(void *ud, int ok, lua_State *co, int nres);

/* Pushes the arguments of a function run by lhost_call onto L and returns their number
 * (called in protected mode: it may raise). */
typedef int lhost_push_fn(lua_State *L, void *ud);

/* Like lhost_spawn, with arguments (push(L, push_ud)) and results: done(ud, ...) is
 * called once when it ends, unless the host is freed first; when it cannot start, done
 * is called with ok 0 before this returns -1. Returns 0 once started. */
int lhost_call(lhost *h, int fn_ref, const char *what, lhost_push_fn *push, void *push_ud, lhost_call_done_fn *done,
               void *ud);

/* Counts something that still calls into the host's state from outside a task (a
 * relayed session, whose hooks run later) as running: a host retired by a reload is not
 * freed before every hold is released. */
void lhost_hold(lhost *h);
void lhost_release(lhost *h);

/* A request handed over to another protocol (the relay): start(ud, req) answers it. */
typedef void lhost_takeover_fn(void *ud, http_request *req);
typedef void lhost_cancel_fn(void *op);

/* Arranges for the request whose handler runs on L to be handed to start(ud, req)
 * instead of answered from its results, when the handler returns the value at stack
 * index idx as its first result; when it returns anything else or fails, drop(ud) is
 * called instead. One of them is called once, after the handler ended. A later takeover
 * drops an earlier one. Outside a request handler, calls drop(ud) and raises. */
void lhost_request_takeover(lhost *h, lua_State *L, int idx, lhost_takeover_fn *start, lhost_cancel_fn *drop, void *ud);

/* ---- waiting on the outside world (the upstream, an HTTP server, Redis) ---- */

/* lhost_push_fn also pushes the results of a finished wait (lhost_wake); lhost_cancel_fn
 * also cancels an operation whose waiter went away (its callback must not be called). */

/* Prepares a wait for the code running on L and tells where the operation must run
 * (*world). Inside a request handler, the coroutine will yield; in the Lua module outside
 * a request, the call blocks on the module's own loop. Elsewhere (the script loading, a
 * coroutine of the script's own, a C callback such as a table.sort comparator) it raises
 * an error naming fn. */
lhost_waiter *lhost_wait_begin(lhost *h, lua_State *L, const char *fn, const lhost_world **world);

/* Waits for the operation op started for w (cancel(op) if the wait is abandoned). Returns
 * what the C function must return: lua_yield's value, or the number of results pushed
 * once the call blocked to its end. */
int lhost_wait(lhost_waiter *w, lua_State *L, lhost_cancel_fn *cancel, void *op);

/* Ends a wait: push(L, ud) gives the results the waiting call returns. Called from the
 * loop, once per wait, never from inside the call that started the operation. */
void lhost_wake(lhost_waiter *w, lhost_push_fn *push, void *ud);

#endif
