/* luaapi.c: the `tokend` Lua module that scripts require. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#include "log.h"
#include "loop.h"
#include "luaapi.h"
#include "metrics.h"
#include "policy.h"

#define LAPI_HOST(L) ((host *)lua_touserdata((L), lua_upvalueindex(1)))

static void lapi_check_loading(lua_State *L, host *h, const char *fn) {
    if (!host_loading(h)) luaL_error(L, "tokend.%s can only be called while the script loads", fn);
}

/* tokend.route(method, path, handler) */
static int lapi_route(lua_State *L) {
    host *h = LAPI_HOST(L);
    size_t mlen;
    const char *method = luaL_checklstring(L, 1, &mlen);
    const char *path = luaL_checkstring(L, 2);
    char upper[16], err[256];
    luaL_checktype(L, 3, LUA_TFUNCTION);
    lapi_check_loading(L, h, "route");
    luaL_argcheck(L, mlen > 0 && mlen < sizeof upper, 1, "not an HTTP method");
    for (size_t i = 0; i <= mlen; i++) upper[i] = (char)toupper((unsigned char)method[i]);
    lua_pushvalue(L, 3);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (router_add(host_router(h), upper, path, ref, err, sizeof err) < 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        return luaL_error(L, "%s", err);
    }
    return 0;
}

/* tokend.static(prefix, dir) */
static int lapi_static(lua_State *L) {
    host *h = LAPI_HOST(L);
    const char *prefix = luaL_checkstring(L, 1);
    const char *dir = luaL_checkstring(L, 2);
    char err[512];
    lapi_check_loading(L, h, "static");
    if (static_mount(host_statics(h), prefix, dir, err, sizeof err) < 0) return luaL_error(L, "%s", err);
    return 0;
}

/* tokend.before(fn) */
static int lapi_before(lua_State *L) {
    host *h = LAPI_HOST(L);
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lapi_check_loading(L, h, "before");
    host_add_before(h, L, 1);
    return 0;
}

/* tokend.generate_temp_token(expires_in_seconds[, {max_session_duration_seconds = M}]) */
static int lapi_generate_temp_token(lua_State *L) {
    host *h = LAPI_HOST(L);
    lua_Integer expires = luaL_checkinteger(L, 1);
    lua_Integer max_session = 0;
    luaL_argcheck(L, expires >= 1 && expires <= 600, 1, "expires_in_seconds must be between 1 and 600");
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 2)) {
            if (lua_type(L, -2) != LUA_TSTRING || strcmp(lua_tostring(L, -2), "max_session_duration_seconds") != 0)
                return luaL_argerror(L, 2, "unknown option (only max_session_duration_seconds is known)");
            lua_pop(L, 1);
        }
        lua_getfield(L, 2, "max_session_duration_seconds");
        if (!lua_isnil(L, -1)) {
            int isint = 0;
            max_session = lua_tointegerx(L, -1, &isint);
            luaL_argcheck(L, isint && max_session >= 60 && max_session <= 10800, 2,
                          "max_session_duration_seconds must be an integer between 60 and 10800");
        }
        lua_pop(L, 1);
    }
    if (!upstream_has_key(host_upstream(h))) {
        metrics_upstream("no_key", -1);
        lua_pushnil(L);
        lua_pushliteral(L, "no AssemblyAI API key is configured (set ASSEMBLYAI_API_KEY in the environment or in .env)");
        lua_pushnil(L);
        lua_createtable(L, 0, 1);
        lua_pushliteral(L, "no_key");
        lua_setfield(L, -2, "kind");
        return 4;
    }
    return host_await_token(h, L, (long)expires, (long)max_session);
}

/* tokend.log.<level>(...): arguments joined by spaces, like print. */
static int lapi_log(lua_State *L) {
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

static int lapi_readonly(lua_State *L) {
    return luaL_error(L, "tokend.config is read-only");
}

static int lapi_config_pairs(lua_State *L) {
    lua_getglobal(L, "next");
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "__index");
    lua_remove(L, -2);
    lua_pushnil(L);
    return 3;
}

/* Pushes the read-only tokend.config proxy. */
static void lapi_push_config(lua_State *L, const host_info *in) {
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
    lua_pushcfunction(L, lapi_readonly);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, lapi_config_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
}

/* tokend.stats(): process-wide counters kept in C. */
static int lapi_stats(lua_State *L) {
    long opened, calls;
    upstream_totals(&opened, &calls);
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, opened);
    lua_setfield(L, -2, "upstream_connections_opened");
    lua_pushinteger(L, calls);
    lua_setfield(L, -2, "upstream_calls");
    return 1;
}

static int lapi_metrics_write(void *ud, const char *text, size_t len) {
    luaL_addlstring(ud, text, len);
    return 0;
}

/* tokend.metrics(): every counter in the Prometheus text format. */
static int lapi_metrics(lua_State *L) {
    long opened, calls;
    luaL_Buffer b;
    upstream_totals(&opened, &calls);
    luaL_buffinit(L, &b);
    metrics_render(lapi_metrics_write, &b, opened);
    luaL_pushresult(&b);
    return 1;
}

/* ---- rate limiters ---- */

#define LAPI_LIMITER "tokend.limiter"
#define LAPI_ORIGINS "tokend.origins"

typedef struct lapi_limiter {
    policy_buckets *buckets;
    int id;
} lapi_limiter;

static double lapi_number_field(lua_State *L, int t, const char *name, double dflt) {
    lua_getfield(L, t, name);
    double v = dflt;
    if (!lua_isnil(L, -1)) {
        if (!lua_isnumber(L, -1)) luaL_error(L, "limiter option %s must be a number", name);
        v = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

/* tokend.limiter{name = "token", rate = 10, per = 60, burst = 5}: a token bucket per client,
 * shared by every worker (the same name gives the same buckets). */
static int lapi_limiter_new(lua_State *L) {
    host *h = LAPI_HOST(L);
    char err[200];
    luaL_checktype(L, 1, LUA_TTABLE);
    lapi_check_loading(L, h, "limiter");
    lua_getfield(L, 1, "name");
    const char *name = lua_tostring(L, -1);
    luaL_argcheck(L, name != NULL, 1, "name (a string) is required");
    double rate = lapi_number_field(L, 1, "rate", -1);
    double per = lapi_number_field(L, 1, "per", 60);
    double burst = lapi_number_field(L, 1, "burst", rate);
    int id = policy_limiter(host_buckets(h), name, rate, per, burst, err, sizeof err);
    if (id < 0) return luaL_error(L, "%s", err);
    lapi_limiter *lim = lua_newuserdatauv(L, sizeof *lim, 0);
    lim->buckets = host_buckets(h);
    lim->id = id;
    luaL_setmetatable(L, LAPI_LIMITER);
    return 1;
}

/* limiter:take(key) -> true | false, retry_after_seconds */
static int lapi_limiter_take(lua_State *L) {
    lapi_limiter *lim = luaL_checkudata(L, 1, LAPI_LIMITER);
    const char *key = luaL_checkstring(L, 2);
    long retry = 0;
    if (policy_take(lim->buckets, lim->id, key, loop_now_ms(), &retry)) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_pushinteger(L, retry);
    return 2;
}

/* ---- origin allow-lists ---- */

typedef struct lapi_origins {
    policy_origins *list;
} lapi_origins;

static int lapi_origins_gc(lua_State *L) {
    lapi_origins *o = luaL_checkudata(L, 1, LAPI_ORIGINS);
    policy_origins_free(o->list);
    o->list = NULL;
    return 0;
}

/* tokend.origins{"https://app.example.com", "http://localhost:*"}: who may call from a page. */
static int lapi_origins_new(lua_State *L) {
    const char *pats[64];
    char err[300];
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = luaL_len(L, 1);
    luaL_argcheck(L, n <= 64, 1, "at most 64 origins");
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, 1, i);
        pats[i - 1] = lua_tostring(L, -1);
        if (!pats[i - 1]) return luaL_error(L, "origin %d is not a string", (int)i);
        lua_pop(L, 1);      /* the string stays alive: the table holds it */
    }
    lapi_origins *o = lua_newuserdatauv(L, sizeof *o, 0);
    o->list = NULL;
    luaL_setmetatable(L, LAPI_ORIGINS);
    if (policy_origins_parse(pats, (size_t)n, &o->list, err, sizeof err) < 0) return luaL_error(L, "%s", err);
    return 1;
}

struct tokend_request {
    lua_State *L;
    int idx;            /* the req table */
};

/* Reads req[field] (or req[table][field]) as a string kept alive by the table. */
static const char *lapi_req_string(const tokend_request *req, const char *table, const char *field, size_t *len) {
    lua_State *L = req->L;
    const char *v = NULL;
    int top = lua_gettop(L);
    if (table) {
        if (lua_getfield(L, req->idx, table) != LUA_TTABLE) goto out;
        lua_getfield(L, -1, field);
    } else {
        lua_getfield(L, req->idx, field);
    }
    if (lua_type(L, -1) == LUA_TSTRING) v = lua_tolstring(L, -1, len);
out:
    lua_settop(L, top);
    return v;
}

/* Reads req.headers[name] of the req table at idx; NULL when absent. */
static const char *lapi_req_header(lua_State *L, int idx, const char *name) {
    tokend_request req = { L, idx };
    return lapi_req_string(&req, "headers", name, NULL);
}

/* Classifies req's Origin; leaves nothing on the stack. */
static int lapi_origin_of(lua_State *L, lapi_origins *o, const char **origin) {
    luaL_checktype(L, 2, LUA_TTABLE);
    *origin = lapi_req_header(L, 2, "origin");
    return policy_origin_check(o->list, *origin, lapi_req_header(L, 2, "host"), "http");
}

/* origins:check(req) -> headers (CORS headers to add, maybe none) | nil, err */
static int lapi_origins_check(lua_State *L) {
    lapi_origins *o = luaL_checkudata(L, 1, LAPI_ORIGINS);
    const char *origin;
    int verdict = lapi_origin_of(L, o, &origin);
    if (verdict == POLICY_ORIGIN_DENIED) {
        lua_pushnil(L);
        lua_pushliteral(L, "this origin may not request tokens");
        return 2;
    }
    lua_createtable(L, 0, 2);
    if (verdict == POLICY_ORIGIN_ALLOWED) {
        lua_pushstring(L, origin);
        lua_setfield(L, -2, "Access-Control-Allow-Origin");
        lua_pushliteral(L, "Origin");
        lua_setfield(L, -2, "Vary");
    }
    return 1;
}

/* origins:preflight(req, "GET") -> status, body, headers: the answer to a CORS OPTIONS. */
static int lapi_origins_preflight(lua_State *L) {
    lapi_origins *o = luaL_checkudata(L, 1, LAPI_ORIGINS);
    const char *methods = luaL_optstring(L, 3, "GET");
    const char *origin;
    int verdict = lapi_origin_of(L, o, &origin);
    const char *asked = lapi_req_header(L, 2, "access-control-request-method");
    int method_ok = asked && *asked && strstr(methods, asked) != NULL;
    if (verdict == POLICY_ORIGIN_DENIED || verdict == POLICY_ORIGIN_NONE || !method_ok) {
        lua_pushinteger(L, 403);
        lua_createtable(L, 0, 1);
        lua_pushstring(L, verdict == POLICY_ORIGIN_DENIED ? "this origin may not request tokens"
                          : "not a valid CORS preflight request");
        lua_setfield(L, -2, "error");
        lua_createtable(L, 0, 1);
        lua_pushliteral(L, "Origin");
        lua_setfield(L, -2, "Vary");
        return 3;
    }
    lua_pushinteger(L, 204);
    lua_pushnil(L);
    lua_createtable(L, 0, 5);
    lua_pushstring(L, origin);
    lua_setfield(L, -2, "Access-Control-Allow-Origin");
    lua_pushstring(L, methods);
    lua_setfield(L, -2, "Access-Control-Allow-Methods");
    const char *want = lapi_req_header(L, 2, "access-control-request-headers");
    if (want) {
        lua_pushstring(L, want);
        lua_setfield(L, -2, "Access-Control-Allow-Headers");
    }
    lua_pushliteral(L, "600");
    lua_setfield(L, -2, "Access-Control-Max-Age");
    lua_pushliteral(L, "Origin");
    lua_setfield(L, -2, "Vary");
    return 3;
}

/* ---- routes written in C ---- */

#define LAPI_C_HEADERS 16


struct tokend_response {
    int status;
    char *content_type;
    char *body;
    size_t len;
    int nheaders;
    char *names[LAPI_C_HEADERS], *values[LAPI_C_HEADERS];
};


const char *tokend_request_method(const tokend_request *req) { return lapi_req_string(req, NULL, "method", NULL); }
const char *tokend_request_path(const tokend_request *req) { return lapi_req_string(req, NULL, "path", NULL); }
const char *tokend_request_client(const tokend_request *req) { return lapi_req_string(req, NULL, "client", NULL); }
const char *tokend_request_header(const tokend_request *req, const char *name) { return lapi_req_string(req, "headers", name, NULL); }
const char *tokend_request_query(const tokend_request *req, const char *name) { return lapi_req_string(req, "query", name, NULL); }
const char *tokend_request_param(const tokend_request *req, const char *name) { return lapi_req_string(req, "params", name, NULL); }
const char *tokend_request_body(const tokend_request *req, size_t *len) { return lapi_req_string(req, NULL, "body", len); }

int tokend_response_set(tokend_response *resp, int status, const char *content_type, const char *body, size_t len) {
    if (status < 100 || status > 599) return TOKEND_ERR;
    char *b = malloc(len + 1), *t = strdup(content_type ? content_type : "text/plain; charset=utf-8");
    if (!b || !t) {
        free(b);
        free(t);
        return TOKEND_ERR;
    }
    if (len) memcpy(b, body, len);
    free(resp->body);
    free(resp->content_type);
    resp->status = status;
    resp->body = b;
    resp->len = len;
    resp->content_type = t;
    return TOKEND_OK;
}

int tokend_response_header(tokend_response *resp, const char *name, const char *value) {
    if (resp->nheaders == LAPI_C_HEADERS || strpbrk(name, "\r\n:") || strpbrk(value, "\r\n")) return TOKEND_ERR;
    char *n = strdup(name), *v = strdup(value);
    if (!n || !v) {
        free(n);
        free(v);
        return TOKEND_ERR;
    }
    resp->names[resp->nheaders] = n;
    resp->values[resp->nheaders++] = v;
    return TOKEND_OK;
}

static void lapi_response_free(tokend_response *resp) {
    free(resp->body);
    free(resp->content_type);
    for (int i = 0; i < resp->nheaders; i++) {
        free(resp->names[i]);
        free(resp->values[i]);
    }
}

/* The Lua side of a C route: handler(req) -> status, body, headers. */
static int lapi_c_route_call(lua_State *L) {
    host_c_route *r = lua_touserdata(L, lua_upvalueindex(1));
    tokend_request req = { L, 1 };
    tokend_response resp;
    memset(&resp, 0, sizeof resp);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_checkstack(L, 8);
    r->fn(r->ud, &req, &resp);
    if (!resp.status) {
        lapi_response_free(&resp);
        return luaL_error(L, "the C route %s %s set no response", r->method, r->path);
    }
    lua_pushinteger(L, resp.status);
    lua_pushlstring(L, resp.body ? resp.body : "", resp.len);
    lua_createtable(L, 0, resp.nheaders + 1);
    lua_pushstring(L, resp.content_type);
    lua_setfield(L, -2, "Content-Type");
    for (int i = 0; i < resp.nheaders; i++) {
        lua_pushstring(L, resp.values[i]);
        lua_setfield(L, -2, resp.names[i]);
    }
    lapi_response_free(&resp);
    return 3;
}

void lapi_push_c_route(lua_State *L, host_c_route *r) {
    lua_pushlightuserdata(L, r);
    lua_pushcclosure(L, lapi_c_route_call, 1);
}

static void lapi_new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc) {
    luaL_newmetatable(L, name);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    if (gc) {
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}

int lapi_push_module(lua_State *L, host *h) {
    static const luaL_Reg limiter_methods[] = { { "take", lapi_limiter_take }, { NULL, NULL } };
    static const luaL_Reg origins_methods[] = {
        { "check", lapi_origins_check }, { "preflight", lapi_origins_preflight }, { NULL, NULL },
    };
    lapi_new_class(L, LAPI_LIMITER, limiter_methods, NULL);
    lapi_new_class(L, LAPI_ORIGINS, origins_methods, lapi_origins_gc);
    static const luaL_Reg fns[] = {
        { "route", lapi_route },
        { "static", lapi_static },
        { "before", lapi_before },
        { "generate_temp_token", lapi_generate_temp_token },
        { "limiter", lapi_limiter_new },
        { "origins", lapi_origins_new },
        { "stats", lapi_stats },
        { "metrics", lapi_metrics },
        { NULL, NULL },
    };
    static const char *const levels[] = { "debug", "info", "warn", "error" };
    luaL_newlibtable(L, fns);
    lua_pushlightuserdata(L, h);
    luaL_setfuncs(L, fns, 1);
    lua_createtable(L, 0, 4);
    for (int i = 0; i < 4; i++) {
        lua_pushinteger(L, i);
        lua_pushcclosure(L, lapi_log, 1);
        lua_setfield(L, -2, levels[i]);
    }
    lua_setfield(L, -2, "log");
    lapi_push_config(L, host_get_info(h));
    lua_setfield(L, -2, "config");
    lua_pushliteral(L, TOKEND_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
