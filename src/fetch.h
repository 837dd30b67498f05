/* fetch.h: outgoing HTTP requests from a worker's loop: non-blocking libcurl transfers. */
#ifndef TOKEND_FETCH_H
#define TOKEND_FETCH_H

#include <stddef.h>
#include <sys/types.h>

#include "failure.h"
#include "loop.h"

typedef struct fetch fetch;
typedef struct fetch_call fetch_call;
typedef struct fetch_headers fetch_headers; /* a list of "Name: value" lines */

typedef struct fetch_options {
    const char *ca_file; /* CA bundle for TLS; NULL = the system store */
    long connect_timeout_ms;
} fetch_options;

/* One request. Strings are copied or used only during fetch_start, but for headers,
 * which must live until the call ends. */
typedef struct fetch_request {
    const char *method; /* NULL = GET */
    const char *url;    /* http:// or https:// only */
    const fetch_headers *headers;
    const char *body; /* sent as is (copied); NULL for none */
    size_t body_len;
    long timeout_ms;   /* the whole call, connect included */
    size_t max_body;   /* a longer answer fails with FAILURE_TOO_LARGE */
    const char *proxy; /* NULL or "": none (the environment's proxies are never used) */
} fetch_request;

/* The outcome of a call; strings live until the callback returns. */
typedef struct fetch_result {
    failure_kind failure; /* FAILURE_NONE when an HTTP answer arrived */
    int curl_code;        /* libcurl's code, 0 when an answer arrived; FETCH_SHUTDOWN: the
                                   client was freed under a streamed call */
    const char *error;    /* libcurl's message on failure, "" otherwise */
    long status;          /* HTTP status; 0 without an answer */
    const char *body;     /* NUL-terminated */
    size_t body_len;
    const char *headers; /* the final answer's header lines, "Name: value\r\n" each */
    size_t headers_len;
    double elapsed_ms;
} fetch_result;

#define FETCH_SHUTDOWN (-1)

typedef void fetch_done_fn(void *ud, const fetch_result *r);

/* A call whose answer is handed over as it arrives (a proxy's), instead of whole. */
typedef struct fetch_stream {
    /* The final answer's status and header lines ("Name: value\r\n" each) arrived, before
     * any of its body. Returns 0 to go on, -1 to end the call (done then says why). */
    int (*head)(void *ud, long status, const char *headers, size_t len);
    /* A piece of the body. Returns 1 when taken, 0 to pause the transfer: the same bytes
     * come again after fetch_resume. */
    int (*body)(void *ud, const char *data, size_t len);
    long head_timeout_ms; /* the head must come within this (then FAILURE_TIMEOUT) */
    long idle_timeout_s;  /* once it came, this long without a byte (paused time aside)
                                   ends the call with FAILURE_TIMEOUT */
} fetch_stream;

/* Creates a client bound to lp. Returns NULL with err set on failure. */
fetch *fetch_create(loop *lp, const fetch_options *o, char *err, size_t errlen);

/* Cancels every call in flight (their callbacks are not called; but a streamed call's done
 * hears FAILURE_NETWORK, "shutting down", so that its answer can be ended) and frees.
 * NULL allowed. */
void fetch_free(fetch *f);

/* The loop the client runs on. */
loop *fetch_loop(const fetch *f);

/* Starts a call. done(ud, result) is called exactly once from the loop, never from inside
 * this call. Returns NULL when out of memory. */
fetch_call *fetch_start(fetch *f, const fetch_request *rq, fetch_done_fn *done, void *ud);

/* Starts a call whose answer goes to st's callbacks as it arrives (rq->timeout_ms and
 * rq->max_body are not used: st says when it times out, and the body has no limit); the
 * call runs over HTTP/1.1 on a handle of its own. done(ud, result) ends it as for
 * fetch_start (its body is empty). Returns NULL when out of memory. */
fetch_call *fetch_start_stream(fetch *f, const fetch_request *rq, const fetch_stream *st, fetch_done_fn *done,
                               void *ud);

/* Resumes a streamed call whose body callback paused it. */
void fetch_resume(fetch_call *c);

/* Ends a call in flight without calling its callback. */
void fetch_cancel(fetch_call *c);

/* Appends a line to a header list (NULL starts one). Returns the list, or NULL when out
 * of memory (the list given is then freed). */
fetch_headers *fetch_headers_add(fetch_headers *list, const char *line);

/* Frees a list, wiping its lines first (one may hold a secret). NULL is allowed. */
void fetch_headers_free(fetch_headers *list);

/* Finds a header of a result by name (case-insensitive); copies its value, trimmed, into
 * out. Returns 1 when found. */
int fetch_result_header(const fetch_result *r, const char *name, char *out, size_t outlen);

/* The failure kind of a libcurl code (FAILURE_NONE for CURLE_OK). */
failure_kind fetch_failure_of(int curl_code);

/* ---- connections for another protocol (the relay's WebSocket to the upstream) ---- */

typedef struct fetch_conn fetch_conn;

typedef struct fetch_conn_result {
    failure_kind failure; /* FAILURE_NONE once connected */
    int curl_code;
    const char *error; /* libcurl's message on failure, "" otherwise */
    int fd;            /* connected: the socket, -1 otherwise */
    double elapsed_ms;
} fetch_conn_result;

typedef void fetch_conn_fn(void *ud, const fetch_conn_result *r);

/* Opens a connection to url's host and port (http:// or https://: TCP, TLS verified as
 * for calls, through proxy when not NULL or "") without sending anything, within
 * timeout_ms. done(ud, r) is called once from the loop, never from inside this call. Once
 * connected, r->fd is the caller's to watch with loop_watch (never to close): bytes go
 * through fetch_conn_send and fetch_conn_recv, which also read what TLS holds decrypted
 * (read until they would block). Either way the caller ends it with fetch_conn_close.
 * NULL when out of memory. */
fetch_conn *fetch_connect(fetch *f, const char *url, const char *proxy, long timeout_ms, fetch_conn_fn *done, void *ud);

/* Writes up to len bytes: the count (> 0), 0 when it would block, -1 on an error. */
ssize_t fetch_conn_send(fetch_conn *c, const void *data, size_t len);

/* Reads up to len bytes: the count (> 0), 0 when nothing is there now, -1 when the peer
 * closed or on an error. */
ssize_t fetch_conn_recv(fetch_conn *c, void *buf, size_t len);

/* Closes the connection and its socket (stop watching the socket first), or gives up on
 * one being opened (done is not called). */
void fetch_conn_close(fetch_conn *c);

/* Connections opened and calls finished by every client of the process. */
void fetch_totals(long *connections_opened, long *calls);

#endif
