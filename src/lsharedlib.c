/* lsharedlib.c: tokend.shared: dictionaries shared by every worker's script and kept across reloads. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "llib.h"
#include "loop.h"
#include "shdict.h"

#define LSHARED_CLASS "tokend.shared"
#define LSHARED_CAPACITY 10000          /* entries, unless the script says otherwise */

typedef struct lshared {
    shdict *dict;
} lshared;

static shdict *lshared_check(lua_State *L) {
    return ((lshared *)luaL_checkudata(L, 1, LSHARED_CLASS))->dict;
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
    default:
        luaL_argerror(L, idx, "values are strings, numbers or booleans");
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
    lua_pushboolean(L, 1);
    if (rc != SHDICT_EVICTED) return 1;
    lua_pushliteral(L, "evicted");
    return 2;
}

/* dict:get(key) -> value | nil */
static int lshared_get(lua_State *L) {
    shdict *d = lshared_check(L);
    size_t klen;
    const char *k = lshared_key(L, &klen);
    shdict_value v;
    if (shdict_get(d, k, klen, loop_now_ms(), &v) < 0) return llib_fail(L, "out of memory");
    lshared_push(L, &v);
    free(v.s);
    return 1;
}

/* dict:set(key, value[, ttl]) -> true[, "evicted"]; a nil value deletes. */
static int lshared_set(lua_State *L) {
    shdict *d = lshared_check(L);
    size_t klen;
    const char *k = lshared_key(L, &klen);
    shdict_value v = lshared_value(L, 3, 1);
    return lshared_stored(L, shdict_set(d, k, klen, &v, lshared_ttl_arg(L, 4), loop_now_ms()));
}

/* dict:add(key, value[, ttl]) -> true[, "evicted"] | false when the key is there */
static int lshared_add(lua_State *L) {
    shdict *d = lshared_check(L);
    size_t klen;
    const char *k = lshared_key(L, &klen);
    shdict_value v = lshared_value(L, 3, 0);
    int rc = shdict_add(d, k, klen, &v, lshared_ttl_arg(L, 4), loop_now_ms());
    if (rc == SHDICT_EXISTS) {
        lua_pushboolean(L, 0);
        lua_pushliteral(L, "exists");
        return 2;
    }
    return lshared_stored(L, rc);
}

/* dict:incr(key, by[, init[, ttl]]) -> the new value | nil, err */
static int lshared_incr(lua_State *L) {
    shdict *d = lshared_check(L);
    size_t klen;
    const char *k = lshared_key(L, &klen);
    double by = luaL_checknumber(L, 3), init = 0, out = 0;
    int has_init = !lua_isnoneornil(L, 4);
    if (has_init) init = luaL_checknumber(L, 4);
    int rc = shdict_incr(d, k, klen, by, has_init ? &init : NULL, lshared_ttl_arg(L, 5), loop_now_ms(), &out);
    if (rc == SHDICT_NOT_FOUND) return llib_fail(L, "not found");
    if (rc == SHDICT_NOT_NUMBER) return llib_fail(L, "not a number");
    if (rc == SHDICT_NO_MEMORY) return llib_fail(L, "out of memory");
    shdict_value v = { SHDICT_NUMBER, NULL, 0, out };
    lshared_push(L, &v);
    return 1;
}

/* dict:delete(key) */
static int lshared_delete(lua_State *L) {
    shdict *d = lshared_check(L);
    size_t klen;
    const char *k = lshared_key(L, &klen);
    shdict_delete(d, k, klen);
    return 0;
}

/* dict:ttl(key) -> seconds left (0: never expires) | nil, "not found" */
static int lshared_ttl(lua_State *L) {
    shdict *d = lshared_check(L);
    size_t klen;
    const char *k = lshared_key(L, &klen);
    int64_t left = shdict_ttl(d, k, klen, loop_now_ms());
    if (left < 0) return llib_fail(L, "not found");
    lua_pushnumber(L, (lua_Number)left / 1000.0);
    return 1;
}

/* tokend.shared(name[, {capacity = N}]) -> dict */
static int lshared_open(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    const char *name = luaL_checkstring(L, 1);
    char err[200];
    luaL_argcheck(L, strncmp(name, "tokend.", 7) != 0, 1, "names starting with \"tokend.\" are tokend's own");
    double capacity = LSHARED_CAPACITY;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        capacity = llib_opt_number(L, 2, "capacity", LSHARED_CAPACITY, "tokend.shared");
    }
    luaL_argcheck(L, capacity >= 1 && capacity <= 1e8 && capacity == floor(capacity), 2,
                  "capacity must be a whole number of entries, 1..100000000");
    shdict *d = shdict_open(lhost_world_of(h)->shared, name, (size_t)capacity, err, sizeof err);
    if (!d) return luaL_error(L, "tokend.shared(\"%s\"): %s", name, err);
    lshared *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->dict = d;
    luaL_setmetatable(L, LSHARED_CLASS);
    return 1;
}

void lsharedlib_open(lua_State *L, lhost *h) {
    static const luaL_Reg methods[] = {
        { "get", lshared_get }, { "set", lshared_set }, { "add", lshared_add }, { "incr", lshared_incr },
        { "delete", lshared_delete }, { "ttl", lshared_ttl }, { NULL, NULL },
    };
    static const luaL_Reg fns[] = { { "shared", lshared_open }, { NULL, NULL } };
    llib_class(L, LSHARED_CLASS, methods, NULL);
    llib_register(L, h, fns);
}
