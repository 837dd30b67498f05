/* lcroute.c: routes written in C (tokend_server_route), answered through the Lua host. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lcroute.h"
#include "llib.h"

struct tokend_request {
    lua_State *L;
    int idx; /* the req table */
};

struct tokend_response {
    int status;
    char *content_type;
    char *body;
    size_t len;
    int nheaders;
    char *names[TOKEND_MAX_RESPONSE_HEADERS], *values[TOKEND_MAX_RESPONSE_HEADERS];
};

const char *tokend_request_method(const tokend_request *req) {
    return llib_field_string(req->L, req->idx, NULL, "method", NULL);
}
const char *tokend_request_path(const tokend_request *req) {
    return llib_field_string(req->L, req->idx, NULL, "path", NULL);
}
const char *tokend_request_client(const tokend_request *req) {
    return llib_field_string(req->L, req->idx, NULL, "client", NULL);
}
const char *tokend_request_header(const tokend_request *req, const char *name) {
    return llib_field_string(req->L, req->idx, "headers", name, NULL);
}
const char *tokend_request_query(const tokend_request *req, const char *name) {
    return llib_field_string(req->L, req->idx, "query", name, NULL);
}
const char *tokend_request_param(const tokend_request *req, const char *name) {
    return llib_field_string(req->L, req->idx, "params", name, NULL);
}
const char *tokend_request_body(const tokend_request *req, size_t *len) {
    return llib_field_string(req->L, req->idx, NULL, "body", len);
}

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
    if (resp->nheaders == TOKEND_MAX_RESPONSE_HEADERS || strpbrk(name, "\r\n:") || strpbrk(value, "\r\n"))
        return TOKEND_ERR;
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

static void lcroute_response_free(tokend_response *resp) {
    free(resp->body);
    free(resp->content_type);
    for (int i = 0; i < resp->nheaders; i++) {
        free(resp->names[i]);
        free(resp->values[i]);
    }
}

/* The Lua side of a C route: handler(req) -> status, body, headers. */
static int lcroute_call(lua_State *L) {
    lcroute *r = lua_touserdata(L, lua_upvalueindex(1));
    tokend_request req = { L, 1 };
    tokend_response resp;
    memset(&resp, 0, sizeof resp);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_checkstack(L, 8);
    r->fn(r->ud, &req, &resp);
    if (!resp.status) {
        lcroute_response_free(&resp);
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
    lcroute_response_free(&resp);
    return 3;
}

typedef struct lcroute_adding {
    lhost *h;
    lcroute *r;
    char *err;
    size_t errlen;
    int rc;
} lcroute_adding;

/* Registers the route's Lua side (protected: argument 1 is the lcroute_adding). */
static int lcroute_add_protected(lua_State *L) {
    lcroute_adding *a = lua_touserdata(L, 1);
    lua_pushlightuserdata(L, a->r);
    lua_pushcclosure(L, lcroute_call, 1);
    a->rc = lhost_add_route(a->h, L, a->r->method, a->r->path, -1, NULL, a->err, a->errlen);
    return 0;
}

int lcroute_add(lhost *h, lcroute *r, char *err, size_t errlen) {
    lcroute_adding a = { h, r, err, errlen, -1 };
    lua_State *L = lhost_state(h);
    lua_pushcfunction(L, lcroute_add_protected);
    lua_pushlightuserdata(L, &a);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "cannot add route %s %s: %s", r->method, r->path, lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    return a.rc;
}
