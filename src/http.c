/* http.c: the HTTP front: one libmicrohttpd daemon per worker, driven by its event loop. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/tcp.h>
#include <microhttpd.h>

#include "header.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "netaddr.h"
#include "policy.h"
#include "url.h"

/* libmicrohttpd keeps a request's line, headers and its own records of them in one pool
 * per connection; past it, it answers 414 or 431 itself (a bare page, see the README).
 * The pool is the header limit plus this much, so that tokend answers every request
 * within the limit, and refuses the ones past it with its own errors. */
#define HTTP_POOL_RESERVE 4096
#define HTTP_XFF_MAX 32             /* X-Forwarded-For header lines read, the last ones of a request */
#define HTTP_TICK_MS 1000           /* the front's periodic work: request deadlines, log counts */
/* A chunked body past the limit is read on and dropped up to this much before its 413
 * (see REQ_BODY); a longer one has its connection cut. */
#define HTTP_DISCARD_MAX (1024 * 1024)
/* A larger response that does not complete is logged with the bytes the client's TCP
 * acknowledged, not its whole length (a smaller one fits the socket buffers anyway). */
#define HTTP_BYTES_TRACKED (16 * 1024)

enum { REQ_NEW, REQ_BODY, REQ_DISPATCHED, REQ_ANSWERED };

struct http_front {
    struct MHD_Daemon *daemon;
    loop *lp;
    int epoll_fd;
    http_dispatch_fn *dispatch;
    void *dispatch_ud;
    size_t max_body_bytes;
    size_t in_flight;
    struct http_exchange *heads;    /* head being received: the handler not called yet */
    struct http_exchange *pending;  /* dispatched, unanswered */
    int closing;                    /* http_free is under way */
    int quiesced_fd;            /* listening socket handed back by MHD_quiesce_daemon, or -1 */
    netaddr_nets *proxies;
    policy_conns *conns;
    policy_hosts *hosts;
    size_t max_header_bytes;
    size_t max_query_args;
    uint64_t request_timeout_ms;
    struct http_conn *conns_list;   /* open connections, for the request deadline */
    loop_timer tick_timer;
    int run_pending;            /* libmicrohttpd has work to do: its epoll fd was ready, or a resume */
    unsigned long log_sampled;  /* successes of sampled routes, for log_every */
    struct MHD_Daemon *daemon2;     /* the second socket's (HTTPS beside HTTP), or NULL */
    int epoll_fd2;
    int quiesced_fd2;
    struct MHD_Daemon *tls_daemon;  /* the daemon that speaks HTTPS, or NULL */
    unsigned int max_connections;   /* both daemons together */
    unsigned int nconns;
    struct http_stream *streams;    /* bodies being produced */
    struct http_upgraded *upgraded;     /* connections handed over to their owners */
};

/* A request with what only the HTTP front sees of it. */
typedef struct http_exchange {
    http_request pub;                   /* first: an http_request * is an http_exchange * */
    struct MHD_Connection *conn;
    http_front *front;
    struct http_stream *stream;         /* its answer's body, while being produced */
    char *target;
    size_t target_len;
    int state;
    int status;
    unsigned long long bytes;
    long long acked_at_queue;           /* the connection's acknowledged bytes then, or -1 */
    struct MHD_Response *response;
    int suspended;
    size_t discarded;                   /* body bytes dropped past the limit */
    log_field *log_fields;              /* added to the access line (keys and values owned) */
    size_t nlog_fields;
    struct http_exchange *prev, *next;  /* in the front's heads, then in its pending list */
    const char *version;                /* "HTTP/1.1" (libmicrohttpd's, as long as the request) */
} http_exchange;

#define HTTP_EXCHANGE(req) ((http_exchange *)(req))
/* An http_response is a libmicrohttpd response under another name. */
#define HTTP_MHD(resp) ((struct MHD_Response *)(resp))

/* A response body produced while it is sent (http_response_stream): the bytes written and
 * not yet taken by libmicrohttpd, which suspends the connection while there are none. */
struct http_stream {
    http_front *f;
    struct MHD_Connection *conn;
    http_exchange *x;               /* its request until that completes, else NULL */
    http_stream_fn *drained, *closed;
    void *ud;
    char *buf;                      /* pending bytes: buf[head .. head + len) */
    size_t head, len, cap;
    size_t high;                    /* writes are refused while this much is pending */
    int full;                       /* a write was refused: drained is due once half is gone */
    int suspended;                  /* its connection waits for bytes */
    int watched_fd;                 /* while suspended: its socket, watched for the client leaving; or -1 */
    int peer_spoke;                 /* the client sent something while it waited: watched no more */
    int ended;                      /* 1: complete, 2: cut */
    loop_timer drain_timer;
    struct http_stream *prev, *next;    /* the front's streams */
};

/* One open connection: waiting while a request is being received. */
typedef struct http_conn {
    struct http_conn *prev, *next;
    int fd;
    int waiting;                /* 1 from accept or the last response until a request is whole */
    int cut;                    /* already shut down for missing the deadline */
    uint64_t since_ms;
    char peer[64];
} http_conn;

static void http_list_push(http_exchange **list, http_exchange *x) {
    x->prev = NULL;
    x->next = *list;
    if (*list) (*list)->prev = x;
    *list = x;
}

static void http_list_unlink(http_exchange **list, http_exchange *x) {
    if (x->prev) x->prev->next = x->next;
    else if (*list == x) *list = x->next;
    if (x->next) x->next->prev = x->prev;
    x->prev = x->next = NULL;
}

/* libmicrohttpd 0.9.75 answers a malformed or overflowing Content-Length itself, then goes
 * on as if it had not and builds its answer's header a second time: the client would get
 * two header blocks and one body. It logs the cause first, while the request is the only
 * one whose head is whole and whose handler has not run (libmicrohttpd calls it at once
 * otherwise) with no answer yet. tokend answers it there with one well-formed response,
 * then shuts the sending side: libmicrohttpd's own answer fails and it closes. */
static void http_refuse_framing(http_front *f, int status, const char *message) {
    http_exchange *x = f->heads;
    while (x && (x->status || !MHD_get_connection_info(x->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE) ||
                 MHD_get_connection_info(x->conn, MHD_CONNECTION_INFO_HTTP_STATUS)))
        x = x->next;
    const union MHD_ConnectionInfo *ci = x ? MHD_get_connection_info(x->conn, MHD_CONNECTION_INFO_CONNECTION_FD) : NULL;
    if (!ci) return;
    char body[200], date[32], out[600];
    size_t blen = json_escape(body, (size_t)snprintf(body, sizeof body, "{\"error\":\""), sizeof body - 3, message);
    memcpy(body + blen, "\"}", 3);
    blen += 2;
    header_format_date(time(NULL), date);
    int n = snprintf(out, sizeof out, "HTTP/1.1 %d %s\r\nDate: %s\r\nConnection: close\r\n"
                     "X-Content-Type-Options: nosniff\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
                     "Content-Length: %zu\r\n\r\n%s", status, status == 413 ? "Content Too Large" : "Bad Request",
                     date, blen, body);
    /* Over HTTPS the socket carries TLS records, not this text: the client sees the close. */
    const union MHD_ConnectionInfo *di = MHD_get_connection_info(x->conn, MHD_CONNECTION_INFO_DAEMON);
    int tls = f->tls_daemon && di && di->daemon == f->tls_daemon;
    if (!tls && n > 0 && (size_t)n < sizeof out) (void)send(ci->connect_fd, out, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    shutdown(ci->connect_fd, SHUT_WR);
    x->pub.method = "-";        /* libmicrohttpd does not say which: the access line shows "-" */
    x->status = status;
    x->bytes = blen;
}

/* libmicrohttpd's own messages: most are caused by clients (malformed or oversized
 * requests, resets), which can repeat them at will, so they are throttled. */
static void http_mhd_log(void *cls, const char *fmt, va_list ap) {
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    static const char malformed[] = "Failed to parse `Content-Length'";
    static const char overflow[] = "Too large value of 'Content-Length'";
    if (strncmp(msg, malformed, sizeof malformed - 1) == 0)
        http_refuse_framing(cls, 400, "malformed Content-Length header");
    else if (strncmp(msg, overflow, sizeof overflow - 1) == 0)
        http_refuse_framing(cls, 413, "request body too large");
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    int client_caused = strstr(msg, "Error processing request") || strstr(msg, "HTTP request") ||
                        strstr(msg, "Connection reset") || strstr(msg, "Failed to receive") ||
                        strstr(msg, "Failed to send") || strstr(msg, "Closing connection") ||
                        strstr(msg, "handshake") || strstr(msg, "TLS") || strstr(msg, "packet");  /* HTTPS */
    if (client_caused) log_throttled(LOG_DEBUG, "http (client)", "%s", msg);
    else log_throttled(LOG_WARN, "http", "%s", msg);
}

/* Called by libmicrohttpd with the raw request target, before headers are parsed; the
 * returned pointer becomes the request's context. */
static void *http_on_uri(void *cls, const char *uri, struct MHD_Connection *conn) {
    http_exchange *x = calloc(1, sizeof *x);
    if (!x) return NULL;
    http_request *req = &x->pub;
    x->front = cls;
    x->conn = conn;
    x->acked_at_queue = -1;
    x->target = strdup(uri ? uri : "");
    x->target_len = uri ? strlen(uri) : 0;
    req->target = x->target;
    /* tokend parses the query itself (req->query). libmicrohttpd would store every
     * argument in the connection's pool, where a few hundred of them leave no room and
     * the request stalls: end its copy of the query string where it looks next. */
    char *args = uri ? strchr(uri, '?') : NULL;
    if (args) args[1] = '\0';
    req->upstream_ms = -1;
    req->log_every = 1;
    req->start_us = loop_now_us();
    snprintf(req->route, sizeof req->route, "none");
    http_list_push(&x->front->heads, x);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    netaddr_of_sockaddr(ci ? ci->client_addr : NULL, req->peer, sizeof req->peer);
    memcpy(req->client, req->peer, sizeof req->client);
    return x;
}

static http_conn *http_conn_of(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* Marks the connection as between requests (waiting) or done receiving one. */
static void http_conn_waiting(struct MHD_Connection *conn, int waiting) {
    http_conn *c = http_conn_of(conn);
    if (!c) return;
    c->waiting = waiting;
    c->since_ms = loop_now_ms();
}

/* Refuses a connection from an address that already holds its share. */
static enum MHD_Result http_on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen) {
    http_front *f = cls;
    char text[NETADDR_TEXT];
    (void)addrlen;
    netaddr_of_sockaddr(addr, text, sizeof text);
    /* Behind a proxy every connection comes from it: trusted proxies are not limited. */
    if (f->nconns >= f->max_connections) {     /* HTTP and HTTPS: one limit for both */
        log_throttled(LOG_DEBUG, "http (client)", "refused a connection from %s: the connection limit is reached", text);
        return MHD_NO;
    }
    if (policy_conns_allowed(f->conns, text) || netaddr_nets_contain(f->proxies, text)) return MHD_YES;
    log_throttled(LOG_DEBUG, "http (client)", "refused a connection from %s: too many open connections from it", text);
    return MHD_NO;
}

static void http_on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                               enum MHD_ConnectionNotificationCode toe) {
    http_front *f = cls;
    http_conn *c = *socket_context;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        c = calloc(1, sizeof *c);
        if (!c) return;
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        netaddr_of_sockaddr(ci ? ci->client_addr : NULL, c->peer, sizeof c->peer);
        ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        c->fd = ci ? ci->connect_fd : -1;
        c->waiting = 1;
        c->since_ms = loop_now_ms();
        c->next = f->conns_list;
        if (f->conns_list) f->conns_list->prev = c;
        f->conns_list = c;
        f->nconns++;
        policy_conns_opened(f->conns, c->peer);
        *socket_context = c;
        return;
    }
    /* Closed. libmicrohttpd takes its listening socket back (after the connection limit)
     * at the start of its next turn: make sure there is one. */
    f->run_pending = 1;
    if (!c) return;
    f->nconns--;
    policy_conns_closed(f->conns, c->peer);
    if (c->prev) c->prev->next = c->next;
    else f->conns_list = c->next;
    if (c->next) c->next->prev = c->prev;
    free(c);
    *socket_context = NULL;
}

/* Once a second: cuts connections that did not deliver a whole request in time (slow or
 * idle clients), and reports the counts of throttled log messages. */
static void http_on_tick(void *ud) {
    http_front *f = ud;
    uint64_t now = loop_now_ms();
    for (http_conn *c = f->request_timeout_ms ? f->conns_list : NULL; c; c = c->next) {
        if (c->waiting && !c->cut && c->fd >= 0 && now - c->since_ms > f->request_timeout_ms) {
            log_throttled(LOG_DEBUG, "http (client)", "closing a connection from %s: no complete request within %llu ms",
                          c->peer, (unsigned long long)f->request_timeout_ms);
            shutdown(c->fd, SHUT_RDWR);
            c->cut = 1;
        }
    }
    log_throttled_flush();
    loop_timer_start(f->lp, &f->tick_timer, HTTP_TICK_MS, http_on_tick, f);
}

/* The bytes the peer's TCP acknowledged on conn so far, or -1 when not known. */
static long long http_tcp_acked(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (!ci || getsockopt(ci->connect_fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
        len < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof ti.tcpi_bytes_acked)
        return -1;
    return (long long)ti.tcpi_bytes_acked;
}

/* What the access log says was sent: the whole body when the response completed; for a
 * larger one that did not, what the client acknowledged of it (headers included). */
static unsigned long long http_bytes_sent(http_exchange *x, enum MHD_RequestTerminationCode toe) {
    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK || x->acked_at_queue < 0) return x->bytes;
    long long now = http_tcp_acked(x->conn);
    if (now < x->acked_at_queue) return 0;
    unsigned long long sent = (unsigned long long)(now - x->acked_at_queue);
    return sent < x->bytes ? sent : x->bytes;
}

/* Whether a request's access line is written: always for an error, else as its route
 * asks (every answer, none, or one in log_every). */
static int http_log_wanted(http_front *f, const http_request *req, int status) {
    if (req->log_every == 1 || status >= 400 || status == 0) return 1;
    return req->log_every && ++f->log_sampled % req->log_every == 0;
}

static void http_upgrade_lost(http_exchange *x);

static void http_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                              enum MHD_RequestTerminationCode toe) {
    http_front *f = cls;
    http_exchange *x = *con_cls;
    http_conn_waiting(conn, 1);     /* the next request's clock starts now */
    if (!x) return;
    http_request *req = &x->pub;
    *con_cls = NULL;
    if (f->upgraded && x->status == MHD_HTTP_SWITCHING_PROTOCOLS) http_upgrade_lost(x);
    if (x->state == REQ_NEW) {
        http_list_unlink(&f->heads, x);     /* refused by libmicrohttpd, or the client left */
    } else if (x->state == REQ_DISPATCHED) {
        /* Only reachable when the daemon stops under a request: never leave it linked. */
        http_list_unlink(&f->pending, x);
        f->in_flight--;
        metrics_in_flight(-1);
    }
    if (x->status) metrics_request(req->route, x->status);
    if (req->method && (x->status || toe == MHD_REQUEST_TERMINATED_COMPLETED_OK) && http_log_wanted(f, req, x->status)) {
        log_access_entry e = {
            .client = req->client, .method = req->method, .path = req->path ? req->path : "-",
            .status = x->status, .bytes = http_bytes_sent(x, toe),
            .duration_ms = (double)(loop_now_us() - req->start_us) / 1000.0, .upstream_ms = req->upstream_ms,
            .fields = x->log_fields, .nfields = x->nlog_fields,
        };
        log_access(&e);
    }
    for (size_t i = 0; i < x->nlog_fields; i++) {
        free((char *)x->log_fields[i].key);
        free((char *)x->log_fields[i].value);
    }
    free(x->log_fields);
    if (x->stream) x->stream->x = NULL;     /* its body may still be going out */
    if (x->response) MHD_destroy_response(x->response);
    free(x->target);
    free(req->path);
    free(req->body);
    free(x);
}

int http_response_header(http_response *resp, const char *name, const char *value) {
    if (!*name || strpbrk(name, "\r\n:\t ") || strpbrk(value, "\r\n")) return -1;
    return MHD_add_response_header(HTTP_MHD(resp), name, value) == MHD_YES ? 0 : -1;
}

/* Adds the headers every response carries (X-Content-Type-Options: nosniff) and
 * content_type when not NULL. */
static http_response *http_response_defaults(struct MHD_Response *resp, const char *content_type) {
    if (!resp) return NULL;
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    if (content_type) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    return (http_response *)resp;
}

http_response *http_response_bytes(const char *body, size_t len, const char *content_type) {
    return http_response_defaults(MHD_create_response_from_buffer(len, (void *)(uintptr_t)body,
                                                                  MHD_RESPMEM_MUST_COPY), content_type);
}

http_response *http_response_take(char *body, size_t len, const char *content_type) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!resp) free(body);
    return http_response_defaults(resp, content_type);
}

http_response *http_response_file(int fd, uint64_t offset, uint64_t length, const char *content_type) {
    return http_response_defaults(MHD_create_response_from_fd_at_offset64(length, fd, offset), content_type);
}

http_response *http_response_shared(const void *data, size_t len, void (*release)(void *ud), void *ud,
                                    const char *content_type) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer_with_free_callback_cls(len, (void *)(uintptr_t)data, release, ud);
    if (!resp) release(ud);
    return http_response_defaults(resp, content_type);
}


void http_response_free(http_response *resp) {
    if (resp) MHD_destroy_response(HTTP_MHD(resp));
}

http_response *http_response_error(const char *message, size_t *len) {
    char body[600];
    size_t o = (size_t)snprintf(body, sizeof body, "{\"error\":\"");
    o = json_escape(body, o, sizeof body - 3, message);
    memcpy(body + o, "\"}", 3);
    o += 2;
    http_response *resp = http_response_bytes(body, o, "application/json");
    if (resp) MHD_add_response_header(HTTP_MHD(resp), MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    *len = o;
    return resp;
}

void http_request_fail(http_request *req, int status, const char *message) {
    size_t len = 0;
    http_response *resp = http_response_error(message, &len);
    http_request_respond(req, status, resp, len);
}

void http_request_fail_allow(http_request *req, const char *allow) {
    size_t len = 0;
    http_response *resp = http_response_error("method not allowed", &len);
    if (resp) MHD_add_response_header(HTTP_MHD(resp), MHD_HTTP_HEADER_ALLOW, allow);
    http_request_respond(req, 405, resp, len);
}

void http_request_respond(http_request *req, int status, http_response *resp, unsigned long long bytes) {
    http_exchange *x = HTTP_EXCHANGE(req);
    http_front *f = x->front;
    if (x->state == REQ_ANSWERED) {
        http_response_free(resp);
        return;
    }
    if (x->state == REQ_DISPATCHED) {
        http_list_unlink(&f->pending, x);
        f->in_flight--;
        metrics_in_flight(-1);
    }
    if (!resp) {
        resp = (http_response *)MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        bytes = 0;
    }
    x->state = REQ_ANSWERED;
    x->status = status;
    x->bytes = bytes;
    x->response = HTTP_MHD(resp);
    if (x->suspended) {
        x->suspended = 0;
        MHD_resume_connection(x->conn);
        f->run_pending = 1;
    }
}

static void http_upgrade_refused(http_exchange *x);
static void http_upgraded_close_all(http_front *f);

/* Queues the stored response on the connection. */
static enum MHD_Result http_queue(http_exchange *x) {
    if (!x->response) return MHD_NO;
    x->acked_at_queue = x->bytes > HTTP_BYTES_TRACKED ? http_tcp_acked(x->conn) : -1;
    enum MHD_Result r = MHD_queue_response(x->conn, (unsigned int)x->status, x->response);
    MHD_destroy_response(x->response);
    x->response = NULL;
    if (r != MHD_YES && x->status == MHD_HTTP_SWITCHING_PROTOCOLS) http_upgrade_refused(x);
    return r;
}

/* Splits the raw target into the decoded path and the raw query. Returns 0, -1 for a
 * malformed path, or -2 when out of memory. */
static int http_parse_target(http_request *req) {
    const char *t = req->target;
    if (!t) return -2;
    const char *q = strchr(t, '?');
    size_t plen = q ? (size_t)(q - t) : strlen(t);
    req->query = q ? q + 1 : "";
    req->query_len = strlen(req->query);
    req->path = malloc(plen + 1);
    if (!req->path) return -2;
    if (plen > 0 && t[0] == '/' && url_decode_path(t, plen, req->path, plen + 1, NULL) == URL_OK) return 0;
    memcpy(req->path, t, plen);     /* refused: the access log shows what was sent */
    req->path[plen] = '\0';
    return -1;
}

/* The last HTTP_XFF_MAX X-Forwarded-For header lines of a request, as a ring. */
typedef struct http_xff {
    const char *values[HTTP_XFF_MAX];
    size_t n;                   /* lines seen */
} http_xff;

static enum MHD_Result http_collect_xff(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    http_xff *x = cls;
    (void)kind;
    if (strcasecmp(key, "X-Forwarded-For") == 0) x->values[x->n++ % HTTP_XFF_MAX] = value ? value : "";
    return MHD_YES;
}

/* Sets req->client: the peer, or the client a trusted proxy names in X-Forwarded-For. Each
 * proxy appends to the end (a line, or an entry of the last line), so the right-most
 * entries are the ones to read: lines past the limit are dropped from the start, where
 * the client wrote its own, and never make the client the proxy. */
static void http_resolve_client(http_front *f, http_exchange *ex) {
    http_request *req = &ex->pub;
    if (!netaddr_nets_contain(f->proxies, req->peer)) return;
    http_xff x = { { 0 }, 0 };
    const char *lines[HTTP_XFF_MAX];
    MHD_get_connection_values(ex->conn, MHD_HEADER_KIND, http_collect_xff, &x);
    size_t kept = x.n < HTTP_XFF_MAX ? x.n : HTTP_XFF_MAX;
    for (size_t i = 0; i < kept; i++) lines[i] = x.values[(x.n - kept + i) % HTTP_XFF_MAX];
    netaddr_client(f->proxies, req->peer, lines, kept, req->client, sizeof req->client);
}

/* RFC 9110 5.6.2: whether c may be in a token (a header name). */
static int http_tchar(unsigned char c) {
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* libmicrohttpd 0.9.75 accepts request heads that RFC 9112 forbids and parses some of them
 * differently from the proxies in front of it: a bare LF as a line end, whitespace between
 * a header's name and its colon (kept in the name), and an obs-fold line (one starting
 * with a space or a tab), which it appends to the previous header's *name*, so that
 * "Content-Length:\r\n 44" frames no body here and 44 bytes in a proxy. What it did
 * shows in where it left the request: it parses the head in place in its read buffer,
 * replacing each CRLF (or bare LF) with NUL bytes and each header's colon with a NUL, and
 * hands out pointers into it, in arrival order; a name continued by a fold is moved
 * elsewhere. So a head is well-formed when, from the request line on, each header name
 * starts right after a CRLF ("\0\0"), is a token up to its colon, its value follows
 * after spaces or tabs and runs to the next "\0\0" without a CR, and the head ends with
 * an empty line exactly where libmicrohttpd says it does. A NUL in a value ends it early
 * and shows as well; one right before a bare LF cannot be told from a CRLF (its value
 * stops there for every reader). */
typedef struct http_syntax {
    const char *next;           /* where the next line must start */
    const char *end;            /* the end of the head */
    const char *error;          /* the first violation, or NULL */
    int hosts;                  /* Host headers */
} http_syntax;

/* Moves past the line end at eol, which must be a CRLF; returns 0 or -1. */
static int http_syntax_eol(http_syntax *sx, const char *eol) {
    if (eol < sx->next || sx->end - eol < 2 || eol[0] != '\0' || eol[1] != '\0') return -1;
    sx->next = eol + 2;
    return 0;
}

static enum MHD_Result http_syntax_line(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    http_syntax *sx = cls;
    (void)kind;
    if (key != sx->next || !value) {
        sx->error = "malformed header: a folded line, a bare LF or a NUL byte (RFC 9112 5.2, 2.2)";
        return MHD_NO;
    }
    size_t n = 0;
    while (http_tchar((unsigned char)key[n])) n++;
    if (n == 0 || key[n] != '\0') {
        sx->error = "malformed header name (RFC 9112 5.1: a token right before the colon)";
        return MHD_NO;
    }
    const char *v = key + n + 1;
    while (v < value && (*v == ' ' || *v == '\t')) v++;
    size_t len = strlen(value);
    if (v != value || memchr(value, '\r', len) || http_syntax_eol(sx, value + len) < 0) {
        sx->error = "malformed header value: a bare CR or LF, or a NUL byte (RFC 9112 2.2, RFC 9110 5.5)";
        return MHD_NO;
    }
    if (strcasecmp(key, "Host") == 0) sx->hosts++;
    return MHD_YES;
}

/* Checks the request head's syntax (see http_syntax) and its Host headers (RFC 9112 3.2:
 * one, and one at least in HTTP/1.1). Returns NULL, or what is wrong. */
static const char *http_check_syntax(http_exchange *x, const char *method, const char *version) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(x->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (!ci || !method || !version || version < method) return "malformed request";
    http_syntax sx = { method, method + ci->header_size, NULL, 0 };
    if (sx.end < version || http_syntax_eol(&sx, version + strlen(version)) < 0)
        return "malformed request line (RFC 9112 2.2: lines end with CRLF)";
    MHD_get_connection_values(x->conn, MHD_HEADER_KIND, http_syntax_line, &sx);
    if (sx.error) return sx.error;
    if (sx.end - sx.next != 2 || sx.next[0] != '\0' || sx.next[1] != '\0')
        return "malformed end of the request head (RFC 9112 2.2: CRLF)";
    if (sx.hosts > 1) return "more than one Host header";
    if (sx.hosts == 0 && strcmp(version, "HTTP/1.0") != 0) return "missing Host header (required in HTTP/1.1)";
    return NULL;
}

/* What the headers of a request tell about how its body is framed, and their size. */
typedef struct http_framing {
    size_t header_bytes;        /* "Name: value\r\n" of every header */
    const char *length;         /* the first Content-Length */
    int lengths_differ;         /* another Content-Length with another value */
    const char *coding;         /* Transfer-Encoding ("" when there were two) */
} http_framing;

static enum MHD_Result http_collect_framing(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    http_framing *fr = cls;
    (void)kind;
    value = value ? value : "";
    fr->header_bytes += strlen(key) + strlen(value) + 4;
    if (strcasecmp(key, "Content-Length") == 0) {
        if (!fr->length) fr->length = value;
        else if (strcmp(fr->length, value) != 0) fr->lengths_differ = 1;
    } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
        fr->coding = fr->coding ? "" : value;     /* two of them: refused below */
    }
    return MHD_YES;
}

/* The arguments of a query string: its non-empty '&'-separated items. */
static size_t http_count_args(const char *q, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (q[i] != '&' && (i == 0 || q[i - 1] == '&')) n++;
    return n;
}

/* Answers with a JSON error and closes the connection after it: what follows the request
 * on the connection cannot be trusted to be a request of its own. */
static void http_request_fail_close(http_request *req, int status, const char *message) {
    size_t len = 0;
    http_response *resp = http_response_error(message, &len);
    if (resp) MHD_add_response_header(HTTP_MHD(resp), MHD_HTTP_HEADER_CONNECTION, "close");
    http_request_respond(req, status, resp, len);
}

/* Checks what must hold before a request is dispatched: its syntax (http_check_syntax),
 * its size, one unambiguous framing of its body (RFC 9112 6.3: a request with both
 * Content-Length and Transfer-Encoding, or with Content-Lengths that differ, can be read
 * two ways, and the bytes after it smuggled in as a request of their own), and its Host.
 * Returns 0, or -1 once it answered the request. */
static int http_check_request(http_front *f, http_exchange *x, const char *version) {
    http_request *req = &x->pub;
    http_framing fr = { 0, NULL, 0, NULL };
    const char *malformed = http_check_syntax(x, req->method, version);
    if (malformed) {
        http_request_fail_close(req, 400, malformed);
        return -1;
    }
    MHD_get_connection_values(x->conn, MHD_HEADER_KIND, http_collect_framing, &fr);
    size_t line = strlen(req->method) + x->target_len + sizeof " HTTP/1.1\r\n";
    if (x->target_len > f->max_header_bytes) {
        http_request_fail_close(req, 414, "request target too long");
        return -1;
    }
    if (line + fr.header_bytes > f->max_header_bytes) {
        http_request_fail_close(req, 431, "request headers too large");
        return -1;
    }
    if ((fr.coding && (fr.length || strcasecmp(fr.coding, "chunked") != 0)) || fr.lengths_differ) {
        http_request_fail_close(req, 400, fr.lengths_differ ? "conflicting Content-Length headers"
                                : fr.length ? "both Content-Length and Transfer-Encoding"
                                : "unsupported Transfer-Encoding");
        return -1;
    }
    if (fr.length && strtoull(fr.length, NULL, 10) > f->max_body_bytes) {
        http_request_fail_close(req, 413, "request body too large");
        return -1;
    }
    if (http_count_args(req->query, req->query_len) > f->max_query_args) {
        http_request_fail(req, 400, "too many query arguments");
        return -1;
    }
    int host = policy_host_check(f->hosts, MHD_lookup_connection_value(x->conn, MHD_HEADER_KIND, "Host"));
    if (host == POLICY_HOST_MALFORMED) {
        http_request_fail_close(req, 400, "malformed Host header");
        return -1;
    }
    if (host == POLICY_HOST_DENIED) {
        http_request_fail(req, 421, "this server does not answer for that host name (TOKEND_ALLOWED_HOSTS)");
        return -1;
    }
    return 0;
}

static enum MHD_Result http_on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                       const char *method, const char *version, const char *upload_data,
                                       size_t *upload_data_size, void **con_cls) {
    http_front *f = cls;
    http_exchange *x = *con_cls;
    (void)url;
    if (!x) return MHD_NO;      /* out of memory in http_on_uri: drop the connection */
    http_request *req = &x->pub;
    switch (x->state) {
    case REQ_NEW: {
        http_list_unlink(&f->heads, x);
        req->method = method;
        x->version = version;
        x->conn = conn;
        http_resolve_client(f, x);
        int parsed = http_parse_target(req);
        if (parsed == -2) http_request_fail(req, 503, "out of memory");
        if (parsed == -2 || http_check_request(f, x, version) < 0) return http_queue(x);
        if (parsed < 0) {
            http_request_fail(req, 400, "malformed request path");
            return http_queue(x);
        }
        x->state = REQ_BODY;
        return MHD_YES;
    }
    case REQ_BODY:
        if (*upload_data_size) {
            size_t n = *upload_data_size;
            *upload_data_size = 0;
            if (x->discarded || req->body_len + n > f->max_body_bytes) {
                /* A chunked body past the limit (a Content-Length one was refused before it
                 * came). libmicrohttpd answers only once the body is whole, and closing
                 * now, with the client's bytes unread, would reset the connection under
                 * any answer: drop the rest, within a bound (and the request deadline). */
                free(req->body);
                req->body = NULL;
                req->body_len = 0;
                x->discarded += n;
                if (x->discarded <= HTTP_DISCARD_MAX) return MHD_YES;
                x->status = 413;        /* for the access line: cut, nothing sent */
                return MHD_NO;
            }
            char *b = realloc(req->body, req->body_len + n + 1);
            if (!b) return MHD_NO;
            memcpy(b + req->body_len, upload_data, n);
            req->body = b;
            req->body_len += n;
            b[req->body_len] = '\0';
            return MHD_YES;
        }
        if (x->discarded) {
            http_request_fail_close(req, 413, "request body too large");
            return http_queue(x);
        }
        x->state = REQ_DISPATCHED;
        http_conn_waiting(conn, 0);
        http_list_push(&f->pending, x);
        f->in_flight++;
        metrics_in_flight(1);
        if (f->closing) http_request_fail(req, 503, "server shutting down");
        else f->dispatch(f->dispatch_ud, req);
        if (x->state == REQ_ANSWERED) return http_queue(x);
        x->suspended = 1;
        MHD_suspend_connection(conn);
        return MHD_YES;
    case REQ_ANSWERED:
        /* Resumed with its answer; without one (no memory to build it), close rather than
         * leave the client waiting forever. */
        return http_queue(x);
    default:
        return MHD_YES;
    }
}

static void http_on_epoll(void *ud, int fd, unsigned events) {
    http_front *f = ud;
    (void)fd;
    (void)events;
    f->run_pending = 1;
}

/* Starts a daemon of f on the listening socket fd (HTTPS when tls) and watches its epoll
 * descriptor; NULL with err set on failure (fd is then still the caller's). */
static struct MHD_Daemon *http_start_daemon(http_front *f, const http_options *opts, int fd, int tls, int *epoll_fd,
                                            char *err, size_t errlen) {
    size_t memory = opts->max_header_bytes + HTTP_POOL_RESERVE;
    struct MHD_OptionItem tls_items[] = {
        { tls ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, (void *)(uintptr_t)opts->tls_cert_pem },
        { MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)(uintptr_t)opts->tls_key_pem },
        { MHD_OPTION_END, 0, NULL },
    };
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_ALLOW_UPGRADE | MHD_USE_ERROR_LOG | MHD_USE_TURBO | (tls ? MHD_USE_TLS : 0),
        0, http_on_accept, f, http_on_request, f,
        MHD_OPTION_EXTERNAL_LOGGER, http_mhd_log, f,
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
        MHD_OPTION_URI_LOG_CALLBACK, http_on_uri, f,
        MHD_OPTION_NOTIFY_COMPLETED, http_on_completed, f,
        MHD_OPTION_NOTIFY_CONNECTION, http_on_connection, f,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, memory,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)opts->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)opts->idle_timeout_s,
        MHD_OPTION_SIGPIPE_HANDLED_BY_APP, (int)1,
        MHD_OPTION_ARRAY, tls_items,
        MHD_OPTION_END);
    if (!d) {
        snprintf(err, errlen, tls ? "libmicrohttpd failed to start HTTPS (see the log; is the certificate usable "
                                    "by GnuTLS?)" : "libmicrohttpd failed to start (see the log)");
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_EPOLL_FD);
    if (!di || loop_watch(f->lp, di->epoll_fd, LOOP_READ, http_on_epoll, f) < 0) {
        snprintf(err, errlen, "cannot watch the libmicrohttpd epoll descriptor");
        MHD_stop_daemon(d);     /* closes fd */
        *epoll_fd = -2;
        return NULL;
    }
    *epoll_fd = di->epoll_fd;
    return d;
}

http_front *http_create(loop *lp, const http_options *opts, http_dispatch_fn *dispatch, void *ud,
                        char *err, size_t errlen) {
    http_front *f = calloc(1, sizeof *f);
    int fd2 = opts->tls_cert_pem ? opts->tls_listen_fd : -1;
    if (!f) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    f->lp = lp;
    f->dispatch = dispatch;
    f->dispatch_ud = ud;
    f->max_body_bytes = opts->max_body_bytes;
    f->quiesced_fd = f->quiesced_fd2 = -1;
    f->epoll_fd = f->epoll_fd2 = -1;
    f->max_connections = opts->max_connections;
    f->proxies = opts->proxies;
    f->conns = opts->conns;
    f->hosts = opts->hosts;
    f->max_header_bytes = opts->max_header_bytes;
    f->max_query_args = opts->max_query_args;
    f->request_timeout_ms = (uint64_t)opts->request_timeout_s * 1000u;
    int tls = opts->listen_tls && opts->tls_cert_pem;
    if (!(f->daemon = http_start_daemon(f, opts, opts->listen_fd, tls, &f->epoll_fd, err, errlen))) {
        if (f->epoll_fd == -2) f->epoll_fd = -1;        /* its socket went with the daemon */
        else close(opts->listen_fd);
        goto fail;
    }
    if (tls) f->tls_daemon = f->daemon;
    if (fd2 >= 0) {
        f->daemon2 = http_start_daemon(f, opts, fd2, 1, &f->epoll_fd2, err, errlen);
        if (!f->daemon2 && f->epoll_fd2 != -2) close(fd2);
        fd2 = -1;
        if (!f->daemon2) goto fail;
        f->tls_daemon = f->daemon2;
    }
    loop_timer_start(lp, &f->tick_timer, HTTP_TICK_MS, http_on_tick, f);
    return f;
fail:
    if (fd2 >= 0) close(fd2);
    if (f && f->daemon) {
        loop_watch(lp, f->epoll_fd, 0, NULL, NULL);
        MHD_stop_daemon(f->daemon);
    }
    if (!f) close(opts->listen_fd);
    free(f);
    return NULL;
}

void http_run(http_front *f) {
    if (!f->run_pending && http_timeout_ms(f) != 0) return;     /* nothing to do: skip its epoll_wait */
    f->run_pending = 0;
    MHD_run(f->daemon);
    if (f->daemon2) MHD_run(f->daemon2);
}

/* Milliseconds until daemon d needs to run, or -1. */
static long http_daemon_timeout_ms(struct MHD_Daemon *d) {
    MHD_UNSIGNED_LONG_LONG t;
    if (!d || MHD_get_timeout(d, &t) != MHD_YES) return -1;
    return t > 0x7fffffffULL ? 0x7fffffffL : (long)t;
}

long http_timeout_ms(http_front *f) {
    if (f->run_pending) return 0;
    long a = http_daemon_timeout_ms(f->daemon), b = http_daemon_timeout_ms(f->daemon2);
    return a < 0 ? b : b < 0 || a < b ? a : b;
}

void http_quiesce(http_front *f) {
    if (f->quiesced_fd < 0) f->quiesced_fd = MHD_quiesce_daemon(f->daemon);
    if (f->daemon2 && f->quiesced_fd2 < 0) f->quiesced_fd2 = MHD_quiesce_daemon(f->daemon2);
}

size_t http_in_flight(const http_front *f) {
    return f->in_flight;
}

void http_free(http_front *f) {
    if (!f) return;
    f->closing = 1;     /* what still arrives is not dispatched: the Lua host may be gone */
    while (f->pending) http_request_fail(&f->pending->pub, 503, "server shutting down");
    http_upgraded_close_all(f);     /* never stop libmicrohttpd under them */
    /* Bodies still being produced are cut: their connections are resumed to close (a
     * suspended connection must not be there when the daemon stops). */
    for (struct http_stream *s = f->streams; s; s = s->next) http_stream_end(s, 0);
    MHD_run(f->daemon);
    if (f->daemon2) MHD_run(f->daemon2);
    loop_watch(f->lp, f->epoll_fd, 0, NULL, NULL);
    if (f->daemon2) loop_watch(f->lp, f->epoll_fd2, 0, NULL, NULL);
    loop_timer_stop(f->lp, &f->tick_timer);
    MHD_stop_daemon(f->daemon);
    if (f->daemon2) MHD_stop_daemon(f->daemon2);
    if (f->quiesced_fd >= 0) close(f->quiesced_fd);
    if (f->quiesced_fd2 >= 0) close(f->quiesced_fd2);
    free(f);
}

void http_request_log_field(http_request *req, const char *key, const char *value, int bare) {
    http_exchange *x = HTTP_EXCHANGE(req);
    log_field *v = realloc(x->log_fields, (x->nlog_fields + 1) * sizeof *v);
    if (!v) return;
    x->log_fields = v;
    char *k = strdup(key), *val = strdup(value);
    if (!k || !val) {
        free(k);
        free(val);
        return;
    }
    v[x->nlog_fields++] = (log_field){ k, val, bare };
}

const char *http_request_header(const http_request *req, const char *name) {
    return MHD_lookup_connection_value(HTTP_EXCHANGE(req)->conn, MHD_HEADER_KIND, name);
}

typedef struct http_header_iter {
    http_header_fn *fn;
    void *ud;
} http_header_iter;

static enum MHD_Result http_header_cb(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    http_header_iter *it = cls;
    (void)kind;
    it->fn(it->ud, key, value ? value : "");
    return MHD_YES;
}

void http_request_each_header(const http_request *req, http_header_fn *fn, void *ud) {
    http_header_iter it = { fn, ud };
    MHD_get_connection_values(HTTP_EXCHANGE(req)->conn, MHD_HEADER_KIND, http_header_cb, &it);
}

/* ---- connections handed over to another protocol (WebSocket) ---- */

struct http_upgraded {
    http_front *front;
    struct MHD_UpgradeResponseHandle *urh;  /* NULL until libmicrohttpd hands the socket over */
    http_upgrade_fn *fn;
    void *ud;
    http_exchange *x;               /* until the socket is handed over */
    int cancelled;                  /* closed by its owner before it was handed over */
    struct http_upgraded *prev, *next;
};

static void http_upgraded_unlink(http_upgraded *u) {
    if (u->prev) u->prev->next = u->next;
    else if (u->front->upgraded == u) u->front->upgraded = u->next;
    if (u->next) u->next->prev = u->prev;
    u->prev = u->next = NULL;
}

/* libmicrohttpd sent the 101 and hands the socket over (inside MHD_run). */
static void http_on_upgrade(void *cls, struct MHD_Connection *conn, void *con_cls, const char *extra_in,
                            size_t extra_in_size, MHD_socket sock, struct MHD_UpgradeResponseHandle *urh) {
    http_upgraded *u = cls;
    (void)conn;
    (void)con_cls;
    u->urh = urh;
    u->x = NULL;
    if (u->cancelled) {
        http_upgraded_close(u);
        return;
    }
    u->fn(u->ud, u, (int)sock, extra_in, extra_in_size);
}

/* The connection of x ends before its socket was handed over (libmicrohttpd refused the
 * 101, or the client left): the owner hears of it as a connection that never came. */
static void http_upgrade_lost(http_exchange *x) {
    for (http_upgraded *u = x->front->upgraded; u; u = u->next) {
        if (u->x != x) continue;
        http_upgraded_unlink(u);
        if (!u->cancelled) u->fn(u->ud, NULL, -1, NULL, 0);
        free(u);
        return;
    }
}

static void http_upgrade_refused(http_exchange *x) {
    log_throttled(LOG_DEBUG, "http (client)", "%s: libmicrohttpd refused to upgrade the connection", x->pub.client);
    http_upgrade_lost(x);
}

http_upgraded *http_request_upgrade(http_request *req, const char *const *headers, http_upgrade_fn *fn, void *ud) {
    http_exchange *x = HTTP_EXCHANGE(req);
    http_front *f = x->front;
    if (x->state == REQ_ANSWERED) return NULL;
    http_upgraded *u = calloc(1, sizeof *u);
    struct MHD_Response *resp = u ? MHD_create_response_for_upgrade(http_on_upgrade, u) : NULL;
    if (!resp) {
        free(u);
        return NULL;
    }
    for (size_t i = 0; headers && headers[i]; i += 2) {
        if (http_response_header((http_response *)resp, headers[i], headers[i + 1]) < 0) {
            MHD_destroy_response(resp);
            free(u);
            return NULL;
        }
    }
    u->front = f;
    u->fn = fn;
    u->ud = ud;
    u->x = x;
    u->next = f->upgraded;
    if (f->upgraded) f->upgraded->prev = u;
    f->upgraded = u;
    http_request_respond(req, MHD_HTTP_SWITCHING_PROTOCOLS, (http_response *)resp, 0);
    return u;
}

void http_upgraded_close(http_upgraded *u) {
    if (!u->urh) {
        u->cancelled = 1;           /* closed as soon as libmicrohttpd hands it over */
        return;
    }
    http_upgraded_unlink(u);
    MHD_upgrade_action(u->urh, MHD_UPGRADE_ACTION_CLOSE);
    u->front->run_pending = 1;      /* libmicrohttpd closes the socket on its next turn only */
    free(u);
}

/* Before the daemon stops: the connections handed over are closed, those not yet handed
 * over are closed as they are (their owners are gone). */
static void http_upgraded_close_all(http_front *f) {
    for (http_upgraded *u = f->upgraded, *next; u; u = next) {
        next = u->next;
        http_upgraded_close(u);
    }
    MHD_run(f->daemon);
    if (f->daemon2) MHD_run(f->daemon2);
    while (f->upgraded) {
        http_upgraded *u = f->upgraded;
        http_upgraded_unlink(u);
        free(u);
    }
}

const char *http_request_version(const http_request *req) {
    return HTTP_EXCHANGE(req)->version;
}

/* ---- responses produced later ---- */

/* Calls the producer's drained, from the loop. */
static void http_stream_on_drain(void *ud) {
    http_stream *s = ud;
    if (!s->ended && s->drained) s->drained(s->ud);
}

/* Resumes the stream's connection when it waits for bytes. */
static void http_stream_wake(http_stream *s) {
    if (!s->suspended) return;
    s->suspended = 0;
    if (s->watched_fd >= 0) loop_watch(s->f->lp, s->watched_fd, 0, NULL, NULL);
    s->watched_fd = -1;
    MHD_resume_connection(s->conn);
    s->f->run_pending = 1;
}

/* The socket of a suspended stream became readable: libmicrohttpd neither looks at a
 * suspended connection nor reads one that is sending, so a client that left would hold it
 * until the next bytes fail. A socket the client shut or reset cuts the stream, which
 * closes the connection; so do bytes over TLS (a browser sends nothing else while it
 * receives but its close_notify, whose TCP end may come later). Other bytes are left for
 * later, and the socket is watched no more. */
static void http_stream_on_peer(void *ud, int fd, unsigned events) {
    http_stream *s = ud;
    struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };
    (void)events;
    if (poll(&p, 1, 0) <= 0) return;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(s->conn, MHD_CONNECTION_INFO_DAEMON);
    int tls = s->f->tls_daemon && ci && ci->daemon == s->f->tls_daemon;
    loop_watch(s->f->lp, fd, 0, NULL, NULL);
    s->watched_fd = -1;
    s->peer_spoke = 1;
    if ((p.revents & (POLLRDHUP | POLLHUP | POLLERR)) || tls) http_stream_end(s, 0);
}

/* Suspends the stream's connection until there are bytes, watching for the client leaving. */
static void http_stream_suspend(http_stream *s) {
    s->suspended = 1;
    MHD_suspend_connection(s->conn);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(s->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!s->peer_spoke && ci && loop_watch(s->f->lp, ci->connect_fd, LOOP_READ, http_stream_on_peer, s) == 0)
        s->watched_fd = ci->connect_fd;
}

/* libmicrohttpd asks for the next bytes of the body: what is pending, else the end, else
 * nothing yet (the connection is suspended until a write or the end). */
static ssize_t http_stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    http_stream *s = cls;
    (void)pos;
    if (!s->len) {
        if (s->ended) return s->ended == 1 ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
        if (!s->suspended) http_stream_suspend(s);
        return 0;
    }
    size_t n = s->len < max ? s->len : max;
    memcpy(buf, s->buf + s->head, n);
    s->head += n;
    s->len -= n;
    if (!s->len) s->head = 0;
    if (s->x) s->x->bytes += n;
    if (s->full && s->len <= s->high / 2) {
        s->full = 0;
        loop_timer_start(s->f->lp, &s->drain_timer, 0, http_stream_on_drain, s);
    }
    return (ssize_t)n;
}

/* The response is gone (sent, abandoned or never queued): the producer hears it once. */
static void http_stream_free(void *cls) {
    http_stream *s = cls;
    http_front *f = s->f;
    if (s->prev) s->prev->next = s->next;
    else f->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    if (s->x) s->x->stream = NULL;
    if (s->watched_fd >= 0) loop_watch(f->lp, s->watched_fd, 0, NULL, NULL);
    loop_timer_stop(f->lp, &s->drain_timer);
    http_stream_fn *closed = s->closed;
    void *ud = s->ud;
    free(s->buf);
    free(s);
    if (closed) closed(ud);
}

http_response *http_response_stream(http_request *req, long long size, size_t buffer, http_stream_fn *drained,
                                    http_stream_fn *closed, void *ud, http_stream **out) {
    http_exchange *x = HTTP_EXCHANGE(req);
    http_stream *s = calloc(1, sizeof *s);
    *out = NULL;
    if (!s) return NULL;
    s->f = x->front;
    s->conn = x->conn;
    s->watched_fd = -1;
    s->high = buffer ? buffer : 1;
    s->x = x;
    s->next = s->f->streams;
    if (s->f->streams) s->f->streams->prev = s;
    s->f->streams = s;
    /* libmicrohttpd reads at most block bytes at a time, into a buffer of the response's
     * own: small for an event stream (thousands may be open), 16 KiB for a large body. */
    size_t block = s->high < 256 ? 256 : s->high > 16384 ? 16384 : s->high;
    uint64_t total = size < 0 ? MHD_SIZE_UNKNOWN : (uint64_t)size;
    struct MHD_Response *resp = MHD_create_response_from_callback(total, block, http_stream_read, s, http_stream_free);
    if (!resp) {
        http_stream_free(s);    /* closed is not set yet: nobody is told */
        return NULL;
    }
    s->drained = drained;
    s->closed = closed;
    s->ud = ud;
    x->stream = s;
    *out = s;
    return (http_response *)resp;
}

int http_stream_write(http_stream *s, const void *data, size_t len) {
    if (s->ended) return -1;
    if (s->len >= s->high) {
        s->full = 1;
        return 1;
    }
    if (s->head && s->head + s->len + len > s->cap) {
        memmove(s->buf, s->buf + s->head, s->len);
        s->head = 0;
    }
    if (s->len + len > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->len + len) cap *= 2;
        char *b = realloc(s->buf, cap);
        if (!b) return -1;
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->head + s->len, data, len);
    s->len += len;
    http_stream_wake(s);
    return 0;
}

void http_stream_end(http_stream *s, int complete) {
    if (s->ended) return;
    s->ended = complete ? 1 : 2;
    if (!complete) s->len = 0;
    http_stream_wake(s);
}

int http_request_is_tls(const http_request *req) {
    const http_exchange *x = HTTP_EXCHANGE(req);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(x->conn, MHD_CONNECTION_INFO_DAEMON);
    return x->front->tls_daemon && ci && ci->daemon == x->front->tls_daemon;
}

int http_request_from_proxy(const http_request *req) {
    return netaddr_nets_contain(HTTP_EXCHANGE(req)->front->proxies, req->peer);
}
