/* lrequest.c: a request as handlers see it (the req table) and their results as an HTTP answer. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lua.h>
#include <lauxlib.h>

#include "cookie.h"
#include "lrequest.h"
#include "url.h"

#define LREQUEST_QUERY_STACK 1024 /* query scratch on the C stack up to this size */
#define LREQUEST_LOG_FIELDS 32    /* req.log fields written on the access line, at most */

static void lrequest_lower_push(lua_State *L, const char *s) {
    char small[64] = "";
    size_t n = strlen(s);
    char *low = n <= sizeof small ? small : lua_newuserdatauv(L, n, 0);
    for (size_t i = 0; i < n; i++) low[i] = (char)tolower((unsigned char)s[i]);
    lua_pushlstring(L, low, n);
    if (low != small) lua_remove(L, -2);
}

/* Adds a request header to the table on top: repeats are joined with ", " (RFC 9110 5.3),
 * Cookie lines with "; " (RFC 6265 5.4: one cookie-string). */
static void lrequest_add_header(void *ud, const char *name, const char *value) {
    lua_State *L = ud;
    lrequest_lower_push(L, name);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -3) == LUA_TSTRING) {
        lua_pushstring(L, strcasecmp(name, "Cookie") == 0 ? "; " : ", ");
        lua_pushstring(L, value);
        lua_concat(L, 3);
    } else {
        lua_pop(L, 1);
        lua_pushstring(L, value);
    }
    lua_rawset(L, -3);
}

/* Adds a name = value pair to the table on top, unless the name is there already (the
 * first of a repeated query argument or cookie wins). */
static int lrequest_add_first(void *ud, const char *name, size_t nlen, const char *value, size_t vlen) {
    lua_State *L = ud;
    lua_pushlstring(L, name, nlen);
    if (lua_rawget(L, -2) != LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    lua_pop(L, 1);
    lua_pushlstring(L, name, nlen);
    lua_pushlstring(L, value, vlen);
    lua_rawset(L, -3);
    return 0;
}

int lrequest_push(lua_State *L, http_request *req, const router_result *match, size_t max_query_args) {
    lua_createtable(L, 0, 10);
    lua_pushstring(L, req->method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, req->path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, req->peer);
    lua_setfield(L, -2, "remote_addr");
    lua_pushstring(L, req->client);
    lua_setfield(L, -2, "client");
    lua_pushstring(L, http_request_is_tls(req) ? "https" : "http");
    lua_setfield(L, -2, "scheme");
    lua_pushlstring(L, req->body ? req->body : "", req->body_len);
    lua_setfield(L, -2, "body");

    char stack_scratch[LREQUEST_QUERY_STACK];
    size_t need = URL_QUERY_SCRATCH(req->query_len);
    char *scratch = need <= sizeof stack_scratch ? stack_scratch : lua_newuserdatauv(L, need, 0);
    lua_newtable(L);
    int n = url_parse_query(req->query, req->query_len, scratch, max_query_args, lrequest_add_first, L);
    lua_setfield(L, -2 - (scratch != stack_scratch), "query");
    if (scratch != stack_scratch) lua_pop(L, 1);

    lua_newtable(L);
    http_request_each_header(req, lrequest_add_header, L);
    lua_getfield(L, -1, "cookie");
    const char *cookies = lua_tostring(L, -1);
    lua_newtable(L);
    if (cookies) cookie_parse(cookies, lrequest_add_first, L);
    lua_setfield(L, -4, "cookies");
    lua_pop(L, 1);
    lua_setfield(L, -2, "headers");

    lua_createtable(L, 0, (int)match->nparams);
    for (size_t i = 0; i < match->nparams; i++) {
        const router_param *pa = &match->params[i];
        size_t len = 0;
        luaL_Buffer b;
        char *out = luaL_buffinitsize(L, &b, pa->value_len + 1);
        if (url_decode_path(pa->value, pa->value_len, out, pa->value_len + 1, &len) != URL_OK) len = 0;
        luaL_pushresultsize(&b, len); /* the path decoded as a whole: its segments do too */
        lua_setfield(L, -2, pa->name);
    }
    lua_setfield(L, -2, "params");
    lua_newtable(L);
    lua_setfield(L, -2, "log");
    return n < 0 ? n : 0;
}

/* Removes "\/" escapes from cjson output: the slash needs none. */
static void lrequest_push_unescaped_json(lua_State *L, const char *s, size_t len) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    const char *end = s + len;
    for (;;) {
        const char *esc = memchr(s, '\\', (size_t)(end - s));
        if (!esc || esc + 1 == end) {
            luaL_addlstring(&b, s, (size_t)(end - s));
            break;
        }
        luaL_addlstring(&b, s, (size_t)(esc - s) + (esc[1] != '/')); /* keeps other escapes */
        luaL_addchar(&b, esc[1]);
        s = esc + 2;
    }
    luaL_pushresult(&b);
}

/* Adds the header name with the string or number on top of the stack. */
static void lrequest_add_response_header(lua_State *L, lrequest_answer *a, const char *name) {
    if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
        luaL_error(L, "response header \"%s\" must be a string, a number or a list of them (got %s)", name,
                   luaL_typename(L, -1));
    if (http_response_header(a->resp, name, lua_tostring(L, -1)) < 0)
        luaL_error(L, "response header \"%s\" has a bad name or value (or no memory was left)", name);
}

int lrequest_build_response(lua_State *L) {
    lrequest_answer *a = lua_touserdata(L, 1);
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
    case LUA_TNIL: break;
    case LUA_TSTRING: body = lua_tolstring(L, 3, &len); break;
    case LUA_TTABLE: {
        if (lua_getfield(L, 3, "error") == LUA_TSTRING)
            snprintf(a->reason, sizeof a->reason, "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        lua_rawgeti(L, LUA_REGISTRYINDEX, a->encode_ref);
        lua_pushvalue(L, 3);
        lua_call(L, 1, 1);
        const char *enc = lua_tolstring(L, -1, &len);
        lrequest_push_unescaped_json(L, enc, len);
        body = lua_tolstring(L, -1, &len);
        ctype = "application/json";
        break;
    }
    default: return luaL_error(L, "the handler returned a %s body; expected a string or a table", luaL_typename(L, 3));
    }
    if (!lua_isnil(L, 4) && !lua_istable(L, 4))
        return luaL_error(L, "the handler returned %s headers; expected a table", luaL_typename(L, 4));
    a->resp = http_response_bytes(body, len, NULL);
    if (!a->resp) return luaL_error(L, "out of memory");
    a->status = (int)status;
    a->bytes = len;
    int custom_type = 0;
    if (lua_istable(L, 4)) {
        lua_pushnil(L);
        while (lua_next(L, 4)) {
            if (lua_type(L, -2) != LUA_TSTRING)
                return luaL_error(L, "response headers must map names to strings (got %s = %s)", luaL_typename(L, -2),
                                  luaL_typename(L, -1));
            const char *name = lua_tostring(L, -2);
            if (lua_istable(L, -1)) { /* several headers of one name: Set-Cookie */
                lua_Integer n = luaL_len(L, -1);
                for (lua_Integer i = 1; i <= n; i++) {
                    lua_geti(L, -1, i);
                    lrequest_add_response_header(L, a, name);
                    lua_pop(L, 1);
                }
            } else {
                lrequest_add_response_header(L, a, name);
            }
            if (strcasecmp(name, "Content-Type") == 0) custom_type = 1;
            lua_pop(L, 1);
        }
    }
    if (!custom_type) http_response_header(a->resp, "Content-Type", ctype);
    return 0;
}

int lrequest_log_fields(lua_State *L) {
    http_request *req = lua_touserdata(L, 1);
    if (lua_getfield(L, 2, "log") != LUA_TTABLE) return 0;
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, -2) && n < LREQUEST_LOG_FIELDS) {
        int type = lua_type(L, -1);
        if (lua_type(L, -2) == LUA_TSTRING && (type == LUA_TSTRING || type == LUA_TNUMBER || type == LUA_TBOOLEAN)) {
            const char *value = type == LUA_TBOOLEAN ? (lua_toboolean(L, -1) ? "true" : "false") : lua_tostring(L, -1);
            http_request_log_field(req, lua_tostring(L, -2), value, type != LUA_TSTRING);
            n++;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* Copies the string t[field] (t at idx, or t[table][field]) into out, "" when it is none. */
static void lrequest_copy_field(lua_State *L, int idx, const char *table, const char *field, char *out, size_t cap) {
    int top = lua_gettop(L);
    out[0] = '\0';
    if (table && lua_getfield(L, idx, table) != LUA_TTABLE) goto out;
    int type = lua_getfield(L, table ? -1 : idx, field);
    if (type == LUA_TSTRING || type == LUA_TNUMBER) snprintf(out, cap, "%s", lua_tostring(L, -1));
out:
    lua_settop(L, top);
}

void lrequest_who(lua_State *L, int idx, audit_who *who) {
    idx = lua_absindex(L, idx);
    lrequest_copy_field(L, idx, NULL, "client", who->client, sizeof who->client);
    lrequest_copy_field(L, idx, "headers", "origin", who->origin, sizeof who->origin);
    lrequest_copy_field(L, idx, "log", "user", who->user, sizeof who->user);
}
