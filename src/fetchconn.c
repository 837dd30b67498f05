/* fetchconn.c: connections for another protocol (a WebSocket): libcurl connects (CONNECT_ONLY, through a proxy if need be), their owner talks through them. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "fetchint.h"

/* Connections per multi handle for fetch_connect: libcurl 7.88 finds a connection's handle
 * by walking its multi handle's whole connection cache on every curl_easy_send and
 * curl_easy_recv (Curl_getconnectinfo), so a thousand WebSockets on one would cost a
 * thousand steps a message. */
#define FETCH_CONN_SHARD 32

/* A connection for another protocol: libcurl connects (CONNECT_ONLY), its owner talks. */
struct fetch_conn {
    fetch *f;
    fetch_shard *shard;  /* its multi handle, for as long as the connection lives */
    CURL *easy;          /* NULL once the connection is gone */
    int fd;              /* its socket once connected */
    int direct;          /* plain TCP: bytes go through the socket, not libcurl */
    fetch_conn_fn *done; /* until it is connected or failed */
    void *ud;
    uint64_t start_us;
    char errbuf[CURL_ERROR_SIZE];
    list_node link; /* in the client's conns */
};

/* Takes a multi handle of connections out of the list new connections start on. */
void fetchconn_shard_unlink(fetch_shard *sh) {
    list_remove(&sh->conns_link);
}

/* The multi handle a new connection starts on: one with fewer than FETCH_CONN_SHARD, or
 * a new one. The open connections stay in its cache (never leaving it while they live),
 * apart from the calls' keep-alive connections. NULL when out of memory. */
static fetch_shard *fetchconn_shard(fetch *f) {
    for (list_node *n = list_first(&f->conn_shards); n; n = list_next(&f->conn_shards, n)) {
        fetch_shard *sh = list_entry(n, fetch_shard, conns_link);
        if (sh->transfers < FETCH_CONN_SHARD) return sh;
    }
    fetch_shard *sh = calloc(1, sizeof *sh);
    if (!sh || !(sh->multi = curl_multi_init())) {
        free(sh);
        return NULL;
    }
    sh->f = f;
    sh->conns = 1;
    curl_multi_setopt(sh->multi, CURLMOPT_SOCKETFUNCTION, fetch_on_socket);
    curl_multi_setopt(sh->multi, CURLMOPT_SOCKETDATA, sh);
    curl_multi_setopt(sh->multi, CURLMOPT_TIMERFUNCTION, fetch_on_timer_change);
    curl_multi_setopt(sh->multi, CURLMOPT_TIMERDATA, sh);
    list_insert_after(&f->conn_shards, &sh->conns_link);
    return sh;
}

/* Takes a connection's handle out of its multi handle (closing the connection) and frees
 * the multi handle when it was retired and this was its last. */
static void fetchconn_drop(fetch_conn *c) {
    fetch_shard *sh = c->shard;
    if (!sh) return; /* dropped already */
    c->shard = NULL;
    curl_multi_remove_handle(sh->multi, c->easy); /* closes the socket (fetch_on_close_socket) */
    curl_easy_cleanup(c->easy);
    c->easy = NULL;
    sh->transfers--;
    if (sh->transfers > 0 || sh->retire.heap_index) return;
    /* Empty: freed when retired, or when it is not the only one (one stays, warm). */
    if (sh->broken) fetch_shard_free(c->f, sh);
    else if (list_first(&c->f->conn_shards) != list_last(&c->f->conn_shards)) {
        fetchconn_shard_unlink(sh);
        fetch_shard_free(c->f, sh);
    }
}

fetch_conn *fetch_connect(fetch *f, const char *url, const char *proxy, long timeout_ms, fetch_conn_fn *done,
                          void *ud) {
    fetch_shard *sh = fetchconn_shard(f);
    fetch_conn *c = sh ? calloc(1, sizeof *c) : NULL;
    if (!c) return NULL;
    c->f = f;
    c->fd = -1;
    /* Plain HTTP, straight or tunnelled through a proxy that is not HTTPS: once connected,
     * the socket carries the bytes as they are, and libcurl need not be asked for them. */
    c->direct = strncasecmp(url, "http://", 7) == 0 && !(proxy && strncasecmp(proxy, "https://", 8) == 0);
    c->shard = sh;
    c->done = done;
    c->ud = ud;
    c->start_us = loop_now_us();
    CURL *e = c->easy = curl_easy_init();
    if (!e) {
        free(c);
        return NULL;
    }
    curl_easy_setopt(e, CURLOPT_PRIVATE, c);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
    /* HTTP/1.1: offered h2 by ALPN, libcurl would speak its preface on the connection. */
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, f->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms > 1 ? timeout_ms : 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(e, CURLOPT_SHARE, f->share);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, fetch_on_open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, f);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, fetch_on_close_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, f);
    /* fetch_conn_recv gets at most this much a call; what goes through is small. */
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 4096L);
    curl_easy_setopt(e, CURLOPT_PROXY, proxy ? proxy : "");
    /* Through a proxy, an http:// URL would be sent to it as a request: tunnel instead. */
    if (proxy && *proxy) curl_easy_setopt(e, CURLOPT_HTTPPROXYTUNNEL, 1L);
    if (f->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, f->ca_file);
    CURLMcode rc = curl_multi_add_handle(sh->multi, e);
    if (rc != CURLM_OK) {
        curl_easy_cleanup(e);
        free(c);
        fetch_break_shard(sh, curl_multi_strerror(rc));
        return NULL;
    }
    sh->transfers++;
    list_insert_after(&f->conns, &c->link);
    return c;
}

/* Tells the owner of a connection being opened how it went; a failed one is dropped. */
static void fetchconn_report(fetch_conn *c, CURLcode code, const char *error) {
    fetch_conn_result r = { .failure = fetch_failure_of(code),
                            .curl_code = code,
                            .error = error,
                            .fd = -1,
                            .elapsed_ms = (double)(loop_now_us() - c->start_us) / 1000.0 };
    if (code == CURLE_OK) {
        curl_socket_t fd = CURL_SOCKET_BAD;
        if (curl_easy_getinfo(c->easy, CURLINFO_ACTIVESOCKET, &fd) != CURLE_OK || fd == CURL_SOCKET_BAD) {
            r.failure = FAILURE_NETWORK;
            r.curl_code = CURLE_COULDNT_CONNECT;
            r.error = "the connection closed as it opened";
        }
        r.fd = (int)fd;
    }
    if (r.failure != FAILURE_NONE) {
        r.fd = -1;
        fetchconn_drop(c);
    }
    c->fd = r.fd;
    fetch_conn_fn *done = c->done;
    c->done = NULL;
    done(c->ud, &r);
}

void fetchconn_drain(fetch_shard *sh) {
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(sh->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        fetch_conn *c = NULL;
        long connects = 0;
        CURLcode code = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
        curl_easy_getinfo(msg->easy_handle, CURLINFO_NUM_CONNECTS, &connects);
        fetch_count_opened(connects);
        if (!c || !c->done) continue;
        /* The handle stays in the multi handle: taking it out would close the connection. */
        fetchconn_report(c, code, code == CURLE_OK ? "" : c->errbuf[0] ? c->errbuf : curl_easy_strerror(code));
    }
}

/* A retired multi handle of connections: those still being opened fail; the open ones
 * go on, and the last to close frees it. */
void fetchconn_on_retire(void *ud) {
    fetch_shard *sh = ud;
    fetch *f = sh->f;
    sh->transfers++; /* held while connections fail (their owners may close them) */
    for (list_node *n = list_first(&f->conns); n;) {
        fetch_conn *c = list_entry(n, fetch_conn, link);
        if (c->shard != sh || !c->done) {
            n = list_next(&f->conns, n);
            continue;
        }
        fetchconn_report(c, CURLE_RECV_ERROR, "the HTTP client was reset after an internal failure; try again");
        n = list_first(&f->conns); /* done may have closed or opened connections: look again */
    }
    if (--sh->transfers == 0) fetch_shard_free(f, sh);
}

/* Whether a connection can carry bytes: connected, and its multi handle sound. */
static int fetchconn_ready(const fetch_conn *c) {
    return c->easy && !c->done;
}

ssize_t fetch_conn_send(fetch_conn *c, const void *data, size_t len) {
    size_t n = 0;
    if (!fetchconn_ready(c)) return -1;
    if (c->direct) {
        ssize_t w = send(c->fd, data, len, MSG_NOSIGNAL);
        if (w >= 0) return w;
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
    }
    CURLcode rc = curl_easy_send(c->easy, data, len, &n);
    if (rc == CURLE_AGAIN) return 0;
    if (rc != CURLE_OK) return -1;
    return (ssize_t)n;
}

ssize_t fetch_conn_recv(fetch_conn *c, void *buf, size_t len) {
    size_t n = 0;
    if (!fetchconn_ready(c)) return -1;
    if (c->direct) {
        ssize_t r = recv(c->fd, buf, len, 0);
        if (r > 0) return r;
        return r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
    }
    CURLcode rc = curl_easy_recv(c->easy, buf, len, &n);
    if (rc == CURLE_AGAIN) return 0;
    if (rc != CURLE_OK || n == 0) return -1; /* 0 bytes: the peer closed */
    return (ssize_t)n;
}

void fetch_conn_close(fetch_conn *c) {
    list_remove(&c->link);
    c->done = NULL;
    fetchconn_drop(c);
    free(c);
}

void fetchconn_close_all(fetch *f) {
    for (list_node *n; (n = list_first(&f->conns));) fetch_conn_close(list_entry(n, fetch_conn, link));
}
