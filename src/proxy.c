/* proxy.c: requests under a prefix forwarded to an HTTP(S) backend through libcurl, their answers streamed back. */
#define _GNU_SOURCE
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "crypto.h"
#include "log.h"
#include "proxy.h"

#define PROXY_BUFFER (64 * 1024) /* answer bytes waiting for a slow client, at most (then curl pauses) */
#define PROXY_MAX_VIA 20         /* proxies a request may have gone through (Via entries) */

typedef struct proxy_mount_entry {
    char *prefix; /* "/api" (no trailing slash), or "/" */
    size_t prefix_len;
    char *base;   /* "http://127.0.0.1:3000" or "https://h/v1" (no trailing slash) */
    char *origin; /* "http://127.0.0.1:3000": how errors name the backend */
    long timeout_ms;
    int strip_prefix;
    char *headers[PROXY_MAX_HEADERS];
    size_t nheaders;
} proxy_mount_entry;

struct proxy_mounts {
    proxy_mount_entry *v;
    size_t len;
};

/* A request being forwarded: alive while its transfer runs or its answer goes out. */
typedef struct proxy_call {
    http_request *req;    /* until answered */
    fetch_call *transfer; /* until done or cancelled */
    http_stream *stream;  /* the answer's body, from its head until it is closed */
    fetch_headers *headers;
    fetch_stream st;
    char origin[160];
    long timeout_ms;
    int refs; /* the transfer and the answer */
} proxy_call;

/* This process's name in Via: a request that comes back with it went round in a loop. */
static char proxy_via_id[24];
static pthread_once_t proxy_via_once = PTHREAD_ONCE_INIT;

static void proxy_make_via_id(void) {
    unsigned char rnd[4] = { 0 };
    char hex[9];
    crypto_random(rnd, sizeof rnd);
    crypto_hex(rnd, sizeof rnd, hex);
    snprintf(proxy_via_id, sizeof proxy_via_id, "tokend-%s", hex);
}

proxy_mounts *proxy_create(void) {
    return calloc(1, sizeof(proxy_mounts));
}

static void proxy_entry_clear(proxy_mount_entry *e) {
    free(e->prefix);
    free(e->base);
    free(e->origin);
    for (size_t i = 0; i < e->nheaders; i++) free(e->headers[i]);
}

void proxy_free(proxy_mounts *m) {
    if (!m) return;
    for (size_t i = 0; i < m->len; i++) proxy_entry_clear(&m->v[i]);
    free(m->v);
    free(m);
}

/* 1 when s has no byte a URL or header line must not carry (controls, spaces). */
static int proxy_clean(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || *s == 0x7f) return 0;
    return 1;
}

/* 1 when line is "Name: value" (or "Name:") with a token for its name. */
static int proxy_header_ok(const char *line) {
    const char *colon = strchr(line, ':');
    if (!colon || colon == line || strpbrk(line, "\r\n")) return 0;
    for (const char *p = line; p < colon; p++)
        if (!isalnum((unsigned char)*p) && !strchr("!#$%&'*+-.^_`|~", *p)) return 0;
    return 1;
}

int proxy_mount(proxy_mounts *m, const char *prefix, const char *url, const proxy_options *o, char *err,
                size_t errlen) {
    proxy_mount_entry e = { 0 };
    size_t scheme = strncasecmp(url, "http://", 7) == 0 ? 7 : strncasecmp(url, "https://", 8) == 0 ? 8 : 0;
    if (prefix[0] != '/' || strstr(prefix, "//") || strpbrk(prefix, "?#%") || !proxy_clean(prefix)) {
        snprintf(err, errlen, "prefix \"%s\" must start with / and hold no //, ?, #, %% or space", prefix);
        return -1;
    }
    if (!scheme || !url[scheme] || url[scheme] == '/' || strpbrk(url, "?#@") || !proxy_clean(url)) {
        snprintf(err, errlen, "\"%s\" is not http(s)://host[:port][/path] (no query, no user name: set headers)", url);
        return -1;
    }
    if (o->timeout_ms < 1 || o->nheaders > PROXY_MAX_HEADERS) {
        snprintf(err, errlen, "bad options");
        return -1;
    }
    for (size_t i = 0; i < o->nheaders; i++) {
        if (!proxy_header_ok(o->headers[i])) {
            snprintf(err, errlen, "header \"%.60s\" is not Name: value on one line", o->headers[i]);
            return -1;
        }
    }
    size_t plen = strlen(prefix), ulen = strlen(url), hostlen = strcspn(url + scheme, "/");
    while (plen > 1 && prefix[plen - 1] == '/') plen--;
    while (ulen > scheme + hostlen && url[ulen - 1] == '/') ulen--;
    int nomem = !(e.prefix = strndup(prefix, plen)) || !(e.base = strndup(url, ulen)) ||
            !(e.origin = strndup(url, scheme + hostlen));
    for (size_t i = 0; i < o->nheaders && !nomem; i++) nomem = !(e.headers[e.nheaders++] = strdup(o->headers[i]));
    proxy_mount_entry *v = nomem ? NULL : realloc(m->v, (m->len + 1) * sizeof *v);
    if (!v) {
        proxy_entry_clear(&e);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (char *p = e.origin; *p && *p != ':'; p++) *p = (char)tolower((unsigned char)*p);
    e.prefix_len = plen;
    e.timeout_ms = o->timeout_ms;
    e.strip_prefix = o->strip_prefix;
    m->v = v;
    m->v[m->len++] = e;
    return 0;
}

/* The longest mount whose prefix the raw target starts with, at a segment's end (a path
 * spelled with escapes in its prefix is not forwarded: what the hooks saw, decoded, starts
 * with the same prefix as what the backend gets). */
static const proxy_mount_entry *proxy_find(const proxy_mounts *m, const char *target) {
    const proxy_mount_entry *best = NULL;
    for (size_t i = 0; m && i < m->len; i++) {
        const proxy_mount_entry *e = &m->v[i];
        int covers = e->prefix_len == 1 ||
                (strncmp(target, e->prefix, e->prefix_len) == 0 &&
                 strchr("/?", target[e->prefix_len])); /* or its NUL */
        if (covers && (!best || e->prefix_len > best->prefix_len)) best = e;
    }
    return best;
}

/* 1 when the decoded path has a "." or ".." segment: the backend would resolve it past
 * what the hooks saw. */
static int proxy_dot_segments(const char *path) {
    for (const char *p = path; *p;) {
        p += strspn(p, "/");
        size_t n = strcspn(p, "/");
        if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) return 1;
        p += n;
    }
    return 0;
}

/* 1 when name (of length n) is among the comma-separated tokens of list. */
static int proxy_listed(const char *list, const char *name, size_t n) {
    for (const char *p = list ? list : ""; *p;) {
        p += strspn(p, ", \t");
        size_t len = strcspn(p, ", \t");
        if (len == n && strncasecmp(p, name, n) == 0) return 1;
        p += len;
    }
    return 0;
}

/* Headers that concern one connection, never forwarded (RFC 9110 7.6.1), and the framing
 * that libcurl and libmicrohttpd write themselves. */
static int proxy_hop_by_hop(const char *name, size_t n, const char *connection) {
    static const char *const hop[] = {
        "connection", "keep-alive",        "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
        "trailer",    "transfer-encoding", "upgrade",          "content-length"
    };
    for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++)
        if (strlen(hop[i]) == n && strncasecmp(name, hop[i], n) == 0) return 1;
    return proxy_listed(connection, name, n);
}

/* What the request's headers say about where it came from. */
typedef struct proxy_inbound {
    const proxy_mount_entry *mount; /* its headers replace the client's of the same names */
    fetch_headers *list;            /* the lines forwarded */
    const char *connection;         /* the Connection header */
    int trusted;                    /* the peer is a trusted proxy: its X-Forwarded-* are kept */
    char via[1024], xff[1024], proto[16], host[300];
    int nomem, has_accept, has_type;
} proxy_inbound;

/* Appends "Name: value" to the list (out of memory noted). */
static void proxy_add(proxy_inbound *in, const char *name, const char *value) {
    char *line = NULL;
    if (in->nomem) return;
    if (asprintf(&line, "%s: %s", name, value) < 0 || !(in->list = fetch_headers_add(in->list, line))) in->nomem = 1;
    free(line);
}

/* Appends value to a comma-separated list in buf. */
static void proxy_join(char *buf, size_t cap, const char *value) {
    size_t o = strlen(buf);
    snprintf(buf + o, cap - o, "%s%s", o ? ", " : "", value);
}

/* One request header: forwarded, kept for the lines tokend writes, or dropped. */
static void proxy_on_header(void *ud, const char *name, const char *value) {
    proxy_inbound *in = ud;
    size_t n = strlen(name);
    if (proxy_hop_by_hop(name, n, in->connection) || strcasecmp(name, "Host") == 0 || strcasecmp(name, "Expect") == 0)
        return;
    for (size_t i = 0; i < in->mount->nheaders; i++)
        if (strncasecmp(in->mount->headers[i], name, n) == 0 && in->mount->headers[i][n] == ':') return;
    if (strcasecmp(name, "Via") == 0) {
        proxy_join(in->via, sizeof in->via, value);
    } else if (strcasecmp(name, "X-Forwarded-For") == 0) {
        if (in->trusted) proxy_join(in->xff, sizeof in->xff, value);
    } else if (strcasecmp(name, "X-Forwarded-Proto") == 0) {
        if (in->trusted && !*in->proto) snprintf(in->proto, sizeof in->proto, "%s", value);
    } else if (strcasecmp(name, "X-Forwarded-Host") == 0) {
        if (in->trusted && !*in->host) snprintf(in->host, sizeof in->host, "%s", value);
    } else if (strcasecmp(name, "Forwarded") == 0) {
        if (in->trusted) proxy_add(in, name, value);
    } else {
        in->has_accept |= strcasecmp(name, "Accept") == 0;
        in->has_type |= strcasecmp(name, "Content-Type") == 0;
        proxy_add(in, name, value);
    }
}

/* The request's headers as the backend gets them: the end-to-end ones, Via, the
 * X-Forwarded-* (a trusted proxy's extended, anyone else's replaced), the mount's own; none
 * of libcurl's defaults. NULL when out of memory. *loop is set when Via shows the request
 * went round. */
static fetch_headers *proxy_request_headers(const proxy_mount_entry *e, http_request *req, int *loop) {
    proxy_inbound in;
    memset(&in, 0, sizeof in);
    in.mount = e;
    in.connection = http_request_header(req, "Connection");
    in.trusted = http_request_from_proxy(req);
    http_request_each_header(req, proxy_on_header, &in);
    pthread_once(&proxy_via_once, proxy_make_via_id);
    size_t hops = *in.via ? 1 : 0;
    for (const char *p = in.via; *p; p++) hops += *p == ',';
    *loop = strstr(in.via, proxy_via_id) != NULL || hops >= PROXY_MAX_VIA;
    char via[sizeof in.via + 40];
    snprintf(via, sizeof via, "%s%s1.1 %s", in.via, *in.via ? ", " : "", proxy_via_id);
    proxy_add(&in, "Via", via);
    proxy_join(in.xff, sizeof in.xff, req->peer);
    proxy_add(&in, "X-Forwarded-For", in.xff);
    proxy_add(&in, "X-Forwarded-Proto", *in.proto ? in.proto : http_request_is_tls(req) ? "https" : "http");
    const char *host = *in.host ? in.host : http_request_header(req, "Host");
    if (host) proxy_add(&in, "X-Forwarded-Host", host);
    /* Left to itself libcurl would add these (and wait for 100 Continue on larger bodies). */
    if (!in.has_accept && !in.nomem) in.list = fetch_headers_add(in.list, "Accept:");
    if (!in.has_type && !in.nomem) in.list = fetch_headers_add(in.list, "Content-Type:");
    if (!in.nomem && in.list) in.list = fetch_headers_add(in.list, "Expect:");
    for (size_t i = 0; i < e->nheaders && in.list; i++) in.list = fetch_headers_add(in.list, e->headers[i]);
    if (in.nomem) {
        fetch_headers_free(in.list);
        return NULL;
    }
    return in.list;
}

static void proxy_unref(proxy_call *c) {
    if (--c->refs > 0) return;
    fetch_headers_free(c->headers);
    free(c);
}

/* The answer's body was taken by the client: more may come. */
static void proxy_on_drained(void *ud) {
    proxy_call *c = ud;
    if (c->transfer) fetch_resume(c->transfer);
}

/* The answer is over: sent, or the client left (the transfer is then cancelled). */
static void proxy_on_closed(void *ud) {
    proxy_call *c = ud;
    c->stream = NULL;
    if (c->transfer) { /* the client left before the backend was done */
        fetch_cancel(c->transfer);
        c->transfer = NULL;
        c->refs--; /* the transfer's; the answer's goes below */
    }
    proxy_unref(c);
}

/* The backend's head: its status and headers go back, and its body follows as it comes. */
static int proxy_on_head(void *ud, long status, const char *headers, size_t len) {
    proxy_call *c = ud;
    http_request *req = c->req;
    const char *end = headers + len, *connection = NULL;
    long long size = -1;
    for (const char *p = headers; p < end;) { /* Connection and Content-Length first */
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) eol = end;
        if ((size_t)(eol - p) > 15 && strncasecmp(p, "Content-Length:", 15) == 0) size = strtoll(p + 15, NULL, 10);
        if ((size_t)(eol - p) > 11 && strncasecmp(p, "Connection:", 11) == 0) connection = p + 11;
        p = eol + 1;
    }
    http_response *resp = status == 204 || status == 304
            ? http_response_bytes("", 0, NULL)
            : http_response_stream(req, size >= 0 ? size : -1, PROXY_BUFFER, proxy_on_drained, proxy_on_closed, c,
                                   &c->stream);
    if (!resp) {
        http_request_fail(req, 503, "out of memory");
        c->req = NULL;
        proxy_unref(c); /* no answer to follow */
        return -1;
    }
    char connection_list[1024] = "";
    if (connection)
        snprintf(connection_list, sizeof connection_list, "%.*s", (int)strcspn(connection, "\r\n"), connection);
    for (const char *p = headers; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) eol = end;
        char *line = strndup(p, (size_t)(eol - p)), *colon;
        p = eol + 1;
        if (!line) continue;
        line[strcspn(line, "\r")] = '\0';
        if ((colon = strchr(line, ':')) && colon > line &&
            !proxy_hop_by_hop(line, (size_t)(colon - line), connection_list)) {
            *colon = '\0';
            http_response_header(resp, line, colon + 1 + strspn(colon + 1, " \t"));
        }
        free(line);
    }
    req->upstream_ms = (double)(loop_now_us() - req->start_us) / 1000.0;
    http_request_respond(req, (int)status, resp, 0);
    c->req = NULL;
    if (!c->stream) proxy_unref(c); /* a bodiless answer is sent whole */
    return 0;
}

/* A piece of the backend's body for the client: taken, or the transfer pauses until the
 * client has taken what waits. */
static int proxy_on_body(void *ud, const char *data, size_t len) {
    proxy_call *c = ud;
    if (!c->stream) return 1; /* no body goes out (a 304, or the answer failed) */
    return http_stream_write(c->stream, data, len) != 1;
}

/* The transfer is over: the answer ends with it, or (when nothing came) says why. */
static void proxy_on_done(void *ud, const fetch_result *r) {
    proxy_call *c = ud;
    char why[300];
    c->transfer = NULL;
    if (r->failure != FAILURE_NONE) {
        log_throttled(LOG_WARN, "proxy", "%s: %s", c->origin, r->error);
        if (c->req) {
            int timeout = r->failure == FAILURE_TIMEOUT, down = r->curl_code == FETCH_SHUTDOWN;
            if (down) snprintf(why, sizeof why, "server shutting down");
            else if (timeout)
                snprintf(why, sizeof why, "the backend at %s did not answer within %ld ms", c->origin, c->timeout_ms);
            else if (r->failure == FAILURE_TLS)
                snprintf(why, sizeof why,
                         "the backend at %s failed TLS (certificate "
                         "or handshake)",
                         c->origin);
            else snprintf(why, sizeof why, "the backend at %s is not answering", c->origin);
            http_request_fail(c->req, down ? 503 : timeout ? 504 : 502, why);
            c->req = NULL;
            c->refs--; /* the answer's: it is sent whole */
        } else if (c->stream) {
            http_stream_end(c->stream, 0); /* the client sees the answer broke off */
        }
    } else if (c->stream) {
        http_stream_end(c->stream, 1);
    }
    proxy_unref(c);
}

/* The URL for req under mount e: the base, the raw path (without the prefix when asked),
 * the raw query. NULL when out of memory. */
static char *proxy_url(const proxy_mount_entry *e, const http_request *req) {
    const char *path = req->target;
    size_t plen = strcspn(path, "?");
    if (e->strip_prefix && e->prefix_len > 1) {
        path += e->prefix_len;
        plen -= e->prefix_len;
    }
    char *url = NULL;
    if (asprintf(&url, "%s%s%.*s%s%s", e->base, plen && path[0] == '/' ? "" : "/", (int)plen, path,
                 req->query_len ? "?" : "", req->query) < 0)
        return NULL;
    return url;
}

int proxy_serve(const proxy_mounts *m, fetch *client, http_request *req) {
    const proxy_mount_entry *e = proxy_find(m, req->target);
    int loop = 0;
    if (!e) return 0;
    snprintf(req->route, sizeof req->route, "proxy %s", e->prefix);
    if (proxy_dot_segments(req->path)) {
        http_request_fail(req, 400, "bad path");
        return 1;
    }
    if (http_request_header(req, "Upgrade")) {
        http_request_fail(req, 501, "tokend.proxy does not forward protocol upgrades (WebSocket)");
        return 1;
    }
    proxy_call *c = calloc(1, sizeof *c);
    char *url = c ? proxy_url(e, req) : NULL;
    if (c && url) c->headers = proxy_request_headers(e, req, &loop);
    if (!c || !url || !c->headers) {
        http_request_fail(req, 503, "out of memory");
        goto out;
    }
    if (loop) {
        http_request_fail(req, 508, "this request came back to tokend through its own proxy (a loop)");
        goto out;
    }
    c->req = req;
    c->timeout_ms = e->timeout_ms;
    snprintf(c->origin, sizeof c->origin, "%s", e->origin);
    c->st = (fetch_stream){ .head = proxy_on_head,
                            .body = proxy_on_body,
                            .head_timeout_ms = e->timeout_ms,
                            .idle_timeout_s = (e->timeout_ms + 999) / 1000 };
    fetch_request rq = {
        .method = req->method, .url = url, .headers = c->headers, .body = req->body, .body_len = req->body_len
    };
    c->refs = 2; /* the transfer, and the answer */
    if (!(c->transfer = fetch_start_stream(client, &rq, &c->st, proxy_on_done, c))) {
        http_request_fail(req, 503, "out of memory");
        goto out;
    }
    free(url);
    return 1;
out:
    if (c) fetch_headers_free(c->headers);
    free(c);
    free(url);
    return 1;
}
