/* lpolicylib.c: tokend.limiter and tokend.origins: who may ask, and how often (here, or across instances in Redis). */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "llib.h"
#include "log.h"
#include "loop.h"
#include "lredis.h"
#include "metrics.h"

#define LPOLICY_LIMITER "tokend.limiter"
#define LPOLICY_ORIGINS "tokend.origins"
#define LPOLICY_MAX_ORIGINS 64

/* What a limiter with store = "redis" does when Redis cannot answer in time. */
typedef enum lpolicy_on_error { LPOLICY_LOCAL, LPOLICY_ALLOW, LPOLICY_DENY } lpolicy_on_error;
static const char *const lpolicy_on_error_names[] = { "local", "allow", "deny", NULL };

typedef struct lpolicy_limiter {
    lhost *h;                /* of the state the limiter lives in */
    policy_buckets *buckets; /* this instance's own: the store, or the fallback */
    int id;
    int redis; /* store = "redis" */
    lpolicy_on_error on_error;
    double per_ms, burst;
    char name[64];
} lpolicy_limiter;

/* What a Redis take needs once the reply is in. */
typedef struct lpolicy_take_ctx {
    lpolicy_limiter lim;
    char key[POLICY_KEY_SIZE];
} lpolicy_take_ctx;

typedef struct lpolicy_origins {
    policy_origins *list;
} lpolicy_origins;

/* The token bucket in Redis, on Redis's clock: a hash {tokens, ms} per client that expires
 * once it would be full again. ARGV: tokens per millisecond, burst. Returns
 * {allowed (1/0), retry_after_seconds}. */
static const char lpolicy_bucket_script[] =
        "if redis.replicate_commands then redis.replicate_commands() end\n"
        "local t = redis.call('TIME')\n"
        "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
        "local per_ms, burst = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
        "local s = redis.call('HMGET', KEYS[1], 'tokens', 'ms')\n"
        "local tokens, last = tonumber(s[1]), tonumber(s[2])\n"
        "if not tokens or not last then tokens, last = burst, now end\n"
        "if now > last then tokens = math.min(burst, tokens + (now - last) * per_ms) else now = last end\n"
        "local allowed, retry = 0, 0\n"
        "if tokens >= 1 then tokens, allowed = tokens - 1, 1\n"
        "else retry = math.max(1, math.ceil((1 - tokens) / per_ms / 1000)) end\n"
        "redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ms', now)\n"
        "redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / per_ms) + 1000)\n"
        "return {allowed, retry}\n";

/* tokend.limiter{name = "token", rate = 10, per = 60, burst = 5[, max_keys = N][, store = "redis",
 * on_store_error = "local"]}: a token bucket per client, shared by every worker (the same
 * name gives the same buckets, at most max_keys clients, TOKEND_RATE_LIMIT_CLIENTS unless
 * given), or by every instance with store = "redis". */
static int lpolicy_limiter_new(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    char err[200];
    luaL_checktype(L, 1, LUA_TTABLE);
    lhost_check_loading(L, h, "tokend.limiter");
    lua_getfield(L, 1, "name");
    const char *name = lua_tostring(L, -1);
    luaL_argcheck(L, name != NULL, 1, "name (a string) is required");
    double rate = llib_opt_number(L, 1, "rate", -1, "tokend.limiter");
    double per = llib_opt_number(L, 1, "per", 60, "tokend.limiter");
    double burst = llib_opt_number(L, 1, "burst", rate, "tokend.limiter");
    double max_keys = llib_opt_number(L, 1, "max_keys", 0, "tokend.limiter");
    luaL_argcheck(L, max_keys == 0 || (max_keys >= 1 && max_keys <= 1e8 && max_keys == floor(max_keys)), 1,
                  "max_keys must be a whole number of clients, 1..100000000");
    lua_getfield(L, 1, "store");
    const char *store = luaL_optstring(L, -1, "local");
    luaL_argcheck(L, strcmp(store, "local") == 0 || strcmp(store, "redis") == 0, 1,
                  "store must be \"local\" or \"redis\"");
    lua_getfield(L, 1, "on_store_error");
    const char *on_error = luaL_optstring(L, -1, "local");
    int on_error_index = -1;
    for (int i = 0; lpolicy_on_error_names[i]; i++)
        if (strcmp(on_error, lpolicy_on_error_names[i]) == 0) on_error_index = i;
    luaL_argcheck(L, on_error_index >= 0, 1, "on_store_error must be \"local\", \"allow\" or \"deny\"");
    const lhost_world *world = lhost_world_of(h);
    if (strcmp(store, "redis") == 0 && !world->info->redis_configured)
        return luaL_error(L, "tokend.limiter: limiter \"%s\": store = \"redis\" needs TOKEND_REDIS_URL", name);
    int id = policy_limiter(world->buckets, name, rate, per, burst, (size_t)max_keys, err, sizeof err);
    if (id < 0) return luaL_error(L, "tokend.limiter: %s", err);
    lpolicy_limiter *lim = lua_newuserdatauv(L, sizeof *lim, 0);
    memset(lim, 0, sizeof *lim);
    lim->h = h;
    lim->buckets = world->buckets;
    lim->id = id;
    lim->redis = strcmp(store, "redis") == 0;
    lim->on_error = (lpolicy_on_error)on_error_index;
    lim->per_ms = rate / (per * 1000.0);
    lim->burst = burst;
    snprintf(lim->name, sizeof lim->name, "%s", name);
    luaL_setmetatable(L, LPOLICY_LIMITER);
    return 1;
}

/* Pushes a take's result: true, or false and the seconds to wait. */
static int lpolicy_push_take(lua_State *L, int allowed, long retry_after_s) {
    lua_pushboolean(L, allowed);
    if (allowed) return 1;
    lua_pushinteger(L, retry_after_s);
    return 2;
}

static int lpolicy_take_local(lua_State *L, const lpolicy_limiter *lim, const char *key) {
    long retry = 0;
    int allowed = policy_take(lim->buckets, lim->id, key, loop_now_ms(), &retry);
    return lpolicy_push_take(L, allowed, retry);
}

/* Decides without Redis, by the limiter's on_store_error; warns at most once a minute. */
static int lpolicy_take_fallback(lua_State *L, const lpolicy_take_ctx *c, const char *why) {
    static _Atomic uint64_t last_warning_ms;
    uint64_t now = loop_now_ms(), last = last_warning_ms;
    const char *policy = lpolicy_on_error_names[c->lim.on_error];
    if ((last == 0 || now - last >= 60000) && atomic_compare_exchange_strong(&last_warning_ms, &last, now))
        log_msg(LOG_WARN,
                "limiter \"%s\": Redis failed (%s); deciding by on_store_error = \"%s\" (this warning "
                "comes at most once a minute; tokend_limiter_fallbacks_total counts each decision)",
                c->lim.name, why, policy);
    metrics_store_fallback(policy);
    if (c->lim.on_error == LPOLICY_ALLOW) return lpolicy_push_take(L, 1, 0);
    if (c->lim.on_error == LPOLICY_DENY) return lpolicy_push_take(L, 0, 1);
    return lpolicy_take_local(L, &c->lim, c->key);
}

/* The Redis bucket's answer: {allowed, retry}, or a failure to fall back from. */
static int lpolicy_push_redis_take(lua_State *L, const redis_reply *r, const char *err, void *ud) {
    const lpolicy_take_ctx *c = ud;
    size_t len;
    if (!r) return lpolicy_take_fallback(L, c, err);
    if (redis_reply_type(r) == REDIS_VALUE_ERROR) return lpolicy_take_fallback(L, c, redis_reply_string(r, &len));
    const redis_reply *allowed = redis_reply_element(r, 0), *retry = redis_reply_element(r, 1);
    if (redis_reply_type(r) != REDIS_VALUE_ARRAY || redis_reply_count(r) != 2 ||
        redis_reply_type(allowed) != REDIS_VALUE_INTEGER || redis_reply_type(retry) != REDIS_VALUE_INTEGER)
        return lpolicy_take_fallback(L, c, "a reply of the wrong shape");
    long long wait = redis_reply_integer(retry);
    return lpolicy_push_take(L, redis_reply_integer(allowed) == 1, wait < 1 ? 1 : wait > 86400 ? 86400 : (long)wait);
}

/* limiter:take(key) -> true | false, retry_after_seconds */
static int lpolicy_limiter_take(lua_State *L) {
    lpolicy_limiter *lim = luaL_checkudata(L, 1, LPOLICY_LIMITER);
    const char *key = luaL_checkstring(L, 2);
    lpolicy_take_ctx c;
    char redis_key[POLICY_KEY_SIZE + 96], per_ms[32], burst[32];
    if (!lim->redis) return lpolicy_take_local(L, lim, key);
    c.lim = *lim;
    policy_client_key(key, c.key);
    snprintf(redis_key, sizeof redis_key, "tokend.limiter:%s:%s", lim->name, c.key);
    lredis_number(lim->per_ms, per_ms);
    lredis_number(lim->burst, burst);
    const char *argv[] = { redis_key, per_ms, burst };
    const size_t argvlen[] = { strlen(redis_key), strlen(per_ms), strlen(burst) };
    return lredis_call(L, lim->h, "limiter:take", lpolicy_bucket_script, 1, 3, argv, argvlen, lpolicy_push_redis_take,
                       &c, sizeof c);
}

static int lpolicy_origins_gc(lua_State *L) {
    lpolicy_origins *o = luaL_checkudata(L, 1, LPOLICY_ORIGINS);
    policy_origins_free(o->list);
    o->list = NULL;
    return 0;
}

/* tokend.origins{"https://app.example.com", "http://localhost:*"}: who may call from a page. */
static int lpolicy_origins_new(lua_State *L) {
    const char *pats[LPOLICY_MAX_ORIGINS];
    char err[300];
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = luaL_len(L, 1);
    luaL_argcheck(L, n <= LPOLICY_MAX_ORIGINS, 1, "at most 64 origins");
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, 1, i);
        pats[i - 1] = lua_tostring(L, -1);
        if (!pats[i - 1]) return luaL_error(L, "tokend.origins: origin %d is not a string", (int)i);
        lua_pop(L, 1); /* the string stays alive: the table holds it */
    }
    lpolicy_origins *o = lua_newuserdatauv(L, sizeof *o, 0);
    o->list = NULL;
    luaL_setmetatable(L, LPOLICY_ORIGINS);
    if (policy_origins_parse(pats, (size_t)n, &o->list, err, sizeof err) < 0)
        return luaL_error(L, "tokend.origins: %s", err);
    return 1;
}

/* Classifies req's Origin; leaves nothing on the stack. */
static int lpolicy_origin_of(lua_State *L, lpolicy_origins *o, const char **origin) {
    luaL_checktype(L, 2, LUA_TTABLE);
    *origin = llib_field_string(L, 2, "headers", "origin", NULL);
    const char *scheme = llib_field_string(L, 2, NULL, "scheme", NULL);
    return policy_origin_check(o->list, *origin, llib_field_string(L, 2, "headers", "host", NULL),
                               scheme && strcmp(scheme, "https") == 0 ? "https" : "http");
}

/* origins:check(req) -> headers (CORS headers to add, maybe none) | nil, err */
static int lpolicy_origins_check(lua_State *L) {
    lpolicy_origins *o = luaL_checkudata(L, 1, LPOLICY_ORIGINS);
    const char *origin;
    int verdict = lpolicy_origin_of(L, o, &origin);
    if (verdict == POLICY_ORIGIN_DENIED) return llib_fail(L, "this origin may not request tokens");
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
static int lpolicy_origins_preflight(lua_State *L) {
    lpolicy_origins *o = luaL_checkudata(L, 1, LPOLICY_ORIGINS);
    const char *methods = luaL_optstring(L, 3, "GET");
    const char *origin;
    int verdict = lpolicy_origin_of(L, o, &origin);
    const char *asked = llib_field_string(L, 2, "headers", "access-control-request-method", NULL);
    int method_ok = asked && *asked && strstr(methods, asked) != NULL;
    if (verdict == POLICY_ORIGIN_DENIED || verdict == POLICY_ORIGIN_NONE || !method_ok) {
        lua_pushinteger(L, 403);
        lua_createtable(L, 0, 1);
        lua_pushstring(L,
                       verdict == POLICY_ORIGIN_DENIED ? "this origin may not request tokens"
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
    const char *want = llib_field_string(L, 2, "headers", "access-control-request-headers", NULL);
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

void lpolicylib_open(lua_State *L, lhost *h) {
    static const luaL_Reg limiter_methods[] = { { "take", lpolicy_limiter_take }, { NULL, NULL } };
    static const luaL_Reg origins_methods[] = {
        { "check", lpolicy_origins_check },
        { "preflight", lpolicy_origins_preflight },
        { NULL, NULL },
    };
    static const luaL_Reg fns[] = { { "limiter", lpolicy_limiter_new },
                                    { "origins", lpolicy_origins_new },
                                    { NULL, NULL } };
    llib_class(L, LPOLICY_LIMITER, limiter_methods, NULL);
    llib_class(L, LPOLICY_ORIGINS, origins_methods, lpolicy_origins_gc);
    llib_register(L, h, fns);
}
