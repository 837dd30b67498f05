/* http.h: the HTTP front: one libmicrohttpd daemon per worker, driven by its event loop. */
#ifndef TOKEND_HTTP_H
#define TOKEND_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "loop.h"

typedef struct http_front http_front;
typedef struct http_response http_response; /* an answer being built */

/* One request, as the dispatcher sees it. It answers with http_request_respond(), at once
 * or later (the connection is suspended until then). Strings live as long as the request. */
typedef struct http_request {
    const char *target; /* raw request target as received ("/a%20b?x=1") */
    const char *method;
    char *path;        /* %-decoded path */
    const char *query; /* raw query string after '?', "" if none */
    size_t query_len;
    char peer[64];   /* address of the connected socket's peer */
    char client[64]; /* the client: peer, or from X-Forwarded-For behind a trusted proxy */
    char *body;      /* request body (NUL-terminated), NULL when empty */
    size_t body_len;
    uint64_t start_us;  /* loop_now_us() when the request began */
    double upstream_ms; /* time waited on outside calls, -1 when none */
    char route[48];     /* metrics label: the route's pattern, "static" or "none" */
    unsigned log_every; /* access log: 1 every answer (default); 0 errors only; N one success in N */
} http_request;

typedef void http_dispatch_fn(void *ud, http_request *req);

struct netaddr_nets;
struct policy_conns;
struct policy_hosts;

typedef struct http_options {
    int listen_fd;                /* bound, listening, non-blocking socket (ownership taken) */
    unsigned int max_connections; /* this daemon's share */
    unsigned int idle_timeout_s;
    unsigned int request_timeout_s; /* headers and body must arrive within this; 0 = none */
    size_t max_header_bytes;        /* request line and headers; past it 414 or 431 */
    size_t max_body_bytes;
    size_t max_query_args;        /* more get 400 */
    struct netaddr_nets *proxies; /* borrowed; X-Forwarded-For is believed from these */
    struct policy_conns *conns;   /* borrowed; per-address connection counts */
    struct policy_hosts *hosts;   /* borrowed; the Host names served */
    /* HTTPS (libmicrohttpd's TLS, GnuTLS underneath): listen_tls makes listen_fd speak it
     * (HTTPS alone); tls_listen_fd, when >= 0, is a second socket that speaks it beside a
     * plain listen_fd (ownership taken). The certificate chain and its key are PEM text,
     * borrowed: they must outlive the front. max_connections bounds both sockets together. */
    int listen_tls;
    int tls_listen_fd;
    const char *tls_cert_pem;
    const char *tls_key_pem;
} http_options;

/* Starts a daemon on opts->listen_fd, registered in lp. dispatch(ud, req) is called once
 * per complete request. Returns NULL with err set on failure. */
http_front *http_create(loop *lp, const http_options *opts, http_dispatch_fn *dispatch, void *ud, char *err,
                        size_t errlen);

/* Lets libmicrohttpd do its work, if it has any (its epoll descriptor was ready, a
 * connection was resumed, or one of its timeouts is due); call after every loop wake-up. */
void http_run(http_front *f);

/* Milliseconds until libmicrohttpd needs to run again: 0 when it has work now, -1 for no
 * deadline. */
long http_timeout_ms(http_front *f);

/* Stops accepting new connections; requests on open connections go on. */
void http_quiesce(http_front *f);

/* Requests dispatched but not yet answered. */
size_t http_in_flight(const http_front *f);

/* Stops the daemon and closes the listening socket; requests still in flight are
 * answered 503 first. NULL is allowed. */
void http_free(http_front *f);

/* Answers req with status and resp (ownership taken; NULL sends an empty body); bytes is
 * the body size for the access log. Resumes the connection when it was suspended. */
void http_request_respond(http_request *req, int status, http_response *resp, unsigned long long bytes);

/* Looks up a request header (case-insensitive); NULL when absent. */
const char *http_request_header(const http_request *req, const char *name);

/* Adds key = value to the request's access-log line (copied; bare: a number or boolean). */
void http_request_log_field(http_request *req, const char *key, const char *value, int bare);

/* Calls fn for every request header, in arrival order. */
typedef void http_header_fn(void *ud, const char *name, const char *value);
void http_request_each_header(const http_request *req, http_header_fn *fn, void *ud);

/* Builds a response with a copy of body; NULL when out of memory. Adds the headers every
 * response carries (X-Content-Type-Options: nosniff) and content_type when not NULL. */
http_response *http_response_bytes(const char *body, size_t len, const char *content_type);

/* Builds a response that takes body (from malloc) and frees it when sent. NULL when out
 * of memory (body is then freed). Adds the headers every response carries. */
http_response *http_response_take(char *body, size_t len, const char *content_type);

/* Builds a response that sends length bytes of the open file fd from offset (sendfile
 * where it can) and closes it; NULL when out of memory (fd stays the caller's). Adds the
 * headers every response carries. */
http_response *http_response_file(int fd, uint64_t offset, uint64_t length, const char *content_type);

/* Builds a response that sends len bytes at data without copying them; release(ud) is
 * called once they are no longer needed (also when this fails: NULL, out of memory). */
http_response *http_response_shared(const void *data, size_t len, void (*release)(void *ud), void *ud,
                                    const char *content_type);

/* Adds a header; returns -1 when the name or value holds characters a header cannot carry. */
int http_response_header(http_response *resp, const char *name, const char *value);

/* ---- responses whose body is produced later (a proxied answer, an event stream) ---- */

typedef struct http_stream http_stream;
typedef void http_stream_fn(void *ud);

/* Builds a response to req whose body is written with http_stream_write as it comes and
 * finished with http_stream_end; send it with http_request_respond (bytes: 0, the access
 * log counts what goes out). size is the body's length, or -1 when unknown (chunked). At
 * most about `buffer` bytes wait in memory: past it writes are refused until drained(ud)
 * is called (from the loop, never inside a write). closed(ud) is called once when the
 * stream is over for any reason (sent, the client left, the response was dropped, the
 * front stopped): after it, never touch the stream. Adds no header. NULL when out of
 * memory (closed is not called then). */
http_response *http_response_stream(http_request *req, long long size, size_t buffer, http_stream_fn *drained,
                                    http_stream_fn *closed, void *ud, http_stream **out);

/* Appends len bytes to the body. Returns 0 when taken, 1 when the buffer is full (nothing
 * taken: wait for drained), -1 when the stream has ended or memory ran out. */
int http_stream_write(http_stream *s, const void *data, size_t len);

/* Ends the body: complete (what was written goes out, then the end), or cut (the
 * connection closes without a proper end, so that the client sees the answer failed). */
void http_stream_end(http_stream *s, int complete);

/* Frees a response that was not sent. NULL is allowed. */
void http_response_free(http_response *resp);

/* Builds the JSON error response {"error": message} (Cache-Control: no-store); *len gets
 * the body size. NULL when out of memory. */
http_response *http_response_error(const char *message, size_t *len);

/* The HTTP version of the request line ("HTTP/1.1"). */
const char *http_request_version(const http_request *req);

/* ---- connections handed over to another protocol (WebSocket) ---- */

typedef struct http_upgraded http_upgraded;

/* Called once the 101 went out (inside http_run): fd, non-blocking, is the owner's to
 * read, write and watch until http_upgraded_close (never to close itself); extra holds
 * what the client sent after its request (valid during the call). u is NULL and fd -1
 * when the connection could not be handed over (it is closed). */
typedef void http_upgrade_fn(void *ud, http_upgraded *u, int fd, const char *extra, size_t extra_len);

/* Answers req with 101 Switching Protocols and headers (name, value, ..., NULL), then
 * hands the connection over to fn(ud, ...). The request must be one libmicrohttpd can
 * upgrade (HTTP/1.1, Connection: Upgrade). Returns the connection's handle (the one fn
 * gets), or NULL when out of memory or a header is malformed (req is then not answered). */
http_upgraded *http_request_upgrade(http_request *req, const char *const *headers, http_upgrade_fn *fn, void *ud);

/* Ends an upgraded connection (the owner stopped watching its socket): libmicrohttpd
 * closes it on its next turn, which comes at once. Before fn was called, the connection is
 * closed instead of handed over, and fn is never called. Every upgraded connection must
 * be closed before http_free, which closes those left (their owners must be gone). */
void http_upgraded_close(http_upgraded *u);

/* Answers with a JSON error {"error": message}. */
void http_request_fail(http_request *req, int status, const char *message);

/* Answers 405 with the Allow header listing the methods allowed ("GET, HEAD"). */
void http_request_fail_allow(http_request *req, const char *allow);

/* 1 when req came over HTTPS (a TLS socket of the front). */
int http_request_is_tls(const http_request *req);

/* 1 when req's peer is a trusted proxy (its X-Forwarded-For was believed). */
int http_request_from_proxy(const http_request *req);

#endif
