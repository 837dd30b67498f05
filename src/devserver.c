/* devserver.c: the development server's own paths (/__tokend/): live reload of open pages (an event stream each, told by the server's file watcher) and the development CA's certificate. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "crypto.h"
#include "devserver.h"
#include "list.h"
#include "log.h"
#include "netaddr.h"

#define DEVSERVER_PREFIX "/__tokend/"
#define DEVSERVER_HEARTBEAT_MS 15000 /* a comment line keeps proxies from closing an idle stream */
#define DEVSERVER_PAGE_BUFFER 512    /* bytes a page may leave unread; past it, its stream is cut */
#define DEVSERVER_MESSAGE_MAX 4096   /* the list of changed files sent, at most */

/* The client: one classic script of the page's own origin. It finds the stream next to its
 * own URL (so it works over HTTPS and under a proxy's path), reloads the page on a change or
 * once the server restarted, and swaps style sheets in place when only they changed. Where
 * the browser has Web Locks and BroadcastChannel (secure pages), one tab per origin holds
 * the stream and tells the others: browsers open at most six connections to an origin. */
static const char devserver_client_js[] =
        "// tokend live reload: tokend --dev adds this script to the HTML pages it serves.\n"
        "(() => {\n"
        "  const url = new URL('livereload', document.currentScript.src);\n"
        "  let boot = null;\n"
        "  const apply = (kind, data) => {\n"
        "    if (kind === 'hello') {\n"
        "      if (boot !== null && boot !== data) location.reload();\n"
        "      boot = data;\n"
        "      return;\n"
        "    }\n"
        "    const changed = data ? data.split('\\n') : [];\n"
        "    if (changed.length && changed.every((path) => path.endsWith('.css'))) {\n"
        "      for (const link of document.querySelectorAll('link[rel~=\"stylesheet\"]')) {\n"
        "        const href = new URL(link.href);\n"
        "        href.searchParams.set('tokend-reload', String(Date.now()));\n"
        "        link.href = href.href;\n"
        "      }\n"
        "    } else {\n"
        "      location.reload();\n"
        "    }\n"
        "  };\n"
        "  const channel = typeof BroadcastChannel === 'function' ? new BroadcastChannel('tokend-livereload') : null;\n"
        "  const listen = () => {\n"
        "    const events = new EventSource(url);\n"
        "    for (const kind of ['hello', 'reload']) {\n"
        "      events.addEventListener(kind, (e) => {\n"
        "        if (channel) channel.postMessage([kind, e.data]);\n"
        "        apply(kind, e.data);\n"
        "      });\n"
        "    }\n"
        "  };\n"
        "  if (channel && navigator.locks) {\n"
        "    channel.onmessage = (e) => apply(e.data[0], e.data[1]);\n"
        "    navigator.locks.request('tokend-livereload', () => new Promise(listen));\n"
        "  } else {\n"
        "    listen();\n"
        "  }\n"
        "})();\n";

typedef struct devserver_page devserver_page;

struct devserver_hub {
    pthread_mutex_t lock;
    list_node stations;                       /* the workers' devservers, under lock */
    char message[DEVSERVER_MESSAGE_MAX + 64]; /* the last reload event, under lock */
    char boot[40];                            /* this server's run: a page reloads when it changes */
    const char *ca_pem;
};

struct devserver {
    devserver_hub *hub;
    loop *lp;
    int efd; /* the hub writes to it: a reload to send */
    loop_timer heartbeat;
    list_node pages;   /* open pages */
    list_node station; /* in the hub's stations */
};

/* An open page: its event stream. */
struct devserver_page {
    http_stream *stream;
    list_node link; /* in its devserver's pages */
};

devserver_hub *devserver_hub_create(const char *ca_pem) {
    devserver_hub *h = calloc(1, sizeof *h);
    unsigned char rnd[8];
    char hex[17];
    if (!h || pthread_mutex_init(&h->lock, NULL) != 0) {
        free(h);
        return NULL;
    }
    list_init(&h->stations);
    if (crypto_random(rnd, sizeof rnd) < 0) memset(rnd, 0, sizeof rnd);
    crypto_hex(rnd, sizeof rnd, hex);
    snprintf(h->boot, sizeof h->boot, "%s", hex);
    h->ca_pem = ca_pem;
    return h;
}

void devserver_hub_free(devserver_hub *h) {
    if (!h) return;
    pthread_mutex_destroy(&h->lock);
    free(h);
}

/* Writes changed as an event's data: "data: <line>" for each line. */
static void devserver_format_reload(char *out, size_t outlen, const char *changed) {
    size_t o = (size_t)snprintf(out, outlen, "event: reload\n");
    const char *p = changed;
    do {
        size_t n = strcspn(p, "\r\n");
        if (o + n + 16 >= outlen) break;
        o += (size_t)snprintf(out + o, outlen - o, "data: %.*s\n", (int)n, p);
        p += n;
        while (*p == '\r' || *p == '\n') p++;
    } while (*p);
    snprintf(out + o, outlen - o, "\n");
}

void devserver_hub_reload(devserver_hub *h, const char *changed) {
    uint64_t one = 1;
    pthread_mutex_lock(&h->lock);
    devserver_format_reload(h->message, sizeof h->message, changed ? changed : "");
    for (list_node *n = list_first(&h->stations); n; n = list_next(&h->stations, n))
        if (write(list_entry(n, devserver, station)->efd, &one, sizeof one) < 0 && errno != EAGAIN)
            log_throttled(LOG_WARN, "livereload", "cannot wake a worker: %s", strerror(errno));
    pthread_mutex_unlock(&h->lock);
}

/* Sends text to every page; a page that left more than DEVSERVER_PAGE_BUFFER unread is cut
 * (it will reconnect if it is still there). */
static void devserver_broadcast(devserver *d, const char *text) {
    size_t len = strlen(text);
    for (list_node *n = list_first(&d->pages); n; n = list_next(&d->pages, n)) {
        devserver_page *p = list_entry(n, devserver_page, link);
        if (http_stream_write(p->stream, text, len) != 0) http_stream_end(p->stream, 0);
    }
}

static void devserver_on_wake(void *ud, int fd, unsigned events) {
    devserver *d = ud;
    uint64_t n;
    char message[sizeof d->hub->message];
    (void)events;
    if (read(fd, &n, sizeof n) != (ssize_t)sizeof n) return;
    pthread_mutex_lock(&d->hub->lock);
    memcpy(message, d->hub->message, sizeof message);
    pthread_mutex_unlock(&d->hub->lock);
    devserver_broadcast(d, message);
}

static void devserver_on_heartbeat(void *ud) {
    devserver *d = ud;
    devserver_broadcast(d, ": keep-alive\n\n");
    loop_timer_start(d->lp, &d->heartbeat, DEVSERVER_HEARTBEAT_MS, devserver_on_heartbeat, d);
}

devserver *devserver_open(devserver_hub *h, loop *lp, char *err, size_t errlen) {
    devserver *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->hub = h;
    d->lp = lp;
    list_init(&d->pages);
    d->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (d->efd < 0 || loop_watch(lp, d->efd, LOOP_READ, devserver_on_wake, d) < 0) {
        snprintf(err, errlen, "cannot set up live reload: %s", strerror(errno));
        if (d->efd >= 0) close(d->efd);
        free(d);
        return NULL;
    }
    loop_timer_start(lp, &d->heartbeat, DEVSERVER_HEARTBEAT_MS, devserver_on_heartbeat, d);
    pthread_mutex_lock(&h->lock);
    list_insert_after(&h->stations, &d->station);
    pthread_mutex_unlock(&h->lock);
    return d;
}

void devserver_close(devserver *d) {
    if (!d) return;
    pthread_mutex_lock(&d->hub->lock);
    list_remove(&d->station);
    pthread_mutex_unlock(&d->hub->lock);
    loop_timer_stop(d->lp, &d->heartbeat);
    loop_watch(d->lp, d->efd, 0, NULL, NULL);
    close(d->efd);
    /* Not expected: the front went first and closed the streams. */
    for (list_node *n; (n = list_first(&d->pages));) {
        list_remove(n);
        free(list_entry(n, devserver_page, link));
    }
    free(d);
}

/* The page's stream is over (it left, or the server stops). */
static void devserver_on_closed(void *ud) {
    devserver_page *p = ud;
    list_remove(&p->link);
    free(p);
}

/* GET /__tokend/livereload: an event stream that says hello (this server's run), then a
 * reload event for each change. */
static void devserver_stream(devserver *d, http_request *req) {
    char hello[96];
    devserver_page *p = calloc(1, sizeof *p);
    http_response *resp = p
            ? http_response_stream(req, -1, DEVSERVER_PAGE_BUFFER, NULL, devserver_on_closed, p, &p->stream)
            : NULL;
    if (!resp) {
        free(p);
        http_request_fail(req, 503, "out of memory");
        return;
    }
    list_insert_after(&d->pages, &p->link);
    http_response_header(resp, "Content-Type", "text/event-stream; charset=utf-8");
    http_response_header(resp, "Cache-Control", "no-cache");
    http_response_header(resp, "X-Accel-Buffering", "no"); /* nginx: pass events at once */
    http_response_header(resp, "X-Content-Type-Options", "nosniff");
    snprintf(hello, sizeof hello, "retry: 1000\nevent: hello\ndata: %s\n\n", d->hub->boot);
    http_stream_write(p->stream, hello, strlen(hello));
    http_request_respond(req, 200, resp, 0);
}

/* 1 when the peer is this machine (its address, never what a proxy says). */
static int devserver_loopback(const http_request *req) {
    netaddr a;
    if (netaddr_parse(req->peer, &a) < 0) return 0;
    return a.family == AF_INET ? a.bytes[0] == 127 : memcmp(a.bytes, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\1", 16) == 0;
}

/* Answers with a fixed body of type (no-cache: it changes with the server). */
static void devserver_text(http_request *req, const char *body, const char *type, const char *disposition) {
    size_t len = strlen(body);
    http_response *resp = http_response_bytes(body, len, type);
    if (resp) {
        http_response_header(resp, "Cache-Control", "no-cache");
        if (disposition) http_response_header(resp, "Content-Disposition", disposition);
    }
    http_request_respond(req, 200, resp, strcmp(req->method, "HEAD") == 0 ? 0 : len);
}

int devserver_serve(devserver *d, http_request *req) {
    if (strncmp(req->path, DEVSERVER_PREFIX, sizeof DEVSERVER_PREFIX - 1) != 0) return 0;
    const char *name = req->path + sizeof DEVSERVER_PREFIX - 1;
    snprintf(req->route, sizeof req->route, "%s", req->path);
    int known = strcmp(name, "livereload") == 0 || strcmp(name, "livereload.js") == 0 ||
            (strcmp(name, "ca.crt") == 0 && d->hub->ca_pem && devserver_loopback(req));
    if (!known) {
        snprintf(req->route, sizeof req->route, "none");
        http_request_fail(req, 404, "not found");
    } else if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
        http_request_fail_allow(req, "GET, HEAD");
    } else if (strcmp(name, "livereload.js") == 0) {
        devserver_text(req, devserver_client_js, "text/javascript; charset=utf-8", NULL);
    } else if (strcmp(name, "ca.crt") == 0) {
        devserver_text(req, d->hub->ca_pem, "application/x-x509-ca-cert",
                       "attachment; filename=\"tokend-development-ca.crt\"");
    } else if (strcmp(req->method, "HEAD") == 0) {
        devserver_text(req, "", "text/event-stream; charset=utf-8", NULL);
    } else {
        devserver_stream(d, req);
    }
    return 1;
}
