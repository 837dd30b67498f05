/* lhostint.h: the Lua host's insides (the host, its tasks, a call waiting), private to its files lhost*.c. */
#ifndef TOKEND_LHOSTINT_H
#define TOKEND_LHOSTINT_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "lbudget.h"
#include "list.h"
#include "lhost.h"
#include "lrequest.h"
#include "proxy.h"
#include "router.h"
#include "static.h"

typedef struct lhost_task lhost_task;
typedef struct lhost_hook lhost_hook; /* something to do when the host retires (lhost.c) */

/* A call waiting on the outside world: a task's coroutine suspended until lhost_wake, or
 * (the Lua module outside requests) a caller blocked on the module's own loop. */
struct lhost_waiter {
    lhost *h;
    lhost_task *task; /* the task whose coroutine waits; NULL when blocking */
    lua_State *L;     /* blocking: the caller's thread */
    lhost_cancel_fn *cancel;
    void *op; /* the operation waited for; NULL once woken */
    uint64_t since_us;
    int woken;
    int nres; /* blocking: results pushed onto L, or -1 when pushing failed */
};

struct lhost {
    lua_State *L;
    int owns_state; /* 0: the application's state (the Lua module) */
    long instruction_limit;
    size_t max_query_args;
    int loading;
    int retired;
    router *routes;
    static_mounts *statics;
    proxy_mounts *proxies;
    const lhost_world *world;     /* where library calls run now */
    const lhost_world *own_world; /* attached: the module's own, for blocking calls */
    lhost_waiter blocking;        /* attached: the one blocking call at a time */
    int befores_ref;              /* registry: array of before hooks */
    size_t nbefores;
    int runner_ref; /* registry: the coroutine body (befores, handler, req) */
    int encode_ref; /* registry: cjson.encode */
    int tasks_ref;  /* registry: coroutine -> its task (light userdata) */
    size_t running;
    list_node live;    /* tasks whose function has not finished */
    lhost_hook *hooks; /* run when the host retires */
    int *pooled;       /* registry refs of finished coroutines, ready for reuse */
    size_t npooled;
};

/* A Lua function running on a coroutine of its own: a request's handler (req set), or a
 * function spawned by a part of the API (a timer's). */
struct lhost_task {
    lhost *h;
    lua_State *co;
    int co_ref;
    int nargs;         /* values lhost_start left on the coroutine */
    lhost_waiter wait; /* the outside call being awaited, if any */
    lbudget budget;
    list_node link; /* in the host's live tasks */
    /* a request */
    http_request *req;
    int req_ref;      /* registry: its req table */
    int handler_ref;  /* LUA_NOREF when no route matched */
    int route_status; /* ROUTER_* */
    char allow[96];
    router_result match;
    lrequest_answer answer; /* the response under construction */
    int bad_query;          /* URL_ERR_* when the query string was refused */
    int audit;              /* an audited route: its answer leaves an audit line unless it minted */
    int minted;             /* the handler asked for a token (its mint wrote the audit line) */
    int status;             /* the status answered, once answered */
    /* a spawned function */
    int fn_ref;
    const char *what; /* its name in the log */
    lhost_task_done_fn *done;
    void *done_ud;
    int ok;              /* it ran to its end */
    lhost_push_fn *push; /* lhost_call: pushes its arguments */
    void *push_ud;
    lhost_call_done_fn *call_done; /* lhost_call: gets its results */
    int reported;                  /* call_done was called */
    /* a takeover (lhost_request_takeover) */
    int takeover_ref; /* registry: the value the handler returns to hand the request over */
    lhost_takeover_fn *takeover;
    lhost_cancel_fn *takeover_drop;
    void *takeover_ud;
};

/* ---- lhost.c ---- */

/* Runs fn(ud) on L in protected mode with nresults results. Returns a Lua status; on
 * error the message is left on the stack. */
int lhost_protected(lua_State *L, lua_CFunction fn, void *ud, int nresults);

/* The error message at idx, or a word that it is not a string. */
const char *lhost_error_text(lua_State *L, int idx);

/* ---- lhosttask.c ---- */

/* Abandons the tasks still running: what they wait for is cancelled, their callbacks are
 * not called, and a request's HTTP side is answered by the HTTP front's own shutdown. */
void lhosttask_drop_all(lhost *h);

#endif
