/* upstream.c: the AssemblyAI token client: non-blocking libcurl transfers on a worker's loop. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <stdint.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>
#include <curl/curl.h>

#include "json.h"
#include "log.h"
#include "metrics.h"
#include "upstream.h"

#define UPSTREAM_BODY_MAX (64 * 1024)

/* Connections opened to the upstream by every worker of the process. */
static atomic_long upstream_opened_total;
static atomic_long upstream_calls_total;

typedef struct upstream_shard upstream_shard;

struct upstream_call {
    upstream *up;
    upstream_shard *shard;          /* the multi handle running the transfer, NULL when out */
    CURL *easy;
    upstream_done_fn *done;
    void *ud;
    char *body;
    size_t body_len;
    int body_too_big;
    long retry_after;
    uint64_t start_ms;
    long expires_in_s;
    int attempts;                   /* transfers started for this call */
    loop_timer retry_timer;         /* armed while waiting to retry */
    loop_timer watchdog;            /* our own deadline, in case curl loses its timeout */
    char errbuf[CURL_ERROR_SIZE];
    upstream_call *prev, *next;     /* active list, or free list (next only) */
};

#define UPSTREAM_RETRY_MIN_MS 100     /* back-off before the one retry of a 5xx: 100..300 ms */
#define UPSTREAM_WATCHDOG_SLACK_MS 1000   /* past the deadline, the watchdog ends the call */
#define UPSTREAM_RETRY_JITTER_MS 200

/* libcurl scans a multi handle's whole connection cache for every transfer (to find a
 * free keep-alive connection, and again when the transfer leaves). With a thousand calls
 * in flight that scan dominates, so calls are spread over several multi handles of at
 * most UPSTREAM_SHARD_CALLS transfers each; they share DNS and TLS sessions. */
#define UPSTREAM_SHARD_CALLS 64
#define UPSTREAM_MAX_SHARDS 64
/* A multi handle other than the first that ran no transfer for two sweeps (30 to 60 s)
 * is closed with its connections: after a burst, they would linger (and, once the server
 * closes them, sit in CLOSE_WAIT) until the next burst. */
#define UPSTREAM_SWEEP_MS 30000

struct upstream_shard {
    upstream *up;
    CURLM *multi;
    loop_timer timer;               /* curl's timeout for this multi handle */
    int transfers;                  /* easy handles in multi */
    int used;                       /* a transfer started since the last sweep */
};

struct upstream {
    loop *lp;
    upstream_shard *shards[UPSTREAM_MAX_SHARDS];
    int nshards;
    loop_timer sweep;               /* armed while there is more than one shard */
    CURLSH *share;
    char *token_url;
    char *key;
    char *ca_file;
    struct curl_slist *headers;     /* holds "Authorization: <key>" */
    long timeout_ms, connect_timeout_ms;
    upstream_call *active;
    upstream_call *idle;            /* finished calls kept with their easy handle for reuse */
    unsigned int seed;              /* for the retry jitter */
    unsigned char *conn_fds;        /* per fd: UPSTREAM_FD_OPENED, UPSTREAM_FD_PARKABLE or 0 */
    int nconn_fds;
};

int upstream_has_key(const upstream *up) {
    return up->key != NULL;
}

void upstream_totals(long *connections_opened, long *calls) {
    *connections_opened = atomic_load(&upstream_opened_total);
    *calls = atomic_load(&upstream_calls_total);
}

static void upstream_drain(upstream_shard *sh);
static void upstream_on_watchdog(void *ud);
static void upstream_on_sweep(void *ud);

static void upstream_on_fd(void *ud, int fd, unsigned events) {
    upstream_shard *sh = ud;
    int flags = 0, running = 0;
    if (events & LOOP_READ) flags |= CURL_CSELECT_IN;
    if (events & LOOP_WRITE) flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(sh->multi, fd, flags, &running);
    upstream_drain(sh);
}

/* What tokend knows of a descriptor. A connection socket curl opened through
 * upstream_on_open_socket is closed through upstream_on_close_socket once it is in use;
 * before that (a connect attempt that lost or failed) curl closes it by itself. Reading
 * only starts on a connected socket, so a socket watched for reading is a connection
 * that will be closed through us: only such a socket may stay parked while idle. */
#define UPSTREAM_FD_OPENED 1
#define UPSTREAM_FD_PARKABLE 2

static int upstream_fd_state(const upstream *up, int fd) {
    return fd >= 0 && fd < up->nconn_fds ? up->conn_fds[fd] : 0;
}

static int upstream_on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
    upstream_shard *sh = userp;
    upstream *up = sh->up;
    unsigned ev = 0;
    (void)easy;
    (void)socketp;
    /* A keep-alive connection going idle stays registered with the kernel (parked), so its
     * next request needs no epoll_ctl; its close goes through upstream_on_close_socket. */
    int state = upstream_fd_state(up, s);
    if (what == CURL_POLL_REMOVE && state == UPSTREAM_FD_PARKABLE) {
        loop_park(up->lp, s);
        return 0;
    }
    if (state == UPSTREAM_FD_OPENED && (what == CURL_POLL_IN || what == CURL_POLL_INOUT))
        up->conn_fds[s] = UPSTREAM_FD_PARKABLE;
    else if (state == UPSTREAM_FD_OPENED && what == CURL_POLL_REMOVE)
        up->conn_fds[s] = 0;    /* a connect attempt that is over: curl may close it by itself */
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) ev |= LOOP_READ;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) ev |= LOOP_WRITE;
    /* Never answer -1: libcurl would mark the whole multi handle dead, and this worker
     * could not mint again. A transfer whose socket is not watched stalls, and its
     * watchdog answers it. */
    if (loop_watch(up->lp, s, ev, upstream_on_fd, sh) < 0 && ev)
        log_msg(LOG_ERROR, "upstream: cannot watch socket %d", (int)s);
    return 0;
}

/* curl's connection sockets are opened here, so that we know which ones we may park. */
static curl_socket_t upstream_on_open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
    upstream *up = ud;
    (void)purpose;
    int fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    if (fd < 0) return CURL_SOCKET_BAD;
    if (up->lp) loop_forget(up->lp, fd);   /* a watch of an earlier socket with this number is gone */
    if (fd >= up->nconn_fds) {
        int n = up->nconn_fds ? up->nconn_fds : 256;
        while (n <= fd) n *= 2;
        unsigned char *v = realloc(up->conn_fds, (size_t)n);
        if (!v) return fd;      /* not parkable: watched and unwatched as curl asks */
        memset(v + up->nconn_fds, 0, (size_t)(n - up->nconn_fds));
        up->conn_fds = v;
        up->nconn_fds = n;
    }
    up->conn_fds[fd] = UPSTREAM_FD_OPENED;
    return fd;
}

static int upstream_on_close_socket(void *ud, curl_socket_t s) {
    upstream *up = ud;
    if (s >= 0 && s < up->nconn_fds) up->conn_fds[s] = 0;
    if (up->lp) loop_watch(up->lp, s, 0, NULL, NULL);     /* no loop: upstream_mint_sync */
    return close(s);
}

static void upstream_on_timeout(void *ud) {
    upstream_shard *sh = ud;
    int running = 0;
    curl_multi_socket_action(sh->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    upstream_drain(sh);
}

static int upstream_on_timer_change(CURLM *multi, long timeout_ms, void *userp) {
    upstream_shard *sh = userp;
    (void)multi;
    if (timeout_ms < 0) loop_timer_stop(sh->up->lp, &sh->timer);
    else if (loop_timer_start(sh->up->lp, &sh->timer, timeout_ms, upstream_on_timeout, sh) < 0)
        log_msg(LOG_ERROR, "upstream: cannot arm curl's timer");     /* not -1: see upstream_on_socket */
    return 0;
}

static size_t upstream_on_body(char *data, size_t size, size_t nmemb, void *ud) {
    upstream_call *c = ud;
    size_t n = size * nmemb;
    if (c->body_len + n > UPSTREAM_BODY_MAX) {
        c->body_too_big = 1;
        return 0;
    }
    char *b = realloc(c->body, c->body_len + n + 1);
    if (!b) return 0;
    memcpy(b + c->body_len, data, n);
    c->body = b;
    c->body_len += n;
    b[c->body_len] = '\0';
    return n;
}

static size_t upstream_on_header(char *data, size_t size, size_t nmemb, void *ud) {
    upstream_call *c = ud;
    size_t n = size * nmemb;
    if (n > 12 && strncasecmp(data, "retry-after:", 12) == 0) {
        char v[64];
        size_t vl = n - 12 < sizeof v - 1 ? n - 12 : sizeof v - 1;
        memcpy(v, data + 12, vl);
        v[vl] = '\0';
        char *p = v;
        while (*p == ' ' || *p == '\t') p++;
        p[strcspn(p, "\r\n")] = '\0';
        if (isdigit((unsigned char)*p)) {
            c->retry_after = strtol(p, NULL, 10);
        } else {
            time_t when = curl_getdate(p, NULL);
            time_t now = time(NULL);
            if (when > 0) c->retry_after = when > now ? (long)(when - now) : 0;
        }
    }
    return n;
}

/* Creates a call with its easy handle and the options that never change. */
static upstream_call *upstream_call_new(upstream *up) {
    upstream_call *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->up = up;
    c->easy = curl_easy_init();
    if (!c->easy) {
        free(c);
        return NULL;
    }
    CURL *e = c->easy;
    curl_easy_setopt(e, CURLOPT_PRIVATE, c);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, up->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, up->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, up->headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, upstream_on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, upstream_on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(e, CURLOPT_SHARE, up->share);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, upstream_on_open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, up);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, upstream_on_close_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, up);
    /* Token replies are well under 1 KiB: curl's default 16 KiB receive buffer per call
     * in flight would cost 32 MB at two thousand calls; 1 KiB is curl's smallest. */
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 1024L);
    if (up->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, up->ca_file);
    return c;
}

static void upstream_call_free(upstream_call *c) {
    curl_easy_cleanup(c->easy);
    free(c->body);
    free(c);
}

static void upstream_unlink(upstream *up, upstream_call *c) {
    if (c->prev) c->prev->next = c->next;
    else up->active = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

/* Puts a finished or cancelled call back in the idle pool. */
static void upstream_release(upstream *up, upstream_call *c) {
    free(c->body);
    c->body = NULL;
    c->body_len = 0;
    c->done = NULL;
    c->ud = NULL;
    c->next = up->idle;
    up->idle = c;
}

/* The multi handle for a new transfer: the first with room, so that calls keep landing on
 * the same keep-alive connections; a new one when all are full; the least busy when the
 * limit is reached. NULL when out of memory. */
static upstream_shard *upstream_pick_shard(upstream *up) {
    upstream_shard *least = NULL;
    for (int i = 0; i < up->nshards; i++) {
        upstream_shard *sh = up->shards[i];
        if (sh->transfers < UPSTREAM_SHARD_CALLS) return sh;
        if (!least || sh->transfers < least->transfers) least = sh;
    }
    if (up->nshards == UPSTREAM_MAX_SHARDS) return least;
    upstream_shard *sh = calloc(1, sizeof *sh);
    if (!sh || !(sh->multi = curl_multi_init())) {
        free(sh);
        return least;
    }
    sh->up = up;
    curl_multi_setopt(sh->multi, CURLMOPT_SOCKETFUNCTION, upstream_on_socket);
    curl_multi_setopt(sh->multi, CURLMOPT_SOCKETDATA, sh);
    curl_multi_setopt(sh->multi, CURLMOPT_TIMERFUNCTION, upstream_on_timer_change);
    curl_multi_setopt(sh->multi, CURLMOPT_TIMERDATA, sh);
    curl_multi_setopt(sh->multi, CURLMOPT_MAXCONNECTS, (long)UPSTREAM_SHARD_CALLS * 4);
    up->shards[up->nshards++] = sh;
    if (up->nshards == 2) loop_timer_start(up->lp, &up->sweep, UPSTREAM_SWEEP_MS, upstream_on_sweep, up);
    return sh;
}

static void upstream_shard_free(upstream *up, upstream_shard *sh) {
    loop_timer_stop(up->lp, &sh->timer);
    curl_multi_cleanup(sh->multi);      /* closes its connections through upstream_on_close_socket */
    free(sh);
}

/* Closes the multi handles (but the first) that stayed unused since the last sweep. */
static void upstream_on_sweep(void *ud) {
    upstream *up = ud;
    int kept = 1;
    for (int i = 1; i < up->nshards; i++) {
        upstream_shard *sh = up->shards[i];
        if (!sh->used && sh->transfers == 0) {
            upstream_shard_free(up, sh);
            continue;
        }
        sh->used = 0;
        up->shards[kept++] = sh;
    }
    up->nshards = kept;
    if (up->nshards > 1) loop_timer_start(up->lp, &up->sweep, UPSTREAM_SWEEP_MS, upstream_on_sweep, up);
}

/* Takes c's easy handle out of its multi handle, if it is in one. */
static void upstream_detach(upstream_call *c) {
    if (!c->shard) return;
    curl_multi_remove_handle(c->shard->multi, c->easy);
    c->shard->transfers--;
    c->shard = NULL;
}

upstream *upstream_create(loop *lp, const upstream_options *opts, char *err, size_t errlen) {
    upstream *up = calloc(1, sizeof *up);
    char *auth = NULL;
    if (!up) goto nomem;
    up->lp = lp;
    up->seed = (unsigned int)loop_now_ms() ^ (unsigned int)(uintptr_t)up;
    up->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 10000;
    up->connect_timeout_ms = opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 5000;
    up->token_url = strdup(opts->token_url);
    if (!up->token_url) goto nomem;
    if (opts->ca_file && *opts->ca_file && !(up->ca_file = strdup(opts->ca_file))) goto nomem;
    if (opts->api_key && *opts->api_key) {
        for (const char *p = opts->api_key; *p; p++) {
            if ((unsigned char)*p < 0x20 || *p == 0x7f) {
                snprintf(err, errlen, "the API key contains a control character or line break");
                goto fail;
            }
        }
        if (!(up->key = strdup(opts->api_key))) goto nomem;
        size_t n = strlen(up->key) + sizeof "Authorization: ";
        if (!(auth = malloc(n))) goto nomem;
        snprintf(auth, n, "Authorization: %s", up->key);
        up->headers = curl_slist_append(NULL, auth);
        explicit_bzero(auth, n);
        free(auth);
        if (!up->headers) goto nomem;
    }
    /* The user agent is in the fixed list rather than CURLOPT_USERAGENT, which curl would
     * format anew for every request. */
    static const char *const fixed[] = { "Accept: application/json", "User-Agent: tokend/" TOKEND_VERSION };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        struct curl_slist *more = curl_slist_append(up->headers, fixed[i]);
        if (!more) goto nomem;      /* up->headers (and the key in it) is freed by upstream_free */
        up->headers = more;
    }
    up->share = curl_share_init();
    if (!up->share) goto nomem;
    curl_share_setopt(up->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    curl_share_setopt(up->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    return up;
nomem:
    snprintf(err, errlen, "out of memory");
fail:
    upstream_free(up);
    return NULL;
}

void upstream_free(upstream *up) {
    if (!up) return;
    while (up->active) {
        upstream_call *c = up->active;
        upstream_unlink(up, c);
        loop_timer_stop(up->lp, &c->retry_timer);
        loop_timer_stop(up->lp, &c->watchdog);
        upstream_detach(c);
        upstream_call_free(c);
    }
    while (up->idle) {
        upstream_call *c = up->idle;
        up->idle = c->next;
        upstream_call_free(c);
    }
    for (int i = 0; i < up->nshards; i++) upstream_shard_free(up, up->shards[i]);
    if (up->nshards) loop_timer_stop(up->lp, &up->sweep);
    if (up->share) curl_share_cleanup(up->share);
    if (up->headers) {
        /* The first entry holds the key: wipe it before freeing. */
        explicit_bzero(up->headers->data, strlen(up->headers->data));
        curl_slist_free_all(up->headers);
    }
    if (up->key) {
        explicit_bzero(up->key, strlen(up->key));
        free(up->key);
    }
    free(up->token_url);
    free(up->ca_file);
    free(up->conn_fds);
    free(up);
}

/* Points c's handle at the token endpoint with the query for these values. */
static void upstream_set_url(upstream *up, upstream_call *c, long expires_in_s, long max_session_s) {
    char url[1024];
    if (max_session_s > 0)
        snprintf(url, sizeof url, "%s?expires_in_seconds=%ld&max_session_duration_seconds=%ld",
                 up->token_url, expires_in_s, max_session_s);
    else
        snprintf(url, sizeof url, "%s?expires_in_seconds=%ld", up->token_url, expires_in_s);
    curl_easy_setopt(c->easy, CURLOPT_URL, url);
}

/* Starts (or restarts) the transfer of c with timeout_ms left. Returns 0 or -1. */
static int upstream_start(upstream *up, upstream_call *c, long timeout_ms) {
    free(c->body);
    c->body = NULL;
    c->body_len = 0;
    c->retry_after = -1;
    c->body_too_big = 0;
    c->errbuf[0] = '\0';
    c->attempts++;
    curl_easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, timeout_ms > 1 ? timeout_ms : 1L);
    upstream_shard *sh = upstream_pick_shard(up);
    if (!sh || curl_multi_add_handle(sh->multi, c->easy) != CURLM_OK) return -1;
    c->shard = sh;
    sh->transfers++;
    sh->used = 1;
    return 0;
}

upstream_call *upstream_mint(upstream *up, long expires_in_s, long max_session_s,
                             upstream_done_fn *done, void *ud) {
    upstream_call *c = up->idle;
    if (c) up->idle = c->next;
    else if (!(c = upstream_call_new(up))) return NULL;
    upstream_set_url(up, c, expires_in_s, max_session_s);
    c->done = done;
    c->ud = ud;
    c->attempts = 0;
    c->expires_in_s = expires_in_s;
    c->start_ms = loop_now_ms();
    if (upstream_start(up, c, up->timeout_ms) < 0) {
        upstream_release(up, c);
        return NULL;
    }
    c->prev = NULL;
    c->next = up->active;
    if (up->active) up->active->prev = c;
    up->active = c;
    loop_timer_start(up->lp, &c->watchdog, up->timeout_ms + UPSTREAM_WATCHDOG_SLACK_MS, upstream_on_watchdog, c);
    return c;
}

/* Reports a call that never got an outcome from curl as a timeout. Its handle is not
 * reused: curl's state for it cannot be trusted. */
/* Ends call c with a failure tokend produced itself (no transfer outcome): unlinks it,
 * stops its timers, takes its handle out of the multi, counts it and calls back. discard
 * frees the easy handle instead of pooling it (curl's state for it is suspect). */
static void upstream_fail(upstream *up, upstream_call *c, const char *kind, const char *message, int discard) {
    upstream_result r;
    char errbuf[200];
    upstream_unlink(up, c);
    loop_timer_stop(up->lp, &c->retry_timer);
    loop_timer_stop(up->lp, &c->watchdog);
    upstream_detach(c);
    memset(&r, 0, sizeof r);
    snprintf(errbuf, sizeof errbuf, "%s", message);
    r.error = errbuf;
    r.kind = kind;
    r.retry_after = -1;
    r.elapsed_ms = (double)(loop_now_ms() - c->start_ms);
    r.attempts = c->attempts;
    metrics_upstream(r.kind, r.elapsed_ms);
    upstream_done_fn *done = c->done;
    void *cud = c->ud;
    if (discard) upstream_call_free(c);
    else upstream_release(up, c);
    done(cud, &r);
}

/* Reports a call that never got an outcome from curl as a timeout. */
static void upstream_on_watchdog(void *ud) {
    upstream_call *c = ud;
    upstream *up = c->up;
    char message[100];
    log_msg(LOG_WARN, "upstream: a token request outlived its %ld ms deadline; cancelled", up->timeout_ms);
    snprintf(message, sizeof message, "the upstream did not answer within %ld ms", up->timeout_ms);
    upstream_fail(up, c, "timeout", message, 1);
}

/* The back-off of a retry is over: send the request again with the time that is left. */
static void upstream_on_retry(void *ud) {
    upstream_call *c = ud;
    upstream *up = c->up;
    long left = up->timeout_ms - (long)(loop_now_ms() - c->start_ms);
    if (upstream_start(up, c, left) < 0)    /* cannot even start: the 5xx we had is the outcome */
        upstream_fail(up, c, "upstream_error", "the upstream failed and the retry could not start", 0);
}

static const char *upstream_tls_or_connect(int code) {
    switch (code) {
    case CURLE_COULDNT_RESOLVE_HOST: case CURLE_COULDNT_CONNECT: case CURLE_COULDNT_RESOLVE_PROXY:
        return "connect";
    case CURLE_PEER_FAILED_VERIFICATION: case CURLE_SSL_CONNECT_ERROR: case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER: case CURLE_SSL_CACERT_BADFILE: case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH: case CURLE_SSL_INVALIDCERTSTATUS: case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED: case CURLE_SSL_SHUTDOWN_FAILED: case CURLE_SSL_CRL_BADFILE:
    case CURLE_USE_SSL_FAILED:
        return "tls";
    default:
        return "network";
    }
}

void upstream_classify(int curl_code, const char *curl_error, long http_status, const char *body,
                       size_t body_len, long retry_after, long timeout_ms, const char *key,
                       upstream_result *r, char *token, size_t token_cap, char *errbuf, size_t errlen) {
    char msg[700], said[JSON_ERROR_MAX + 8];
    json_token_reply reply;     /* 8 KiB on the stack: a malloc per call cost more */
    memset(r, 0, sizeof *r);
    r->retry_after = retry_after;
    r->http_status = curl_code == CURLE_OK ? (int)http_status : 0;
    msg[0] = said[0] = '\0';
    int parsed = body && json_parse_token_reply(body, body_len, &reply) == 0;
    if (curl_code == CURLE_OPERATION_TIMEDOUT) {
        r->kind = "timeout";
        snprintf(msg, sizeof msg, "the upstream did not answer within %ld ms", timeout_ms);
    } else if (curl_code == CURLE_WRITE_ERROR) {
        r->kind = "bad_response";
        snprintf(msg, sizeof msg, "the upstream reply is larger than %d KiB", UPSTREAM_BODY_MAX / 1024);
    } else if (curl_code != CURLE_OK) {
        r->kind = upstream_tls_or_connect(curl_code);
        snprintf(msg, sizeof msg, "%s talking to the upstream: %s",
                 strcmp(r->kind, "tls") == 0 ? "TLS failure" : strcmp(r->kind, "connect") == 0 ? "cannot connect" : "network failure",
                 curl_error && *curl_error ? curl_error : curl_easy_strerror((CURLcode)curl_code));
    } else {
        if (parsed && reply.has_error && reply.error[0]) snprintf(said, sizeof said, ": %s", reply.error);
        if (http_status == 200 && parsed && reply.has_token) {
            if (strlen(reply.token) >= token_cap) {
                r->kind = "bad_response";
                snprintf(msg, sizeof msg, "the upstream token is too long");
            } else {
                memcpy(token, reply.token, strlen(reply.token) + 1);
                r->token = token;
                r->expires_in_seconds = reply.has_expires ? reply.expires_in_seconds : 0;
            }
        } else if (http_status == 200) {
            r->kind = "bad_response";
            snprintf(msg, sizeof msg, parsed ? "the upstream answered 200 without a token"
                                             : "the upstream answered 200 with a body that is not JSON");
        } else if (http_status == 401 || http_status == 403) {
            r->kind = "unauthorized";
            snprintf(msg, sizeof msg, "the upstream refused the API key (HTTP %ld)%s", http_status, said);
        } else if (http_status == 429) {
            r->kind = "rate_limited";
            snprintf(msg, sizeof msg, "the upstream is rate limiting this key (HTTP 429)%s", said);
        } else if (http_status == 400) {
            r->kind = "bad_request";
            snprintf(msg, sizeof msg, "the upstream rejected the request (HTTP 400)%s", said);
        } else if (http_status >= 500) {
            r->kind = "upstream_error";
            snprintf(msg, sizeof msg, "the upstream failed (HTTP %ld)%s", http_status, said);
        } else {
            r->kind = "bad_response";
            snprintf(msg, sizeof msg, "unexpected upstream answer (HTTP %ld)%s", http_status, said);
        }
    }
    if (!r->token) {
        log_scrub(errbuf, errlen, msg, key);
        r->error = errbuf;
    }
}

int upstream_mint_sync(upstream *up, long expires_in_s, long max_session_s, upstream_result *r,
                       char *token, size_t token_cap, char *errbuf, size_t errlen) {
    upstream_call *c = upstream_call_new(up);
    if (!c) {
        memset(r, 0, sizeof *r);
        snprintf(errbuf, errlen, "out of memory starting the token request");
        r->error = errbuf;
        r->kind = "network";
        r->retry_after = -1;
        return -1;
    }
    upstream_set_url(up, c, expires_in_s, max_session_s);
    uint64_t start = loop_now_ms();
    long status = 0;
    CURLcode code;
    for (;;) {
        long left = up->timeout_ms - (long)(loop_now_ms() - start);
        free(c->body);
        c->body = NULL;
        c->body_len = 0;
        c->retry_after = -1;
        c->errbuf[0] = '\0';
        c->attempts++;
        curl_easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, left > 1 ? left : 1L);
        code = curl_easy_perform(c->easy);
        status = 0;
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
        long backoff = UPSTREAM_RETRY_MIN_MS + (long)(rand_r(&up->seed) % (UPSTREAM_RETRY_JITTER_MS + 1));
        left = up->timeout_ms - (long)(loop_now_ms() - start);
        if (!(code == CURLE_OK && status >= 500 && c->attempts == 1 && left > backoff + 100)) break;
        struct timespec ts = { backoff / 1000, (backoff % 1000) * 1000000L };
        nanosleep(&ts, NULL);
    }
    upstream_classify(code, c->errbuf, status, c->body, c->body_len, c->retry_after, up->timeout_ms, up->key,
                      r, token, token_cap, errbuf, errlen);
    if (r->token && r->expires_in_seconds <= 0) r->expires_in_seconds = expires_in_s;
    r->elapsed_ms = (double)(loop_now_ms() - start);
    r->attempts = c->attempts;
    upstream_call_free(c);
    return r->token ? 0 : -1;
}

static void upstream_drain(upstream_shard *sh) {
    upstream *up = sh->up;
    CURLMsg *msg;
    int left;
    char token[JSON_TOKEN_MAX], errbuf[800];
    while ((msg = curl_multi_info_read(sh->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        CURL *easy = msg->easy_handle;
        CURLcode code = msg->data.result;
        upstream_call *c = NULL;
        long status = 0, connects = 0;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&c);
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &connects);
        atomic_fetch_add(&upstream_opened_total, connects);
        upstream_detach(c);
        /* A 5xx is retried once, after a jittered back-off, if the deadline leaves room. */
        long backoff = UPSTREAM_RETRY_MIN_MS + (long)(rand_r(&up->seed) % (UPSTREAM_RETRY_JITTER_MS + 1));
        long left = up->timeout_ms - (long)(loop_now_ms() - c->start_ms);
        if (code == CURLE_OK && status >= 500 && c->attempts == 1 && left > backoff + 100) {
            log_msg(LOG_WARN, "upstream answered HTTP %ld; retrying once in %ld ms", status, backoff);
            loop_timer_start(up->lp, &c->retry_timer, backoff, upstream_on_retry, c);
            continue;
        }
        atomic_fetch_add(&upstream_calls_total, 1);
        loop_timer_stop(up->lp, &c->watchdog);
        upstream_unlink(up, c);
        upstream_result r;
        upstream_classify(code, c->errbuf, status, c->body, c->body_len, c->retry_after, up->timeout_ms,
                          up->key, &r, token, sizeof token, errbuf, sizeof errbuf);
        if (r.token && r.expires_in_seconds <= 0) r.expires_in_seconds = c->expires_in_s;
        r.elapsed_ms = (double)(loop_now_ms() - c->start_ms);
        r.attempts = c->attempts;
        metrics_upstream(r.token ? NULL : r.kind, r.elapsed_ms);
        upstream_done_fn *done = c->done;
        void *ud = c->ud;
        upstream_release(up, c);
        done(ud, &r);
        explicit_bzero(token, sizeof token);
    }
}
