/* luahost.h: the Lua host: one Lua 5.4 state per worker, one coroutine per request. */
#ifndef TOKEND_LUAHOST_H
#define TOKEND_LUAHOST_H

#include <stddef.h>

#include "http.h"
#include "policy.h"
#include "router.h"
#include "static.h"
#include "tokend.h"
#include "upstream.h"

typedef struct lua_State lua_State;
typedef struct host host;

/* Read-only settings shown to scripts as tokend.config (never the key). */
typedef struct host_info {
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
} host_info;

/* A route answered by a C function (tokend_server_route). */
typedef struct host_c_route {
    char method[16];
    char *path;
    tokend_route_fn *fn;
    void *ud;
} host_c_route;

typedef struct host_options {
    const char *script;             /* path of the routes script */
    size_t memory_limit;            /* bytes the Lua state may hold */
    long instruction_limit;         /* VM instructions one request may run */
    size_t max_query_args;
    upstream *up;                   /* borrowed */
    const host_info *info;          /* borrowed; must outlive the host */
    policy_buckets *buckets;        /* borrowed: the rate limiters all workers share */
    host_c_route *const *c_routes;  /* borrowed: routes in C, added after the script's */
    size_t n_c_routes;
} host_options;

/* Creates a Lua state, opens the standard libraries, cjson and tokend, and runs the
 * script. On failure returns -1 and err holds "file:line: message". */
int host_create(const host_options *opts, host **out, char *err, size_t errlen);

/* Creates a host on an application's own state L (the Lua module): no script, no state
 * of its own, the application's globals untouched. Routes may be added until
 * host_serve_with() starts serving; outside requests, generate_temp_token blocks on o->up
 * (a client made without a loop). Returns 0, or -1 with err set. */
int host_attach(lua_State *L, const host_options *o, host **out, char *err, size_t errlen);

/* Attached hosts: serve with the worker's upstream client and settings (up NULL: back to
 * blocking mode, routes may be added again). */
void host_serve_with(host *h, upstream *up, const host_info *info);

/* Closes the state. Requests still waiting on it are abandoned (their upstream calls must
 * be cancelled first, by freeing the upstream client). NULL is allowed. */
void host_free(host *h);

/* Answers one HTTP request: routes, before hooks, static files (an http_dispatch_fn). */
void host_dispatch(void *h, http_request *req);

/* Adds a route answered in C (r must outlive h). Returns 0, or -1 with err set. */
int host_add_c_route(host *h, host_c_route *r, char *err, size_t errlen);

/* Requests whose handler is still running or waiting. */
size_t host_running(const host *h);

/* --- for luaapi.c --- */
int host_loading(const host *h);
router *host_router(host *h);
static_mounts *host_statics(host *h);
upstream *host_upstream(host *h);
policy_buckets *host_buckets(host *h);
const host_info *host_get_info(const host *h);
/* Appends fn (at stack index idx) to the before hooks. */
void host_add_before(host *h, lua_State *L, int idx);
/* Starts a token request for the coroutine L and yields it; when L is not a request's
 * own coroutine, raises a Lua error. Returns what lua_yield returns. */
int host_await_token(host *h, lua_State *L, long expires_in_s, long max_session_s);

#endif
