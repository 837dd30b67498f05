/* lopslib.c: tokend.log, tokend.config, tokend.metrics and tokend.stats: what operators see. */
#include "fetch.h"
#include "llib.h"
#include "log.h"
#include "metrics.h"
#include "tokend.h"

static const char *const lops_levels[] = { "debug", "info", "warn", "error" };

/* tokend.log.<level>(...): arguments joined by spaces, like print. */
static int lops_log(lua_State *L) {
    int level = (int)lua_tointeger(L, lua_upvalueindex(1));
    int n = lua_gettop(L);
    if (!log_enabled(level)) return 0;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1) luaL_addchar(&b, ' ');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    log_msg(level, "%s", lua_tostring(L, -1));
    return 0;
}

static int lops_readonly(lua_State *L) {
    return luaL_error(L, "tokend.config is read-only");
}

static int lops_config_pairs(lua_State *L) {
    lua_getglobal(L, "next");
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "__index");
    lua_remove(L, -2);
    lua_pushnil(L);
    return 3;
}

/* Pushes the read-only tokend.config proxy. */
static void lops_push_config(lua_State *L, const lhost_info *in) {
    lua_newtable(L);                          /* proxy */
    lua_createtable(L, 0, 4);                 /* its metatable */
    lua_createtable(L, 0, 12);                /* the values */
    lua_pushstring(L, in->host);
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, in->port);
    lua_setfield(L, -2, "port");
    lua_pushstring(L, in->script);
    lua_setfield(L, -2, "script");
    lua_pushstring(L, in->public_dir);
    lua_setfield(L, -2, "public");
    lua_pushstring(L, in->streaming_url);
    lua_setfield(L, -2, "streaming_url");
    lua_pushstring(L, in->token_url);
    lua_setfield(L, -2, "token_url");
    lua_pushstring(L, in->websocket_url);
    lua_setfield(L, -2, "websocket_url");
    lua_pushinteger(L, in->workers);
    lua_setfield(L, -2, "workers");
    lua_pushinteger(L, in->worker);
    lua_setfield(L, -2, "worker");
    lua_pushboolean(L, in->api_key_configured);
    lua_setfield(L, -2, "api_key_configured");
    lua_pushliteral(L, TOKEND_VERSION);
    lua_setfield(L, -2, "version");
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, lops_readonly);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, lops_config_pairs);
    lua_setfield(L, -2, "__pairs");
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

static int lops_metrics_write(void *ud, const char *text, size_t len) {
    luaL_addlstring(ud, text, len);
    return 0;
}

/* tokend.metrics(): every counter in the Prometheus text format. */
static int lops_metrics(lua_State *L) {
    long opened, calls;
    luaL_Buffer b;
    fetch_totals(&opened, &calls);
    luaL_buffinit(L, &b);
    metrics_render(lops_metrics_write, &b, opened);
    luaL_pushresult(&b);
    return 1;
}

void lopslib_open(lua_State *L, lhost *h) {
    static const luaL_Reg fns[] = { { "stats", lops_stats }, { "metrics", lops_metrics }, { NULL, NULL } };
    llib_register(L, h, fns);
    lua_createtable(L, 0, 4);
    for (int i = 0; i < 4; i++) {
        lua_pushinteger(L, i);
        lua_pushcclosure(L, lops_log, 1);
        lua_setfield(L, -2, lops_levels[i]);
    }
    lua_setfield(L, -2, "log");
    lops_push_config(L, lhost_world_of(h)->info);
    lua_setfield(L, -2, "config");
    lua_pushliteral(L, TOKEND_VERSION);
    lua_setfield(L, -2, "version");
}
