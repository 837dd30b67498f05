/* ltokenlib.c: tokend.generate_temp_token: temporary tokens for the script, and their outcome. */
#include <string.h>

#include "llib.h"
#include "log.h"
#include "ltokenlib.h"
#include "metrics.h"

#define LTOKEN_EXPIRES_MIN 1            /* AssemblyAI's range for expires_in_seconds */
#define LTOKEN_EXPIRES_MAX 600
#define LTOKEN_SESSION_MIN 60           /* and for max_session_duration_seconds */
#define LTOKEN_SESSION_MAX 10800

int ltoken_push_outcome(lua_State *L, const upstream_result *r) {
    metrics_upstream(r->failure, r->elapsed_ms);
    if (r->token) log_msg(LOG_DEBUG, "token minted in %.1f ms", r->elapsed_ms);
    else if (r->failure != FAILURE_NO_KEY) log_msg(LOG_WARN, "token request failed (%s): %s", r->kind, r->error);
    if (r->token) {
        lua_pushstring(L, r->token);
        lua_createtable(L, 0, 1);
        lua_pushinteger(L, r->expires_in_seconds);
        lua_setfield(L, -2, "expires_in_seconds");
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

static int ltoken_push_result(lua_State *L, void *ud) {
    return ltoken_push_outcome(L, ud);
}

static void ltoken_on_result(void *ud, const upstream_result *r) {
    lhost_wake(ud, ltoken_push_result, (void *)r);
}

static void ltoken_cancel(void *op) {
    upstream_cancel(op);
}

void ltoken_check_args(lua_State *L, int idx, long *expires_in_s, long *max_session_s) {
    lua_Integer expires = luaL_checkinteger(L, idx);
    lua_Integer max_session = 0;
    luaL_argcheck(L, expires >= LTOKEN_EXPIRES_MIN && expires <= LTOKEN_EXPIRES_MAX, idx,
                  "expires_in_seconds must be between 1 and 600");
    int opts = idx + 1;
    if (!lua_isnoneornil(L, opts)) {
        luaL_checktype(L, opts, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, opts)) {
            if (lua_type(L, -2) != LUA_TSTRING || strcmp(lua_tostring(L, -2), "max_session_duration_seconds") != 0)
                luaL_argerror(L, opts, "unknown option (only max_session_duration_seconds is known)");
            lua_pop(L, 1);
        }
        lua_getfield(L, opts, "max_session_duration_seconds");
        if (!lua_isnil(L, -1)) {
            int isint = 0;
            max_session = lua_tointegerx(L, -1, &isint);
            luaL_argcheck(L, isint && max_session >= LTOKEN_SESSION_MIN && max_session <= LTOKEN_SESSION_MAX, opts,
                          "max_session_duration_seconds must be an integer between 60 and 10800");
        }
        lua_pop(L, 1);
    }
    *expires_in_s = (long)expires;
    *max_session_s = (long)max_session;
}

/* tokend.generate_temp_token(expires_in_seconds[, {max_session_duration_seconds = M}]) */
static int ltoken_generate(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    long expires, max_session;
    const lhost_world *world;
    ltoken_check_args(L, 1, &expires, &max_session);
    lhost_waiter *w = lhost_wait_begin(h, L, "tokend.generate_temp_token", &world);
    if (!upstream_has_key(world->up)) {
        upstream_result r;
        upstream_no_key(&r);
        return ltoken_push_outcome(L, &r);
    }
    upstream_call *call = upstream_mint(world->up, expires, max_session, ltoken_on_result, w);
    if (!call) return llib_fail(L, "out of memory starting the token request");
    return lhost_wait(w, L, ltoken_cancel, call);
}

void ltokenlib_open(lua_State *L, lhost *h) {
    static const luaL_Reg fns[] = { { "generate_temp_token", ltoken_generate }, { NULL, NULL } };
    llib_register(L, h, fns);
}
