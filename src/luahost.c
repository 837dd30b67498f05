/* luahost.c: the Lua host: one Lua 5.4 state per worker, one coroutine per request. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <lua-cjson.h>
#include <microhttpd.h>

#include "json.h"
#include "log.h"
#include "luaapi.h"
#include "metrics.h"
#include "luahost.h"
#include "url.h"

#define HOST_HOOK_STEP 1000
#define HOST_SMALL_MAX 256               /* Lua blocks up to this size are recycled by the state */
#define HOST_SMALL_STEP 16
#define HOST_GC_PAUSE 150                /* percent: see host_create */
#define HOST_POOLED_COROUTINES 4096     /* finished coroutines kept for the next requests */
#define HOST_QUERY_STACK 1024           /* query scratch on the C stack up to this size */
#define HOST_LOAD_BUDGET_FACTOR 10      /* the script's top level may run 10x a request's budget */

extern int luaopen_cjson_safe(lua_State *L);

typedef struct host_block {
    struct host_block *next;
} host_block;

struct host {
    lua_State *L;
    size_t mem, mem_limit;
    host_block *free_blocks[HOST_SMALL_MAX / HOST_SMALL_STEP];  /* freed small blocks by size class */
    long instruction_limit;
    size_t max_query_args;
    int loading;
    router *routes;
    static_mounts *statics;
    upstream *up;
    policy_buckets *buckets;
    const host_info *info;
    int befores_ref;        /* registry: array of before hooks */
    size_t nbefores;
    int runner_ref;         /* registry: the coroutine body (befores, handler, req) */
    int encode_ref;         /* registry: cjson.encode */
    size_t running;
    struct host_request *live;  /* requests whose handler has not finished */
    int attached;               /* runs on an application's state (the Lua module) */
    int requests_ref;           /* attached: registry table, coroutine -> its request */
    upstream *sync_up;          /* attached: mints blocking outside requests */
    int *pooled;                /* registry refs of finished coroutines, ready for reuse */
    size_t npooled;
};

/* Instructions a piece of Lua code may still run; counted by the hook. */
typedef struct host_budget {
    long used, limit;
} host_budget;

typedef struct host_request {
    host *h;
    http_request *req;
    lua_State *co;
    int co_ref;
    int nargs;                  /* values host_start left on the coroutine */
    int handler_ref;            /* LUA_NOREF when no route matched */
    int route_status;           /* ROUTER_* */
    char allow[96];
    router_result match;
    upstream_call *call;        /* token request being awaited */
    host_budget budget;
    struct MHD_Response *resp;  /* response under construction */
    int status;
    size_t bytes;
    int bad_query;              /* URL_ERR_* when the query string was refused */
    struct host_request *prev, *next;   /* the host's live requests */
} host_request;

/* The budget of the code running on this worker thread now (NULL: none). */
static _Thread_local host_budget *host_budget_now;

/* ---- memory and instruction limits ---- */

/* Small blocks (tables, strings, closures of a request) come and go by the thousand per
 * second: a state keeps its freed ones in per-size lists, which costs less than malloc
 * and free. Only this state's thread touches them. */
static size_t host_size_class(size_t n) {
    return (n + HOST_SMALL_STEP - 1) / HOST_SMALL_STEP - 1;
}

static void *host_block_get(host *h, size_t n) {
    if (n > HOST_SMALL_MAX) return malloc(n);
    host_block **list = &h->free_blocks[host_size_class(n)];
    host_block *b = *list;
    if (!b) return malloc((host_size_class(n) + 1) * HOST_SMALL_STEP);
    *list = b->next;
    return b;
}

static void host_block_put(host *h, void *p, size_t n) {
    if (n > HOST_SMALL_MAX) {
        free(p);
        return;
    }
    host_block *b = p;
    b->next = h->free_blocks[host_size_class(n)];
    h->free_blocks[host_size_class(n)] = b;
}

static void host_blocks_free(host *h) {
    for (size_t i = 0; i < HOST_SMALL_MAX / HOST_SMALL_STEP; i++) {
        while (h->free_blocks[i]) {
            host_block *b = h->free_blocks[i];
            h->free_blocks[i] = b->next;
            free(b);
        }
    }
}

/* lua_Alloc with the state's memory cap. Never fails a shrink (Lua relies on that). */
static void *host_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    host *h = ud;
    size_t old = ptr ? osize : 0;
    void *p;
    if (nsize == 0) {
        if (ptr) host_block_put(h, ptr, old);
        h->mem -= old;
        return NULL;
    }
    if (nsize > old && h->mem + (nsize - old) > h->mem_limit) return NULL;
    if (old > HOST_SMALL_MAX && nsize > HOST_SMALL_MAX) {
        p = realloc(ptr, nsize);
        if (!p && nsize <= old) p = ptr;
    } else if (old && old <= HOST_SMALL_MAX && nsize <= HOST_SMALL_MAX &&
               host_size_class(old) == host_size_class(nsize)) {
        p = ptr;
    } else if ((p = host_block_get(h, nsize))) {
        if (ptr) {
            memcpy(p, ptr, old < nsize ? old : nsize);
            host_block_put(h, ptr, old);
        }
    } else if (nsize <= old) {
        p = ptr;        /* a large block kept for a small size: still big enough for its class */
    }
    if (!p) return NULL;
    h->mem = h->mem - old + nsize;
    return p;
}

static void host_count_hook(lua_State *L, lua_Debug *ar) {
    host_budget *b = host_budget_now;
    (void)ar;
    if (!b) return;
    b->used += HOST_HOOK_STEP;
    if (b->used > b->limit) luaL_error(L, "instruction limit exceeded (%d instructions)", (int)b->limit);
}

/* Runs fn(ud) on L in protected mode with nresults results. Returns a lua status; on
 * error the message is left on the stack. */
static int host_protected(lua_State *L, lua_CFunction fn, void *ud, int nresults) {
    lua_pushcfunction(L, fn);
    lua_pushlightuserdata(L, ud);
    return lua_pcall(L, 1, nresults, 0);
}

static const char *host_error_text(lua_State *L, int idx) {
    const char *msg = lua_tostring(L, idx);
    return msg ? msg : "(error object is not a string)";
}

/* ---- state set-up ---- */

static const char host_runner_source[] =
    "return function(befores, handler, req)\n"
    "  for i = 1, #befores do\n"
    "    local status, body, headers = befores[i](req)\n"
    "    if status ~= nil then return status, body, headers end\n"
    "  end\n"
    "  if handler then\n"
    "    local status, body, headers = handler(req)\n"
    "    return status, body, headers\n"
    "  end\n"
    "end\n";

static int host_open_tokend(lua_State *L) {
    return lapi_push_module(L, lua_touserdata(L, lua_upvalueindex(1)));
}

static void host_preload(lua_State *L, const char *name, lua_CFunction fn, host *h) {
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    if (h) {
        lua_pushlightuserdata(L, h);
        lua_pushcclosure(L, fn, 1);
    } else {
        lua_pushcfunction(L, fn);
    }
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

/* load(chunk [, name [, mode [, env]]]) that refuses binary chunks whatever mode says. */
static int host_load_text(lua_State *L) {
    lua_settop(L, 4);
    lua_pushliteral(L, "t");
    lua_replace(L, 3);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 4, LUA_MULTRET);
    return lua_gettop(L);
}

/* loadfile(name [, mode [, env]]) and dofile(name), text only. */
static int host_loadfile_text(lua_State *L) {
    const char *name = luaL_optstring(L, 1, NULL);
    int env = !lua_isnone(L, 3) ? 3 : 0;
    if (luaL_loadfilex(L, name, "t") != LUA_OK) {
        luaL_pushfail(L);
        lua_insert(L, -2);
        return 2;
    }
    if (env) {
        lua_pushvalue(L, env);
        if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
    }
    return 1;
}

static int host_dofile_text(lua_State *L) {
    const char *name = luaL_optstring(L, 1, NULL);
    lua_settop(L, 1);
    if (luaL_loadfilex(L, name, "t") != LUA_OK) return lua_error(L);
    lua_call(L, 0, LUA_MULTRET);
    return lua_gettop(L) - 1;
}

/* package.searchers[2] replacement: Lua modules on package.path, as text only. */
static int host_search_text(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "searchpath");
    lua_pushstring(L, name);
    lua_getfield(L, -3, "path");
    lua_call(L, 2, 2);
    if (lua_isnil(L, -2)) return 1;     /* the message of where it looked */
    const char *file = lua_tostring(L, -2);
    if (luaL_loadfilex(L, file, "t") != LUA_OK)
        return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", name, file, lua_tostring(L, -1));
    lua_pushstring(L, file);
    return 2;
}

/* Makes every way a script loads Lua code refuse precompiled bytecode. */
static void host_text_only(lua_State *L) {
    lua_getglobal(L, "load");
    lua_pushcclosure(L, host_load_text, 1);
    lua_setglobal(L, "load");
    lua_pushcfunction(L, host_loadfile_text);
    lua_setglobal(L, "loadfile");
    lua_pushcfunction(L, host_dofile_text);
    lua_setglobal(L, "dofile");
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "searchers");
    lua_pushcfunction(L, host_search_text);
    lua_rawseti(L, -2, 2);
    lua_pop(L, 2);
}

/* Registers what every host keeps in the registry: the coroutine body, the before hooks
 * and a private cjson encoder (protected; argument 1 is the host). */
static int host_init_refs(lua_State *L) {
    host *h = lua_touserdata(L, 1);
    if (luaL_loadbufferx(L, host_runner_source, sizeof host_runner_source - 1, "=tokend", "t") != LUA_OK)
        return lua_error(L);
    lua_call(L, 0, 1);
    h->runner_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    h->befores_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushcfunction(L, luaopen_cjson);
    lua_call(L, 0, 1);
    lua_getfield(L, -1, "encode");
    h->encode_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
    if (h->attached) {
        lua_newtable(L);
        h->requests_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    return 0;
}

static int host_init_state(lua_State *L) {
    host *h = lua_touserdata(L, 1);
    luaL_openlibs(L);
    host_text_only(L);
    host_preload(L, "cjson", luaopen_cjson, NULL);
    host_preload(L, "cjson.safe", luaopen_cjson_safe, NULL);
    host_preload(L, "tokend", host_open_tokend, h);

    /* Let scripts require modules that sit next to them. */
    const char *slash = strrchr(h->info->script, '/');
    lua_getglobal(L, "package");
    if (slash) lua_pushfstring(L, "%s/?.lua;", lua_pushlstring(L, h->info->script, (size_t)(slash - h->info->script)));
    else lua_pushstring(L, "./?.lua;");
    lua_getfield(L, -2 - (slash ? 1 : 0), "path");
    lua_concat(L, 2);
    lua_setfield(L, slash ? -3 : -2, "path");
    lua_settop(L, 1);

    return host_init_refs(L);
}

static int host_traceback(lua_State *L) {
    luaL_traceback(L, L, host_error_text(L, 1), 1);
    return 1;
}

int host_create(const host_options *o, host **out, char *err, size_t errlen) {
    host *h = calloc(1, sizeof *h);
    host_budget load = { 0, 0 };
    *out = NULL;
    if (!h) goto nomem;
    h->mem_limit = o->memory_limit ? o->memory_limit : (size_t)64 << 20;
    h->instruction_limit = o->instruction_limit > 0 ? o->instruction_limit : 10000000L;
    h->max_query_args = o->max_query_args ? o->max_query_args : 64;
    h->up = o->up;
    h->buckets = o->buckets;
    h->info = o->info;
    h->befores_ref = h->runner_ref = h->encode_ref = LUA_NOREF;
    h->routes = router_create();
    h->statics = static_create();
    if (!h->routes || !h->statics) goto nomem;
    h->L = lua_newstate(host_alloc, h);
    if (!h->L) goto nomem;
    lua_State *L = h->L;
    *(void **)lua_getextraspace(L) = NULL;
    if (host_protected(L, host_init_state, h, 0) != LUA_OK) {
        snprintf(err, errlen, "cannot set up Lua: %s", host_error_text(L, -1));
        goto fail;
    }
    lua_sethook(L, host_count_hook, LUA_MASKCOUNT, HOST_HOOK_STEP);
    lua_pushcfunction(L, host_traceback);
    if (luaL_loadfilex(L, o->script, "t") != LUA_OK) {
        snprintf(err, errlen, "%s", host_error_text(L, -1));
        goto fail;
    }
    h->loading = 1;
    load.limit = h->instruction_limit * HOST_LOAD_BUDGET_FACTOR;
    host_budget_now = &load;
    int rc = lua_pcall(L, 0, 0, -2);
    host_budget_now = NULL;
    h->loading = 0;
    if (rc != LUA_OK) {
        snprintf(err, errlen, "%s", host_error_text(L, -1));
        goto fail;
    }
    lua_settop(L, 0);
    for (size_t i = 0; i < o->n_c_routes; i++)
        if (host_add_c_route(h, o->c_routes[i], err, errlen) < 0) goto fail;
    lua_gc(L, LUA_GCCOLLECT);
    /* Incremental, starting a cycle when the heap has grown by half: a request's tables
     * live as long as its upstream call (100 ms or more), past several minor collections,
     * so the generational collector kept promoting them and paying for major ones. */
    lua_gc(L, LUA_GCINC, HOST_GC_PAUSE, 0);
    *out = h;
    return 0;
nomem:
    snprintf(err, errlen, "out of memory");
fail:
    host_free(h);
    return -1;
}

typedef struct host_c_route_add {
    host *h;
    host_c_route *r;
    char *err;
    size_t errlen;
    int rc;
} host_c_route_add;

static int host_add_c_route_protected(lua_State *L) {
    host_c_route_add *a = lua_touserdata(L, 1);
    lapi_push_c_route(L, a->r);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    a->rc = router_add(a->h->routes, a->r->method, a->r->path, ref, a->err, a->errlen);
    if (a->rc < 0) luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return 0;
}

int host_add_c_route(host *h, host_c_route *r, char *err, size_t errlen) {
    host_c_route_add a = { h, r, err, errlen, -1 };
    if (host_protected(h->L, host_add_c_route_protected, &a, 0) != LUA_OK) {
        snprintf(err, errlen, "cannot add route %s %s: %s", r->method, r->path, host_error_text(h->L, -1));
        lua_pop(h->L, 1);
        return -1;
    }
    return a.rc;
}

static void host_release_ref(void *ud, int ref) {
    host *h = ud;
    if (h->attached) luaL_unref(h->L, LUA_REGISTRYINDEX, ref);  /* an owned state goes whole */
}

void host_free(host *h) {
    if (!h) return;
    while (h->live) {       /* abandoned: their HTTP side is answered by http_free() */
        struct host_request *hr = h->live;
        h->live = hr->next;
        if (hr->resp) MHD_destroy_response(hr->resp);
        if (h->attached) luaL_unref(h->L, LUA_REGISTRYINDEX, hr->co_ref);
        free(hr);
    }
    if (h->attached) {
        for (size_t i = 0; i < h->npooled; i++) luaL_unref(h->L, LUA_REGISTRYINDEX, h->pooled[i]);
        luaL_unref(h->L, LUA_REGISTRYINDEX, h->runner_ref);
        luaL_unref(h->L, LUA_REGISTRYINDEX, h->befores_ref);
        luaL_unref(h->L, LUA_REGISTRYINDEX, h->encode_ref);
        luaL_unref(h->L, LUA_REGISTRYINDEX, h->requests_ref);
    } else if (h->L) {
        lua_close(h->L);
        host_blocks_free(h);
    }
    router_free(h->routes, host_release_ref, h);
    static_free(h->statics);
    free(h->pooled);
    free(h);
}

int host_attach(lua_State *L, const host_options *o, host **out, char *err, size_t errlen) {
    host *h = calloc(1, sizeof *h);
    *out = NULL;
    if (!h || !(h->routes = router_create()) || !(h->statics = static_create())) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    h->L = L;
    h->attached = 1;
    h->loading = 1;         /* routes may be added until the server starts */
    h->instruction_limit = o->instruction_limit > 0 ? o->instruction_limit : 10000000L;
    h->max_query_args = o->max_query_args ? o->max_query_args : 64;
    h->up = h->sync_up = o->up;
    h->buckets = o->buckets;
    h->info = o->info;
    h->befores_ref = h->runner_ref = h->encode_ref = h->requests_ref = LUA_NOREF;
    if (host_protected(L, host_init_refs, h, 0) != LUA_OK) {
        snprintf(err, errlen, "cannot set up tokend: %s", host_error_text(L, -1));
        lua_pop(L, 1);
        goto fail;
    }
    *out = h;
    return 0;
fail:
    if (h) {
        router_free(h->routes, NULL, NULL);
        static_free(h->statics);
        free(h);
    }
    return -1;
}

void host_serve_with(host *h, upstream *up, const host_info *info) {
    h->up = up ? up : h->sync_up;
    if (info) h->info = info;
    h->loading = up ? 0 : 1;
}

/* ---- accessors for luaapi.c ---- */

int host_loading(const host *h) { return h->loading; }
router *host_router(host *h) { return h->routes; }
static_mounts *host_statics(host *h) { return h->statics; }
upstream *host_upstream(host *h) { return h->up; }
policy_buckets *host_buckets(host *h) { return h->buckets; }
const host_info *host_get_info(const host *h) { return h->info; }
size_t host_running(const host *h) { return h->running; }

void host_add_before(host *h, lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->befores_ref);
    lua_pushvalue(L, idx);
    lua_rawseti(L, -2, (lua_Integer)++h->nbefores);
    lua_pop(L, 1);
}

/* ---- requests ---- */

/* Keeps a request's coroutine for a later request if it ran to its end (a fresh one costs
 * a thread, a stack and garbage); drops it otherwise. */
static void host_pool_coroutine(host *h, host_request *hr) {
    /* Whatever the coroutine does later (a script may have kept it and resume it), it is
     * no longer this request's. */
    *(host_request **)lua_getextraspace(hr->co) = NULL;
    if (lua_status(hr->co) == LUA_OK && h->npooled < HOST_POOLED_COROUTINES) {
        if (!h->pooled && !(h->pooled = malloc(HOST_POOLED_COROUTINES * sizeof *h->pooled))) goto drop;
        lua_settop(hr->co, 0);
        h->pooled[h->npooled++] = hr->co_ref;
        return;
    }
drop:
    luaL_unref(h->L, LUA_REGISTRYINDEX, hr->co_ref);
}

static void host_request_done(host_request *hr) {
    host *h = hr->h;
    if (h->attached && hr->co_ref != LUA_NOREF) {
        lua_rawgeti(h->L, LUA_REGISTRYINDEX, h->requests_ref);
        lua_rawgeti(h->L, LUA_REGISTRYINDEX, hr->co_ref);
        lua_pushnil(h->L);
        lua_rawset(h->L, -3);
        lua_pop(h->L, 1);
    }
    if (hr->prev) hr->prev->next = hr->next;
    else h->live = hr->next;
    if (hr->next) hr->next->prev = hr->prev;
    if (hr->co_ref != LUA_NOREF) host_pool_coroutine(h, hr);
    if (hr->resp) MHD_destroy_response(hr->resp);
    h->running--;
    free(hr);
}

/* Answers a request that no handler answered: 405, a static file, or 404. */
static void host_answer_unhandled(host *h, http_request *req, int route_status, const char *allow) {
    if (route_status == ROUTER_METHOD_NOT_ALLOWED) {
        http_request_fail_allow(req, allow);
    } else if (static_serve(h->statics, req)) {
        snprintf(req->route, sizeof req->route, "static");
    } else {
        http_request_fail(req, 404, "not found");
    }
}

static void host_fail(host_request *hr, const char *why) {
    http_request *req = hr->req;
    log_msg(LOG_ERROR, "%s %s: %s", req->method, req->path, why);
    http_request_fail(req, 500, "internal server error");
    host_request_done(hr);
}

static int host_log_traceback(lua_State *L) {
    host_request *hr = lua_touserdata(L, 1);
    luaL_traceback(L, hr->co, host_error_text(hr->co, -1), 0);
    log_msg(LOG_ERROR, "%s %s: handler failed: %s", hr->req->method, hr->req->path, lua_tostring(L, -1));
    return 0;
}

static void host_lower_push(lua_State *L, const char *s) {
    char small[64] = "";
    size_t n = strlen(s);
    char *low = n <= sizeof small ? small : lua_newuserdatauv(L, n, 0);
    for (size_t i = 0; i < n; i++) low[i] = (char)tolower((unsigned char)s[i]);
    lua_pushlstring(L, low, n);
    if (low != small) lua_remove(L, -2);
}

static void host_add_header(void *ud, const char *name, const char *value) {
    lua_State *L = ud;
    host_lower_push(L, name);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -3) == LUA_TSTRING) {
        lua_pushstring(L, ", ");
        lua_pushstring(L, value);
        lua_concat(L, 3);
    } else {
        lua_pop(L, 1);
        lua_pushstring(L, value);
    }
    lua_rawset(L, -3);
}

static int host_add_query_arg(void *ud, const char *name, size_t nlen, const char *value, size_t vlen) {
    lua_State *L = ud;
    lua_pushlstring(L, name, nlen);
    if (lua_rawget(L, -2) != LUA_TNIL) {     /* the first value of a repeated name wins */
        lua_pop(L, 1);
        return 0;
    }
    lua_pop(L, 1);
    lua_pushlstring(L, name, nlen);
    lua_pushlstring(L, value, vlen);
    lua_rawset(L, -3);
    return 0;
}

/* Pushes the req table handlers receive. */
static void host_push_request_table(lua_State *L, host_request *hr) {
    http_request *req = hr->req;
    lua_createtable(L, 0, 8);
    lua_pushstring(L, req->method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, req->path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, req->peer);
    lua_setfield(L, -2, "remote_addr");
    lua_pushstring(L, req->client);
    lua_setfield(L, -2, "client");
    lua_pushlstring(L, req->body ? req->body : "", req->body_len);
    lua_setfield(L, -2, "body");

    char stack_scratch[HOST_QUERY_STACK];
    size_t need = URL_QUERY_SCRATCH(req->query_len);
    char *scratch = need <= sizeof stack_scratch ? stack_scratch : lua_newuserdatauv(L, need, 0);
    lua_newtable(L);
    int n = url_parse_query(req->query, req->query_len, scratch, hr->h->max_query_args, host_add_query_arg, L);
    if (n < 0) hr->bad_query = n;
    lua_setfield(L, -2 - (scratch != stack_scratch), "query");
    if (scratch != stack_scratch) lua_pop(L, 1);

    lua_newtable(L);
    http_request_each_header(req, host_add_header, L);
    lua_setfield(L, -2, "headers");

    lua_createtable(L, 0, (int)hr->match.nparams);
    for (size_t i = 0; i < hr->match.nparams; i++) {
        lua_pushlstring(L, hr->match.params[i].value, hr->match.params[i].value_len);
        lua_setfield(L, -2, hr->match.params[i].name);
    }
    lua_setfield(L, -2, "params");
}

/* Takes a pooled coroutine or creates one, and pushes onto it the handler and req, or
 * (runner, befores, handler, req) when before hooks run first. */
static int host_start(lua_State *L) {
    host_request *hr = lua_touserdata(L, 1);
    host *h = hr->h;
    lua_State *co;
    if (h->npooled) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, h->pooled[h->npooled - 1]);
        co = lua_tothread(L, -1);
        hr->co_ref = h->pooled[--h->npooled];
    } else {
        co = lua_newthread(L);
        lua_sethook(co, host_count_hook, LUA_MASKCOUNT, HOST_HOOK_STEP);
        lua_pushvalue(L, -1);
        hr->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    hr->co = co;
    *(host_request **)lua_getextraspace(co) = hr;
    if (h->attached) {      /* an application's threads may carry anything in their extra space */
        lua_rawgeti(L, LUA_REGISTRYINDEX, h->requests_ref);
        lua_pushvalue(L, -2);
        lua_pushlightuserdata(L, hr);
        lua_rawset(L, -3);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    int direct = h->nbefores == 0 && hr->handler_ref != LUA_NOREF;
    if (!direct) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, h->runner_ref);
        lua_rawgeti(L, LUA_REGISTRYINDEX, h->befores_ref);
    }
    if (hr->handler_ref != LUA_NOREF) lua_rawgeti(L, LUA_REGISTRYINDEX, hr->handler_ref);
    else lua_pushboolean(L, 0);
    host_push_request_table(L, hr);
    hr->nargs = direct ? 1 : 3;
    lua_xmove(L, co, hr->nargs + 1);
    return 0;
}

/* Removes "\/" escapes from cjson output: the slash needs none. */
static void host_push_unescaped_json(lua_State *L, const char *s, size_t len) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    const char *end = s + len;
    for (;;) {
        const char *esc = memchr(s, '\\', (size_t)(end - s));
        if (!esc || esc + 1 == end) {
            luaL_addlstring(&b, s, (size_t)(end - s));
            break;
        }
        luaL_addlstring(&b, s, (size_t)(esc - s) + (esc[1] != '/'));   /* keeps other escapes */
        luaL_addchar(&b, esc[1]);
        s = esc + 2;
    }
    luaL_pushresult(&b);
}

/* Builds the response from a handler's results (on the finished coroutine, protected):
 * 1 = host_request, 2 = status, 3 = body, 4 = headers. */
static int host_build_response(lua_State *L) {
    host_request *hr = lua_touserdata(L, 1);
    int isint = 0;
    lua_Integer status = lua_tointegerx(L, 2, &isint);
    const char *ctype = "text/plain; charset=utf-8";
    size_t len = 0;
    const char *body = "";
    lua_settop(L, 4);
    if (!isint || status < 100 || status > 599)
        return luaL_error(L, "the handler returned an invalid HTTP status (%s); expected an integer 100..599",
                          luaL_tolstring(L, 2, NULL));
    switch (lua_type(L, 3)) {
    case LUA_TNIL:
        break;
    case LUA_TSTRING:
        body = lua_tolstring(L, 3, &len);
        break;
    case LUA_TTABLE: {
        lua_rawgeti(L, LUA_REGISTRYINDEX, hr->h->encode_ref);
        lua_pushvalue(L, 3);
        lua_call(L, 1, 1);
        const char *enc = lua_tolstring(L, -1, &len);
        host_push_unescaped_json(L, enc, len);
        body = lua_tolstring(L, -1, &len);
        ctype = "application/json";
        break;
    }
    default:
        return luaL_error(L, "the handler returned a %s body; expected a string or a table", luaL_typename(L, 3));
    }
    if (!lua_isnil(L, 4) && !lua_istable(L, 4))
        return luaL_error(L, "the handler returned %s headers; expected a table", luaL_typename(L, 4));
    hr->resp = http_response_bytes(body, len, NULL);
    if (!hr->resp) return luaL_error(L, "out of memory");
    hr->status = (int)status;
    hr->bytes = len;
    int custom_type = 0;
    if (lua_istable(L, 4)) {
        lua_pushnil(L);
        while (lua_next(L, 4)) {
            if (lua_type(L, -2) != LUA_TSTRING || !(lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER))
                return luaL_error(L, "response headers must map names to strings (got %s = %s)",
                                  luaL_typename(L, -2), luaL_typename(L, -1));
            const char *name = lua_tostring(L, -2), *value = lua_tostring(L, -1);
            if (http_response_header(hr->resp, name, value) < 0)
                return luaL_error(L, "response header \"%s\" has a bad name or value (or no memory was left)", name);
            if (strcasecmp(name, "Content-Type") == 0) custom_type = 1;
            lua_pop(L, 1);
        }
    }
    if (!custom_type) http_response_header(hr->resp, "Content-Type", ctype);
    return 0;
}

/* Turns the finished coroutine's nres results into the answer. */
static void host_finish(host_request *hr, int nres) {
    lua_State *co = hr->co;
    if (nres > 3) {
        lua_pop(co, nres - 3);
        nres = 3;
    }
    if (nres == 0 || lua_isnil(co, -nres)) {
        if (hr->handler_ref != LUA_NOREF) {
            host_fail(hr, "the handler returned no status");
            return;
        }
        host_answer_unhandled(hr->h, hr->req, hr->route_status, hr->allow);
        host_request_done(hr);
        return;
    }
    lua_pushcfunction(co, host_build_response);
    lua_pushlightuserdata(co, hr);
    lua_rotate(co, -(nres + 2), 2);
    if (lua_pcall(co, nres + 1, 0, 0) != LUA_OK) {
        char why[600];
        snprintf(why, sizeof why, "%s", host_error_text(co, -1));
        host_fail(hr, why);
        return;
    }
    http_request_respond(hr->req, hr->status, hr->resp, hr->bytes);
    hr->resp = NULL;
    host_request_done(hr);
}

/* Resumes the request's coroutine with nargs values on its stack. */
static void host_resume(host_request *hr, int nargs) {
    int nres = 0;
    host_budget_now = &hr->budget;
    int rc = lua_resume(hr->co, hr->h->L, nargs, &nres);
    host_budget_now = NULL;
    if (rc == LUA_YIELD) {
        if (hr->call) return;   /* waiting on the upstream */
        host_fail(hr, "the handler yielded outside tokend.generate_temp_token");
        return;
    }
    if (rc != LUA_OK) {
        if (host_protected(hr->h->L, host_log_traceback, hr, 0) != LUA_OK) {
            log_msg(LOG_ERROR, "%s %s: handler failed: %s", hr->req->method, hr->req->path,
                    host_error_text(hr->co, -1));
            lua_pop(hr->h->L, 1);
        }
        http_request_fail(hr->req, 500, "internal server error");
        host_request_done(hr);
        return;
    }
    host_finish(hr, nres);
}

void host_dispatch(void *ud, http_request *req) {
    host *h = ud;
    router_result match;
    char allow[96];
    int found = router_match(h->routes, req->method, req->path, &match, allow, sizeof allow);
    if (found != ROUTER_FOUND && h->nbefores == 0) {
        host_answer_unhandled(h, req, found, allow);
        return;
    }
    host_request *hr = calloc(1, sizeof *hr);
    if (!hr) {
        http_request_fail(req, 503, "out of memory");
        return;
    }
    h->running++;
    hr->next = h->live;
    if (h->live) h->live->prev = hr;
    h->live = hr;
    hr->h = h;
    hr->req = req;
    hr->co_ref = LUA_NOREF;
    hr->route_status = found;
    snprintf(hr->allow, sizeof hr->allow, "%s", allow);
    hr->handler_ref = found == ROUTER_FOUND ? match.handler : LUA_NOREF;
    if (found == ROUTER_FOUND) snprintf(req->route, sizeof req->route, "%s", match.pattern);
    hr->match = match;
    hr->budget.limit = h->instruction_limit;
    if (host_protected(h->L, host_start, hr, 0) != LUA_OK) {
        char why[600];
        snprintf(why, sizeof why, "cannot start the handler: %s", host_error_text(h->L, -1));
        lua_pop(h->L, 1);
        host_fail(hr, why);
        return;
    }
    if (hr->bad_query) {
        http_request_fail(req, 400, hr->bad_query == URL_ERR_TOO_MANY ? "too many query arguments"
                                                                       : "malformed query string");
        host_request_done(hr);
        return;
    }
    host_resume(hr, hr->nargs);
}

/* ---- awaiting the upstream ---- */

/* Pushes generate_temp_token's results for an upstream outcome (protected; argument 1 is
 * the upstream_result). */
static int host_push_token_results(lua_State *L) {
    const upstream_result *r = lua_touserdata(L, 1);
    lua_settop(L, 0);
    if (r->token) {
        lua_pushstring(L, r->token);
        lua_createtable(L, 0, 1);
        lua_pushinteger(L, r->expires_in_seconds);
        lua_setfield(L, -2, "expires_in_seconds");
        return 2;
    }
    lua_pushnil(L);
    lua_pushstring(L, r->error);
    if (r->http_status) lua_pushinteger(L, r->http_status);
    else lua_pushnil(L);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, r->kind);
    lua_setfield(L, -2, "kind");
    if (r->retry_after >= 0) {
        lua_pushinteger(L, r->retry_after);
        lua_setfield(L, -2, "retry_after");
    }
    return 4;
}

static void host_on_token(void *ud, const upstream_result *r) {
    host_request *hr = ud;
    lua_State *L = hr->h->L;
    hr->call = NULL;
    hr->req->upstream_ms = (hr->req->upstream_ms < 0 ? 0 : hr->req->upstream_ms) + r->elapsed_ms;
    if (r->token) log_msg(LOG_DEBUG, "token minted in %.1f ms", r->elapsed_ms);
    else log_msg(LOG_WARN, "%s %s: token request failed (%s): %s", hr->req->method, hr->req->path, r->kind, r->error);
    int top = lua_gettop(L);
    lua_pushcfunction(L, host_push_token_results);
    lua_pushlightuserdata(L, (void *)r);
    if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK) {
        lua_settop(L, top);
        host_fail(hr, "out of memory while returning the token");
        return;
    }
    int n = lua_gettop(L) - top;
    if (!lua_checkstack(hr->co, n)) {
        lua_settop(L, top);
        host_fail(hr, "out of memory while returning the token");
        return;
    }
    lua_xmove(L, hr->co, n);
    host_resume(hr, n);
}

/* The request whose coroutine L is, or NULL. */
static host_request *host_request_of(host *h, lua_State *L) {
    if (!h->attached) {
        host_request *hr = *(host_request **)lua_getextraspace(L);   /* zeroed in our own state */
        return hr && hr->co == L ? hr : NULL;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->requests_ref);
    lua_pushthread(L);
    lua_rawget(L, -2);
    host_request *hr = lua_touserdata(L, -1);
    lua_pop(L, 2);
    return hr;
}

int host_await_token(host *h, lua_State *L, long expires_in_s, long max_session_s) {
    host_request *hr = host_request_of(h, L);
    int in_request = hr != NULL;
    if (!in_request && h->attached && h->sync_up) {
        /* The Lua module outside a request: the application waits for the answer. */
        char token[JSON_TOKEN_MAX], errbuf[800];
        upstream_result r;
        upstream_mint_sync(h->sync_up, expires_in_s, max_session_s, &r, token, sizeof token, errbuf, sizeof errbuf);
        metrics_upstream(r.token ? NULL : r.kind, r.elapsed_ms);
        int top = lua_gettop(L);
        lua_pushcfunction(L, host_push_token_results);
        lua_pushlightuserdata(L, &r);
        lua_call(L, 1, LUA_MULTRET);
        explicit_bzero(token, sizeof token);
        return lua_gettop(L) - top;
    }
    if (!in_request || !lua_isyieldable(L))
        return luaL_error(L, "tokend.generate_temp_token must be called from a request handler "
                             "(not while the script loads, nor inside a coroutine of its own)");
    hr->call = upstream_mint(h->up, expires_in_s, max_session_s, host_on_token, hr);
    if (!hr->call) {
        lua_pushnil(L);
        lua_pushstring(L, "out of memory starting the token request");
        return 2;
    }
    return lua_yield(L, 0);
}
