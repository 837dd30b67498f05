/* lhttplib.c: tokend.http.request: HTTP calls from a handler or a timer, on the worker's loop. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fetch.h"
#include "llib.h"
#include "tokend.h"

#define LHTTP_TIMEOUT_MS 5000
#define LHTTP_MAX_BODY (1024 * 1024)
#define LHTTP_MAX_TIMEOUT_MS 600000

/* One call in flight: what must live until it ends. */
typedef struct lhttp_call {
    lhost_waiter *w;
    fetch_call *transfer;
    fetch_headers *headers;
    size_t max_body;
} lhttp_call;

static void lhttp_call_free(lhttp_call *c) {
    fetch_headers_free(c->headers);
    free(c);
}

/* Pushes res = {status, headers, body}, or nil and "<kind>: <why>". */
static int lhttp_push_result(lua_State *L, void *ud) {
    const fetch_result *r = ((void **)ud)[0];
    const lhttp_call *c = ((void **)ud)[1];
    if (r->failure != FAILURE_NONE) {
        const char *kind = r->failure == FAILURE_TOO_LARGE ? "too large" : failure_name(r->failure);
        if (r->failure == FAILURE_TOO_LARGE)
            return llib_fail(L, "too large: the answer is larger than %d bytes (max_body_bytes)", (int)c->max_body);
        return llib_fail(L, "%s: %s", kind, r->error);
    }
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, r->status);
    lua_setfield(L, -2, "status");
    lua_pushlstring(L, r->body, r->body_len);
    lua_setfield(L, -2, "body");
    lua_newtable(L);
    const char *p = r->headers, *end = r->headers + r->headers_len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) eol = end;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon && colon > p) {
            luaL_Buffer name;
            luaL_buffinit(L, &name);
            for (const char *q = p; q < colon; q++) luaL_addchar(&name, (char)tolower((unsigned char)*q));
            luaL_pushresult(&name);
            const char *v = colon + 1, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            lua_pushvalue(L, -1);
            if (lua_rawget(L, -3) == LUA_TSTRING) {     /* repeated: joined like req.headers */
                lua_pushliteral(L, ", ");
                lua_pushlstring(L, v, (size_t)(ve - v));
                lua_concat(L, 3);
            } else {
                lua_pop(L, 1);
                lua_pushlstring(L, v, (size_t)(ve - v));
            }
            lua_rawset(L, -3);
        }
        p = eol + 1;
    }
    lua_setfield(L, -2, "headers");
    return 1;
}

static void lhttp_on_done(void *ud, const fetch_result *r) {
    lhttp_call *c = ud;
    void *both[2] = { (void *)r, c };
    c->transfer = NULL;
    lhost_waiter *w = c->w;
    lhost_wake(w, lhttp_push_result, both);
    lhttp_call_free(c);
}

static void lhttp_cancel(void *op) {
    lhttp_call *c = op;
    if (c->transfer) fetch_cancel(c->transfer);
    lhttp_call_free(c);
}

/* Reads opts.<field> as an integer in [min, max] (dflt when absent); raises otherwise. */
static lua_Integer lhttp_opt_int(lua_State *L, const char *field, lua_Integer dflt, lua_Integer min, lua_Integer max) {
    lua_getfield(L, 2, field);
    lua_Integer v = dflt;
    if (!lua_isnil(L, -1)) {
        int isint = 0;
        v = lua_tointegerx(L, -1, &isint);
        if (!isint || v < min || v > max)
            luaL_error(L, "tokend.http.request: %s must be an integer between %d and %d", field, (int)min, (int)max);
    }
    lua_pop(L, 1);
    return v;
}

/* Whether a header belongs to one connection or frames the body: libcurl sets these itself.
 * Passed on from a client by a script, they could make the backend read the body another
 * way than libcurl sends it, and the worker's kept-alive connection to it would desync. */
static int lhttp_hop_by_hop(const char *name) {
    static const char *const names[] = { "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive",
                                         "Upgrade", "TE" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(name, names[i]) == 0) return 1;
    return 0;
}

/* Pushes a table of the request's header lines, "Name: value", from opts.headers (names to
 * strings or numbers) without the hop-by-hop ones, with tokend's User-Agent unless one is
 * given. Raises on a bad one. */
static void lhttp_push_header_lines(lua_State *L) {
    int has_agent = 0;
    lua_Integer n = 0;
    lua_newtable(L);
    if (lua_getfield(L, 2, "headers") != LUA_TNIL) {
        luaL_argcheck(L, lua_istable(L, -1), 2, "headers must be a table");
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            size_t nlen, vlen;
            if (lua_type(L, -2) != LUA_TSTRING || (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
                luaL_error(L, "tokend.http.request: headers must map names to strings");
            const char *name = lua_tolstring(L, -2, &nlen), *value = lua_tolstring(L, -1, &vlen);
            if (!nlen || strpbrk(name, ":\r\n \t") || strpbrk(value, "\r\n") || strlen(value) != vlen)
                luaL_error(L, "tokend.http.request: header \"%s\" has a bad name or value", name);
            if (strcasecmp(name, "User-Agent") == 0) has_agent = 1;
            if (!lhttp_hop_by_hop(name)) {
                lua_pushfstring(L, "%s: %s", name, value);
                lua_rawseti(L, -5, ++n);
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    if (!has_agent) {
        lua_pushliteral(L, "User-Agent: tokend/" TOKEND_VERSION);
        lua_rawseti(L, -2, ++n);
    }
}

/* The lines of the table on top as a header list (no Lua error: nothing to leak). */
static fetch_headers *lhttp_header_list(lua_State *L) {
    fetch_headers *list = NULL;
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        list = fetch_headers_add(list, lua_tostring(L, -1));
        lua_pop(L, 1);
        if (!list) return NULL;
    }
    return list;
}

/* tokend.http.request(url[, {method, headers, body, timeout_ms, max_body_bytes}]) -> res | nil, err */
static int lhttp_request(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    const lhost_world *world;
    size_t body_len = 0;
    const char *url = luaL_checkstring(L, 1);
    if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)
        return luaL_argerror(L, 1, "only http:// and https:// URLs");
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    else {
        lua_settop(L, 1);
        lua_newtable(L);
    }
    lua_settop(L, 2);
    lua_getfield(L, 2, "method");
    const char *method = luaL_optstring(L, -1, "GET");
    for (const char *p = method; *p; p++)
        if (!isupper((unsigned char)*p) || p - method > 15) return luaL_argerror(L, 2, "method must be an upper-case HTTP method");
    lua_getfield(L, 2, "body");
    const char *body = luaL_optlstring(L, -1, NULL, &body_len);
    long timeout = (long)lhttp_opt_int(L, "timeout_ms", LHTTP_TIMEOUT_MS, 1, LHTTP_MAX_TIMEOUT_MS);
    size_t max_body = (size_t)lhttp_opt_int(L, "max_body_bytes", LHTTP_MAX_BODY, 0, (lua_Integer)1 << 30);
    lhttp_push_header_lines(L);
    lhost_waiter *w = lhost_wait_begin(h, L, "tokend.http.request", &world);
    lhttp_call *c = calloc(1, sizeof *c);
    if (!c || !(c->headers = lhttp_header_list(L))) {
        free(c);
        return llib_fail(L, "network: out of memory starting the request");
    }
    c->w = w;
    c->max_body = max_body;
    fetch_request rq = {
        .method = method, .url = url, .headers = c->headers, .body = body, .body_len = body_len,
        .timeout_ms = timeout, .max_body = max_body,
    };
    if (!(c->transfer = fetch_start(world->client, &rq, lhttp_on_done, c))) {
        lhttp_call_free(c);
        return llib_fail(L, "network: out of memory starting the request");
    }
    return lhost_wait(w, L, lhttp_cancel, c);
}

void lhttplib_open(lua_State *L, lhost *h) {
    static const luaL_Reg fns[] = { { "request", lhttp_request }, { NULL, NULL } };
    lua_newtable(L);
    llib_register(L, h, fns);
    lua_setfield(L, -2, "http");
}
