/* lredis.c: Redis commands from Lua for the parts of the API that keep state in Redis (tokend.redis, limiters, dictionaries): a command waited for like any outside call. */
#include <math.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "crypto.h"
#include "llib.h"
#include "lredis.h"
#include "metrics.h"

#define LREDIS_NOT_CONFIGURED "down: Redis is not configured (TOKEND_REDIS_URL)"

/* A command in flight: what lives until its reply. Its arguments are copies, for a
 * script that must be sent again by EVAL. */
typedef struct lredis_op {
    lhost_waiter *w;
    redis_client *client;
    redis_call *call;
    lredis_push_fn *push;
    const char *script;       /* the source, or NULL */
    int by_sha;               /* sent by EVALSHA: NOSCRIPT sends the source */
    const redis_reply *reply; /* while push runs */
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
    size_t head = (offsetof(lredis_op, ctx) + ctxlen + alignof(max_align_t) - 1) / alignof(max_align_t) *
            alignof(max_align_t);
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
