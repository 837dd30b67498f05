/* luamodule.c: tokend.so, the module for stock Lua 5.4 interpreters: the scripts' API on
 * the application's own state, blocking calls outside requests, and an embedded server. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lua-cjson.h>

#include "config.h"
#include "envfile.h"
#include "linit.h"
#include "lhost.h"
#include "log.h"
#include "lpreload.h"
#include "server.h"
#include "worker.h"

#define LUAMOD_STATE "tokend.module"
#define LUAMOD_SERVER "tokend.server"

/* What one require of the module owns; freed when the Lua state closes. */
typedef struct luamod_state {
    lhost *h;
    tokend_config cfg;   /* the settings from the environment */
    char *key;           /* the API key, in C memory only */
    worker_group *group; /* the module's own world, for calls outside requests */
    worker *own;
    struct luamod_server *serving;
} luamod_state;

typedef struct luamod_server {
    tokend_server *srv;
    luamod_state *mod;
} luamod_server;

static volatile sig_atomic_t luamod_interrupted;
static void luamod_on_signal(int sig) {
    (void)sig;
    luamod_interrupted = 1;
}

static void luamod_server_close(luamod_server *s) {
    if (!s->srv) return;
    tokend_server_free(s->srv);
    s->srv = NULL;
    if (s->mod) s->mod->serving = NULL;
}

static int luamod_state_gc(lua_State *L) {
    luamod_state *m = luaL_checkudata(L, 1, LUAMOD_STATE);
    if (m->serving) luamod_server_close(m->serving);
    lhost_free(m->h);
    worker_close(m->own);
    worker_group_close(m->group);
    if (m->key) explicit_bzero(m->key, strlen(m->key));
    free(m->key);
    memset(m, 0, sizeof *m);
    return 0;
}

static luamod_server *luamod_check_server(lua_State *L) {
    luamod_server *s = luaL_checkudata(L, 1, LUAMOD_SERVER);
    if (!s->srv) luaL_error(L, "tokend.server: the server is closed");
    return s;
}

static int luamod_server_gc(lua_State *L) {
    luamod_server_close(luaL_checkudata(L, 1, LUAMOD_SERVER));
    return 0;
}

static int luamod_server_fd(lua_State *L) {
    lua_pushinteger(L, tokend_server_fd(luamod_check_server(L)->srv));
    return 1;
}

static int luamod_server_port(lua_State *L) {
    lua_pushinteger(L, tokend_server_port(luamod_check_server(L)->srv));
    return 1;
}

static int luamod_server_timeout(lua_State *L) {
    long t = tokend_server_timeout_ms(luamod_check_server(L)->srv);
    if (t < 0) lua_pushnil(L);
    else lua_pushinteger(L, t);
    return 1;
}

/* Returns true, or nil and err, as Lua functions report runtime failures. */
static int luamod_result(lua_State *L, int rc, const char *err) {
    if (rc != TOKEND_OK) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* server:step([timeout_ms]) -> true | nil, err */
static int luamod_server_step(lua_State *L) {
    luamod_server *s = luamod_check_server(L);
    char err[256];
    return luamod_result(L, tokend_server_step(s->srv, (long)luaL_optinteger(L, 2, 0), err, sizeof err), err);
}

static int luamod_server_stop(lua_State *L) {
    tokend_server_stop(luamod_check_server(L)->srv);
    return 0;
}

/* server:run(): serves on this thread until server:stop(), SIGINT or SIGTERM. */
static int luamod_server_run(lua_State *L) {
    luamod_server *s = luamod_check_server(L);
    struct sigaction sa, old_int, old_term;
    char err[256];
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = luamod_on_signal;
    sigemptyset(&sa.sa_mask);
    luamod_interrupted = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    int rc = TOKEND_OK;
    err[0] = '\0';
    while (s->srv && !server_stopping(s->srv) && !luamod_interrupted && rc == TOKEND_OK)
        rc = tokend_server_step(s->srv, 500, err, sizeof err);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return luamod_result(L, rc, err);
}

static int luamod_server_close_lua(lua_State *L) {
    luamod_server_close(luaL_checkudata(L, 1, LUAMOD_SERVER));
    return 0;
}

static const char *luamod_opt_string(lua_State *L, const char *name, const char *dflt) {
    lua_getfield(L, 1, name);
    const char *v = lua_isnil(L, -1) ? dflt : luaL_checkstring(L, -1);
    lua_pop(L, 1); /* the options table keeps it alive */
    return v;
}

/* Applies the options of tokend.server{...} to cfg: every setting by its name (port,
 * host, trusted_proxies, log_format, max_connections, ...), but script and public, which
 * the caller handles, and the key, which never passes through Lua. */
static void luamod_apply_options(lua_State *L, tokend_config *cfg) {
    char err[300];
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        const config_setting *s = name ? config_by_name(name) : NULL;
        if (name && (strcmp(name, "script") == 0 || strcmp(name, "public") == 0)) {
            lua_pop(L, 1);
            continue;
        }
        if (!s || s->type == CONFIG_SECRET)
            luaL_error(L, "tokend.server: unknown option %s", name ? name : luaL_typename(L, -2));
        if (s->type == CONFIG_SWITCH) {
            if (lua_toboolean(L, -1)) config_set(cfg, s, "1", 0, err, sizeof err);
        } else {
            if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
                luaL_error(L, "tokend.server: option %s must be a string or a number", name);
            if (config_set(cfg, s, lua_tostring(L, -1), 0, err, sizeof err) < 0)
                luaL_error(L, "tokend.server: %s: %s", name, err);
        }
        lua_pop(L, 1); /* the options table keeps the value alive */
    }
}

/* Adds what tokend.server{script = ..., public = ...} names to the application's routes
 * (arguments: the script or nil, the public folder or nil): the script's routes join them,
 * in this state, and the public folder is the fallback, after every route. */
static int luamod_load_site(lua_State *L) {
    if (!lua_isnil(L, 1)) {
        if (luaL_loadfilex(L, lua_tostring(L, 1), "t") != LUA_OK) return lua_error(L);
        lua_call(L, 0, 0);
    }
    if (!lua_isnil(L, 2)) {
        lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
        lua_getfield(L, -1, "tokend");
        lua_getfield(L, -1, "static");
        lua_pushliteral(L, "/");
        lua_pushvalue(L, 2);
        lua_call(L, 2, 0);
    }
    return 0;
}

/* tokend.server{port = 8000, host = "127.0.0.1", script = nil, public = nil, ...} -> server | nil, err */
static int luamod_server_new(lua_State *L) {
    luamod_state *m = luaL_checkudata(L, lua_upvalueindex(1), LUAMOD_STATE);
    char err[1024];
    luaL_checktype(L, 1, LUA_TTABLE);
    if (m->serving) return luaL_error(L, "tokend.server: this module is already serving (one server at a time)");
    tokend_config cfg = m->cfg;
    luamod_apply_options(L, &cfg);
    const char *script = luamod_opt_string(L, "script", NULL);
    const char *public_dir = luamod_opt_string(L, "public", NULL);
    cfg.script = script ? script : "(embedded)";
    cfg.public_dir = public_dir ? public_dir : "";
    cfg.api_key = m->key;
    cfg.workers = 1;
    luamod_server *s = lua_newuserdatauv(L, sizeof *s, 0);
    s->srv = NULL;
    s->mod = m;
    luaL_setmetatable(L, LUAMOD_SERVER);
    /* The server first: while its script loads, tokend.config is the server's. */
    if (server_create_attached(&cfg, m->h, &s->srv, err, sizeof err) != TOKEND_OK) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    m->serving = s;
    lua_pushcfunction(L, luamod_load_site);
    lua_pushstring(L, script);
    lua_pushstring(L, public_dir);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        luamod_server_close(s); /* the application's routes go back to its own world */
        return lua_error(L);
    }
    lhost_serve(m->h, lhost_world_of(m->h));
    return 1;
}

/* tokend.serve{...}: tokend.server{...}, then run until stopped; returns true or nil, err. */
static int luamod_serve(lua_State *L) {
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushcclosure(L, luamod_server_new, 1);
    lua_pushvalue(L, 1);
    lua_call(L, 1, 2);
    if (lua_isnil(L, -2)) return 2;
    lua_pop(L, 1);
    lua_insert(L, 1);
    lua_settop(L, 1);
    int n = luamod_server_run(L);
    lua_pushcfunction(L, luamod_server_close_lua);
    lua_pushvalue(L, 1);
    lua_call(L, 1, 0);
    return n;
}

/* Reads the settings from the environment, as the server reads them (no .env: the
 * application owns its environment). Returns 0, or -1 with err set. */
static int luamod_settings(luamod_state *m, char *err, size_t errlen) {
    const char *key = getenv("ASSEMBLYAI_API_KEY"), *keep = getenv("TOKEND_KEEP_KEY_IN_ENV");
    tokend_config_init(&m->cfg);
    if (key && *key && !(m->key = strdup(key))) goto nomem;
    /* The key leaves the process environment (os.getenv, /proc/PID/environ, children), as
     * in the server, unless the application asks to keep it; first, before any setting
     * points into the environment that this rewrites. */
    if (!(keep && strcmp(keep, "1") == 0) && envfile_forget("ASSEMBLYAI_API_KEY") < 0) goto nomem;
    for (size_t i = 0; i < config_count; i++) {
        const config_setting *s = &config_settings[i];
        const char *v = s->env ? getenv(s->env) : NULL;
        if (!v || !*v || s->type == CONFIG_SECRET) continue;
        if (config_set(&m->cfg, s, v, 0, err, errlen) < 0) return -1;
    }
    m->cfg.api_key = m->key;
    return 0;
nomem:
    snprintf(err, errlen, "out of memory");
    return -1;
}

/* Builds the module's own world: what a server's workers share, and one worker without
 * an HTTP front whose loop runs the calls made outside requests. */
static int luamod_world(luamod_state *m, char *err, size_t errlen) {
    tokend_config cfg = m->cfg;
    cfg.script = "(embedded)";
    cfg.public_dir = "";
    worker_options wo = { .workers = 1, .listen_fd = -1 };
    if (!(m->group = worker_group_open(&cfg, WORKER_GROUP_SERVE, err, errlen))) return -1;
    if (!(m->own = worker_open(m->group, &wo, err, errlen))) return -1;
    return 0;
}

extern int luaopen_cjson_safe(lua_State *L);

/* Makes require "cjson" and "cjson.safe" give the lua-cjson tokend links, unless the
 * application has its own: the parts of tokend written in Lua use it. */
static void luamod_preload_cjson(lua_State *L) {
    static const luaL_Reg libs[] = { { "cjson", luaopen_cjson }, { "cjson.safe", luaopen_cjson_safe }, { NULL, NULL } };
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (const luaL_Reg *lib = libs; lib->name; lib++) {
        if (lua_getfield(L, -1, lib->name) == LUA_TNIL) {
            lua_pushcfunction(L, lib->func);
            lua_setfield(L, -3, lib->name);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

TOKEND_API int luaopen_tokend(lua_State *L) {
    static const luaL_Reg server_methods[] = {
        { "fd", luamod_server_fd },           { "timeout", luamod_server_timeout },
        { "step", luamod_server_step },       { "run", luamod_server_run },
        { "stop", luamod_server_stop },       { "port", luamod_server_port },
        { "close", luamod_server_close_lua }, { NULL, NULL },
    };
    char err[512];
    luaL_newmetatable(L, LUAMOD_STATE);
    lua_pushcfunction(L, luamod_state_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    if (luaL_newmetatable(L, LUAMOD_SERVER)) {
        lua_newtable(L);
        luaL_setfuncs(L, server_methods, 0);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, luamod_server_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);

    luamod_state *m = lua_newuserdatauv(L, sizeof *m, 0);
    memset(m, 0, sizeof *m);
    luaL_setmetatable(L, LUAMOD_STATE);
    lua_pushvalue(L, -1);
    luaL_ref(L, LUA_REGISTRYINDEX); /* lives as long as the state */

    if (luamod_settings(m, err, sizeof err) < 0 || luamod_world(m, err, sizeof err) < 0)
        return luaL_error(L, "tokend: %s", err);
    lhost_options ho;
    worker_host_options(m->own, &ho);
    if (lhost_attach(L, &ho, &m->h, err, sizeof err) < 0) return luaL_error(L, "tokend: %s", err);

    luamod_preload_cjson(L);
    lpreload_open(L); /* require "tokend.streaming" and the other parts written in Lua */
    linit_push_module(L, m->h);
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, luamod_server_new, 1);
    lua_setfield(L, -2, "server");
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, luamod_serve, 1);
    lua_setfield(L, -2, "serve");
    return 1;
}
