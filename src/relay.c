/* relay.c: streaming sessions relayed between a browser's WebSocket and the upstream's: the hub, the life of each session (both sides driven, balanced and closed, its deadlines), what was relayed and how it ended. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "json.h"
#include "log.h"
#include "metrics.h"
#include "relayint.h"

static const char *const relay_cause_names[RELAY_CAUSES] = {
    "running",
    "terminated",
    "client_closed",
    "client_gone",
    "upstream_closed",
    "upstream_gone",
    "upstream_refused",
    "upstream_unavailable",
    "no_key",
    "max_seconds",
    "idle",
    "rate",
    "bad_audio",
    "bad_message",
    "protocol",
    "stalled",
    "script",
    "hook_failed",
    "shutdown",
    "bad_handshake",
    "internal",
};

const char *relay_cause_name(relay_cause c) {
    return c < RELAY_CAUSES ? relay_cause_names[c] : "unknown";
}

/* Copies a close reason, cut to what a close frame holds on a character's boundary. */
void relay_set_reason(char dst[WS_REASON_MAX + 1], const char *src) {
    size_t n = src ? strlen(src) : 0;
    if (n > WS_REASON_MAX) {
        n = WS_REASON_MAX;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80) n--;
    }
    if (n) memcpy(dst, src, n);
    dst[n] = '\0';
}

/* ---- the hub ---- */

relay_hub *relay_hub_create(loop *lp, fetch *client, const relay_settings *st) {
    relay_hub *hub = calloc(1, sizeof *hub);
    if (!hub) return NULL;
    list_init(&hub->sessions);
    hub->lp = lp;
    hub->client = client;
    hub->handshake_timeout_ms = st->handshake_timeout_ms > 0 ? st->handshake_timeout_ms : 10000;
    const char *url = st->url ? st->url : "";
    const char *rest = strstr(url, "://");
    rest = rest ? rest + 3 : url;
    size_t hostlen = strcspn(rest, "/");
    hub->tls = strncasecmp(url, "https://", 8) == 0;
    if (asprintf(&hub->url, "%s/v3/ws", url) < 0) hub->url = NULL;
    hub->host = strndup(rest, hostlen);
    if (asprintf(&hub->path, "%s/v3/ws", rest + hostlen) < 0) hub->path = NULL;
    if (st->api_key && *st->api_key) hub->key = strdup(st->api_key);
    if (st->proxy && *st->proxy) hub->proxy = strdup(st->proxy);
    if (!hub->url || !hub->host || !hub->path || (st->api_key && *st->api_key && !hub->key) ||
        (st->proxy && *st->proxy && !hub->proxy)) {
        relay_hub_free(hub);
        return NULL;
    }
    return hub;
}

size_t relay_hub_count(const relay_hub *hub) {
    return hub ? hub->count : 0;
}

/* ---- closing the two sides ---- */

/* The client's side is done with: its socket goes back to libmicrohttpd, which closes it. */
void relay_drop_client(relay_session *s) {
    if (s->bfd >= 0) loop_watch(s->hub->lp, s->bfd, 0, NULL, NULL);
    if (s->bh) http_upgraded_close(s->bh);
    s->bh = NULL;
    s->bfd = -1;
    ws_free(s->b);
    s->b = NULL;
}

void relay_drop_upstream(relay_session *s) {
    if (s->ufd >= 0) loop_watch(s->hub->lp, s->ufd, 0, NULL, NULL);
    if (s->conn) fetch_conn_close(s->conn);
    s->conn = NULL;
    s->ufd = -1;
    ws_free(s->u);
    s->u = NULL;
    if (s->hs_out) explicit_bzero(s->hs_out, s->hs_len);
    free(s->hs_out);
    free(s->hs_in);
    s->hs_out = s->hs_in = NULL;
    if (s->up_open_us && !s->up_end_us) s->up_end_us = loop_now_us();
}

void relay_free_held(relay_session *s) {
    while (s->held) {
        relay_held *h = s->held;
        s->held = h->next;
        free(h);
    }
    s->held_tail = &s->held;
    s->held_bytes = 0;
}

static void relay_unlink(relay_session *s) {
    list_remove(&s->link);
    s->hub->count--;
}

/* Frees a session without a word to anyone. */
static void relay_destroy(relay_session *s) {
    loop_timer_stop(s->hub->lp, &s->timer);
    if (s->req) http_request_fail(s->req, 503, "server shutting down");
    s->req = NULL;
    relay_drop_client(s);
    relay_drop_upstream(s);
    relay_free_held(s);
    relay_unlink(s);
    free(s);
}

void relay_hub_free(relay_hub *hub) {
    if (!hub) return;
    for (list_node *n; (n = list_first(&hub->sessions));) relay_destroy(list_entry(n, relay_session, link));
    if (hub->key) explicit_bzero(hub->key, strlen(hub->key));
    free(hub->key);
    free(hub->url);
    free(hub->host);
    free(hub->path);
    free(hub->proxy);
    free(hub);
}

void relay_session_facts(const relay_session *s, relay_facts *f) {
    uint64_t end = s->up_end_us ? s->up_end_us : loop_now_us();
    double bytes_per_s = s->bytes_per_ms * 1000.0;
    *f = (relay_facts){
        .id = s->id,
        .upstream_id = s->upstream_id,
        .user = s->user,
        .seconds = s->up_open_us ? (double)(end - s->up_open_us) / 1e6 : 0,
        .audio_seconds = bytes_per_s > 0 ? (double)s->audio_bytes / bytes_per_s : 0,
        .bytes_in = s->bytes_in,
        .bytes_out = s->bytes_out,
        .messages_in = s->msgs_in,
        .messages_out = s->msgs_out,
        .upstream_audio_seconds = s->up_audio_s,
        .upstream_session_seconds = s->up_session_s,
        .cause = s->cause,
        .code = s->code,
        .reason = s->reason,
        .upstream_code = s->upstream_code,
        .upstream_status = s->upstream_status,
        .status = s->status,
        .handshake_ms = s->handshake_ms,
    };
}

/* Writes the session's audit line and counts it. */
static void relay_account(relay_session *s, const relay_facts *f) {
    char seconds[32], audio[32], code[16], in[32], out[32], up_seconds[32], up_code[16], status[16];
    snprintf(seconds, sizeof seconds, "%.3f", f->seconds);
    snprintf(audio, sizeof audio, "%.3f", f->audio_seconds);
    snprintf(code, sizeof code, "%d", f->code);
    snprintf(in, sizeof in, "%llu", f->bytes_in);
    snprintf(out, sizeof out, "%llu", f->bytes_out);
    if (f->upstream_session_seconds >= 0) snprintf(up_seconds, sizeof up_seconds, "%.3f", f->upstream_session_seconds);
    else snprintf(up_seconds, sizeof up_seconds, "null");
    snprintf(up_code, sizeof up_code, "%d", f->upstream_code);
    snprintf(status, sizeof status, "%d", f->status);
    log_field fields[] = {
        { "event", "relay_session", 0 },
        { "session", f->id, 0 },
        { "upstream_session", f->upstream_id, 0 },
        { "client", s->who.client, 0 },
        { "user", s->user, 0 },
        { "origin", s->who.origin, 0 },
        { "status", status, 1 },
        { "seconds", seconds, 1 },
        { "audio_seconds", audio, 1 },
        { "upstream_session_seconds", up_seconds, 1 },
        { "bytes_in", in, 1 },
        { "bytes_out", out, 1 },
        { "cause", relay_cause_name(f->cause), 0 },
        { "code", code, 1 },
        { "upstream_code", up_code, 1 },
        { "reason", f->reason, 0 },
    };
    log_fields(LOG_INFO, "audit", "relay", fields, sizeof fields / sizeof fields[0] - (*f->reason ? 0 : 1));
    metrics_relay_closed(relay_cause_name(f->cause), s->counted_open, f->seconds, f->bytes_in, f->bytes_out);
}

/* Ends a session whose two sides are done: the owner's last word, then it is freed. */
static void relay_finish(relay_session *s) {
    relay_facts f;
    s->phase = RELAY_DONE;
    loop_timer_stop(s->hub->lp, &s->timer);
    relay_drop_client(s);
    relay_drop_upstream(s);
    relay_free_held(s);
    if (!s->cause) s->cause = RELAY_INTERNAL;
    relay_session_facts(s, &f);
    relay_account(s, &f);
    relay_unlink(s);
    if (s->owner.on_end) s->owner.on_end(s->ud, s, &f);
    free(s);
}

/* Sends the client an Error message, as the upstream does before a close it decides. */
void relay_tell_client(relay_session *s, int code, const char *reason) {
    char msg[400];
    size_t o = (size_t)snprintf(msg, sizeof msg, "{\"type\":\"Error\",\"error_code\":%d,\"error\":\"", code);
    o = json_escape(msg, o, sizeof msg - 3, reason);
    memcpy(msg + o, "\"}", 3);
    ws_send(s->b, 0, msg, o + 2);
}

/* Starts the end of the session: the client is closed with code and reason (told why
 * first when notify), the upstream asked to Terminate (its Termination gives the figures
 * the session is billed by) and closed after. The first cause stays. */
void relay_end(relay_session *s, relay_cause cause, int code, const char *reason, int notify) {
    if (s->cause || s->phase == RELAY_DONE) return;
    s->cause = cause;
    s->code = code;
    relay_set_reason(s->reason, reason);
    if (s->req && cause == RELAY_SHUTDOWN) {
        http_request_fail(s->req, 503, "server shutting down");
        s->req = NULL;
        s->status = 503;
    }
    if (s->b && ws_state(s->b) == WS_OPEN) {
        if (notify) relay_tell_client(s, code, s->reason);
        ws_close(s->b, code, s->reason, strlen(s->reason));
        s->b_closing_ms = relay_now_ms();
    }
    if (s->u && ws_state(s->u) == WS_OPEN) {
        s->u_pause_bp = s->u_pause_phase = 0; /* its answers are read to the end */
        if (s->phase == RELAY_OPEN) {
            static const char terminate[] = "{\"type\":\"Terminate\"}";
            s->terminate_sent = 1;
            s->terminate_deadline_ms = relay_now_ms() + RELAY_TERMINATE_WAIT_MS;
            ws_send(s->u, 0, terminate, sizeof terminate - 1);
        } else {
            ws_close(s->u, WS_CODE_NORMAL, "", 0); /* never opened to the client: nothing to wait for */
            s->u_closing_ms = relay_now_ms();
        }
    } else if (!s->u && s->conn) {
        relay_drop_upstream(s); /* still connecting */
    }
    /* Still in its handshake: the client gets its 101 and the close at once. */
    if (s->phase == RELAY_CONNECTING && s->req) relayopen_upgrade_client(s);
}

/* Runs relay_after for an owner's call: the session is never finished inside it (the
 * owner may go on using it), but from the loop at once. */
void relay_after_call(relay_session *s) {
    s->busy++;
    relay_after(s);
    s->busy--;
    relay_schedule(s);
}

void relay_session_close(relay_session *s, relay_cause cause, int code, const char *reason) {
    relay_end(s, cause, code, reason, 1);
    relay_after_call(s);
}

void relay_hub_close_all(relay_hub *hub) {
    for (list_node *n = list_first(&hub->sessions), *next; n; n = next) {
        relay_session *s = list_entry(n, relay_session, link);
        next = list_next(&hub->sessions, n);
        relay_end(s, RELAY_SHUTDOWN, WS_CODE_GOING_AWAY, "the server is shutting down", 1);
        relay_after(s);
    }
}

void relay_session_forget(relay_session *s) {
    memset(&s->owner, 0, sizeof s->owner);
    if (s->b_hold) relay_session_update(s, NULL, 0);
    relay_end(s, RELAY_SHUTDOWN, WS_CODE_GOING_AWAY, "the server is shutting down", 1);
    relay_after_call(s);
}

/* ---- driving both sides ---- */

static void relay_on_client_fd(void *ud, int fd, unsigned events);

/* Watches each side's socket for what its connection waits for. */
static void relay_watch(relay_session *s) {
    if (s->b && s->bfd >= 0) {
        unsigned w = ws_wants(s->b), ev = (w & WS_WANT_READ ? LOOP_READ : 0) | (w & WS_WANT_WRITE ? LOOP_WRITE : 0);
        loop_watch(s->hub->lp, s->bfd, ev, relay_on_client_fd, s);
    }
    if (s->u && s->ufd >= 0) {
        unsigned w = ws_wants(s->u), ev = (w & WS_WANT_READ ? LOOP_READ : 0) | (w & WS_WANT_WRITE ? LOOP_WRITE : 0);
        loop_watch(s->hub->lp, s->ufd, ev, relay_on_upstream_fd, s);
    }
}

/* What the end of one side means for the session, once (the first end decides its cause). */
static void relay_side_ended(relay_session *s) {
    if (s->b && !s->b_end_seen && ws_state(s->b) != WS_OPEN) {
        s->b_end_seen = 1;
        if (!s->b_closing_ms) s->b_closing_ms = relay_now_ms();
        char reason[WS_REASON_MAX + 1];
        int peer = ws_peer_close(s->b, reason, sizeof reason);
        int sent = ws_sent_close(s->b);
        int broke = ws_protocol_failed(s->b);
        relay_cause c = s->got_termination && s->client_terminate ? RELAY_TERMINATED
                : peer                                            ? RELAY_CLIENT_CLOSED
                : broke                                           ? RELAY_PROTOCOL
                                                                  : RELAY_CLIENT_GONE;
        relay_end(s, c, peer ? peer : broke ? (sent ? sent : 1002) : 0, peer ? reason : "", 0);
    }
    if (s->u && !s->u_end_seen && ws_state(s->u) != WS_OPEN && s->phase == RELAY_OPEN) {
        s->u_end_seen = 1;
        if (!s->u_closing_ms) s->u_closing_ms = relay_now_ms();
        char reason[WS_REASON_MAX + 1];
        int peer = ws_peer_close(s->u, reason, sizeof reason);
        s->upstream_code = peer;
        if (relaymsg_holds_key(s, reason, strlen(reason))) snprintf(reason, sizeof reason, "[redacted]");
        if (peer) {
            /* Passed on as it came (after what was queued before it): 1005 as a close
             * without a code, one a browser would refuse as 1011. */
            int code = peer == WS_CODE_NO_STATUS ? 0 : ws_code_sendable(peer) ? peer : WS_CODE_INTERNAL;
            relay_end(s, s->client_terminate && s->got_termination ? RELAY_TERMINATED : RELAY_UPSTREAM_CLOSED, code,
                      reason, 0);
        } else {
            relay_end(s, RELAY_UPSTREAM_GONE, WS_CODE_INTERNAL, "the connection to the streaming service was lost", 1);
        }
        if (s->u && !s->up_end_us) s->up_end_us = loop_now_us();
    }
}

/* Resumes or pauses reading each side for what is queued toward the other. Returns 1 when
 * a side may read again (it is pumped at once: TLS may hold its bytes already). */
static int relay_balance(relay_session *s) {
    int resumed = 0;
    if (s->b && s->u) {
        size_t to_u = ws_queued_bytes(s->u), to_b = ws_queued_bytes(s->b);
        if (!s->b_pause_bp && to_u > RELAY_QUEUE_HIGH) s->b_pause_bp = 1;
        else if (s->b_pause_bp && to_u < RELAY_QUEUE_LOW) s->b_pause_bp = 0, resumed |= 1;
        if (!s->u_pause_bp && to_b > RELAY_QUEUE_HIGH) s->u_pause_bp = 1;
        else if (s->u_pause_bp && to_b < RELAY_QUEUE_LOW) s->u_pause_bp = 0, resumed |= 2;
        if ((s->b_pause_bp || s->u_pause_bp) && !s->stall_since_ms) {
            s->stall_since_ms = relay_now_ms();
            s->stall_queued = s->u_pause_bp ? to_b : to_u;
            relay_schedule(s);
        } else if (!s->b_pause_bp && !s->u_pause_bp) {
            s->stall_since_ms = 0;
        }
    }
    if (s->b) {
        int was = ws_paused(s->b), now = s->b_pause_bp || s->b_pause_pace || s->b_hold;
        ws_pause(s->b, now);
        if (was && !now) resumed |= 1;
    }
    if (s->u) {
        int was = ws_paused(s->u), now = s->u_pause_bp || s->u_pause_phase;
        ws_pause(s->u, now);
        if (was && !now) resumed |= 2;
    }
    if (resumed & 1) {
        s->b_drained = 0;
        ws_pump(s->b);
    }
    if (resumed & 2) ws_pump(s->u);
    return resumed != 0;
}

/* Whether both sides are done with (the session only waits to be finished). */
static int relay_over(const relay_session *s) {
    int client_done = s->phase != RELAY_UPGRADING && (!s->b || ws_state(s->b) == WS_CLOSED);
    int upstream_done = s->u ? ws_state(s->u) == WS_CLOSED : !s->conn;
    return s->cause && !s->req && client_done && upstream_done;
}

/* After any event: what one side read is written to the other, reading is balanced, ends
 * are noticed, the sockets watched for what comes next, and a session whose sides are
 * both done is finished. */
void relay_after(relay_session *s) {
    if (s->phase == RELAY_DONE) return;
    s->busy++;
    for (int round = 0; round < RELAY_ROUNDS; round++) {
        relay_side_ended(s); /* the end of one side closes the other */
        if (s->u) ws_write_queued(s->u);
        if (s->b) ws_write_queued(s->b);
        relay_side_ended(s);
        if (!relay_balance(s)) break;
    }
    if (s->u) ws_write_queued(s->u);
    if (s->b) ws_write_queued(s->b);
    relay_watch(s);
    s->busy--;
    if (!s->busy && relay_over(s)) relay_finish(s);
    else relay_schedule(s);
}

static void relay_on_client_fd(void *ud, int fd, unsigned events) {
    relay_session *s = ud;
    (void)fd;
    s->busy++;
    s->b_drained = 0;
    if (events & LOOP_READ) ws_pump(s->b);
    else ws_write_queued(s->b);
    s->busy--;
    relay_after(s);
}

void relay_on_upstream_fd(void *ud, int fd, unsigned events) {
    relay_session *s = ud;
    (void)fd;
    if (!s->u) {
        relayopen_handshake(s);
        return;
    }
    s->busy++;
    if (events & LOOP_READ) ws_pump(s->u);
    else ws_write_queued(s->u);
    s->busy--;
    relay_after(s);
}

/* ---- deadlines ---- */

/* How long a side that is closing may take: a client that broke the protocol gets its
 * close and a moment for its answer (its bytes are dropped meanwhile: wslay reads no more). */
static uint64_t relay_close_wait(const ws *w) {
    return ws_protocol_failed(w) && ws_sent_close(w) ? RELAY_LINGER_MS : RELAY_CLOSE_WAIT_MS;
}

static void relay_on_timer(void *ud);

/* Arms the session's timer for its next deadline. Deadlines that move with traffic (the
 * idle time) are checked when the timer fires, not re-armed per message. */
void relay_schedule(relay_session *s) {
    if (s->phase == RELAY_DONE) return;
    uint64_t due = UINT64_MAX, now = relay_now_ms();
#define RELAY_DUE(t) \
    do { \
        if ((t) && (t) < due) due = (t); \
    } while (0)
    /* Each deadline counts only while what it waits for has not happened: once due, what
     * fires makes it so (else the timer would fire again at once, forever). */
    if (s->phase == RELAY_CONNECTING && !s->cause) RELAY_DUE(s->hs_deadline_ms);
    if (s->phase == RELAY_UPGRADING) RELAY_DUE(s->upgrade_deadline_ms);
    if (s->cause) {
        if (s->terminate_sent && s->u && ws_state(s->u) == WS_OPEN) RELAY_DUE(s->terminate_deadline_ms);
        if (s->b && s->b_closing_ms && ws_state(s->b) != WS_CLOSED) RELAY_DUE(s->b_closing_ms + relay_close_wait(s->b));
        if (s->u && s->u_closing_ms && ws_state(s->u) != WS_CLOSED) RELAY_DUE(s->u_closing_ms + RELAY_CLOSE_WAIT_MS);
        if (relay_over(s)) RELAY_DUE(now);
    } else if (s->phase == RELAY_OPEN) {
        RELAY_DUE(s->opened_ms + s->max_ms);
        if (s->idle_ms) RELAY_DUE(s->last_client_ms + s->idle_ms);
        if (s->b_pause_pace) RELAY_DUE(s->pace_until_ms);
        if (s->stall_since_ms) RELAY_DUE(s->stall_since_ms + s->stall_ms);
    }
#undef RELAY_DUE
    if (due == UINT64_MAX) {
        loop_timer_stop(s->hub->lp, &s->timer);
        s->timer_due = 0;
        return;
    }
    /* Armed sooner already: it fires, finds nothing due and arms itself again (so that a
     * deadline that moves with each message costs no heap operation per message). */
    if (s->timer.heap_index && s->timer_due <= due) return;
    s->timer_due = due;
    loop_timer_start(s->hub->lp, &s->timer, due > now ? (long)(due - now) : 0, relay_on_timer, s);
}

static void relay_on_timer(void *ud) {
    relay_session *s = ud;
    uint64_t now = relay_now_ms();
    s->timer_due = 0;
    if (s->phase == RELAY_CONNECTING && s->hs_deadline_ms && now >= s->hs_deadline_ms && !s->cause) {
        relay_end(s, RELAY_UPSTREAM_UNAVAILABLE, WS_CODE_TRY_AGAIN, "the streaming service did not answer in time", 1);
    } else if (s->phase == RELAY_UPGRADING && now >= s->upgrade_deadline_ms) {
        relay_drop_client(s); /* libmicrohttpd never handed the connection over */
        s->phase = RELAY_OPEN;
        if (!s->cause) relay_end(s, RELAY_CLIENT_GONE, 0, "", 0);
    } else if (s->phase == RELAY_OPEN && !s->cause) {
        char why[120];
        if (now >= s->opened_ms + s->max_ms) {
            snprintf(why, sizeof why, "the session reached its maximum duration (%llu s)",
                     (unsigned long long)(s->max_ms / 1000));
            relay_end(s, RELAY_MAX_SECONDS, 3008, why, 1);
        } else if (s->idle_ms && now >= s->last_client_ms + s->idle_ms) {
            snprintf(why, sizeof why, "nothing came from the client for %llu s",
                     (unsigned long long)(s->idle_ms / 1000));
            relay_end(s, RELAY_IDLE, WS_CODE_POLICY, why, 1);
        } else if (s->stall_since_ms && now >= s->stall_since_ms + s->stall_ms) {
            size_t queued = s->u_pause_bp ? ws_queued_bytes(s->b) : ws_queued_bytes(s->u);
            if (queued < s->stall_queued) { /* slow, but reading: patience again */
                s->stall_since_ms = now;
                s->stall_queued = queued;
            } else if (s->u_pause_bp) {
                relay_end(s, RELAY_STALLED, WS_CODE_POLICY, "the client does not read", 1);
            } else {
                relay_end(s, RELAY_STALLED, WS_CODE_INTERNAL, "the streaming service does not read", 1);
            }
        }
        if (s->b_pause_pace && now >= s->pace_until_ms) s->b_pause_pace = 0;
    }
    if (s->cause) {
        if (s->terminate_sent && s->u && ws_state(s->u) == WS_OPEN && now >= s->terminate_deadline_ms) {
            ws_close(s->u, WS_CODE_NORMAL, "", 0);
            s->u_closing_ms = now;
        }
        if (s->b && s->b_closing_ms && now >= s->b_closing_ms + relay_close_wait(s->b)) ws_abort(s->b);
        if (s->u && s->u_closing_ms && now >= s->u_closing_ms + RELAY_CLOSE_WAIT_MS) ws_abort(s->u);
    }
    relay_after(s);
}
