/* http.c: the HTTP front: one libmicrohttpd daemon per worker, driven by its event loop: its connections, requests received and dispatched, responses. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/tcp.h>

#include "httpint.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "netaddr.h"
#include "policy.h"

/* libmicrohttpd keeps a request's line, headers and its own records of them in one pool
 * per connection; past it, it answers 414 or 431 itself (a bare page, see the README).
 * The pool is the header limit plus this much, so that tokend answers every request
 * within the limit, and refuses the ones past it with its own errors. */
#define HTTP_POOL_RESERVE 4096
#define HTTP_TICK_MS 1000 /* the front's periodic work: request deadlines, log counts */
/* A chunked body past the limit is read on and dropped up to this much before its 413
 * (see REQ_BODY); a longer one has its connection cut. */
#define HTTP_DISCARD_MAX (1024 * 1024)
/* A larger response that does not complete is logged with the bytes the client's TCP
 * acknowledged, not its whole length (a smaller one fits the socket buffers anyway). */
#define HTTP_BYTES_TRACKED (16 * 1024)

/* One open connection: waiting while a request is being received. */
typedef struct http_conn {
    list_node link; /* in the front's conns_list */
    int fd;
    int waiting; /* 1 from accept or the last response until a request is whole */
    int cut;     /* already shut down for missing the deadline */
    uint64_t since_ms;
    char peer[64];
} http_conn;

/* libmicrohttpd's own messages: most are caused by clients (malformed or oversized
 * requests, resets), which can repeat them at will, so they are throttled. A malformed or
 * overflowing Content-Length is answered first (httpcheck_refuse_framing). */
static void http_mhd_log(void *cls, const char *fmt, va_list ap) {
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    static const char malformed[] = "Failed to parse `Content-Length'";
    static const char overflow[] = "Too large value of 'Content-Length'";
    if (strncmp(msg, malformed, sizeof malformed - 1) == 0)
        httpcheck_refuse_framing(cls, 400, "malformed Content-Length header");
    else if (strncmp(msg, overflow, sizeof overflow - 1) == 0)
        httpcheck_refuse_framing(cls, 413, "request body too large");
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    int client_caused = strstr(msg, "Error processing request") || strstr(msg, "HTTP request") ||
            strstr(msg, "Connection reset") || strstr(msg, "Failed to receive") || strstr(msg, "Failed to send") ||
            strstr(msg, "Closing connection") || strstr(msg, "handshake") || strstr(msg, "TLS") ||
            strstr(msg, "packet"); /* HTTPS */
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
    list_insert_after(&x->front->heads, &x->link);
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
    if (f->nconns >= f->max_connections) { /* HTTP and HTTPS: one limit for both */
        log_throttled(LOG_DEBUG, "http (client)", "refused a connection from %s: the connection limit is reached",
                      text);
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
        list_insert_after(&f->conns_list, &c->link);
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
    list_remove(&c->link);
    free(c);
    *socket_context = NULL;
}

/* Once a second: cuts connections that did not deliver a whole request in time (slow or
 * idle clients), and reports the counts of throttled log messages. */
static void http_on_tick(void *ud) {
    http_front *f = ud;
    uint64_t now = loop_now_ms();
    for (list_node *n = f->request_timeout_ms ? list_first(&f->conns_list) : NULL; n;
         n = list_next(&f->conns_list, n)) {
        http_conn *c = list_entry(n, http_conn, link);
        if (c->waiting && !c->cut && c->fd >= 0 && now - c->since_ms > f->request_timeout_ms) {
            log_throttled(LOG_DEBUG, "http (client)",
                          "closing a connection from %s: no complete request within %llu ms", c->peer,
                          (unsigned long long)f->request_timeout_ms);
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

static void http_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                              enum MHD_RequestTerminationCode toe) {
    http_front *f = cls;
    http_exchange *x = *con_cls;
    http_conn_waiting(conn, 1); /* the next request's clock starts now */
    if (!x) return;
    http_request *req = &x->pub;
    *con_cls = NULL;
    if (!list_empty(&f->upgraded) && x->status == MHD_HTTP_SWITCHING_PROTOCOLS) httpstream_upgrade_lost(x);
    if (x->state == REQ_NEW) {
        list_remove(&x->link); /* from the heads: refused by libmicrohttpd, or the client left */
    } else if (x->state == REQ_DISPATCHED) {
        /* Only reachable when the daemon stops under a request: never leave it linked. */
        list_remove(&x->link);
        f->in_flight--;
        metrics_in_flight(-1);
    }
    if (x->status) metrics_request(req->route, x->status);
    if (req->method && (x->status || toe == MHD_REQUEST_TERMINATED_COMPLETED_OK) &&
        http_log_wanted(f, req, x->status)) {
        log_access_entry e = {
            .client = req->client,
            .method = req->method,
            .path = req->path ? req->path : "-",
            .status = x->status,
            .bytes = http_bytes_sent(x, toe),
            .duration_ms = (double)(loop_now_us() - req->start_us) / 1000.0,
            .upstream_ms = req->upstream_ms,
            .fields = x->log_fields,
            .nfields = x->nlog_fields,
        };
        log_access(&e);
    }
    for (size_t i = 0; i < x->nlog_fields; i++) {
        free((char *)x->log_fields[i].key);
        free((char *)x->log_fields[i].value);
    }
    free(x->log_fields);
    if (x->stream) httpstream_forget_request(x); /* its body may still be going out */
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
    return http_response_defaults(MHD_create_response_from_buffer(len, (void *)(uintptr_t)body, MHD_RESPMEM_MUST_COPY),
                                  content_type);
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
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback_cls(len, (void *)(uintptr_t)data,
                                                                                       release, ud);
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

void http_request_fail_close(http_request *req, int status, const char *message) {
    size_t len = 0;
    http_response *resp = http_response_error(message, &len);
    if (resp) MHD_add_response_header(HTTP_MHD(resp), MHD_HTTP_HEADER_CONNECTION, "close");
    http_request_respond(req, status, resp, len);
}

void http_request_respond(http_request *req, int status, http_response *resp, unsigned long long bytes) {
    http_exchange *x = HTTP_EXCHANGE(req);
    http_front *f = x->front;
    if (x->state == REQ_ANSWERED) {
        http_response_free(resp);
        return;
    }
    if (x->state == REQ_DISPATCHED) {
        list_remove(&x->link); /* from the pending */
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

/* Queues the stored response on the connection. */
static enum MHD_Result http_queue(http_exchange *x) {
    if (!x->response) return MHD_NO;
    x->acked_at_queue = x->bytes > HTTP_BYTES_TRACKED ? http_tcp_acked(x->conn) : -1;
    enum MHD_Result r = MHD_queue_response(x->conn, (unsigned int)x->status, x->response);
    MHD_destroy_response(x->response);
    x->response = NULL;
    if (r != MHD_YES && x->status == MHD_HTTP_SWITCHING_PROTOCOLS) httpstream_upgrade_refused(x);
    return r;
}

static enum MHD_Result http_on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                       const char *version, const char *upload_data, size_t *upload_data_size,
                                       void **con_cls) {
    http_front *f = cls;
    http_exchange *x = *con_cls;
    (void)url;
    if (!x) return MHD_NO; /* out of memory in http_on_uri: drop the connection */
    http_request *req = &x->pub;
    switch (x->state) {
    case REQ_NEW: {
        list_remove(&x->link); /* from the heads */
        req->method = method;
        x->version = version;
        x->conn = conn;
        httpcheck_resolve_client(f, x);
        int parsed = httpcheck_parse_target(req);
        if (parsed == -2) http_request_fail(req, 503, "out of memory");
        if (parsed == -2 || httpcheck_request(f, x, version) < 0) return http_queue(x);
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
                x->status = 413; /* for the access line: cut, nothing sent */
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
        list_insert_after(&f->pending, &x->link);
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
    default: return MHD_YES;
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
            MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_ALLOW_UPGRADE | MHD_USE_ERROR_LOG | MHD_USE_TURBO |
                    (tls ? MHD_USE_TLS : 0),
            0, http_on_accept, f, http_on_request, f, MHD_OPTION_EXTERNAL_LOGGER, http_mhd_log, f,
            MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd, MHD_OPTION_URI_LOG_CALLBACK, http_on_uri, f,
            MHD_OPTION_NOTIFY_COMPLETED, http_on_completed, f, MHD_OPTION_NOTIFY_CONNECTION, http_on_connection, f,
            MHD_OPTION_CONNECTION_MEMORY_LIMIT, memory, MHD_OPTION_CONNECTION_LIMIT,
            (unsigned int)opts->max_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)opts->idle_timeout_s,
            MHD_OPTION_SIGPIPE_HANDLED_BY_APP, (int)1, MHD_OPTION_ARRAY, tls_items, MHD_OPTION_END);
    if (!d) {
        snprintf(err, errlen,
                 tls ? "libmicrohttpd failed to start HTTPS (see the log; is the certificate usable "
                       "by GnuTLS?)"
                     : "libmicrohttpd failed to start (see the log)");
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_EPOLL_FD);
    if (!di || loop_watch(f->lp, di->epoll_fd, LOOP_READ, http_on_epoll, f) < 0) {
        snprintf(err, errlen, "cannot watch the libmicrohttpd epoll descriptor");
        MHD_stop_daemon(d); /* closes fd */
        *epoll_fd = -2;
        return NULL;
    }
    *epoll_fd = di->epoll_fd;
    return d;
}

http_front *http_create(loop *lp, const http_options *opts, http_dispatch_fn *dispatch, void *ud, char *err,
                        size_t errlen) {
    http_front *f = calloc(1, sizeof *f);
    int fd2 = opts->tls_cert_pem ? opts->tls_listen_fd : -1;
    if (!f) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    list_init(&f->heads);
    list_init(&f->pending);
    list_init(&f->conns_list);
    list_init(&f->streams);
    list_init(&f->upgraded);
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
        if (f->epoll_fd == -2) f->epoll_fd = -1; /* its socket went with the daemon */
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
    if (!f->run_pending && http_timeout_ms(f) != 0) return; /* nothing to do: skip its epoll_wait */
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
    f->closing = 1; /* what still arrives is not dispatched: the Lua host may be gone */
    for (list_node *n; (n = list_first(&f->pending));)
        http_request_fail(&list_entry(n, http_exchange, link)->pub, 503, "server shutting down");
    httpstream_close_all(f); /* upgraded connections closed, bodies being produced cut */
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

const char *http_request_version(const http_request *req) {
    return HTTP_EXCHANGE(req)->version;
}

int http_request_is_tls(const http_request *req) {
    const http_exchange *x = HTTP_EXCHANGE(req);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(x->conn, MHD_CONNECTION_INFO_DAEMON);
    return x->front->tls_daemon && ci && ci->daemon == x->front->tls_daemon;
}

int http_request_from_proxy(const http_request *req) {
    return netaddr_nets_contain(HTTP_EXCHANGE(req)->front->proxies, req->peer);
}
