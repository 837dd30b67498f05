/* redis.c: a Redis client on a worker's loop: hiredis's async API, reconnection with back-off, a deadline per command. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "list.h"
#include "log.h"
#include "redis.h"
#include "url.h"

#define REDIS_BACKOFF_FIRST_MS 50
#define REDIS_BACKOFF_MAX_MS 1000 /* Redis back: connected again within a second */
#define REDIS_CONNECT_MS 1000     /* a connection attempt gives up after this */
#define REDIS_TIMEOUTS_TO_DROP 3  /* commands timing out in a row: the connection is dropped */

_Static_assert(REDIS_VALUE_STRING == REDIS_REPLY_STRING && REDIS_VALUE_ARRAY == REDIS_REPLY_ARRAY &&
                       REDIS_VALUE_INTEGER == REDIS_REPLY_INTEGER && REDIS_VALUE_NIL == REDIS_REPLY_NIL &&
                       REDIS_VALUE_STATUS == REDIS_REPLY_STATUS && REDIS_VALUE_ERROR == REDIS_REPLY_ERROR,
               "redis.h's reply types are hiredis's");

struct redis_call {
    redis_client *c;
    redis_done_fn *done;
    void *ud;
    loop_timer deadline;
    uint64_t start_us;
    int reported;   /* done was called, or the call was cancelled */
    list_node link; /* in the client's calls hiredis still holds */
};

struct redis_client {
    loop *lp;
    redis_target target;
    char where[300]; /* for messages */
    long timeout_ms;
    redisAsyncContext *ac; /* NULL while down */
    int ready;             /* connected, and AUTH/SELECT answered */
    int fd;
    unsigned events; /* watched on the loop */
    int closing;     /* redis_free is under way */
    int timeouts;    /* commands that timed out in a row */
    long backoff_ms;
    loop_timer retry; /* the next connection attempt */
    loop_timer connect_deadline;
    list_node calls;
};

/* ---- the target ---- */

/* Percent-decodes s[0..n) into out. Returns 0 or -1. */
static int redis_unescape(const char *s, size_t n, char *out, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '%' && i + 2 < n + 0 && isxdigit((unsigned char)s[i + 1]) && isxdigit((unsigned char)s[i + 2])) {
            char hex[3] = { s[i + 1], s[i + 2], 0 };
            ch = (char)strtol(hex, NULL, 16);
            i += 2;
        }
        if (o + 1 >= cap) return -1;
        out[o++] = ch;
    }
    out[o] = '\0';
    return 0;
}

int redis_parse_url(const char *url, redis_target *t, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    if (strncmp(url, "unix://", 7) == 0) {
        const char *path = url + 7, *q = strchr(path, '?');
        size_t n = q ? (size_t)(q - path) : strlen(path);
        if (n == 0 || path[0] != '/' || n >= sizeof t->path) {
            snprintf(err, errlen, "a unix:// URL needs an absolute socket path (unix:///run/redis.sock)");
            return -1;
        }
        memcpy(t->path, path, n);
        if (q && strncmp(q, "?db=", 4) == 0) t->db = atoi(q + 4);
        else if (q) {
            snprintf(err, errlen, "the only option of a unix:// URL is ?db=N");
            return -1;
        }
        return 0;
    }
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "the URL must start with redis:// or unix://");
        return -1;
    }
    const char *p = url + 8, *end = p + strcspn(p, "/");
    const char *at = memrchr(p, '@', (size_t)(end - p));
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon || redis_unescape(p, (size_t)(colon - p), t->user, sizeof t->user) < 0 ||
            redis_unescape(colon + 1, (size_t)(at - colon - 1), t->password, sizeof t->password) < 0) {
            snprintf(err, errlen, "write the credentials as user:password@ (user may be empty)");
            return -1;
        }
        p = at + 1;
    }
    const char *colon = memchr(p, ':', (size_t)(end - p));
    size_t hlen = colon ? (size_t)(colon - p) : (size_t)(end - p);
    if (hlen == 0 || hlen >= sizeof t->host) {
        snprintf(err, errlen, "the URL has no host");
        return -1;
    }
    memcpy(t->host, p, hlen);
    t->port = 6379;
    if (colon && (t->port = url_parse_port(colon + 1, (size_t)(end - colon - 1))) < 0) {
        snprintf(err, errlen, "the port must be 1..65535 (digits only)");
        return -1;
    }
    if (*end == '/' && end[1]) {
        char *e;
        long db = strtol(end + 1, &e, 10);
        if (*e || db < 0 || db > 10000) {
            snprintf(err, errlen, "the database after the / must be a number");
            return -1;
        }
        t->db = (int)db;
    }
    return 0;
}

/* The target as text for messages: host:port or the socket's path (no password). */
static void redis_describe(const redis_target *t, char *out, size_t outlen) {
    if (t->path[0]) snprintf(out, outlen, "unix:%s", t->path);
    else snprintf(out, outlen, "%s:%d", t->host, t->port);
}

/* The commands that open a session: AUTH (when a password is set), SELECT (when a
 * database is), in argv form; returns how many (0..2). */
static int redis_setup_commands(const redis_target *t, const char *argv[2][3], size_t argvlen[2][3], int argc[2]) {
    int n = 0;
    if (t->password[0]) {
        int k = 0;
        argv[n][k] = "AUTH";
        if (t->user[0]) argv[n][++k] = t->user;
        argv[n][++k] = t->password;
        argc[n] = k + 1;
        for (int i = 0; i < argc[n]; i++) argvlen[n][i] = strlen(argv[n][i]);
        n++;
    }
    if (t->db) {
        static _Thread_local char db[16];
        snprintf(db, sizeof db, "%d", t->db);
        argv[n][0] = "SELECT";
        argv[n][1] = db;
        argc[n] = 2;
        argvlen[n][0] = 6;
        argvlen[n][1] = strlen(db);
        n++;
    }
    return n;
}

/* Connects, authenticates, selects the database and pings, blocking up to timeout_ms:
 * the check tokend makes at start. Returns 0; 1 with err when Redis cannot be reached
 * now (refused, unreachable, no such host or socket yet, no answer in time: it may come
 * later); -1 with err when it answers but refuses (a wrong or missing password, a
 * database it does not have, not Redis at all). */
static int redis_check(const redis_target *t, long timeout_ms, char *err, size_t errlen) {
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    char where[300];
    redis_describe(t, where, sizeof where);
    redisContext *rc = t->path[0] ? redisConnectUnixWithTimeout(t->path, tv)
                                  : redisConnectWithTimeout(t->host, t->port, tv);
    int rc_code = 0;
    if (!rc || rc->err) {
        /* Refused, unreachable, not (yet) resolved, no socket yet: a Redis restarting, or
         * starting after tokend. It may come: tokend reconnects. */
        snprintf(err, errlen, "cannot reach Redis at %s: %s", where, rc ? rc->errstr : "out of memory");
        rc_code = rc ? 1 : -1;
        goto out;
    }
    redisSetTimeout(rc, tv);
    const char *argv[2][3];
    size_t argvlen[2][3];
    int argc[2];
    int n = redis_setup_commands(t, argv, argvlen, argc);
    for (int i = 0; i <= n; i++) {
        static const char *ping[] = { "PING" };
        static const size_t pinglen[] = { 4 };
        redisReply *r = i < n ? redisCommandArgv(rc, argc[i], argv[i], argvlen[i])
                              : redisCommandArgv(rc, 1, ping, pinglen);
        if (!r) {
            /* Silence may end; a closed connection or another protocol will not. */
            rc_code = strstr(rc->errstr, "temporarily unavailable") || strstr(rc->errstr, "timed out") ? 1 : -1;
            snprintf(err, errlen, "Redis at %s did not answer %s%s%s", where, i < n ? argv[i][0] : "PING",
                     rc_code > 0 ? " in time" : ": ", rc_code > 0 ? "" : rc->errstr);
            goto out;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            int auth = strstr(r->str, "NOAUTH") || strstr(r->str, "WRONGPASS") || strstr(r->str, "invalid password") ||
                    (i < n && strcmp(argv[i][0], "AUTH") == 0);
            snprintf(err, errlen, "Redis at %s refused %s: %.200s%s", where, i < n ? argv[i][0] : "PING", r->str,
                     auth ? " (give the password as redis://:password@host:port, or redis://user:password@host:port)"
                          : "");
            freeReplyObject(r);
            rc_code = -1;
            goto out;
        }
        freeReplyObject(r);
    }
out:
    if (rc) redisFree(rc);
    return rc_code;
}

int redis_open(const char *url, long check_ms, redis_target *t, char *err, size_t errlen) {
    char why[1024];
    int rc = redis_parse_url(url, t, why, sizeof why);
    if (rc == 0 && check_ms > 0) rc = redis_check(t, check_ms, why, sizeof why);
    if (rc != 0) snprintf(err, errlen, "TOKEND_REDIS_URL: %s", why);
    return rc;
}

/* ---- the connection ---- */

static void redis_connect(redis_client *c);

static void redis_watch(redis_client *c, unsigned events);

static void redis_on_fd(void *ud, int fd, unsigned events) {
    redis_client *c = ud;
    redisAsyncContext *ac = c->ac;
    (void)fd;
    if (ac && (events & LOOP_READ)) redisAsyncHandleRead(ac);
    if (ac && c->ac == ac && (events & LOOP_WRITE)) redisAsyncHandleWrite(ac);
}

static void redis_watch(redis_client *c, unsigned events) {
    if (events == c->events || c->fd < 0) return;
    if (loop_watch(c->lp, c->fd, events, redis_on_fd, c) == 0 || !events) c->events = events;
    else log_throttled(LOG_ERROR, "redis", "cannot watch the connection's socket");
}

static void redis_add_read(void *d) {
    redis_client *c = d;
    redis_watch(c, c->events | LOOP_READ);
}
static void redis_del_read(void *d) {
    redis_client *c = d;
    redis_watch(c, c->events & ~LOOP_READ);
}
static void redis_add_write(void *d) {
    redis_client *c = d;
    redis_watch(c, c->events | LOOP_WRITE);
}
static void redis_del_write(void *d) {
    redis_client *c = d;
    redis_watch(c, c->events & ~LOOP_WRITE);
}

static void redis_cleanup(void *d) {
    redis_client *c = d;
    redis_watch(c, 0);
    loop_forget(c->lp, c->fd);
    c->fd = -1;
}

static void redis_on_retry(void *ud) {
    redis_connect(ud);
}

/* The connection is gone (or never came): try again after the back-off. */
static void redis_lost(redis_client *c) {
    c->ac = NULL;
    c->ready = 0;
    c->timeouts = 0;
    loop_timer_stop(c->lp, &c->connect_deadline);
    if (c->closing) return;
    loop_timer_start(c->lp, &c->retry, c->backoff_ms, redis_on_retry, c);
    c->backoff_ms = c->backoff_ms * 2 > REDIS_BACKOFF_MAX_MS ? REDIS_BACKOFF_MAX_MS : c->backoff_ms * 2;
}

static void redis_on_connect(const redisAsyncContext *ac, int status) {
    redis_client *c = ac->ev.data;
    if (status == REDIS_OK) return;
    log_throttled(LOG_WARN, "redis", "cannot connect to Redis at %s: %s", c->where, ac->errstr);
    redis_lost(c); /* hiredis frees the context after this callback */
}

static void redis_on_disconnect(const redisAsyncContext *ac, int status) {
    redis_client *c = ac->ev.data;
    if (!c->closing && status != REDIS_OK)
        log_throttled(LOG_WARN, "redis", "lost the connection to Redis at %s: %s", c->where, ac->errstr);
    redis_lost(c);
}

/* AUTH and SELECT answered: ready when they worked. */
static void redis_on_setup(redisAsyncContext *ac, void *reply, void *privdata) {
    redis_client *c = ac->ev.data;
    redisReply *r = reply;
    int last = privdata != NULL;
    if (!r) return; /* the connection went: redis_on_disconnect follows */
    if (r->type == REDIS_REPLY_ERROR) {
        log_throttled(LOG_ERROR, "redis", "Redis at %s refused the session: %.200s", c->where, r->str);
        c->backoff_ms = REDIS_BACKOFF_MAX_MS;
        redisAsyncDisconnect(ac);
        return;
    }
    if (last) {
        c->ready = 1;
        c->backoff_ms = REDIS_BACKOFF_FIRST_MS;
        loop_timer_stop(c->lp, &c->connect_deadline);
        log_msg(LOG_INFO, "redis: connected to %s", c->where);
    }
}

static void redis_on_connect_deadline(void *ud) {
    redis_client *c = ud;
    if (!c->ac || c->ready) return;
    log_throttled(LOG_WARN, "redis", "no session with Redis at %s within %d ms", c->where, REDIS_CONNECT_MS);
    redisAsyncFree(c->ac); /* runs redis_cleanup, and redis_on_disconnect when it had connected */
    if (c->ac) redis_lost(c);
}

static void redis_connect(redis_client *c) {
    const redis_target *t = &c->target;
    redisAsyncContext *ac = t->path[0] ? redisAsyncConnectUnix(t->path) : redisAsyncConnect(t->host, t->port);
    if (!ac || ac->err) {
        log_throttled(LOG_WARN, "redis", "cannot connect to Redis at %s: %s", c->where,
                      ac ? ac->errstr : "out of memory");
        if (ac) redisAsyncFree(ac);
        redis_lost(c);
        return;
    }
    c->ac = ac;
    c->fd = ac->c.fd;
    c->events = 0;
    loop_forget(c->lp, c->fd);
    ac->ev.data = c;
    ac->ev.addRead = redis_add_read;
    ac->ev.delRead = redis_del_read;
    ac->ev.addWrite = redis_add_write;
    ac->ev.delWrite = redis_del_write;
    ac->ev.cleanup = redis_cleanup;
    redisAsyncSetConnectCallback(ac, redis_on_connect);
    redisAsyncSetDisconnectCallback(ac, redis_on_disconnect);
    redis_add_write(c); /* the connect completes when the socket is writable */
    const char *argv[2][3];
    size_t argvlen[2][3];
    int argc[2];
    int n = redis_setup_commands(t, argv, argvlen, argc);
    for (int i = 0; i < n; i++)
        redisAsyncCommandArgv(ac, redis_on_setup, i == n - 1 ? (void *)1 : NULL, argc[i], argv[i], argvlen[i]);
    if (n == 0) {
        static const char *ping[] = { "PING" };
        static const size_t pinglen[] = { 4 };
        redisAsyncCommandArgv(ac, redis_on_setup, (void *)1, 1, ping, pinglen);
    }
    loop_timer_start(c->lp, &c->connect_deadline, REDIS_CONNECT_MS, redis_on_connect_deadline, c);
}

redis_client *redis_create(loop *lp, const redis_target *t, long timeout_ms) {
    redis_client *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    list_init(&c->calls);
    c->lp = lp;
    c->target = *t;
    c->timeout_ms = timeout_ms;
    c->fd = -1;
    c->backoff_ms = REDIS_BACKOFF_FIRST_MS;
    redis_describe(t, c->where, sizeof c->where);
    redis_connect(c);
    return c;
}

void redis_free(redis_client *c) {
    if (!c) return;
    c->closing = 1;
    for (list_node *n = list_first(&c->calls); n; n = list_next(&c->calls, n)) {
        redis_call *call = list_entry(n, redis_call, link);
        call->reported = 1;
        loop_timer_stop(c->lp, &call->deadline);
    }
    loop_timer_stop(c->lp, &c->retry);
    loop_timer_stop(c->lp, &c->connect_deadline);
    if (c->ac) redisAsyncFree(c->ac); /* frees every call through redis_on_reply */
    explicit_bzero(c->target.password, sizeof c->target.password);
    free(c);
}

int redis_up(const redis_client *c) {
    return c && c->ready;
}

int redis_wait_ready(redis_client *c, long timeout_ms) {
    uint64_t deadline = loop_now_ms() + (uint64_t)timeout_ms;
    while (!c->ready && loop_now_ms() < deadline)
        if (loop_run_once(c->lp, (long)(deadline - loop_now_ms())) < 0) break;
    return c->ready ? 0 : -1;
}

/* ---- commands ---- */

static void redis_on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    redis_call *call = privdata;
    redis_client *c = call->c;
    (void)ac;
    list_remove(&call->link);
    loop_timer_stop(c->lp, &call->deadline);
    if (!call->reported) {
        if (reply) c->timeouts = 0;
        call->done(call->ud, reply, reply ? NULL : "lost: the connection to Redis was lost",
                   (double)(loop_now_us() - call->start_us) / 1000.0);
    }
    free(call);
}

static void redis_on_deadline(void *ud) {
    redis_call *call = ud;
    redis_client *c = call->c;
    char why[80];
    call->reported = 1; /* hiredis keeps it until the answer, or the connection, comes */
    snprintf(why, sizeof why, "timeout: Redis did not answer within %ld ms", c->timeout_ms);
    call->done(call->ud, NULL, why, (double)(loop_now_us() - call->start_us) / 1000.0);
    if (++c->timeouts >= REDIS_TIMEOUTS_TO_DROP && c->ac) {
        log_throttled(LOG_WARN, "redis", "Redis at %s stopped answering: reconnecting", c->where);
        redisAsyncFree(c->ac);
        if (c->ac) redis_lost(c);
    }
}

redis_call *redis_command(redis_client *c, int argc, const char **argv, const size_t *argvlen, redis_done_fn *done,
                          void *ud, const char **err) {
    if (!c->ac) {
        *err = "down: Redis is not connected";
        return NULL;
    }
    redis_call *call = calloc(1, sizeof *call);
    if (!call) {
        *err = "down: out of memory";
        return NULL;
    }
    list_init(&call->link);
    call->c = c;
    call->done = done;
    call->ud = ud;
    call->start_us = loop_now_us();
    if (redisAsyncCommandArgv(c->ac, redis_on_reply, call, argc, argv, argvlen) != REDIS_OK) {
        free(call);
        *err = "down: Redis is not connected";
        return NULL;
    }
    list_insert_after(&c->calls, &call->link);
    loop_timer_start(c->lp, &call->deadline, c->timeout_ms, redis_on_deadline, call);
    return call;
}

void redis_cancel(redis_call *call) {
    call->reported = 1;
    loop_timer_stop(call->c->lp, &call->deadline);
}

/* ---- replies ---- */

int redis_reply_type(const redis_reply *r) {
    return ((const redisReply *)r)->type;
}
long long redis_reply_integer(const redis_reply *r) {
    return ((const redisReply *)r)->integer;
}
size_t redis_reply_count(const redis_reply *r) {
    return ((const redisReply *)r)->elements;
}

const char *redis_reply_string(const redis_reply *r, size_t *len) {
    const redisReply *rr = (const redisReply *)r;
    if (len) *len = rr->len;
    return rr->str ? rr->str : "";
}

const redis_reply *redis_reply_element(const redis_reply *r, size_t i) {
    const redisReply *rr = (const redisReply *)r;
    return i < rr->elements ? (const redis_reply *)rr->element[i] : NULL;
}
