/* httpstream.c: the HTTP front's exchanges that outlive their answer: connections handed over to another protocol (WebSocket upgrades) and responses produced while they are sent (streams). */
#define _GNU_SOURCE
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "httpint.h"
#include "log.h"

/* ---- connections handed over to another protocol (WebSocket) ---- */

struct http_upgraded {
    http_front *front;
    struct MHD_UpgradeResponseHandle *urh; /* NULL until libmicrohttpd hands the socket over */
    http_upgrade_fn *fn;
    void *ud;
    http_exchange *x; /* until the socket is handed over */
    int cancelled;    /* closed by its owner before it was handed over */
    list_node link;   /* in the front's upgraded */
};

/* libmicrohttpd sent the 101 and hands the socket over (inside MHD_run). */
static void httpstream_on_upgrade(void *cls, struct MHD_Connection *conn, void *con_cls, const char *extra_in,
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
void httpstream_upgrade_lost(http_exchange *x) {
    for (list_node *n = list_first(&x->front->upgraded); n; n = list_next(&x->front->upgraded, n)) {
        http_upgraded *u = list_entry(n, http_upgraded, link);
        if (u->x != x) continue;
        list_remove(&u->link);
        if (!u->cancelled) u->fn(u->ud, NULL, -1, NULL, 0);
        free(u);
        return;
    }
}

/* libmicrohttpd refused to queue x's 101. */
void httpstream_upgrade_refused(http_exchange *x) {
    log_throttled(LOG_DEBUG, "http (client)", "%s: libmicrohttpd refused to upgrade the connection", x->pub.client);
    httpstream_upgrade_lost(x);
}

http_upgraded *http_request_upgrade(http_request *req, const char *const *headers, http_upgrade_fn *fn, void *ud) {
    http_exchange *x = HTTP_EXCHANGE(req);
    http_front *f = x->front;
    if (x->state == REQ_ANSWERED) return NULL;
    http_upgraded *u = calloc(1, sizeof *u);
    struct MHD_Response *resp = u ? MHD_create_response_for_upgrade(httpstream_on_upgrade, u) : NULL;
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
    list_insert_after(&f->upgraded, &u->link);
    http_request_respond(req, MHD_HTTP_SWITCHING_PROTOCOLS, (http_response *)resp, 0);
    return u;
}

void http_upgraded_close(http_upgraded *u) {
    if (!u->urh) {
        u->cancelled = 1; /* closed as soon as libmicrohttpd hands it over */
        return;
    }
    list_remove(&u->link);
    MHD_upgrade_action(u->urh, MHD_UPGRADE_ACTION_CLOSE);
    u->front->run_pending = 1; /* libmicrohttpd closes the socket on its next turn only */
    free(u);
}

/* Before the daemon stops: the connections handed over are closed, those not yet handed
 * over are closed as they are (their owners are gone). */
static void httpstream_close_upgraded(http_front *f) {
    for (list_node *n = list_first(&f->upgraded), *next; n; n = next) {
        next = list_next(&f->upgraded, n);
        http_upgraded_close(list_entry(n, http_upgraded, link));
    }
    MHD_run(f->daemon);
    if (f->daemon2) MHD_run(f->daemon2);
    for (list_node *n; (n = list_first(&f->upgraded));) {
        list_remove(n);
        free(list_entry(n, http_upgraded, link));
    }
}

/* ---- responses produced later ---- */

/* A response body produced while it is sent (http_response_stream): the bytes written and
 * not yet taken by libmicrohttpd, which suspends the connection while there are none. */
struct http_stream {
    http_front *f;
    struct MHD_Connection *conn;
    http_exchange *x; /* its request until that completes, else NULL */
    http_stream_fn *drained, *closed;
    void *ud;
    char *buf; /* pending bytes: buf[head .. head + len) */
    size_t head, len, cap;
    size_t high;    /* writes are refused while this much is pending */
    int full;       /* a write was refused: drained is due once half is gone */
    int suspended;  /* its connection waits for bytes */
    int watched_fd; /* while suspended: its socket, watched for the client leaving; or -1 */
    int peer_spoke; /* the client sent something while it waited: watched no more */
    int ended;      /* 1: complete, 2: cut */
    loop_timer drain_timer;
    list_node link; /* in the front's streams */
};

/* Calls the producer's drained, from the loop. */
static void httpstream_on_drain(void *ud) {
    http_stream *s = ud;
    if (!s->ended && s->drained) s->drained(s->ud);
}

/* Resumes the stream's connection when it waits for bytes. */
static void httpstream_wake(http_stream *s) {
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
static void httpstream_on_peer(void *ud, int fd, unsigned events) {
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
static void httpstream_suspend(http_stream *s) {
    s->suspended = 1;
    MHD_suspend_connection(s->conn);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(s->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!s->peer_spoke && ci && loop_watch(s->f->lp, ci->connect_fd, LOOP_READ, httpstream_on_peer, s) == 0)
        s->watched_fd = ci->connect_fd;
}

/* libmicrohttpd asks for the next bytes of the body: what is pending, else the end, else
 * nothing yet (the connection is suspended until a write or the end). */
static ssize_t httpstream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    http_stream *s = cls;
    (void)pos;
    if (!s->len) {
        if (s->ended) return s->ended == 1 ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
        if (!s->suspended) httpstream_suspend(s);
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
        loop_timer_start(s->f->lp, &s->drain_timer, 0, httpstream_on_drain, s);
    }
    return (ssize_t)n;
}

/* The response is gone (sent, abandoned or never queued): the producer hears it once. */
static void httpstream_free(void *cls) {
    http_stream *s = cls;
    http_front *f = s->f;
    list_remove(&s->link);
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
    list_insert_after(&s->f->streams, &s->link);
    /* libmicrohttpd reads at most block bytes at a time, into a buffer of the response's
     * own: small for an event stream (thousands may be open), 16 KiB for a large body. */
    size_t block = s->high < 256 ? 256 : s->high > 16384 ? 16384 : s->high;
    uint64_t total = size < 0 ? MHD_SIZE_UNKNOWN : (uint64_t)size;
    struct MHD_Response *resp = MHD_create_response_from_callback(total, block, httpstream_read, s, httpstream_free);
    if (!resp) {
        httpstream_free(s); /* closed is not set yet: nobody is told */
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
    httpstream_wake(s);
    return 0;
}

void http_stream_end(http_stream *s, int complete) {
    if (s->ended) return;
    s->ended = complete ? 1 : 2;
    if (!complete) s->len = 0;
    httpstream_wake(s);
}

void httpstream_forget_request(http_exchange *x) {
    x->stream->x = NULL;
}

void httpstream_close_all(http_front *f) {
    httpstream_close_upgraded(f); /* never stop libmicrohttpd under them */
    /* Bodies still being produced are cut: their connections are resumed to close (a
     * suspended connection must not be there when the daemon stops). */
    for (list_node *n = list_first(&f->streams); n; n = list_next(&f->streams, n))
        http_stream_end(list_entry(n, http_stream, link), 0);
}
