/* lsharedlib.c: tokend.shared: dictionaries shared by every worker's script and kept across reloads, or by every instance in Redis. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llib.h"
#include "loop.h"
#include "lredis.h"
#include "shdict.h"

#define LSHARED_CLASS "tokend.shared"
#define LSHARED_CAPACITY 10000                 /* entries, unless the script says otherwise */
#define LSHARED_MAX_BYTES (64.0 * 1024 * 1024) /* bytes, likewise: what a worker's Lua state holds by default */
#define LSHARED_MAX_NAME 64

typedef struct lshared {
    shdict *dict; /* NULL for store = "redis" */
    lhost *h;
    char prefix[LSHARED_MAX_NAME + 16]; /* "tokend:<name>:", the dictionary's keys in Redis */
} lshared;

static lshared *lshared_check(lua_State *L) {
    return luaL_checkudata(L, 1, LSHARED_CLASS);
}

static const char *lshared_key(lua_State *L, size_t *len) {
    const char *k = luaL_checklstring(L, 2, len);
    luaL_argcheck(L, *len > 0 && *len <= SHDICT_MAX_KEY, 2, "keys are 1..65536 bytes");
    return k;
}

/* Reads the value at idx (a string, number or boolean; nil when allow_nil). */
static shdict_value lshared_value(lua_State *L, int idx, int allow_nil) {
    shdict_value v = { SHDICT_NONE, NULL, 0, 0 };
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        v.type = SHDICT_STRING;
        v.s = (char *)lua_tolstring(L, idx, &v.len);
        luaL_argcheck(L, v.len <= SHDICT_MAX_VALUE, idx, "string values are at most 1 MiB");
        break;
    case LUA_TNUMBER:
        v.type = SHDICT_NUMBER;
        v.n = lua_tonumber(L, idx);
        break;
    case LUA_TBOOLEAN:
        v.type = SHDICT_BOOLEAN;
        v.n = lua_toboolean(L, idx);
        break;
    case LUA_TNIL:
    case LUA_TNONE:
        if (allow_nil) break;
        /* fall through */
    default: luaL_argerror(L, idx, "values are strings, numbers or booleans");
    }
    return v;
}

/* An optional TTL in seconds at idx, as milliseconds (0: none). */
static uint64_t lshared_ttl_arg(lua_State *L, int idx) {
    lua_Number s = luaL_optnumber(L, idx, 0);
    luaL_argcheck(L, s >= 0 && s <= 1e9, idx, "ttl is seconds, 0 (none) or more");
    return (uint64_t)ceil(s * 1000);
}

static void lshared_push(lua_State *L, const shdict_value *v) {
    switch (v->type) {
    case SHDICT_STRING: lua_pushlstring(L, v->s, v->len); break;
    case SHDICT_NUMBER:
        if (v->n == floor(v->n) && fabs(v->n) < 9007199254740992.0) lua_pushinteger(L, (lua_Integer)v->n);
        else lua_pushnumber(L, v->n);
        break;
    case SHDICT_BOOLEAN: lua_pushboolean(L, v->n != 0); break;
    default: lua_pushnil(L);
    }
}

/* What a store returns to Lua: true, or true, "evicted", or nil, err. */
static int lshared_stored(lua_State *L, int rc) {
    if (rc == SHDICT_NO_MEMORY) return llib_fail(L, "out of memory");
    if (rc == SHDICT_TOO_BIG) return llib_fail(L, "the entry is larger than the dictionary's max_bytes");
    lua_pushboolean(L, 1);
    if (rc != SHDICT_EVICTED) return 1;
    lua_pushliteral(L, "evicted");
    return 2;
}

/* ---- the Redis store: keys "tokend:<name>:<key>"; numbers as their decimal text (so
 * INCRBY works on them), strings after a 0x01 byte, booleans as 0x02 and 't' or 'f' ---- */

/* incr in one step. KEYS: the key. ARGV: by, the initial value or "", the TTL in ms for
 * a new key. Returns {0, new value}, {1} (not found) or {2} (not a number). */
static const char lshared_incr_script[] =
        "local v, n = redis.call('GET', KEYS[1])\n"
        "if not v then\n"
        "  if ARGV[2] == '' then return {1} end\n"
        "  n = string.format('%.17g', tonumber(ARGV[2]) + tonumber(ARGV[1]))\n"
        "  if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[1], n, 'PX', ARGV[3])\n"
        "  else redis.call('SET', KEYS[1], n) end\n"
        "  return {0, n}\n"
        "end\n"
        "if not tonumber(v) then return {2} end\n"
        "n = string.format('%.17g', tonumber(v) + tonumber(ARGV[1]))\n"
        "local ttl = redis.call('PTTL', KEYS[1])\n"
        "if ttl > 0 then redis.call('SET', KEYS[1], n, 'PX', ttl) else redis.call('SET', KEYS[1], n) end\n"
        "return {0, n}\n";

/* Pushes a failure (nil, err) when the command failed or Redis answered an error; returns
 * the number of values, 0 when it did not fail. */
static int lshared_redis_failed(lua_State *L, const redis_reply *r, const char *err) {
    size_t len;
    if (!r) return llib_fail(L, "%s", err);
    if (redis_reply_type(r) == REDIS_VALUE_ERROR) return llib_fail(L, "redis: %s", redis_reply_string(r, &len));
    return 0;
}

/* Pushes a stored value: what tokend wrote, or a number or text another program did. */
static void lshared_redis_push_value(lua_State *L, const redis_reply *r) {
    size_t len;
    const char *s = redis_reply_string(r, &len);
    if (len >= 1 && s[0] == '\x01') lua_pushlstring(L, s + 1, len - 1);
    else if (len == 2 && s[0] == '\x02') lua_pushboolean(L, s[1] == 't');
    else if (!(strlen(s) == len && lua_stringtonumber(L, s) == len + 1)) lua_pushlstring(L, s, len);
}

static int lshared_redis_got(lua_State *L, const redis_reply *r, const char *err, void *ctx) {
    int n = lshared_redis_failed(L, r, err);
    (void)ctx;
    if (n) return n;
    switch (redis_reply_type(r)) {
    case REDIS_VALUE_NIL: lua_pushnil(L); return 1;
    case REDIS_VALUE_STRING: lshared_redis_push_value(L, r); return 1;
    default: return llib_fail(L, "redis: the key holds no value tokend stored");
    }
}

/* set and delete: true once Redis said OK or counted the keys. */
static int lshared_redis_done(lua_State *L, const redis_reply *r, const char *err, void *ctx) {
    int n = lshared_redis_failed(L, r, err);
    (void)ctx;
    if (n) return n;
    lua_pushboolean(L, 1);
    return 1;
}

/* add: OK, or nil when the key was there (SET NX). */
static int lshared_redis_added(lua_State *L, const redis_reply *r, const char *err, void *ctx) {
    int n = lshared_redis_failed(L, r, err);
    (void)ctx;
    if (n) return n;
    lua_pushboolean(L, redis_reply_type(r) != REDIS_VALUE_NIL);
    if (redis_reply_type(r) != REDIS_VALUE_NIL) return 1;
    lua_pushliteral(L, "exists");
    return 2;
}

static int lshared_redis_incremented(lua_State *L, const redis_reply *r, const char *err, void *ctx) {
    int n = lshared_redis_failed(L, r, err);
    const redis_reply *code = r ? redis_reply_element(r, 0) : NULL, *value = r ? redis_reply_element(r, 1) : NULL;
    (void)ctx;
    if (n) return n;
    if (!code || redis_reply_type(code) != REDIS_VALUE_INTEGER)
        return llib_fail(L, "redis: a reply of the wrong shape");
    if (redis_reply_integer(code) == 1) return llib_fail(L, "not found");
    if (redis_reply_integer(code) == 2 || !value || redis_reply_type(value) != REDIS_VALUE_STRING)
        return llib_fail(L, "not a number");
    lshared_redis_push_value(L, value);
    return 1;
}

static int lshared_redis_ttl_left(lua_State *L, const redis_reply *r, const char *err, void *ctx) {
    int n = lshared_redis_failed(L, r, err);
    (void)ctx;
    if (n) return n;
    if (redis_reply_type(r) != REDIS_VALUE_INTEGER) return llib_fail(L, "redis: a reply of the wrong shape");
    long long ms = redis_reply_integer(r);
    if (ms == -2) return llib_fail(L, "not found");
    lua_pushnumber(L, ms < 0 ? 0 : (lua_Number)ms / 1000.0);
    return 1;
}

/* Sends argv[0..argc) with argv[1] (argv[0] for a script) the Redis key of the key at
 * stack index 2, for the method named what; push makes its results. */
static int lshared_redis(lua_State *L, const lshared *u, const char *what, const char *script, int argc,
                         const char **argv, size_t *argvlen, lredis_push_fn *push) {
    size_t klen;
    const char *k = lshared_key(L, &klen);
    lua_pushstring(L, u->prefix);
    lua_pushlstring(L, k, klen);
    lua_concat(L, 2);
    argv[script ? 0 : 1] = lua_tolstring(L, -1, &argvlen[script ? 0 : 1]);
    return lredis_call(L, u->h, what, script, script ? 1 : 0, argc, argv, argvlen, push, NULL, 0);
}

/* Pushes a value as the Redis store keeps it (see above); returns it. */
static const char *lshared_redis_encode(lua_State *L, const shdict_value *v, size_t *len) {
    char num[32];
    switch (v->type) {
    case SHDICT_STRING:
        lua_pushliteral(L, "\x01");
        lua_pushlstring(L, v->s, v->len);
        lua_concat(L, 2);
        break;
    case SHDICT_NUMBER:
        if (!isfinite(v->n)) luaL_error(L, "tokend.shared: a dictionary in Redis keeps finite numbers only");
        lredis_number(v->n, num);
        lua_pushstring(L, num);
        break;
    default:
        lua_pushstring(L,
                       v->n ? "\x02t"
                            : "\x02"
                              "f");
    }
    return lua_tolstring(L, -1, len);
}

/* PX and the TTL in milliseconds (pushed, kept alive) into argv[at..at+1]; returns the
 * number of arguments added (0 when ttl_ms is 0). */
static int lshared_redis_ttl_args(lua_State *L, uint64_t ttl_ms, const char **argv, size_t *argvlen, int at) {
    if (!ttl_ms) return 0;
    lua_pushfstring(L, "%I", (LUAI_UACINT)ttl_ms);
    argv[at] = "PX";
    argvlen[at] = 2;
    argv[at + 1] = lua_tolstring(L, -1, &argvlen[at + 1]);
    return 2;
}

/* ---- the methods ---- */

/* dict:get(key) -> value | nil (| nil, err in Redis) */
static int lshared_get(lua_State *L) {
    lshared *u = lshared_check(L);
    size_t klen;
    const char *k = lshared_key(L, &klen);
    shdict_value v;
    if (!u->dict) {
        const char *argv[2] = { "GET", NULL };
        size_t argvlen[2] = { 3, 0 };
        return lshared_redis(L, u, "dict:get", NULL, 2, argv, argvlen, lshared_redis_got);
    }
    if (shdict_get(u->dict, k, klen, loop_now_ms(), &v) < 0) return llib_fail(L, "out of memory");
    lshared_push(L, &v);
    free(v.s);
    return 1;
}

/* dict:set(key, value[, ttl]) -> true[, "evicted"]; a nil value deletes. */
static int lshared_set(lua_State *L) {
    lshared *u = lshared_check(L);
    size_t klen;
    const char *k = lshared_key(L, &klen);
    shdict_value v = lshared_value(L, 3, 1);
    uint64_t ttl = lshared_ttl_arg(L, 4);
    if (!u->dict) {
        const char *argv[5] = { v.type == SHDICT_NONE ? "DEL" : "SET", NULL, NULL, NULL, NULL };
        size_t argvlen[5] = { 3, 0, 0, 0, 0 };
        int argc = 2;
        if (v.type != SHDICT_NONE) {
            argv[2] = lshared_redis_encode(L, &v, &argvlen[2]);
            argc = 3 + lshared_redis_ttl_args(L, ttl, argv, argvlen, 3);
        }
        return lshared_redis(L, u, "dict:set", NULL, argc, argv, argvlen, lshared_redis_done);
    }
    return lshared_stored(L, shdict_set(u->dict, k, klen, &v, ttl, loop_now_ms()));
}

/* dict:add(key, value[, ttl]) -> true[, "evicted"] | false, "exists" */
static int lshared_add(lua_State *L) {
    lshared *u = lshared_check(L);
    size_t klen;
    const char *k = lshared_key(L, &klen);
    shdict_value v = lshared_value(L, 3, 0);
    uint64_t ttl = lshared_ttl_arg(L, 4);
    if (!u->dict) {
        const char *argv[6] = { "SET", NULL, NULL, "NX", NULL, NULL };
        size_t argvlen[6] = { 3, 0, 0, 2, 0, 0 };
        argv[2] = lshared_redis_encode(L, &v, &argvlen[2]);
        int argc = 4 + lshared_redis_ttl_args(L, ttl, argv, argvlen, 4);
        return lshared_redis(L, u, "dict:add", NULL, argc, argv, argvlen, lshared_redis_added);
    }
    int rc = shdict_add(u->dict, k, klen, &v, ttl, loop_now_ms());
    if (rc == SHDICT_EXISTS) {
        lua_pushboolean(L, 0);
        lua_pushliteral(L, "exists");
        return 2;
    }
    return lshared_stored(L, rc);
}

/* dict:incr(key, by[, init[, ttl]]) -> the new value | nil, err */
static int lshared_incr(lua_State *L) {
    lshared *u = lshared_check(L);
    size_t klen;
    const char *k = lshared_key(L, &klen);
    double by = luaL_checknumber(L, 3), init = 0, out = 0;
    int has_init = !lua_isnoneornil(L, 4);
    if (has_init) init = luaL_checknumber(L, 4);
    uint64_t ttl = lshared_ttl_arg(L, 5);
    if (!u->dict) {
        char by_text[32], init_text[32] = "", ttl_text[24];
        luaL_argcheck(L, isfinite(by) && isfinite(init), 3, "a dictionary in Redis keeps finite numbers only");
        lredis_number(by, by_text);
        if (has_init) lredis_number(init, init_text);
        snprintf(ttl_text, sizeof ttl_text, "%llu", (unsigned long long)ttl);
        const char *argv[4] = { NULL, by_text, init_text, ttl_text };
        size_t argvlen[4] = { 0, strlen(by_text), strlen(init_text), strlen(ttl_text) };
        return lshared_redis(L, u, "dict:incr", lshared_incr_script, 4, argv, argvlen, lshared_redis_incremented);
    }
    int rc = shdict_incr(u->dict, k, klen, by, has_init ? &init : NULL, ttl, loop_now_ms(), &out);
    if (rc == SHDICT_NOT_FOUND) return llib_fail(L, "not found");
    if (rc == SHDICT_NOT_NUMBER) return llib_fail(L, "not a number");
    if (rc == SHDICT_NO_MEMORY || rc == SHDICT_TOO_BIG) return lshared_stored(L, rc);
    shdict_value v = { SHDICT_NUMBER, NULL, 0, out };
    lshared_push(L, &v);
    return 1;
}

/* dict:delete(key) -> true (| nil, err in Redis) */
static int lshared_delete(lua_State *L) {
    lshared *u = lshared_check(L);
    size_t klen;
    const char *k = lshared_key(L, &klen);
    if (!u->dict) {
        const char *argv[2] = { "DEL", NULL };
        size_t argvlen[2] = { 3, 0 };
        return lshared_redis(L, u, "dict:delete", NULL, 2, argv, argvlen, lshared_redis_done);
    }
    shdict_delete(u->dict, k, klen);
    lua_pushboolean(L, 1);
    return 1;
}

/* dict:ttl(key) -> seconds left (0: never expires) | nil, "not found" */
static int lshared_ttl(lua_State *L) {
    lshared *u = lshared_check(L);
    size_t klen;
    const char *k = lshared_key(L, &klen);
    if (!u->dict) {
        const char *argv[2] = { "PTTL", NULL };
        size_t argvlen[2] = { 4, 0 };
        return lshared_redis(L, u, "dict:ttl", NULL, 2, argv, argvlen, lshared_redis_ttl_left);
    }
    int64_t left = shdict_ttl(u->dict, k, klen, loop_now_ms());
    if (left < 0) return llib_fail(L, "not found");
    lua_pushnumber(L, (lua_Number)left / 1000.0);
    return 1;
}

/* tokend.shared(name[, {capacity = N, max_bytes = M} | {store = "redis"}]) -> dict */
static int lshared_open(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    const char *name = luaL_checkstring(L, 1);
    const char *store = "local";
    char err[200];
    luaL_argcheck(L, strncmp(name, "tokend.", 7) != 0, 1, "names starting with \"tokend.\" are tokend's own");
    luaL_argcheck(L, *name && strlen(name) <= LSHARED_MAX_NAME, 1, "names are 1..64 bytes");
    double capacity = LSHARED_CAPACITY, max_bytes = LSHARED_MAX_BYTES;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        capacity = llib_opt_number(L, 2, "capacity", LSHARED_CAPACITY, "tokend.shared");
        max_bytes = llib_opt_number(L, 2, "max_bytes", LSHARED_MAX_BYTES, "tokend.shared");
        lua_getfield(L, 2, "store");
        store = luaL_optstring(L, -1, "local");
        luaL_argcheck(L, strcmp(store, "local") == 0 || strcmp(store, "redis") == 0, 2,
                      "store must be \"local\" or \"redis\"");
    }
    luaL_argcheck(L, capacity >= 1 && capacity <= 1e8 && capacity == floor(capacity), 2,
                  "capacity must be a whole number of entries, 1..100000000");
    luaL_argcheck(
            L, max_bytes >= SHDICT_MIN_BYTES && max_bytes <= (double)SHDICT_MAX_BYTES && max_bytes == floor(max_bytes),
            2, "max_bytes must be a whole number of bytes, 1024..2^40");
    const lhost_world *world = lhost_world_of(h);
    lshared *u = lua_newuserdatauv(L, sizeof *u, 0);
    memset(u, 0, sizeof *u);
    u->h = h;
    luaL_setmetatable(L, LSHARED_CLASS);
    if (strcmp(store, "redis") == 0) {
        if (!world->info->redis_configured)
            return luaL_error(L, "tokend.shared(\"%s\"): store = \"redis\" needs TOKEND_REDIS_URL", name);
        snprintf(u->prefix, sizeof u->prefix, "tokend:%s:", name);
        return 1;
    }
    u->dict = shdict_open(world->shared, name, (size_t)capacity, (unsigned long long)max_bytes, err, sizeof err);
    if (!u->dict) return luaL_error(L, "tokend.shared(\"%s\"): %s", name, err);
    return 1;
}

void lsharedlib_open(lua_State *L, lhost *h) {
    static const luaL_Reg methods[] = {
        { "get", lshared_get },       { "set", lshared_set }, { "add", lshared_add }, { "incr", lshared_incr },
        { "delete", lshared_delete }, { "ttl", lshared_ttl }, { NULL, NULL },
    };
    static const luaL_Reg fns[] = { { "shared", lshared_open }, { NULL, NULL } };
    llib_class(L, LSHARED_CLASS, methods, NULL);
    llib_register(L, h, fns);
}
