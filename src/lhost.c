/* lhost.c: the Lua host: a worker's Lua state, set up from the script, what the script registers on it (routes, mounts, hooks), and its life until it retires. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <lua-cjson.h>

#include "lhostint.h"
#include "lpreload.h"
#include "lstate.h"

#define LHOST_GC_PAUSE 150          /* percent: see lhost_create */
#define LHOST_LOAD_BUDGET_FACTOR 10 /* the script's top level may run 10x a request's budget */

/* Something to do when the host retires (lhost_on_retire). */
struct lhost_hook {
    struct lhost_hook *next;
    void (*fn)(void *ud);
    void *ud;
};

/* Runs fn(ud) on L in protected mode with nresults results. Returns a Lua status; on
 * error the message is left on the stack. */
int lhost_protected(lua_State *L, lua_CFunction fn, void *ud, int nresults) {
    lua_pushcfunction(L, fn);
    lua_pushlightuserdata(L, ud);
    return lua_pcall(L, 1, nresults, 0);
}

/* The error message at idx, or a word that it is not a string. */
const char *lhost_error_text(lua_State *L, int idx) {
    const char *msg = lua_tostring(L, idx);
    return msg ? msg : "(error object is not a string)";
}

/* ---- state set-up ---- */

static const char lhost_runner_source[] = "return function(befores, handler, req)\n"
                                          "  for i = 1, #befores do\n"
                                          "    local status, body, headers = befores[i](req)\n"
                                          "    if status ~= nil then return status, body, headers end\n"
                                          "  end\n"
                                          "  if handler then\n"
                                          "    local status, body, headers = handler(req)\n"
                                          "    return status, body, headers\n"
                                          "  end\n"
                                          "end\n";

/* Registers what every host keeps in the registry: the coroutine body, the before hooks,
 * a private cjson encoder and the table of running coroutines (protected; argument 1 is
 * the host). */
static int lhost_init_refs(lua_State *L) {
    lhost *h = lua_touserdata(L, 1);
    if (luaL_loadbufferx(L, lhost_runner_source, sizeof lhost_runner_source - 1, "=tokend", "t") != LUA_OK)
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
    lua_newtable(L);
    h->tasks_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

/* require "tokend" in a host's own state. */
static int lhost_require_module(lua_State *L) {
    lhost *h = lua_touserdata(L, lua_upvalueindex(1));
    lhost_open_fn *open = *(lhost_open_fn **)lua_touserdata(L, lua_upvalueindex(2));
    return open(L, h);
}

/* Prepares the host's own state (protected; argument 1 is the host, 2 the options). */
static int lhost_init_state(lua_State *L) {
    lhost *h = lua_touserdata(L, 1);
    const lhost_options *o = lua_touserdata(L, 2);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushlightuserdata(L, h);
    lhost_open_fn **open = lua_newuserdatauv(L, sizeof *open, 0);
    *open = o->open_module;
    lua_pushcclosure(L, lhost_require_module, 2);
    lua_setfield(L, -2, "tokend");
    lua_pop(L, 1);
    lpreload_open(L);

    /* Let scripts require modules that sit next to them. */
    const char *slash = strrchr(o->script, '/');
    lua_getglobal(L, "package");
    if (slash) lua_pushlstring(L, o->script, (size_t)(slash - o->script));
    else lua_pushliteral(L, ".");
    lua_pushliteral(L, "/?.lua;");
    lua_getfield(L, -3, "path");
    lua_concat(L, 3);
    lua_setfield(L, -2, "path");
    lua_settop(L, 1);
    return lhost_init_refs(L);
}

static int lhost_traceback(lua_State *L) {
    luaL_traceback(L, L, lhost_error_text(L, 1), 1);
    return 1;
}

/* The fields lhost_create and lhost_attach set alike. */
static lhost *lhost_new(const lhost_options *o) {
    lhost *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    list_init(&h->live);
    h->instruction_limit = o->instruction_limit;
    h->max_query_args = o->max_query_args;
    h->world = h->own_world = o->world;
    h->befores_ref = h->runner_ref = h->encode_ref = h->tasks_ref = LUA_NOREF;
    h->routes = router_create();
    h->statics = static_create();
    h->proxies = proxy_create();
    if (!h->routes || !h->statics || !h->proxies) {
        router_free(h->routes, NULL, NULL);
        static_free(h->statics);
        proxy_free(h->proxies);
        free(h);
        return NULL;
    }
    return h;
}

int lhost_create(const lhost_options *o, lhost **out, char *err, size_t errlen) {
    lhost *h = lhost_new(o);
    lbudget load = { .limit = o->instruction_limit * LHOST_LOAD_BUDGET_FACTOR };
    *out = NULL;
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    h->owns_state = 1;
    if (!(h->L = lstate_new(o->memory_limit, err, errlen))) goto fail;
    lua_State *L = h->L;
    lua_pushcfunction(L, lhost_init_state);
    lua_pushlightuserdata(L, h);
    lua_pushlightuserdata(L, (void *)o);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "cannot set up Lua: %s", lhost_error_text(L, -1));
        goto fail;
    }
    lua_pushcfunction(L, lhost_traceback);
    if (luaL_loadfilex(L, o->script, "t") != LUA_OK) {
        snprintf(err, errlen, "%s", lhost_error_text(L, -1));
        goto fail;
    }
    h->loading = 1;
    lbudget *outer = lbudget_enter(&load);
    int rc = lua_pcall(L, 0, 0, -2);
    lbudget_enter(outer);
    lstate_limit_thread(L); /* a long load may have left the hook at every instruction */
    h->loading = 0;
    if (rc != LUA_OK) {
        snprintf(err, errlen, "%s", lhost_error_text(L, -1));
        goto fail;
    }
    lua_settop(L, 0);
    lua_gc(L, LUA_GCCOLLECT);
    /* Incremental, starting a cycle when the heap has grown by half: a request's tables
     * live as long as its upstream call (100 ms or more), past several minor collections,
     * so the generational collector kept promoting them and paying for major ones. */
    lua_gc(L, LUA_GCINC, LHOST_GC_PAUSE, 0);
    *out = h;
    return 0;
fail:
    lhost_free(h);
    return -1;
}

int lhost_attach(lua_State *L, const lhost_options *o, lhost **out, char *err, size_t errlen) {
    lhost *h = lhost_new(o);
    *out = NULL;
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    h->L = L;
    h->loading = 1; /* routes may be added until the server starts */
    if (lhost_protected(L, lhost_init_refs, h, 0) != LUA_OK) {
        snprintf(err, errlen, "cannot set up tokend: %s", lhost_error_text(L, -1));
        lua_pop(L, 1);
        lhost_free(h);
        return -1;
    }
    *out = h;
    return 0;
}

static void lhost_release_ref(void *ud, int ref) {
    lhost *h = ud;
    if (!h->owns_state) luaL_unref(h->L, LUA_REGISTRYINDEX, ref); /* an owned state goes whole */
}

/* Runs and forgets the retire hooks. */
static void lhost_run_hooks(lhost *h) {
    while (h->hooks) {
        lhost_hook *k = h->hooks;
        h->hooks = k->next;
        k->fn(k->ud);
        free(k);
    }
}

void lhost_serve(lhost *h, const lhost_world *w) {
    if (!w) { /* the world they run in is going away */
        lhost_run_hooks(h);
        lhosttask_drop_all(h);
    }
    h->world = w ? w : h->own_world;
    h->loading = w ? 0 : 1;
}

void lhost_enter(lhost *h, const lhost_world *w) {
    h->world = w;
    h->loading = 1;
}

void lhost_on_retire(lhost *h, void (*fn)(void *ud), void *ud) {
    lhost_hook *k = malloc(sizeof *k);
    if (!k) {
        fn(ud); /* no memory to remember it: as if retired at once */
        return;
    }
    k->fn = fn;
    k->ud = ud;
    k->next = h->hooks;
    h->hooks = k;
}

void lhost_retire(lhost *h) {
    h->retired = 1;
    lhost_run_hooks(h);
}

int lhost_retired(const lhost *h) {
    return h->retired;
}

void lhost_free(lhost *h) {
    if (!h) return;
    lhost_retire(h);
    lhosttask_drop_all(h);
    if (h->owns_state) {
        lstate_close(h->L);
    } else if (h->L) {
        for (size_t i = 0; i < h->npooled; i++) luaL_unref(h->L, LUA_REGISTRYINDEX, h->pooled[i]);
        const int refs[] = { h->runner_ref, h->befores_ref, h->encode_ref, h->tasks_ref };
        for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++) luaL_unref(h->L, LUA_REGISTRYINDEX, refs[i]);
    }
    router_free(h->routes, lhost_release_ref, h);
    static_free(h->statics);
    proxy_free(h->proxies);
    free(h->pooled);
    free(h);
}

/* ---- for the parts of the Lua API ---- */

lua_State *lhost_state(const lhost *h) {
    return h->L;
}
int lhost_loading(const lhost *h) {
    return h->loading;
}
const lhost_world *lhost_world_of(const lhost *h) {
    return h->world;
}
size_t lhost_running(const lhost *h) {
    return h->running;
}

void lhost_check_loading(lua_State *L, const lhost *h, const char *fn) {
    if (!h->loading) luaL_error(L, "tokend.%s: only while the script loads (not in a handler or a timer)", fn);
}

int lhost_add_route(lhost *h, lua_State *L, const char *method, const char *path, int idx, const router_opts *o,
                    char *err, size_t errlen) {
    lua_pushvalue(L, idx);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (router_add(h->routes, method, path, ref, o, err, errlen) < 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        return -1;
    }
    return 0;
}

int lhost_add_static(lhost *h, const char *prefix, const char *dir, const static_options *o, char *err, size_t errlen) {
    return static_mount(h->statics, prefix, dir, o, err, errlen);
}

int lhost_add_proxy(lhost *h, const char *prefix, const char *url, const proxy_options *o, char *err, size_t errlen) {
    return proxy_mount(h->proxies, prefix, url, o, err, errlen);
}

void lhost_add_before(lhost *h, lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->befores_ref);
    lua_pushvalue(L, idx);
    lua_rawseti(L, -2, (lua_Integer)++h->nbefores);
    lua_pop(L, 1);
}
