/* relayopen.c: how a relayed session's two sides come to be: the upstream's connection and handshake first, then the client's upgrade; the sockets under each side's WebSocket. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "crypto.h"
#include "log.h"
#include "metrics.h"
#include "relayint.h"
#include "tokend.h"

/* ---- transports ---- */

/* The client's socket. A read shorter than asked for emptied it: the next read of the
 * same turn would only say so (level-triggered epoll tells when more comes). */
static ssize_t relayopen_client_recv(void *ud, uint8_t *buf, size_t len) {
    relay_session *s = ud;
    if (s->b_drained) return 0;
    ssize_t n = recv(s->bfd, buf, len, 0);
    if (n > 0 && (size_t)n < len) s->b_drained = 1;
    if (n > 0) return n;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
    return -1;
}

static ssize_t relayopen_client_send(void *ud, const uint8_t *data, size_t len, int more) {
    relay_session *s = ud;
    ssize_t n = send(s->bfd, data, len, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
    if (n > 0) return n;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
    return -1;
}

static ssize_t relayopen_upstream_recv(void *ud, uint8_t *buf, size_t len) {
    return fetch_conn_recv(((relay_session *)ud)->conn, buf, len);
}

static ssize_t relayopen_upstream_send(void *ud, const uint8_t *data, size_t len, int more) {
    (void)more;
    return fetch_conn_send(((relay_session *)ud)->conn, data, len);
}

/* ---- opening: the upstream first, then the client ---- */

static const ws_handler relayopen_client_handler = { relaymsg_on_client_message, relaymsg_on_client_frame };
static const ws_handler relayopen_upstream_handler = { relaymsg_on_upstream_message, NULL };
static const ws_io relayopen_client_io = { relayopen_client_recv, relayopen_client_send, 1 };
static const ws_io relayopen_upstream_io = { relayopen_upstream_recv, relayopen_upstream_send, 1 };
static const ws_io relayopen_upstream_tls_io = { relayopen_upstream_recv, relayopen_upstream_send, 0 };

/* libmicrohttpd sent the client its 101 and hands its socket over (or could not). */
static void relayopen_on_upgraded(void *ud, http_upgraded *u, int fd, const char *extra, size_t extra_len) {
    relay_session *s = ud;
    s->phase = RELAY_OPEN;
    if (fd < 0) {
        s->bh = NULL;
        relay_end(s, RELAY_CLIENT_GONE, 0, "", 0);
        relay_after(s);
        return;
    }
    s->bh = u;
    s->bfd = fd;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    size_t max = (size_t)(s->bytes_per_ms * 1000.0) + 1;
    s->b = ws_create(WS_SERVER, &relayopen_client_io, &relayopen_client_handler, s,
                     max > RELAY_CLIENT_TEXT_MAX ? max : RELAY_CLIENT_TEXT_MAX);
    if (!s->b || ws_feed(s->b, extra, extra_len) < 0) {
        relay_end(s, RELAY_INTERNAL, 0, "", 0);
        relay_after(s);
        return;
    }
    s->opened_ms = s->last_client_ms = s->rate_ms = relay_now_ms();
    s->rate_tokens = RELAY_RATE_BURST;
    if (s->cause) { /* the upstream refused or failed: the client hears why */
        relay_tell_client(s, s->code, s->reason);
        ws_close(s->b, s->code, s->reason, strlen(s->reason));
        s->b_closing_ms = s->opened_ms;
        s->status = 101;
        relay_after(s);
        return;
    }
    s->status = 101;
    s->counted_open = 1;
    metrics_relay_opened();
    s->busy++;
    ws_pump(s->b); /* what came with the handshake */
    s->u_pause_phase = 0;
    ws_pause(s->u, 0);
    ws_pump(s->u); /* the Begin may be read already (with the 101, or held by TLS) */
    s->busy--;
    relay_after(s);
}

/* Answers the client's handshake 101; the relay starts once its socket is handed over. */
void relayopen_upgrade_client(relay_session *s) {
    const char *headers[] = { "Upgrade", "websocket", "Sec-WebSocket-Accept", s->accept, NULL };
    http_request *req = s->req;
    s->req = NULL;
    s->bh = http_request_upgrade(req, headers, relayopen_on_upgraded, s);
    if (!s->bh) {
        http_request_fail(req, 503, "out of memory");
        s->status = 503;
        if (!s->cause) relay_end(s, RELAY_INTERNAL, 0, "", 0);
        return;
    }
    s->phase = RELAY_UPGRADING;
    s->upgrade_deadline_ms = relay_now_ms() + RELAY_CLOSE_WAIT_MS;
}

/* The upstream accepted: its WebSocket exists (not read until the client's does). */
static void relayopen_upstream_open(relay_session *s, const char *rest, size_t rest_len) {
    s->u = ws_create(WS_CLIENT, s->hub->tls ? &relayopen_upstream_tls_io : &relayopen_upstream_io,
                     &relayopen_upstream_handler, s, RELAY_UPSTREAM_MESSAGE_MAX);
    if (!s->u || ws_feed(s->u, rest, rest_len) < 0) {
        relay_end(s, RELAY_INTERNAL, WS_CODE_INTERNAL, "out of memory", 1);
        return;
    }
    s->u_pause_phase = 1;
    ws_pause(s->u, 1);
    s->up_open_us = loop_now_us();
    s->handshake_ms = (double)(s->up_open_us - s->start_us) / 1000.0;
    metrics_relay_handshake(s->handshake_ms);
    free(s->hs_in);
    s->hs_in = NULL;
    relayopen_upgrade_client(s);
}

/* The upstream answered its handshake with something else: why, for the client. */
static void relayopen_upstream_refused(relay_session *s, const ws_answer *a) {
    char why[120];
    s->upstream_status = a->status;
    relay_drop_upstream(s);
    if (a->status == 401 || a->status == 403) {
        snprintf(why, sizeof why, "the streaming service refused the server's API key (HTTP %d)", a->status);
        relay_end(s, RELAY_UPSTREAM_REFUSED, WS_CODE_POLICY, why, 1);
    } else if (a->status == 429) {
        snprintf(why, sizeof why, "the streaming service has too many sessions; try again later (HTTP 429)");
        relay_end(s, RELAY_UPSTREAM_REFUSED, 3009, why, 1);
    } else {
        snprintf(why, sizeof why, "the streaming service answered HTTP %d", a->status);
        relay_end(s, RELAY_UPSTREAM_UNAVAILABLE, WS_CODE_TRY_AGAIN, why, 1);
    }
}

/* Sends our handshake and reads the upstream's answer, as far as the socket lets. */
void relayopen_handshake(relay_session *s) {
    while (s->hs_off < s->hs_len) {
        ssize_t n = fetch_conn_send(s->conn, s->hs_out + s->hs_off, s->hs_len - s->hs_off);
        if (n == 0) {
            loop_watch(s->hub->lp, s->ufd, LOOP_WRITE, relay_on_upstream_fd, s);
            return;
        }
        if (n < 0) goto lost;
        s->hs_off += (size_t)n;
    }
    if (s->hs_out) {
        explicit_bzero(s->hs_out, s->hs_len); /* it holds the key */
        free(s->hs_out);
        s->hs_out = NULL;
    }
    for (;;) {
        ssize_t n = fetch_conn_recv(s->conn, s->hs_in + s->hs_in_len, RELAY_ANSWER_MAX - s->hs_in_len);
        if (n == 0) break;
        if (n < 0) goto lost;
        s->hs_in_len += (size_t)n;
        ws_answer a;
        int rc = ws_client_answer(s->hs_in, s->hs_in_len, RELAY_ANSWER_MAX, s->hs_accept, &a);
        if (rc == 0) continue;
        if (rc < 0) {
            relay_drop_upstream(s);
            relay_end(s, RELAY_UPSTREAM_UNAVAILABLE, WS_CODE_TRY_AGAIN,
                      "the streaming service answered the handshake with something else", 1);
            relay_after(s);
            return;
        }
        s->upstream_status = a.status;
        if (!a.upgraded) relayopen_upstream_refused(s, &a);
        else relayopen_upstream_open(s, s->hs_in + a.header_len, s->hs_in_len - a.header_len);
        relay_after(s);
        return;
    }
    loop_watch(s->hub->lp, s->ufd, LOOP_READ, relay_on_upstream_fd, s);
    return;
lost:
    relay_drop_upstream(s);
    relay_end(s, RELAY_UPSTREAM_UNAVAILABLE, WS_CODE_TRY_AGAIN, "the streaming service closed the connection", 1);
    relay_after(s);
}

/* libcurl connected to the upstream (TCP, TLS): our handshake goes at once (the first
 * send ties the connection to its handle, out of reach of the connection cache). */
static void relayopen_on_connected(void *ud, const fetch_conn_result *r) {
    relay_session *s = ud;
    if (r->failure != FAILURE_NONE) {
        relay_drop_upstream(s);
        log_msg(LOG_DEBUG, "relay %s: cannot reach the streaming service: %s", s->id, failure_name(r->failure));
        relay_end(s, RELAY_UPSTREAM_UNAVAILABLE, WS_CODE_TRY_AGAIN, "the streaming service could not be reached", 1);
        relay_after(s);
        return;
    }
    s->ufd = r->fd;
    relayopen_handshake(s);
}

/* Builds the upstream's URL and our handshake. Returns 0, or -1 when out of memory. */
static int relayopen_prepare(relay_session *s, const relay_options *o, char **url) {
    relay_hub *hub = s->hub;
    char key[WS_KEY_LEN + 1], *target = NULL, *extra = NULL;
    int rc = -1;
    const char *sep = o->query && *o->query ? "&" : "";
    if (asprintf(&target, "%s?%s%ssample_rate=%ld&encoding=%s", hub->path, o->query ? o->query : "", sep,
                 o->sample_rate, o->mulaw ? "pcm_mulaw" : "pcm_s16le") < 0) {
        target = NULL;
        goto out;
    }
    if (asprintf(url, "%s%s", hub->url, target + strlen(hub->path)) < 0) {
        *url = NULL;
        goto out;
    }
    if (ws_new_key(key) < 0 || ws_accept_of(key, s->hs_accept) < 0) goto out;
    if (asprintf(&extra, "Authorization: %s\r\nUser-Agent: tokend/%s\r\n", hub->key, TOKEND_VERSION) < 0) {
        extra = NULL;
        goto out;
    }
    if (!(s->hs_out = malloc(RELAY_REQUEST_MAX)) || !(s->hs_in = malloc(RELAY_ANSWER_MAX))) goto out;
    int n = ws_client_request(s->hs_out, RELAY_REQUEST_MAX, hub->host, target, key, extra);
    if (n < 0) goto out;
    s->hs_len = (size_t)n;
    rc = 0;
out:
    if (extra) explicit_bzero(extra, strlen(extra));
    free(extra);
    free(target);
    return rc;
}

relay_session *relay_start(relay_hub *hub, http_request *req, const relay_options *o, const relay_owner *owner,
                           void *ud) {
    char why[160], *url = NULL;
    relay_session *s = calloc(1, sizeof *s);
    if (!s) {
        http_request_fail(req, 503, "out of memory");
        return NULL;
    }
    unsigned char raw[8];
    if (crypto_random(raw, sizeof raw) < 0) memset(raw, 0, sizeof raw);
    crypto_hex(raw, sizeof raw, s->id);
    s->hub = hub;
    s->owner = *owner;
    s->ud = ud;
    s->req = req;
    s->bfd = s->ufd = -1;
    s->held_tail = &s->held;
    s->handshake_ms = s->up_audio_s = s->up_session_s = -1;
    s->start_us = loop_now_us();
    s->every_message = o->every_message;
    snprintf(s->user, sizeof s->user, "%s", o->user ? o->user : "");
    snprintf(s->who.client, sizeof s->who.client, "%s", req->client);
    const char *origin = http_request_header(req, "Origin");
    snprintf(s->who.origin, sizeof s->who.origin, "%s", origin ? origin : "");
    s->sample_bytes = o->mulaw ? 1 : 2;
    s->bytes_per_ms = (double)o->sample_rate * (double)s->sample_bytes / 1000.0;
    s->min_audio = (size_t)(s->bytes_per_ms * 50 + 0.5);
    s->max_audio = (size_t)(s->bytes_per_ms * 1000 + 0.5);
    s->max_ms = (uint64_t)o->max_seconds * 1000u;
    s->idle_ms = (uint64_t)o->idle_seconds * 1000u;
    s->stall_ms = s->idle_ms ? s->idle_ms : RELAY_STALL_MS; /* the same patience both ways */
    list_insert_after(&hub->sessions, &s->link);
    hub->count++;
    s->phase = RELAY_CONNECTING;
    s->hs_deadline_ms = relay_now_ms() + (uint64_t)hub->handshake_timeout_ms;
    if (ws_check_upgrade(req->method, http_request_version(req), http_request_header(req, "Upgrade"),
                         http_request_header(req, "Connection"), http_request_header(req, "Sec-WebSocket-Version"),
                         http_request_header(req, "Sec-WebSocket-Key"), s->accept, why, sizeof why) < 0) {
        /* Closed after: what a client sends after a failed upgrade (frames) is no request. */
        size_t len = 0;
        http_response *resp = http_response_error(why, &len);
        if (resp) http_response_header(resp, "Connection", "close");
        http_request_respond(req, 400, resp, len);
        s->req = NULL;
        s->status = 400;
        s->cause = RELAY_BAD_HANDSHAKE;
        relay_set_reason(s->reason, why);
    } else if (!hub->key) {
        relay_end(s, RELAY_NO_KEY, WS_CODE_INTERNAL, "no AssemblyAI API key is configured on the server", 1);
    } else if (relayopen_prepare(s, o, &url) < 0 ||
               !(s->conn = fetch_connect(hub->client, url, hub->proxy, hub->handshake_timeout_ms,
                                         relayopen_on_connected, s))) {
        relay_drop_upstream(s);
        relay_end(s, RELAY_INTERNAL, WS_CODE_INTERNAL, "out of memory", 1);
    }
    free(url);
    relay_schedule(s); /* what ended at once finishes from the loop, not from here */
    return s;
}
