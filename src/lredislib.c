/* lredislib.c: tokend.redis: commands to the Redis all instances share, yielding like any outside call. */
#include <math.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "crypto.h"
#include "llib.h"
#include "lredislib.h"
#include "metrics.h"

#define LREDIS_MAX_ARGS 10000
#define LREDIS_MAX_DEPTH 32         /* nested arrays deeper than this come back as "..." */
#define LREDIS_NOT_CONFIGURED "down: Redis is not configured (TOKEND_REDIS_URL)"

/* A command in flight: what lives until its reply. Its arguments are copies, for a
 * script that must be sent again by EVAL. */
typedef struct lredis_op {
    lhost_waiter *w;
    redis_client *client;
    redis_call *call;
    lredis_push_fn *push;
    const char *script;         /* the source, or NULL */
    int by_sha;                 /* sent by EVALSHA: NOSCRIPT sends the source */
    const redis_reply *reply;   /* while push runs */
    const char *err;
    int argc;
    const char **argv;
    size_t *argvlen;
    alignas(max_align_t) unsigned char ctx[];
} lredis_op;

/* The kind of a failure text ("timeout: ..." -> "timeout") into out. */
static const char *lredis_kind(const char *err, char *out, size_t outlen) {
    size_t n = strcspn(err, ":");
    snprintf(out, outlen, "%.*s", (int)(n < outlen ? n : outlen - 1), err);
    return out;
}

static int lredis_push_op(lua_State *L, void *ud) {
    lredis_op *op = ud;
    return op->push(L, op->reply, op->err, op->ctx);
}

static int lredis_is_noscript(const redis_reply *r) {
    size_t len;
    return redis_reply_type(r) == REDIS_VALUE_ERROR && strncmp(redis_reply_string(r, &len), "NOSCRIPT", 8) == 0;
}

static void lredis_on_done(void *ud, const redis_reply *reply, const char *err, double latency_ms) {
    lredis_op *op = ud;
    char kind[16];
    op->call = NULL;
    if (reply && op->by_sha && lredis_is_noscript(reply)) {
        /* Redis does not know the script (it restarted, or SCRIPT FLUSH): send its source. */
        metrics_redis(latency_ms, NULL);
        op->by_sha = 0;
        op->argv[0] = "EVAL";
        op->argvlen[0] = 4;
        op->argv[1] = op->script;
        op->argvlen[1] = strlen(op->script);
        if ((op->call = redis_command(op->client, op->argc, op->argv, op->argvlen, lredis_on_done, op, &err))) return;
        reply = NULL;
        latency_ms = -1;
    }
    if (reply) metrics_redis(latency_ms, redis_reply_type(reply) == REDIS_VALUE_ERROR ? "reply" : NULL);
    else metrics_redis(latency_ms, lredis_kind(err, kind, sizeof kind));
    op->reply = reply;
    op->err = err;
    lhost_wake(op->w, lredis_push_op, op);
    free(op);
}

static void lredis_cancel(void *ud) {
    lredis_op *op = ud;
    if (op->call) redis_cancel(op->call);
    free(op);
}

/* Allocates an op holding ctx and copies of the n arguments (with room before them for
 * EVALSHA, the script's SHA-1 and nkeys when script is set). NULL when out of memory. */
static lredis_op *lredis_op_new(const char *script, int nkeys, int argc, const char **argv, const size_t *argvlen,
                                const void *ctx, size_t ctxlen) {
    int extra = script ? 3 : 0, total = argc + extra;
    size_t bytes = 0;
    for (int i = 0; i < argc; i++) bytes += argvlen[i];
    size_t head = (offsetof(lredis_op, ctx) + ctxlen + alignof(max_align_t) - 1) / alignof(max_align_t) * alignof(max_align_t);
    size_t size = head + (size_t)total * (sizeof(char *) + sizeof(size_t)) + bytes + 41 + 16;
    lredis_op *op = calloc(1, size);
    if (!op) return NULL;
    op->script = script;
    op->argc = total;
    op->argv = (const char **)(void *)((char *)op + head);
    op->argvlen = (size_t *)(void *)(op->argv + total);
    char *text = (char *)(op->argvlen + total);
    if (ctxlen) memcpy(op->ctx, ctx, ctxlen);
    if (script) {
        unsigned char digest[CRYPTO_MAX_DIGEST];
        char *sha = text, *nk = text + 41;
        text += 41 + 16;
        if (crypto_digest("sha1", script, strlen(script), digest) != 20) {
            free(op);
            return NULL;
        }
        crypto_hex(digest, 20, sha);
        snprintf(nk, 16, "%d", nkeys);
        op->by_sha = 1;
        op->argv[0] = "EVALSHA";
        op->argv[1] = sha;
        op->argv[2] = nk;
        op->argvlen[0] = 7;
        op->argvlen[1] = 40;
        op->argvlen[2] = strlen(nk);
    }
    for (int i = 0; i < argc; i++) {
        memcpy(text, argv[i], argvlen[i]);
        op->argv[extra + i] = text;
        op->argvlen[extra + i] = argvlen[i];
        text += argvlen[i];
    }
    return op;
}

int lredis_call(lua_State *L, lhost *h, const char *fn, const char *script, int nkeys, int argc, const char **argv,
                const size_t *argvlen, lredis_push_fn *push, const void *ctx, size_t ctxlen) {
    const lhost_world *world;
    const char *err = LREDIS_NOT_CONFIGURED;
    char kind[16];
    lhost_waiter *w = lhost_wait_begin(h, L, fn, &world);
    if (!world->redis) return push(L, NULL, err, (void *)ctx);
    lredis_op *op = lredis_op_new(script, nkeys, argc, argv, argvlen, ctx, ctxlen);
    if (!op) return push(L, NULL, "down: out of memory", (void *)ctx);
    op->w = w;
    op->client = world->redis;
    op->push = push;
    if (!(op->call = redis_command(op->client, op->argc, op->argv, op->argvlen, lredis_on_done, op, &err))) {
        free(op);
        metrics_redis(-1, lredis_kind(err, kind, sizeof kind));
        return push(L, NULL, err, (void *)ctx);
    }
    return lhost_wait(w, L, lredis_cancel, op);
}

void lredis_number(double n, char out[32]) {
    if (n == (double)(long long)n && fabs(n) < 9007199254740992.0) snprintf(out, 32, "%lld", (long long)n);
    else snprintf(out, 32, "%.17g", n);
}

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
    default:        /* strings and status texts */
        lua_pushlstring(L, text, len);
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
    "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP", "WAIT", "WAITAOF",
    "MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH", "SELECT", "AUTH", "HELLO", "QUIT", "RESET", "CLIENT",
    "SYNC", "PSYNC", "SHUTDOWN", "DEBUG", NULL,
};

/* Raises when the command at index 1 is one tokend.redis.command refuses. */
static void lredis_check_command(lua_State *L, int argc, const char **argv) {
    for (int i = 0; lredis_refused[i]; i++)
        if (strcasecmp(argv[0], lredis_refused[i]) == 0)
            luaL_error(L, "tokend.redis.command: %s would hold the connection all of this worker's requests share "
                          "(use a script, EVAL, for what must be atomic)", lredis_refused[i]);
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
    lua_pushlightuserdata(L, NULL);     /* the same value as cjson.null: JSON null */
    lua_setfield(L, -2, "null");
    lua_setfield(L, -2, "redis");
}
