/* lopslib.c: tokend.log, tokend.config, tokend.metrics and tokend.stats: what operators see. */
#define _GNU_SOURCE
#include <string.h>
#include <stdlib.h>
#include <time.h>

#include "envfile.h"
#include "fetch.h"
#include "llib.h"
#include "log.h"
#include "lsecret.h"
#include "metrics.h"
#include "pool.h"
#include "shdict.h"
#include "tokend.h"

static const char *const lops_levels[] = { "debug", "info", "warn", "error" };

#define LOPS_LOG_FIELDS 32 /* fields of one log line, at most */

/* Raises when an argument of a log call, or a value of its fields table, is a secret. */
static void lops_refuse_secrets(lua_State *L, int n, int fields) {
    for (int i = 1; i <= n; i++) lsecret_refuse(L, i, "tokend.log");
    if (!fields) return;
    lua_pushnil(L);
    while (lua_next(L, fields)) {
        lsecret_refuse(L, -1, "tokend.log");
        lua_pop(L, 1);
    }
}

/* tokend.log.<level>(...): arguments joined by spaces, like print; a table as the last
 * argument holds fields, written as JSON keys or key=value pairs. */
static int lops_log(lua_State *L) {
    int level = (int)lua_tointeger(L, lua_upvalueindex(1));
    int n = lua_gettop(L);
    int fields = n > 0 && lua_type(L, n) == LUA_TTABLE && !luaL_getmetafield(L, n, "__tostring") ? n : 0;
    lops_refuse_secrets(L, n, fields); /* at every level: a mistake shows at once */
    if (!log_enabled(level)) return 0;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n - (fields != 0); i++) {
        if (i > 1) luaL_addchar(&b, ' ');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    log_field f[LOPS_LOG_FIELDS];
    size_t nf = 0;
    if (fields) {
        lua_pushnil(L);
        while (lua_next(L, fields) && nf < LOPS_LOG_FIELDS) {
            int type = lua_type(L, -1);
            if (lua_type(L, -2) == LUA_TSTRING &&
                (type == LUA_TSTRING || type == LUA_TNUMBER || type == LUA_TBOOLEAN)) {
                /* the strings stay alive: the fields table holds them, booleans are literals */
                f[nf].key = lua_tostring(L, -2);
                f[nf].value = type == LUA_TBOOLEAN ? (lua_toboolean(L, -1) ? "true" : "false") : lua_tostring(L, -1);
                f[nf++].bare = type != LUA_TSTRING;
            }
            lua_pop(L, 1);
        }
    }
    log_fields(level, "log", lua_tostring(L, -1), f, nf);
    return 0;
}

/* tokend.now() -> seconds since the epoch, with milliseconds */
static int lops_now(lua_State *L) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)(ts.tv_nsec / 1000000) / 1000.0);
    return 1;
}

/* tokend.env(name) -> a setting from the environment or .env, or nil; never the key */
static int lops_env(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    const char *name = luaL_checkstring(L, 1);
    if (strcmp(name, "ASSEMBLYAI_API_KEY") == 0)
        return luaL_error(L, "tokend.env: the API key stays out of Lua (it lives in C memory only)");
    if (secret_find(name))
        return luaL_error(L, "tokend.env: %s is a secret (tokend.secret): its bytes stay out of Lua", name);
    const lhost_world *w = lhost_world_of(h);
    const char *v = getenv(name);
    const char *in_file = w->env ? envfile_read(w->env, name) : NULL;
    if (!v || !*v) v = in_file;
    if (v && *v) lua_pushstring(L, v);
    else lua_pushnil(L);
    return 1;
}

static int lops_readonly(lua_State *L) {
    return luaL_error(L, "tokend.config is read-only");
}

/* One value of tokend.config. */
typedef struct lops_config_field {
    const char *name;
    const char *text; /* a string, or NULL */
    lua_Integer number;
    int boolean; /* 0 or 1 for a boolean, -1 otherwise */
} lops_config_field;

#define LOPS_CONFIG_FIELDS 14

/* tokend.config's values for the world the host runs in now: the Lua module's own, or a
 * server's once it serves (its real host and port). */
static void lops_config_fields(lua_State *L, lops_config_field out[LOPS_CONFIG_FIELDS]) {
    const lhost_info *in = lhost_world_of(lua_touserdata(L, lua_upvalueindex(1)))->info;
    const lops_config_field fields[LOPS_CONFIG_FIELDS] = {
        { "host", in->host, 0, -1 },
        { "port", NULL, in->port, -1 },
        { "script", in->script, 0, -1 },
        { "public", in->public_dir, 0, -1 },
        { "streaming_url", in->streaming_url, 0, -1 },
        { "token_url", in->token_url, 0, -1 },
        { "websocket_url", in->websocket_url, 0, -1 },
        { "workers", NULL, in->workers, -1 },
        { "worker", NULL, in->worker, -1 },
        { "api_key_configured", NULL, 0, in->api_key_configured },
        { "redis", NULL, 0, in->redis_configured },
        { "version", TOKEND_VERSION, 0, -1 },
        { "tls_port", NULL, in->tls_port, -1 },
        { "dev", NULL, 0, in->dev },
    };
    memcpy(out, fields, sizeof fields);
}

static void lops_config_push(lua_State *L, const lops_config_field *f) {
    if (f->boolean >= 0) lua_pushboolean(L, f->boolean);
    else if (f->text) lua_pushstring(L, f->text);
    else lua_pushinteger(L, f->number);
}

/* tokend.config[key] (upvalue: the host) */
static int lops_config_index(lua_State *L) {
    lops_config_field fields[LOPS_CONFIG_FIELDS];
    const char *key = lua_tostring(L, 2);
    lops_config_fields(L, fields);
    for (int i = 0; key && i < LOPS_CONFIG_FIELDS; i++)
        if (strcmp(key, fields[i].name) == 0) {
            lops_config_push(L, &fields[i]);
            return 1;
        }
    return 0;
}

/* pairs(tokend.config) (upvalue: the host) */
static int lops_config_pairs(lua_State *L) {
    lops_config_field fields[LOPS_CONFIG_FIELDS];
    lops_config_fields(L, fields);
    lua_getglobal(L, "next");
    lua_createtable(L, 0, LOPS_CONFIG_FIELDS);
    for (int i = 0; i < LOPS_CONFIG_FIELDS; i++) {
        lops_config_push(L, &fields[i]);
        lua_setfield(L, -2, fields[i].name);
    }
    lua_pushnil(L);
    return 3;
}

/* Pushes the read-only tokend.config proxy. */
static void lops_push_config(lua_State *L, lhost *h) {
    lua_newtable(L);          /* proxy */
    lua_createtable(L, 0, 4); /* its metatable */
    lua_pushlightuserdata(L, h);
    lua_pushcclosure(L, lops_config_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushlightuserdata(L, h);
    lua_pushcclosure(L, lops_config_pairs, 1);
    lua_setfield(L, -2, "__pairs");
    lua_pushcfunction(L, lops_readonly);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
}

/* tokend.stats(): process-wide counters kept in C. */
static int lops_stats(lua_State *L) {
    long opened, calls;
    fetch_totals(&opened, &calls);
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, opened);
    lua_setfield(L, -2, "upstream_connections_opened");
    lua_pushinteger(L, calls);
    lua_setfield(L, -2, "upstream_calls");
    return 1;
}

/* The metrics' text, gathered in C memory: the renderers hold their locks while they write,
 * so nothing that can raise (a Lua allocation) may run under them. */
typedef struct lops_text {
    char *data;
    size_t len, cap;
    int failed; /* an allocation failed: the text is incomplete */
} lops_text;

static int lops_metrics_write(void *ud, const char *text, size_t len) {
    lops_text *t = ud;
    if (t->failed) return -1;
    if (t->len + len > t->cap) {
        size_t cap = t->cap ? t->cap : 8192;
        while (cap < t->len + len) cap *= 2;
        char *grown = realloc(t->data, cap);
        if (!grown) {
            t->failed = 1;
            return -1;
        }
        t->data = grown;
        t->cap = cap;
    }
    memcpy(t->data + t->len, text, len);
    t->len += len;
    return 0;
}

static int lops_push_text(lua_State *L) {
    const lops_text *t = lua_touserdata(L, 1);
    lua_pushlstring(L, t->data ? t->data : "", t->len);
    return 1;
}

/* tokend.metrics(): every counter in the Prometheus text format. Raises on memory
 * exhaustion (after freeing the text), like any allocation in Lua. */
static int lops_metrics(lua_State *L) {
    const lhost_world *world = lhost_world_of(LLIB_HOST(L));
    lops_text t = { 0 };
    long opened, calls;
    fetch_totals(&opened, &calls);
    metrics_render(lops_metrics_write, &t, opened);
    pool_metrics(lops_metrics_write, &t);
    policy_metrics(world->buckets, lops_metrics_write, &t);
    shdict_metrics(world->shared, lops_metrics_write, &t);
    int status = LUA_ERRMEM;
    if (!t.failed) {
        lua_pushcfunction(L, lops_push_text);
        lua_pushlightuserdata(L, &t);
        status = lua_pcall(L, 1, 1, 0);
    }
    free(t.data);
    if (status == LUA_ERRMEM && t.failed) return luaL_error(L, "tokend.metrics: out of memory");
    if (status != LUA_OK) return lua_error(L);
    return 1;
}

void lopslib_open(lua_State *L, lhost *h) {
    static const luaL_Reg fns[] = {
        { "stats", lops_stats }, { "metrics", lops_metrics }, { "now", lops_now }, { "env", lops_env }, { NULL, NULL },
    };
    llib_register(L, h, fns);
    lua_createtable(L, 0, 4);
    for (int i = 0; i < 4; i++) {
        lua_pushinteger(L, i);
        lua_pushcclosure(L, lops_log, 1);
        lua_setfield(L, -2, lops_levels[i]);
    }
    lua_setfield(L, -2, "log");
    lops_push_config(L, h);
    lua_setfield(L, -2, "config");
    lua_pushliteral(L, TOKEND_VERSION);
    lua_setfield(L, -2, "version");
}
