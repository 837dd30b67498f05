/* lhttplib.c: tokend.http.request: HTTP calls from a handler or a timer, on the worker's loop. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fetch.h"
#include "llib.h"
#include "log.h"
#include "lsecret.h"
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

/* Pushes bytes that came from the outside, with every registered secret (the API key,
 * tokend.secret's) "[redacted]": a server that echoes a credential does not hand it to Lua. */
static void lhttp_push_scrubbed(lua_State *L, const char *data, size_t len) {
    char *clean = NULL;
    size_t clean_len = 0;
    int rc = log_redact_mem(data, len, &clean, &clean_len);
    if (rc < 0) luaL_error(L, "out of memory");
    if (rc == 0) lua_pushlstring(L, data, len);
    else lua_pushlstring(L, clean, clean_len);
    free(clean);
}

/* Sets the header lines of text (one "Name: value" a line) into the table on top: names
 * in lower case, repeats joined with ", ". */
static void lhttp_set_headers(lua_State *L, const char *p, const char *end) {
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
            if (lua_rawget(L, -3) == LUA_TSTRING) { /* repeated: joined like req.headers */
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
}

/* Pushes res = {status, headers, body}, or nil, "<kind>: <why>" and the kind. */
static int lhttp_push_result(lua_State *L, void *ud) {
    const fetch_result *r = ((void **)ud)[0];
    const lhttp_call *c = ((void **)ud)[1];
    if (r->failure != FAILURE_NONE) {
        char why[600];
        const char *kind = failure_name(r->failure);
        luaL_pushfail(L);
        if (r->failure == FAILURE_TOO_LARGE)
            lua_pushfstring(L, "too large: the answer is larger than %d bytes (max_body_bytes)", (int)c->max_body);
        else lua_pushfstring(L, "%s: %s", kind, log_redact(why, sizeof why, r->error));
        lua_pushstring(L, kind);
        return 3;
    }
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, r->status);
    lua_setfield(L, -2, "status");
    lhttp_push_scrubbed(L, r->body, r->body_len);
    lua_setfield(L, -2, "body");
    lua_newtable(L);
    lhttp_push_scrubbed(L, r->headers, r->headers_len);
    size_t hlen;
    const char *headers = lua_tolstring(L, -1, &hlen);
    lua_insert(L, -2);
    lhttp_set_headers(L, headers, headers + hlen);
    lua_setfield(L, -3, "headers");
    lua_pop(L, 1);
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
    static const char *const names[] = { "Content-Length", "Transfer-Encoding", "Connection",
                                         "Keep-Alive",     "Upgrade",           "TE" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(name, names[i]) == 0) return 1;
    return 0;
}

/* Pushes the request's header lines from opts.headers (names to strings, numbers, secrets
 * or templates of them, rendered in C memory) without the hop-by-hop ones, with tokend's
 * User-Agent unless one is given and a JSON Content-Type for a json body unless one is
 * given: a buffer of lines each ended by a NUL. Raises on a bad name or value. */
static lsecret_buf *lhttp_push_header_lines(lua_State *L, int json) {
    int has_agent = 0, has_type = 0;
    lsecret_buf *b = lsecret_buf_push(L);
    if (lua_getfield(L, 2, "headers") != LUA_TNIL) {
        luaL_argcheck(L, lua_istable(L, -1), 2, "headers must be a table");
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            size_t nlen;
            if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "tokend.http.request: headers must map names to strings");
            const char *name = lua_tolstring(L, -2, &nlen);
            if (!nlen || strpbrk(name, ":\r\n \t") || strlen(name) != nlen)
                luaL_error(L, "tokend.http.request: header \"%s\" has a bad name or value", name);
            size_t start = b->len;
            lsecret_buf_add(L, b, name, nlen);
            lsecret_buf_add(L, b, ": ", 2);
            size_t at = b->len;
            lsecret_render(L, -1, b, "tokend.http.request: a header value");
            for (size_t i = at; i < b->len; i++)
                if (b->data[i] == '\r' || b->data[i] == '\n' || b->data[i] == '\0')
                    luaL_error(L, "tokend.http.request: header \"%s\" has a bad name or value", name);
            lsecret_buf_add(L, b, "", 1);
            if (lhttp_hop_by_hop(name)) { /* checked, then left out */
                explicit_bzero(b->data + start, b->len - start);
                b->len = start;
            }
            has_agent |= strcasecmp(name, "User-Agent") == 0;
            has_type |= strcasecmp(name, "Content-Type") == 0;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    if (!has_agent)
        lsecret_buf_add(L, b, "User-Agent: tokend/" TOKEND_VERSION, sizeof "User-Agent: tokend/" TOKEND_VERSION);
    if (json && !has_type)
        lsecret_buf_add(L, b, "Content-Type: application/json", sizeof "Content-Type: application/json");
    return b;
}

/* The lines of b as a header list (no Lua error: nothing to leak). */
static fetch_headers *lhttp_header_list(const lsecret_buf *b) {
    fetch_headers *list = NULL;
    for (size_t at = 0; at < b->len; at += strlen(b->data + at) + 1)
        if (!(list = fetch_headers_add(list, b->data + at))) return NULL;
    return list;
}

/* Appends s percent-encoded (all but unreserved characters). */
static void lhttp_add_escaped(lua_State *L, lsecret_buf *b, const char *s, size_t len) {
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[4];
        if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
            lsecret_buf_add(L, b, s + i, 1);
            continue;
        }
        snprintf(esc, sizeof esc, "%%%02X", c);
        lsecret_buf_add(L, b, esc, 3);
    }
}

/* Pushes the URL to call: url with opts.query (names to strings, numbers, secrets or
 * templates) appended, names in order, each part percent-encoded, in C memory. */
static lsecret_buf *lhttp_push_url(lua_State *L, const char *url) {
    lsecret_buf *b = lsecret_buf_push(L), *value = lsecret_buf_push(L);
    lsecret_buf_add(L, b, url, strlen(url));
    if (lua_getfield(L, 2, "query") != LUA_TNIL) {
        luaL_argcheck(L, lua_istable(L, -1), 2, "query must be a table");
        luaL_argcheck(L, !strchr(url, '#'), 2, "a URL with a fragment cannot take a query");
        lua_newtable(L); /* the names, sorted */
        lua_Integer n = 0;
        lua_pushnil(L);
        while (lua_next(L, -3)) {
            if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "tokend.http.request: query must map names to values");
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            lua_Integer at = ++n;
            for (; at > 1; at--) {          /* insertion: a query has a few names */
                lua_rawgeti(L, -3, at - 1); /* names, key, the copy, the name before */
                if (!lua_compare(L, -2, -1, LUA_OPLT)) {
                    lua_pop(L, 1);
                    break;
                }
                lua_rawseti(L, -4, at);
            }
            lua_rawseti(L, -3, at);
        }
        for (lua_Integer i = 1; i <= n; i++) {
            size_t nlen;
            lua_rawgeti(L, -1, i);
            const char *name = lua_tolstring(L, -1, &nlen);
            lsecret_buf_add(L, b, i == 1 && !strchr(url, '?') ? "?" : "&", 1);
            lhttp_add_escaped(L, b, name, nlen);
            lsecret_buf_add(L, b, "=", 1);
            lua_rawget(L, -3);
            lsecret_render(L, -1, value, "tokend.http.request: a query value");
            lhttp_add_escaped(L, b, value->data ? value->data : "", value->len);
            lsecret_buf_clear(value);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 2); /* query, value */
    return b;
}

/* tokend.http.request(url[, {method, headers, query, body | json, timeout_ms, max_body_bytes}])
 * -> res | nil, err, kind */
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
        if (!isupper((unsigned char)*p) || p - method > 15)
            return luaL_argerror(L, 2, "method must be an upper-case HTTP method");
    lua_getfield(L, 2, "body");
    const char *body = luaL_optlstring(L, -1, NULL, &body_len);
    long timeout = (long)lhttp_opt_int(L, "timeout_ms", LHTTP_TIMEOUT_MS, 1, LHTTP_MAX_TIMEOUT_MS);
    size_t max_body = (size_t)lhttp_opt_int(L, "max_body_bytes", LHTTP_MAX_BODY, 0, (lua_Integer)1 << 30);
    lsecret_buf *json = NULL;
    if (lua_getfield(L, 2, "json") != LUA_TNIL) {
        luaL_argcheck(L, lua_istable(L, -1), 2, "json must be a table");
        luaL_argcheck(L, !body, 2, "give body or json, not both");
        json = lsecret_buf_push(L);
        lsecret_json(L, -2, json, "tokend.http.request: json");
        body = json->data;
        body_len = json->len;
    }
    lsecret_buf *lines = lhttp_push_header_lines(L, json != NULL);
    lsecret_buf *target = lhttp_push_url(L, url);
    lhost_waiter *w = lhost_wait_begin(h, L, "tokend.http.request", &world);
    lhttp_call *c = calloc(1, sizeof *c);
    if (!c || !(c->headers = lhttp_header_list(lines))) {
        free(c);
        return llib_fail(L, "network: out of memory starting the request");
    }
    lsecret_buf_clear(lines);
    c->w = w;
    c->max_body = max_body;
    fetch_request rq = {
        .method = method,
        .url = target->data,
        .headers = c->headers,
        .body = body,
        .body_len = body_len,
        .timeout_ms = timeout,
        .max_body = max_body,
    };
    c->transfer = fetch_start(world->client, &rq, lhttp_on_done, c); /* copies the URL and the body */
    lsecret_buf_clear(target);
    if (json) lsecret_buf_clear(json);
    if (!c->transfer) {
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
