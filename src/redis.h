/* redis.h: a Redis client on a worker's loop: hiredis's async API, reconnection with back-off, a deadline per command. */
#ifndef TOKEND_REDIS_H
#define TOKEND_REDIS_H

#include <stddef.h>

#include "loop.h"

/* Where Redis is: from redis://[user:password@]host:port[/db] or unix:///path[?db=N]. */
typedef struct redis_target {
    char host[256]; /* "" for a Unix socket */
    int port;
    char path[256]; /* the Unix socket, or "" */
    char user[128];
    char password[256];
    int db;
} redis_target;

/* Parses url. Returns 0, or -1 with err naming what is wrong (never the password). */
int redis_parse_url(const char *url, redis_target *t, char *err, size_t errlen);

/* Parses url and, when check_ms > 0, connects, authenticates, selects the database and
 * pings, blocking up to check_ms: what tokend does at start. Returns 0; 1 with err when
 * Redis cannot be reached now (refused, unreachable, no such host or socket yet, no
 * answer in time: it may come later); -1 with err when it answers but refuses (a wrong or
 * missing password, a database it does not have, not Redis at all), or for a bad URL
 * (which tokend_config_check finds first). err starts "TOKEND_REDIS_URL: ". */
int redis_open(const char *url, long check_ms, redis_target *t, char *err, size_t errlen);

typedef struct redis_client redis_client;
typedef struct redis_call redis_call;
typedef struct redis_reply redis_reply; /* hiredis's reply, seen through the accessors below */

/* Creates a client that connects at once and again whenever the connection is lost
 * (after 50 ms, then twice as long each time, at most a second). NULL when out of memory. */
redis_client *redis_create(loop *lp, const redis_target *t, long timeout_ms);

/* Closes the connection; calls in flight end without their callbacks. NULL is allowed. */
void redis_free(redis_client *c);

/* 1 while connected and authenticated. */
int redis_up(const redis_client *c);

/* Runs the client's loop until it is connected, at most timeout_ms (before the loop is
 * driven by its owner: a worker that starts). Returns 0 once connected, or -1. */
int redis_wait_ready(redis_client *c, long timeout_ms);

/* Called once per command: reply (an error reply included) or NULL and err (a timeout, a
 * lost connection); latency_ms from sending to the end. */
typedef void redis_done_fn(void *ud, const redis_reply *reply, const char *err, double latency_ms);

/* Sends a command. done is called once from the loop, within the deadline, never from
 * inside this call. Returns NULL with err when Redis is down or memory is short (done is
 * then not called). */
redis_call *redis_command(redis_client *c, int argc, const char **argv, const size_t *argvlen, redis_done_fn *done,
                          void *ud, const char **err);

/* Forgets a call in flight: its callback will not be called. */
void redis_cancel(redis_call *call);

/* ---- replies ---- */

#define REDIS_VALUE_STRING 1
#define REDIS_VALUE_ARRAY 2
#define REDIS_VALUE_INTEGER 3
#define REDIS_VALUE_NIL 4
#define REDIS_VALUE_STATUS 5
#define REDIS_VALUE_ERROR 6

int redis_reply_type(const redis_reply *r);
long long redis_reply_integer(const redis_reply *r);
/* The text of a string, status or error reply. */
const char *redis_reply_string(const redis_reply *r, size_t *len);
size_t redis_reply_count(const redis_reply *r);
const redis_reply *redis_reply_element(const redis_reply *r, size_t i);

#endif
