/* ltoken.c: minting for the parts of the Lua API: a token request waited for, its outcome as Lua values, its audit line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llib.h"
#include "log.h"
#include "lrequest.h"
#include "ltoken.h"
#include "metrics.h"

void ltoken_audit_capture(lua_State *L, lhost *h, long expires_in_s, long max_session_s, ltoken_audit *a) {
    memset(a, 0, sizeof *a);
    a->expires_in_s = expires_in_s;
    a->max_session_s = max_session_s;
    lhost_request_minted(h, L); /* an audited route's answer needs no line of its own */
    lhost_push_request(h, L);
    if (lua_istable(L, -1)) lrequest_who(L, -1, &a->who);
    lua_pop(L, 1);
}

/* Writes the audit line of a token request: who asked, what for, and what came of it;
 * of the token itself only the first 8 hex digits of its SHA-256. */
static void ltoken_audit_write(const upstream_result *r, const ltoken_audit *a) {
    audit_token(&a->who, NULL, r->token ? (a->pooled ? "pooled" : "minted") : r->kind,
                r->token ? r->expires_in_seconds : a->expires_in_s, a->max_session_s, r->token,
                r->token ? strlen(r->token) : 0);
}

int ltoken_push_outcome(lua_State *L, const upstream_result *r, const ltoken_audit *a) {
    if (!a || !a->pooled) metrics_upstream(r->failure, r->elapsed_ms);
    if (r->token) log_msg(LOG_DEBUG, "token minted in %.1f ms", r->elapsed_ms);
    else if (r->failure != FAILURE_NO_KEY && !(a && a->quiet))
        log_msg(LOG_WARN, "token request failed (%s): %s", r->kind, r->error);
    if (a) ltoken_audit_write(r, a);
    if (r->token) {
        lua_pushstring(L, r->token);
        lua_createtable(L, 0, 2);
        lua_pushinteger(L, r->expires_in_seconds);
        lua_setfield(L, -2, "expires_in_seconds");
        lua_pushboolean(L, a && a->pooled);
        lua_setfield(L, -2, "pooled");
        return 2;
    }
    lua_pushnil(L);
    lua_pushstring(L, r->error);
    if (r->http_status) lua_pushinteger(L, r->http_status);
    else lua_pushnil(L);
    lua_createtable(L, 0, 2);
    lua_pushstring(L, r->kind);
    lua_setfield(L, -2, "kind");
    if (r->retry_after >= 0) {
        lua_pushinteger(L, r->retry_after);
        lua_setfield(L, -2, "retry_after");
    }
    return 4;
}

/* One token request in flight: its waiter, the audit context of its caller, where it was
 * minted and who wants to see the outcome. */
typedef struct ltoken_call {
    lhost_waiter *w;
    upstream_call *call;
    const upstream_result *result;
    ltoken_audit audit;
    ltoken_target target;
    ltoken_observe_fn *observe;
    void *observe_ud;
} ltoken_call;

/* Adds where the token goes to the info table on top (a success's second result). */
static void ltoken_describe(lua_State *L, const ltoken_target *t) {
    lua_pushstring(L, t->websocket_url);
    lua_setfield(L, -2, "websocket_url");
    lua_pushstring(L, t->product);
    lua_setfield(L, -2, "product");
    if (t->region) {
        lua_pushstring(L, t->region);
        lua_setfield(L, -2, "region");
    }
}

static int ltoken_push_result(lua_State *L, void *ud) {
    ltoken_call *c = ud;
    int n = ltoken_push_outcome(L, c->result, &c->audit);
    if (c->result->token && c->target.websocket_url) ltoken_describe(L, &c->target);
    return n;
}

static void ltoken_on_result(void *ud, const upstream_result *r) {
    ltoken_call *c = ud;
    c->result = r;
    if (c->observe) c->observe(c->observe_ud, r);
    lhost_wake(c->w, ltoken_push_result, c);
    free(c);
}

static void ltoken_cancel(void *op) {
    ltoken_call *c = op;
    upstream_cancel(c->call);
    free(c);
}

int ltoken_mint_at(lua_State *L, lhost *h, const char *fn, const ltoken_target *target, long expires, long max_session,
                   ltoken_observe_fn *observe, void *observe_ud) {
    const lhost_world *world;
    lhost_waiter *w = lhost_wait_begin(h, L, fn, &world);
    ltoken_audit audit;
    ltoken_audit_capture(L, h, expires, max_session, &audit);
    if (!upstream_has_key(world->up)) {
        upstream_result r;
        upstream_no_key(&r);
        if (observe) observe(observe_ud, &r);
        return ltoken_push_outcome(L, &r, &audit);
    }
    ltoken_call *c = malloc(sizeof *c);
    if (!c) return llib_fail(L, "out of memory starting the token request");
    c->w = w;
    c->audit = audit;
    c->target = target ? *target : (ltoken_target){ NULL, NULL, NULL, NULL };
    c->observe = observe;
    c->observe_ud = observe_ud;
    c->call = target && target->token_url
            ? upstream_mint_at(world->up, target->token_url, expires, max_session, ltoken_on_result, c)
            : upstream_mint(world->up, expires, max_session, ltoken_on_result, c);
    if (!c->call) {
        free(c);
        return llib_fail(L, "out of memory starting the token request");
    }
    return lhost_wait(w, L, ltoken_cancel, c);
}

int ltoken_mint(lua_State *L, lhost *h, const char *fn, long expires, long max_session, ltoken_observe_fn *observe,
                void *observe_ud) {
    return ltoken_mint_at(L, h, fn, NULL, expires, max_session, observe, observe_ud);
}
