/* fetch.c: outgoing HTTP requests from a worker's loop: non-blocking libcurl transfers (calls), and the multi handles they and the connections (fetchconn.c) run on. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <curl/curl.h>

#include "fetchint.h"
#include "log.h"

#define FETCH_WATCHDOG_SLACK_MS 1000  /* past its deadline, the watchdog ends a call */
#define FETCH_HEADERS_MAX (64 * 1024) /* response header bytes kept; more fails the call */
#define FETCH_KEEP_BUFFER (16 * 1024) /* a pooled call keeps buffers up to this size */

/* A multi handle other than the first that ran no transfer for two sweeps (30 to 60 s)
 * is closed with its connections: after a burst, they would linger (and, once the server
 * closes them, sit in CLOSE_WAIT) until the next burst. */
#define FETCH_SWEEP_MS 30000

/* Connections opened and calls finished by every client of the process. */
static atomic_long fetch_opened_total;
static atomic_long fetch_calls_total;

/* A growable byte buffer. */
typedef struct fetch_buf {
    char *data;
    size_t len, cap;
} fetch_buf;

struct fetch_call {
    fetch *f;
    fetch_shard *shard; /* the multi handle running the transfer, NULL when out */
    CURL *easy;
    fetch_done_fn *done;
    void *ud;
    fetch_buf body, headers, sent;
    size_t max_body;
    int too_big;
    uint64_t start_us;
    loop_timer watchdog;        /* our own deadline, in case curl loses its timeout */
    const fetch_stream *stream; /* a streamed call's callbacks, or NULL */
    int head_seen;              /* streamed: the head was handed over */
    int paused;                 /* streamed: the body callback paused it */
    char errbuf[CURL_ERROR_SIZE];
    list_node link; /* in the client's active calls, or its idle pool */
};

static void fetch_drain(fetch_shard *sh);
static void fetch_on_sweep(void *ud);

void fetch_count_opened(long connections) {
    atomic_fetch_add(&fetch_opened_total, connections);
}

void fetch_totals(long *connections_opened, long *calls) {
    *connections_opened = atomic_load(&fetch_opened_total);
    *calls = atomic_load(&fetch_calls_total);
}

loop *fetch_loop(const fetch *f) {
    return f->lp;
}

/* Appends n bytes; returns 0, or -1 when out of memory. */
static int fetch_buf_add(fetch_buf *b, const char *data, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

/* Empties a buffer, keeping its memory unless it grew past keep bytes. */
static void fetch_buf_reset(fetch_buf *b, size_t keep) {
    if (b->cap > keep) {
        free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
    b->len = 0;
    if (b->data) b->data[0] = '\0';
}

/* ---- sockets and timers, on the worker's loop ---- */

/* Runs curl on sh for a socket event or its timeout, then hands over what finished. */
static void fetch_run(fetch_shard *sh, curl_socket_t fd, int flags) {
    int running = 0;
    if (sh->broken) return;
    CURLMcode rc = curl_multi_socket_action(sh->multi, fd, flags, &running);
    if (sh->conns) fetchconn_drain(sh);
    else fetch_drain(sh);
    /* Out of memory, libcurl 7.88 can leave a socket's bookkeeping destroyed but in place:
     * the next event on that socket divides by zero inside curl_multi_socket_action. */
    if (rc != CURLM_OK) fetch_break_shard(sh, curl_multi_strerror(rc));
}

static void fetch_on_fd(void *ud, int fd, unsigned events) {
    int flags = 0;
    if (events & LOOP_READ) flags |= CURL_CSELECT_IN;
    if (events & LOOP_WRITE) flags |= CURL_CSELECT_OUT;
    fetch_run(ud, fd, flags);
}

/* What the client knows of a descriptor. A connection socket curl opened through
 * fetch_on_open_socket is closed through fetch_on_close_socket once it is in use; before
 * that (a connect attempt that lost or failed) curl closes it by itself. Reading only
 * starts on a connected socket, so a socket watched for reading is a connection that
 * will be closed through us: only such a socket may stay parked while idle. */
#define FETCH_FD_OPENED 1
#define FETCH_FD_PARKABLE 2

static int fetch_fd_state(const fetch *f, int fd) {
    return fd >= 0 && fd < f->nconn_fds ? f->conn_fds[fd] : 0;
}

int fetch_on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
    fetch_shard *sh = userp;
    fetch *f = sh->f;
    unsigned ev = 0;
    (void)easy;
    (void)socketp;
    /* A keep-alive connection going idle stays registered with the kernel (parked), so its
     * next request needs no epoll_ctl; its close goes through fetch_on_close_socket. */
    int state = fetch_fd_state(f, s);
    if (what == CURL_POLL_REMOVE && state == FETCH_FD_PARKABLE) {
        loop_park(f->lp, s);
        return 0;
    }
    if (state == FETCH_FD_OPENED && (what == CURL_POLL_IN || what == CURL_POLL_INOUT))
        f->conn_fds[s] = FETCH_FD_PARKABLE;
    else if (state == FETCH_FD_OPENED && what == CURL_POLL_REMOVE)
        f->conn_fds[s] = 0; /* a connect attempt that is over: curl may close it by itself */
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) ev |= LOOP_READ;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) ev |= LOOP_WRITE;
    /* Never answer -1: libcurl would mark the whole multi handle dead, and this worker
     * could not call out again. A transfer whose socket is not watched stalls, and its
     * watchdog answers it. */
    if (loop_watch(f->lp, s, ev, fetch_on_fd, sh) < 0 && ev)
        log_msg(LOG_ERROR, "fetch: cannot watch socket %d", (int)s);
    return 0;
}

/* curl's connection sockets are opened here, so that we know which ones we may park. */
curl_socket_t fetch_on_open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
    fetch *f = ud;
    (void)purpose;
    int fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    if (fd < 0) return CURL_SOCKET_BAD;
    loop_forget(f->lp, fd); /* a watch of an earlier socket with this number is gone */
    if (fd >= f->nconn_fds) {
        int n = f->nconn_fds ? f->nconn_fds : 256;
        while (n <= fd) n *= 2;
        unsigned char *v = realloc(f->conn_fds, (size_t)n);
        if (!v) return fd; /* not parkable: watched and unwatched as curl asks */
        memset(v + f->nconn_fds, 0, (size_t)(n - f->nconn_fds));
        f->conn_fds = v;
        f->nconn_fds = n;
    }
    f->conn_fds[fd] = FETCH_FD_OPENED;
    return fd;
}

int fetch_on_close_socket(void *ud, curl_socket_t s) {
    fetch *f = ud;
    if (s >= 0 && s < f->nconn_fds) f->conn_fds[s] = 0;
    loop_watch(f->lp, s, 0, NULL, NULL);
    return close(s);
}

static void fetch_on_timeout(void *ud) {
    fetch_run(ud, CURL_SOCKET_TIMEOUT, 0);
}

int fetch_on_timer_change(CURLM *multi, long timeout_ms, void *userp) {
    fetch_shard *sh = userp;
    (void)multi;
    if (timeout_ms < 0) loop_timer_stop(sh->f->lp, &sh->timer);
    else if (loop_timer_start(sh->f->lp, &sh->timer, timeout_ms, fetch_on_timeout, sh) < 0)
        log_msg(LOG_ERROR, "fetch: cannot arm curl's timer"); /* not -1: see fetch_on_socket */
    return 0;
}

/* ---- the answer ---- */

static size_t fetch_on_body(char *data, size_t size, size_t nmemb, void *ud) {
    fetch_call *c = ud;
    size_t n = size * nmemb;
    if (c->stream) {
        if (c->stream->body(c->ud, data, n)) return n;
        c->paused = 1;
        return CURL_WRITEFUNC_PAUSE;
    }
    if (c->body.len + n > c->max_body) {
        c->too_big = 1;
        return 0;
    }
    return fetch_buf_add(&c->body, data, n) == 0 ? n : 0;
}

static void fetch_on_watchdog(void *ud);

/* A streamed call's head is whole (the blank line after its headers): handed over unless it
 * is an interim answer (1xx). Returns n, or 0 to end the call. */
static size_t fetch_stream_head(fetch_call *c, size_t n) {
    long status = 0;
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status < 200 || c->head_seen) return n;
    c->head_seen = 1;
    loop_timer_stop(c->f->lp, &c->watchdog); /* curl's low-speed limit takes over */
    return c->stream->head(c->ud, status, c->headers.data ? c->headers.data : "", c->headers.len) == 0 ? n : 0;
}

/* Keeps the header lines of the last answer (a 1xx or a redirect that is not followed
 * comes before it). */
static size_t fetch_on_header(char *data, size_t size, size_t nmemb, void *ud) {
    fetch_call *c = ud;
    size_t n = size * nmemb;
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        c->headers.len = 0;
        return n;
    }
    if (n <= 2) return c->stream ? fetch_stream_head(c, n) : n; /* the blank line that ends them */
    if (c->headers.len + n > FETCH_HEADERS_MAX) {
        c->too_big = 1;
        return 0;
    }
    return fetch_buf_add(&c->headers, data, n) == 0 ? n : 0;
}

int fetch_result_header(const fetch_result *r, const char *name, char *out, size_t outlen) {
    size_t nlen = strlen(name);
    const char *p = r->headers, *end = r->headers + r->headers_len;
    while (p && p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) eol = end;
        if ((size_t)(eol - p) > nlen && p[nlen] == ':' && strncasecmp(p, name, nlen) == 0) {
            const char *v = p + nlen + 1, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            size_t vl = (size_t)(ve - v) < outlen ? (size_t)(ve - v) : outlen - 1;
            memcpy(out, v, vl);
            out[vl] = '\0';
            return 1;
        }
        p = eol + 1;
    }
    return 0;
}

failure_kind fetch_failure_of(int code) {
    switch (code) {
    case CURLE_OK: return FAILURE_NONE;
    case CURLE_OPERATION_TIMEDOUT: return FAILURE_TIMEOUT;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_PROXY: return FAILURE_CONNECT;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_USE_SSL_FAILED: return FAILURE_TLS;
    case CURLE_WRITE_ERROR:
    case CURLE_FILESIZE_EXCEEDED: return FAILURE_TOO_LARGE;
    default: return FAILURE_NETWORK;
    }
}

/* ---- calls ---- */

/* Creates a call with its easy handle and the options that never change. */
static fetch_call *fetch_call_new(fetch *f) {
    fetch_call *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    list_init(&c->link);
    c->f = f;
    c->easy = curl_easy_init();
    if (!c->easy) {
        free(c);
        return NULL;
    }
    CURL *e = c->easy;
    curl_easy_setopt(e, CURLOPT_PRIVATE, c);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, f->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, fetch_on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, fetch_on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(e, CURLOPT_SHARE, f->share);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    /* Over HTTPS the upstream may offer HTTP/2 (ALPN): calls then share a connection as
     * streams (see fetch_start for the wait on a connection being opened). */
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, fetch_on_open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, f);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, fetch_on_close_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, f);
    /* Token replies are well under 1 KiB: curl's default 16 KiB receive buffer per call
     * in flight would cost 32 MB at two thousand calls; 1 KiB is curl's smallest. */
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 1024L);
    if (f->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, f->ca_file);
    return c;
}

static void fetch_call_free(fetch_call *c) {
    curl_easy_cleanup(c->easy);
    free(c->body.data);
    free(c->headers.data);
    if (c->sent.data) explicit_bzero(c->sent.data, c->sent.cap);
    free(c->sent.data);
    free(c);
}

/* Puts a finished or cancelled call back in the idle pool; the body sent is wiped (it may
 * hold a secret). */
static void fetch_release(fetch *f, fetch_call *c) {
    fetch_buf_reset(&c->body, FETCH_KEEP_BUFFER);
    fetch_buf_reset(&c->headers, FETCH_KEEP_BUFFER);
    if (c->sent.data) explicit_bzero(c->sent.data, c->sent.cap);
    fetch_buf_reset(&c->sent, 0);
    c->done = NULL;
    c->ud = NULL;
    list_insert_after(&f->idle, &c->link);
}

/* The multi handle for a new transfer: the first with room, so that calls keep landing on
 * the same keep-alive connections; a new one when all are full; the least busy when the
 * limit is reached. NULL when out of memory. */
static fetch_shard *fetch_pick_shard(fetch *f) {
    fetch_shard *least = NULL;
    for (int i = 0; i < f->nshards; i++) {
        fetch_shard *sh = f->shards[i];
        if (sh->broken) continue;
        if (sh->transfers < FETCH_SHARD_CALLS) return sh;
        if (!least || sh->transfers < least->transfers) least = sh;
    }
    if (f->nshards == FETCH_MAX_SHARDS) return least;
    fetch_shard *sh = calloc(1, sizeof *sh);
    if (!sh || !(sh->multi = curl_multi_init())) {
        free(sh);
        return least;
    }
    sh->f = f;
    curl_multi_setopt(sh->multi, CURLMOPT_SOCKETFUNCTION, fetch_on_socket);
    curl_multi_setopt(sh->multi, CURLMOPT_SOCKETDATA, sh);
    curl_multi_setopt(sh->multi, CURLMOPT_TIMERFUNCTION, fetch_on_timer_change);
    curl_multi_setopt(sh->multi, CURLMOPT_TIMERDATA, sh);
    curl_multi_setopt(sh->multi, CURLMOPT_MAXCONNECTS, (long)FETCH_SHARD_CALLS * 4);
    f->shards[f->nshards++] = sh;
    if (f->nshards == 2) loop_timer_start(f->lp, &f->sweep, FETCH_SWEEP_MS, fetch_on_sweep, f);
    return sh;
}

void fetch_shard_free(fetch *f, fetch_shard *sh) {
    loop_timer_stop(f->lp, &sh->timer);
    loop_timer_stop(f->lp, &sh->retire);
    curl_multi_cleanup(sh->multi); /* closes its connections through fetch_on_close_socket */
    free(sh);
}

/* Closes the multi handles (but the first) that stayed unused since the last sweep. */
static void fetch_on_sweep(void *ud) {
    fetch *f = ud;
    int kept = 1;
    for (int i = 1; i < f->nshards; i++) {
        fetch_shard *sh = f->shards[i];
        if (!sh->used && sh->transfers == 0 && !sh->broken) {
            fetch_shard_free(f, sh);
            continue;
        }
        sh->used = 0;
        f->shards[kept++] = sh;
    }
    f->nshards = kept;
    if (f->nshards > 1) loop_timer_start(f->lp, &f->sweep, FETCH_SWEEP_MS, fetch_on_sweep, f);
}

/* Adds c, set up, to a multi handle and the active calls, with its watchdog after
 * watchdog_ms (fn). Returns 0, or -1 (c is then released or freed). */
static int fetch_launch(fetch *f, fetch_call *c, long watchdog_ms, loop_timer_fn *fn) {
    fetch_shard *sh = fetch_pick_shard(f);
    CURLMcode rc = sh ? curl_multi_add_handle(sh->multi, c->easy) : CURLM_OUT_OF_MEMORY;
    if (rc != CURLM_OK) {
        if (sh) fetch_break_shard(sh, curl_multi_strerror(rc));
        return -1;
    }
    c->shard = sh;
    sh->transfers++;
    sh->used = 1;
    list_insert_after(&f->active, &c->link);
    loop_timer_start(f->lp, &c->watchdog, watchdog_ms, fn, c);
    return 0;
}

/* Takes c's easy handle out of its multi handle, if it is in one. */
static void fetch_detach(fetch_call *c) {
    if (!c->shard) return;
    curl_multi_remove_handle(c->shard->multi, c->easy);
    c->shard->transfers--;
    c->shard = NULL;
}

fetch *fetch_create(loop *lp, const fetch_options *o, char *err, size_t errlen) {
    fetch *f = calloc(1, sizeof *f);
    if (!f) goto nomem;
    list_init(&f->active);
    list_init(&f->idle);
    list_init(&f->conn_shards);
    list_init(&f->conns);
    f->lp = lp;
    f->connect_timeout_ms = o->connect_timeout_ms;
    if (o->ca_file && *o->ca_file && !(f->ca_file = strdup(o->ca_file))) goto nomem;
    f->share = curl_share_init();
    if (!f->share) goto nomem;
    curl_share_setopt(f->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    curl_share_setopt(f->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    return f;
nomem:
    snprintf(err, errlen, "out of memory");
    fetch_free(f);
    return NULL;
}

void fetch_free(fetch *f) {
    if (!f) return;
    fetchconn_close_all(f);
    for (list_node *n; (n = list_first(&f->active));) {
        fetch_call *c = list_entry(n, fetch_call, link);
        list_remove(n);
        loop_timer_stop(f->lp, &c->watchdog);
        fetch_detach(c);
        if (c->stream) { /* its answer may be half sent: its owner ends it */
            fetch_result r = { .failure = FAILURE_NETWORK,
                               .curl_code = FETCH_SHUTDOWN,
                               .error = "shutting down",
                               .body = "",
                               .headers = "" };
            c->done(c->ud, &r);
        }
        fetch_call_free(c);
    }
    for (list_node *n; (n = list_first(&f->idle));) {
        list_remove(n);
        fetch_call_free(list_entry(n, fetch_call, link));
    }
    for (int i = 0; i < f->nshards; i++) fetch_shard_free(f, f->shards[i]);
    for (list_node *n; (n = list_first(&f->conn_shards));) {
        list_remove(n);
        fetch_shard_free(f, list_entry(n, fetch_shard, conns_link));
    }
    if (f->nshards) loop_timer_stop(f->lp, &f->sweep);
    if (f->share) curl_share_cleanup(f->share);
    free(f->ca_file);
    free(f->conn_fds);
    free(f);
}

/* Sets the method and the body of a request on c's handle (it may have served another
 * method before). Returns 0, or -1 when out of memory. */
static int fetch_set_method(fetch_call *c, const fetch_request *rq) {
    CURL *e = c->easy;
    const char *m = rq->method ? rq->method : "GET";
    if (strcmp(m, "GET") == 0 && !rq->body) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
        return 0;
    }
    if (strcmp(m, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
        return 0;
    }
    curl_easy_setopt(e, CURLOPT_NOBODY, 0L);
    if (rq->body && fetch_buf_add(&c->sent, rq->body, rq->body_len) < 0) return -1;
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->body_len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->sent.data ? c->sent.data : "");
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, strcmp(m, "POST") == 0 ? NULL : m);
    return 0;
}

/* Sets up c for rq: its callback, the URL, headers, proxy, method and body. Returns 0, or
 * -1 when out of memory. */
static int fetch_prepare(fetch_call *c, const fetch_request *rq, fetch_done_fn *done, void *ud) {
    CURL *e = c->easy;
    c->done = done;
    c->ud = ud;
    c->max_body = rq->max_body;
    c->too_big = 0;
    c->errbuf[0] = '\0';
    c->start_us = loop_now_us();
    curl_easy_setopt(e, CURLOPT_URL, rq->url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, (struct curl_slist *)rq->headers);
    curl_easy_setopt(e, CURLOPT_PROXY, rq->proxy ? rq->proxy : "");
    return fetch_set_method(c, rq);
}

fetch_call *fetch_start(fetch *f, const fetch_request *rq, fetch_done_fn *done, void *ud) {
    list_node *pooled = list_first(&f->idle);
    fetch_call *c = pooled ? list_entry(pooled, fetch_call, link) : fetch_call_new(f);
    if (!c) return NULL;
    list_remove(&c->link);
    CURL *e = c->easy;
    /* An https call waits for a connection being opened to learn whether it multiplexes,
     * rather than opening its own; plain http is HTTP/1.1 only, where waiting would serialise
     * a burst behind one handshake and leave fewer kept-alive connections than it needs. */
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, strncasecmp(rq->url, "https:", 6) == 0 ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, rq->timeout_ms > 1 ? rq->timeout_ms : 1L);
    if (fetch_prepare(c, rq, done, ud) < 0 ||
        fetch_launch(f, c, rq->timeout_ms + FETCH_WATCHDOG_SLACK_MS, fetch_on_watchdog) < 0) {
        fetch_release(f, c);
        return NULL;
    }
    return c;
}

/* A streamed call's head did not come in time (curl has no deadline for it alone). */
static void fetch_on_head_timeout(void *ud);

fetch_call *fetch_start_stream(fetch *f, const fetch_request *rq, const fetch_stream *st, fetch_done_fn *done,
                               void *ud) {
    fetch_call *c = fetch_call_new(f);
    if (!c) return NULL;
    CURL *e = c->easy;
    c->stream = st;
    /* Bodies of any size pass through: curl's largest buffer, HTTP/1.1 (a paused HTTP/2
     * stream would hold its connection's window), no deadline for the whole call but one
     * for a stall (curl does not count paused time). */
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long)CURL_MAX_WRITE_SIZE);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 0L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, st->idle_timeout_s > 0 ? st->idle_timeout_s : 1L);
    if (fetch_prepare(c, rq, done, ud) < 0 || fetch_launch(f, c, st->head_timeout_ms, fetch_on_head_timeout) < 0) {
        fetch_call_free(c);
        return NULL;
    }
    return c;
}

void fetch_resume(fetch_call *c) {
    if (!c->paused) return;
    c->paused = 0;
    curl_easy_pause(c->easy, CURLPAUSE_CONT); /* may hand bytes over at once; runs on via curl's timer */
}

/* Takes c out of the running calls: unlinked, its watchdog stopped, its handle out of
 * its multi handle. */
static void fetch_stop(fetch_call *c) {
    list_remove(&c->link);
    loop_timer_stop(c->f->lp, &c->watchdog);
    fetch_detach(c);
}

/* A call that is over: back in the idle pool, or freed when streamed (its handle's options
 * are not a pooled call's). */
static void fetch_retire_call(fetch *f, fetch_call *c) {
    if (c->stream) fetch_call_free(c);
    else fetch_release(f, c);
}

void fetch_cancel(fetch_call *c) {
    fetch_stop(c);
    fetch_retire_call(c->f, c);
}

/* Ends a call that got no outcome from curl with failure and message. */
static void fetch_fail(fetch_call *c, failure_kind failure, const char *message) {
    fetch_result r;
    memset(&r, 0, sizeof r);
    r.failure = failure;
    r.curl_code = failure == FAILURE_TIMEOUT ? CURLE_OPERATION_TIMEDOUT : CURLE_RECV_ERROR;
    r.error = message;
    r.body = r.headers = "";
    r.elapsed_ms = (double)(loop_now_us() - c->start_us) / 1000.0;
    fetch_done_fn *done = c->done;
    void *ud = c->ud;
    fetch_stop(c);
    fetch_call_free(c); /* not reused: curl's state for it cannot be trusted */
    done(ud, &r);
}

/* Retires a broken multi handle: the calls still on it fail, and it is closed. */
static void fetch_on_retire(void *ud) {
    fetch_shard *sh = ud;
    fetch *f = sh->f;
    int kept = 0;
    for (int i = 0; i < f->nshards; i++)
        if (f->shards[i] != sh) f->shards[kept++] = f->shards[i];
    f->nshards = kept;
    if (f->nshards < 2) loop_timer_stop(f->lp, &f->sweep);
    for (list_node *n = list_first(&f->active); n;) {
        fetch_call *c = list_entry(n, fetch_call, link);
        if (c->shard != sh) {
            n = list_next(&f->active, n);
            continue;
        }
        fetch_fail(c, FAILURE_NETWORK, "the HTTP client was reset after an internal failure; try again");
        n = list_first(&f->active); /* done may have started or cancelled calls: look again */
    }
    fetch_shard_free(f, sh);
}

/* Stops using a multi handle whose state curl may have corrupted (it lost a call, or a
 * call of it failed): nothing more runs on it, new calls get a fresh one, and it is
 * retired once the loop's round is over (other events of the round may name it). */
void fetch_break_shard(fetch_shard *sh, const char *why) {
    if (sh->broken) return;
    sh->broken = 1;
    if (sh->conns) fetchconn_shard_unlink(sh); /* new connections start elsewhere */
    log_throttled(LOG_WARN, "fetch", "resetting an HTTP client whose state libcurl may have corrupted (%s)", why);
    loop_timer_start(sh->f->lp, &sh->retire, 0, sh->conns ? fetchconn_on_retire : fetch_on_retire, sh);
}

static void fetch_on_head_timeout(void *ud) {
    fetch_call *c = ud;
    char why[96];
    snprintf(why, sizeof why, "no answer within %ld ms", c->stream->head_timeout_ms);
    fetch_fail(c, FAILURE_TIMEOUT, why);
}

/* Reports a call that never got an outcome from curl as a timeout: libcurl lost track
 * of it, and its multi handle is retired. */
static void fetch_on_watchdog(void *ud) {
    fetch_call *c = ud;
    fetch_shard *sh = c->shard;
    log_throttled(LOG_WARN, "fetch", "a call outlived its deadline by %d ms: cancelled", FETCH_WATCHDOG_SLACK_MS);
    fetch_fail(c, FAILURE_TIMEOUT, "no answer within the deadline (the call was lost)");
    if (sh) fetch_break_shard(sh, "a call was lost");
}

static void fetch_drain(fetch_shard *sh) {
    fetch *f = sh->f;
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(sh->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        CURL *easy = msg->easy_handle;
        CURLcode code = msg->data.result;
        fetch_call *c = NULL;
        long status = 0, connects = 0;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&c);
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &connects);
        atomic_fetch_add(&fetch_opened_total, connects);
        atomic_fetch_add(&fetch_calls_total, 1);
        fetch_stop(c);
        if (code == CURLE_WRITE_ERROR && c->too_big) code = CURLE_FILESIZE_EXCEEDED;
        fetch_result r = {
            .failure = fetch_failure_of(code),
            .curl_code = code,
            .error = code == CURLE_OK ? ""
                    : c->errbuf[0]    ? c->errbuf
                                      : curl_easy_strerror(code),
            .status = code == CURLE_OK ? status : 0,
            .body = c->body.data ? c->body.data : "",
            .body_len = c->body.len,
            .headers = c->headers.data ? c->headers.data : "",
            .headers_len = c->headers.len,
            .elapsed_ms = (double)(loop_now_us() - c->start_us) / 1000.0,
        };
        fetch_done_fn *done = c->done;
        void *ud = c->ud;
        done(ud, &r);
        fetch_retire_call(f, c);
    }
}

fetch_headers *fetch_headers_add(fetch_headers *list, const char *line) {
    struct curl_slist *more = curl_slist_append((struct curl_slist *)list, line);
    if (!more) fetch_headers_free(list);
    return (fetch_headers *)more;
}

void fetch_headers_free(fetch_headers *list) {
    for (struct curl_slist *s = (struct curl_slist *)list; s; s = s->next) explicit_bzero(s->data, strlen(s->data));
    curl_slist_free_all((struct curl_slist *)list);
}
