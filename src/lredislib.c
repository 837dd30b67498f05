/* lredislib.c: tokend.redis: commands to the Redis all instances share, yielding like any outside call. */
#include <stddef.h>
#include <string.h>
#include <strings.h>

#include "llib.h"
#include "lredis.h"

#define LREDIS_MAX_ARGS 10000
#define LREDIS_MAX_DEPTH 32 /* nested arrays deeper than this come back as "..." */

static void lredis_push_depth(lua_State *L, const redis_reply *r, int depth) {
    size_t len;
    const char *text = redis_reply_string(r, &len);
    luaL_checkstack(L, 4, "Redis reply too deep");
    switch (redis_reply_type(r)) {
    case REDIS_VALUE_INTEGER: lua_pushinteger(L, (lua_Integer)redis_reply_integer(r)); break;
    case REDIS_VALUE_NIL: lua_pushlightuserdata(L, NULL); break;
    case REDIS_VALUE_ERROR:
        lua_createtable(L, 0, 1);
        lua_pushlstring(L, text, len);
        lua_setfield(L, -2, "err");
        break;
    case REDIS_VALUE_ARRAY: {
        size_t n = redis_reply_count(r);
        if (depth >= LREDIS_MAX_DEPTH) {
            lua_pushliteral(L, "...");
            break;
        }
        lua_createtable(L, n < 1000000 ? (int)n : 0, 0);
        for (size_t i = 0; i < n; i++) {
            lredis_push_depth(L, redis_reply_element(r, i), depth + 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    }
    default: /* strings and status texts */ lua_pushlstring(L, text, len);
    }
}

/* Pushes a reply as Lua values: strings and status texts as strings, integers, a nil
 * reply as tokend.redis.null, arrays as sequences, an error nested in an array as
 * {err = text}. */
static void lredis_push_reply(lua_State *L, const redis_reply *r) {
    lredis_push_depth(L, r, 0);
}

/* What tokend.redis.command returns: the reply, or nil and why. */
static int lredis_push_command(lua_State *L, const redis_reply *reply, const char *err, void *ctx) {
    size_t len;
    (void)ctx;
    if (!reply) return llib_fail(L, "%s", err);
    if (redis_reply_type(reply) == REDIS_VALUE_ERROR) {
        const char *text = redis_reply_string(reply, &len);
        return llib_fail(L, "redis: %s", text);
    }
    lredis_push_reply(L, reply);
    return 1;
}

/* Commands that would take over the connection every request of the worker shares: a
 * subscription, a blocking wait, a transaction interleaved with other requests' commands,
 * another database or user. */
static const char *const lredis_refused[] = {
    "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE", "MONITOR",
    "BLPOP",     "BRPOP",      "BRPOPLPUSH", "BLMOVE",      "BLMPOP",       "BZPOPMIN",     "BZPOPMAX",
    "BZMPOP",    "WAIT",       "WAITAOF",    "MULTI",       "EXEC",         "DISCARD",      "WATCH",
    "UNWATCH",   "SELECT",     "AUTH",       "HELLO",       "QUIT",         "RESET",        "CLIENT",
    "SYNC",      "PSYNC",      "SHUTDOWN",   "DEBUG",       NULL,
};

/* Raises when the command at index 1 is one tokend.redis.command refuses. */
static void lredis_check_command(lua_State *L, int argc, const char **argv) {
    for (int i = 0; lredis_refused[i]; i++)
        if (strcasecmp(argv[0], lredis_refused[i]) == 0)
            luaL_error(L,
                       "tokend.redis.command: %s would hold the connection all of this worker's requests share "
                       "(use a script, EVAL, for what must be atomic)",
                       lredis_refused[i]);
    if (strncasecmp(argv[0], "XREAD", 5) == 0)
        for (int i = 1; i < argc; i++)
            if (strcasecmp(argv[i], "BLOCK") == 0)
                luaL_error(L, "tokend.redis.command: XREAD with BLOCK would hold the shared connection");
}

/* tokend.redis.command(name, args...) -> reply | nil, err */
static int lredis_command(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    int argc = lua_gettop(L);
    luaL_argcheck(L, argc >= 1, 1, "a command name is required");
    luaL_argcheck(L, argc <= LREDIS_MAX_ARGS, LREDIS_MAX_ARGS, "too many arguments");
    const char **argv = lua_newuserdatauv(L, (size_t)argc * (sizeof(char *) + sizeof(size_t)), 0);
    size_t *argvlen = (size_t *)(void *)(argv + argc);
    for (int i = 1; i <= argc; i++) {
        if (lua_type(L, i) == LUA_TNUMBER) {
            char num[32];
            if (lua_isinteger(L, i)) snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, i));
            else lredis_number((double)lua_tonumber(L, i), num);
            lua_pushstring(L, num);
            lua_replace(L, i);
        }
        luaL_argexpected(L, lua_type(L, i) == LUA_TSTRING, i, "string or number");
        argv[i - 1] = lua_tolstring(L, i, &argvlen[i - 1]);
    }
    lredis_check_command(L, argc, argv);
    return lredis_call(L, h, "tokend.redis.command", NULL, 0, argc, argv, argvlen, lredis_push_command, NULL, 0);
}

/* tokend.redis.status() -> "ok" | "down" | nil (no Redis configured) */
static int lredis_status(lua_State *L) {
    const lhost_world *w = lhost_world_of(LLIB_HOST(L));
    if (!w->redis) return 0;
    lua_pushstring(L, redis_up(w->redis) ? "ok" : "down");
    return 1;
}

void lredislib_open(lua_State *L, lhost *h) {
    static const luaL_Reg fns[] = { { "command", lredis_command }, { "status", lredis_status }, { NULL, NULL } };
    lua_newtable(L);
    llib_register(L, h, fns);
    lua_pushlightuserdata(L, NULL); /* the same value as cjson.null: JSON null */
    lua_setfield(L, -2, "null");
    lua_setfield(L, -2, "redis");
}
