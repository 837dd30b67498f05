/* relay.c: streaming sessions relayed between a browser's WebSocket and the upstream's: both sides, their limits, pacing and buffers, what was relayed, and how each session ended. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "audit.h"
#include "crypto.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "relay.h"
#include "tokend.h"

#define RELAY_QUEUE_HIGH (128 * 1024)   /* bytes queued toward a side: past it, the other side is not read */
#define RELAY_QUEUE_LOW (32 * 1024)     /* ... until its queue is back under this */
#define RELAY_PACE_AHEAD_MS 500         /* audio may run this far ahead of the wall clock, then waits */
#define RELAY_CLIENT_TEXT_MAX (64 * 1024)
#define RELAY_UPSTREAM_MESSAGE_MAX (1024 * 1024)
#define RELAY_RATE_PER_S 50.0           /* frames a second from the client, on average */
#define RELAY_RATE_BURST 200.0
#define RELAY_TERMINATE_WAIT_MS 5000    /* for the upstream's Termination after our Terminate */
#define RELAY_CLOSE_WAIT_MS 3000        /* for a close handshake (or a queue to drain before it) */
#define RELAY_LINGER_MS 500             /* after a protocol error: what the client still sends is dropped */
#define RELAY_STALL_MS 30000            /* without an idle time: a side that reads nothing of a full queue for this long is cut */
#define RELAY_ANSWER_MAX 8192           /* bytes of the upstream's answer to the handshake */
#define RELAY_REQUEST_MAX 16384         /* bytes of our handshake to the upstream */
#define RELAY_ROUNDS 8                  /* un-pause and pump rounds per event, at most */
#define RELAY_KEY_SCAN_MAX 4096         /* upstream text shorter than this is searched for pieces of the key */

enum { RELAY_CONNECTING, RELAY_UPGRADING, RELAY_OPEN, RELAY_DONE };

static const char *const relay_cause_names[RELAY_CAUSES] = {
    "running", "terminated", "client_closed", "client_gone", "upstream_closed", "upstream_gone",
    "upstream_refused", "upstream_unavailable", "no_key", "max_seconds", "idle", "rate", "bad_audio",
    "bad_message", "protocol", "stalled", "script", "hook_failed", "shutdown", "bad_handshake", "internal",
};

/* A client message that arrived while an UpdateConfiguration waits for its owner. */
typedef struct relay_held {
    struct relay_held *next;
    int binary;
    size_t len;
    uint8_t data[];
} relay_held;

struct relay_hub {
    loop *lp;
    fetch *client;
    char *url;                      /* <streaming URL>/v3/ws, for libcurl */
    char *host;                     /* host[:port], for the Host header */
    char *path;                     /* [/prefix]/v3/ws */
    char *key;                      /* NULL: none */
    char *proxy;
    int tls;                        /* https: writes are retried with the same buffer */
    long handshake_timeout_ms;
    relay_session *sessions;
    size_t count;
};

struct relay_session {
    relay_hub *hub;
    relay_session *prev, *next;
    relay_owner owner;
    void *ud;
    char id[17];
    char user[128];
    audit_who who;
    int phase;
    http_request *req;              /* the client's handshake, until answered */
    char accept[WS_ACCEPT_LEN + 1];
    int every_message;
    /* the upstream */
    fetch_conn *conn;
    int ufd;
    ws *u;
    char *hs_out;                   /* our handshake (it holds the key: wiped once sent) */
    size_t hs_len, hs_off;
    char *hs_in;                    /* its answer so far */
    size_t hs_in_len;
    char hs_accept[WS_ACCEPT_LEN + 1];
    uint64_t start_us, up_open_us, up_end_us;
    /* the client */
    http_upgraded *bh;
    int bfd;
    int b_drained;                  /* a short read emptied its socket: no more reads this turn */
    ws *b;
    /* reading paused: backpressure, pacing, an update being decided */
    int b_pause_bp, b_pause_pace, b_hold, u_pause_bp, u_pause_phase;
    relay_held *held, **held_tail;
    size_t held_bytes;
    /* limits */
    double bytes_per_ms;            /* audio */
    size_t sample_bytes, min_audio, max_audio;
    uint64_t max_ms, idle_ms, stall_ms;
    uint64_t opened_ms, last_client_ms, first_audio_ms, pace_until_ms, stall_since_ms;
    size_t stall_queued;            /* what was queued toward the slow side when it last made progress */
    double rate_tokens;
    uint64_t rate_ms;
    /* deadlines */
    loop_timer timer;
    uint64_t timer_due;
    uint64_t hs_deadline_ms, upgrade_deadline_ms, terminate_deadline_ms, b_closing_ms, u_closing_ms;
    /* the end */
    relay_cause cause;
    int code;
    char reason[WS_REASON_MAX + 1];
    int client_terminate;           /* the client sent Terminate */
    int got_termination;            /* the upstream's Termination arrived */
    int terminate_sent;             /* we sent one */
    int b_end_seen, u_end_seen;
    int busy;                       /* inside a pump or an owner's call: never freed there */
    int counted_open;               /* in the open sessions' gauge */
    int update_dropped;
    /* what it did */
    char upstream_id[80];
    unsigned long long bytes_in, bytes_out, msgs_in, msgs_out, audio_bytes;
    double up_audio_s, up_session_s, handshake_ms;
    int upstream_code, upstream_status, status;
};

static void relay_after(relay_session *s);
static void relay_schedule(relay_session *s);
static void relay_upgrade_client(relay_session *s);
static void relay_drop_upstream(relay_session *s);

const char *relay_cause_name(relay_cause c) {
    return c < RELAY_CAUSES ? relay_cause_names[c] : "unknown";
}

static uint64_t relay_now_ms(void) {
    return loop_now_ms();
}

/* Copies a close reason, cut to what a close frame holds on a character's boundary. */
static void relay_set_reason(char dst[WS_REASON_MAX + 1], const char *src) {
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
static void relay_drop_client(relay_session *s) {
    if (s->bfd >= 0) loop_watch(s->hub->lp, s->bfd, 0, NULL, NULL);
    if (s->bh) http_upgraded_close(s->bh);
    s->bh = NULL;
    s->bfd = -1;
    ws_free(s->b);
    s->b = NULL;
}

static void relay_drop_upstream(relay_session *s) {
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

static void relay_free_held(relay_session *s) {
    while (s->held) {
        relay_held *h = s->held;
        s->held = h->next;
        free(h);
    }
    s->held_tail = &s->held;
    s->held_bytes = 0;
}

static void relay_unlink(relay_session *s) {
    relay_hub *hub = s->hub;
    if (s->prev) s->prev->next = s->next;
    else hub->sessions = s->next;
    if (s->next) s->next->prev = s->prev;
    hub->count--;
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
    while (hub->sessions) relay_destroy(hub->sessions);
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
        .id = s->id, .upstream_id = s->upstream_id, .user = s->user,
        .seconds = s->up_open_us ? (double)(end - s->up_open_us) / 1e6 : 0,
        .audio_seconds = bytes_per_s > 0 ? (double)s->audio_bytes / bytes_per_s : 0,
        .bytes_in = s->bytes_in, .bytes_out = s->bytes_out, .messages_in = s->msgs_in, .messages_out = s->msgs_out,
        .upstream_audio_seconds = s->up_audio_s, .upstream_session_seconds = s->up_session_s,
        .cause = s->cause, .code = s->code, .reason = s->reason, .upstream_code = s->upstream_code,
        .upstream_status = s->upstream_status, .status = s->status, .handshake_ms = s->handshake_ms,
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
        { "event", "relay_session", 0 }, { "session", f->id, 0 }, { "upstream_session", f->upstream_id, 0 },
        { "client", s->who.client, 0 }, { "user", s->user, 0 }, { "origin", s->who.origin, 0 },
        { "status", status, 1 }, { "seconds", seconds, 1 }, { "audio_seconds", audio, 1 },
        { "upstream_session_seconds", up_seconds, 1 }, { "bytes_in", in, 1 }, { "bytes_out", out, 1 },
        { "cause", relay_cause_name(f->cause), 0 }, { "code", code, 1 }, { "upstream_code", up_code, 1 },
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
static void relay_tell_client(relay_session *s, int code, const char *reason) {
    char msg[400];
    size_t o = (size_t)snprintf(msg, sizeof msg, "{\"type\":\"Error\",\"error_code\":%d,\"error\":\"", code);
    o = json_escape(msg, o, sizeof msg - 3, reason);
    memcpy(msg + o, "\"}", 3);
    ws_send(s->b, 0, msg, o + 2);
}

/* Starts the end of the session: the client is closed with code and reason (told why
 * first when notify), the upstream asked to Terminate (its Termination gives the figures
 * the session is billed by) and closed after. The first cause stays. */
static void relay_end(relay_session *s, relay_cause cause, int code, const char *reason, int notify) {
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
        s->u_pause_bp = s->u_pause_phase = 0;       /* its answers are read to the end */
        if (s->phase == RELAY_OPEN) {
            static const char terminate[] = "{\"type\":\"Terminate\"}";
            s->terminate_sent = 1;
            s->terminate_deadline_ms = relay_now_ms() + RELAY_TERMINATE_WAIT_MS;
            ws_send(s->u, 0, terminate, sizeof terminate - 1);
        } else {
            ws_close(s->u, WS_CODE_NORMAL, "", 0);  /* never opened to the client: nothing to wait for */
            s->u_closing_ms = relay_now_ms();
        }
    } else if (!s->u && s->conn) {
        relay_drop_upstream(s);                     /* still connecting */
    }
    /* Still in its handshake: the client gets its 101 and the close at once. */
    if (s->phase == RELAY_CONNECTING && s->req) relay_upgrade_client(s);
}

/* Runs relay_after for an owner's call: the session is never finished inside it (the
 * owner may go on using it), but from the loop at once. */
static void relay_after_call(relay_session *s) {
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
    for (relay_session *s = hub->sessions, *next; s; s = next) {
        next = s->next;
        relay_end(s, RELAY_SHUTDOWN, WS_CODE_GOING_AWAY, "the server is shutting down", 1);
        relay_after(s);
    }
}

/* ---- limits on the client's side ---- */

/* Takes a frame from the client's rate bucket; 0 when it is empty. */
static int relay_rate_take(relay_session *s) {
    uint64_t now = relay_now_ms();
    s->rate_tokens += (double)(now - s->rate_ms) * RELAY_RATE_PER_S / 1000.0;
    if (s->rate_tokens > RELAY_RATE_BURST) s->rate_tokens = RELAY_RATE_BURST;
    s->rate_ms = now;
    if (s->rate_tokens < 1) return 0;
    s->rate_tokens -= 1;
    return 1;
}

static void relay_on_client_frame(void *ud) {
    relay_session *s = ud;
    s->last_client_ms = relay_now_ms();
    if (!relay_rate_take(s) && !s->cause) relay_end(s, RELAY_RATE, WS_CODE_POLICY, "too many messages", 1);
}

/* Audio is relayed no faster than real time and a margin: ahead of it, the client is not
 * read until the wall clock catches up (the upstream would close the session). */
static void relay_pace(relay_session *s) {
    uint64_t now = relay_now_ms();
    if (!s->first_audio_ms) s->first_audio_ms = now;
    double audio_ms = (double)s->audio_bytes / s->bytes_per_ms;
    double ahead = audio_ms - (double)(now - s->first_audio_ms);
    if (ahead <= RELAY_PACE_AHEAD_MS) return;
    s->b_pause_pace = 1;
    s->pace_until_ms = s->first_audio_ms + (uint64_t)(audio_ms - RELAY_PACE_AHEAD_MS / 2);
    ws_pause(s->b, 1);              /* at once: the read under way stops here */
    relay_schedule(s);
}

/* ---- messages ---- */

static void relay_forward_client(relay_session *s, int binary, const uint8_t *data, size_t len);

/* Keeps a client message that arrived while an update is being decided. */
static void relay_hold(relay_session *s, int binary, const uint8_t *data, size_t len) {
    relay_held *h = malloc(sizeof *h + len);
    if (!h) {
        relay_end(s, RELAY_INTERNAL, WS_CODE_INTERNAL, "out of memory", 1);
        return;
    }
    h->next = NULL;
    h->binary = binary;
    h->len = len;
    memcpy(h->data, data, len);
    *s->held_tail = h;
    s->held_tail = &h->next;
    s->held_bytes += len;
}

/* A text message of the client: the protocol's few, checked; an update goes to the owner. */
static void relay_client_text(relay_session *s, const uint8_t *data, size_t len) {
    json_message m;
    if (json_parse_message((const char *)data, len, &m) < 0) {
        relay_end(s, RELAY_BAD_MESSAGE, 3006, "a text message must be a JSON object", 1);
        return;
    }
    if (strcmp(m.type, "UpdateConfiguration") == 0) {
        if (!s->owner.on_update) {
            if (!s->update_dropped++)
                log_msg(LOG_DEBUG, "relay %s: an UpdateConfiguration was dropped (the script takes none)", s->id);
            return;
        }
        s->b_hold = 1;
        s->owner.on_update(s->ud, s, (const char *)data, len);
        return;
    }
    if (strcmp(m.type, "Terminate") == 0) s->client_terminate = 1;
    else if (strcmp(m.type, "ForceEndpoint") != 0 && strcmp(m.type, "KeepAlive") != 0) {
        relay_end(s, RELAY_BAD_MESSAGE, 3006,
                  "text messages are Terminate, ForceEndpoint, KeepAlive or UpdateConfiguration", 1);
        return;
    }
    ws_send(s->u, 0, data, len);
    s->bytes_in += len;
}

static void relay_forward_client(relay_session *s, int binary, const uint8_t *data, size_t len) {
    if (s->b_hold) {
        relay_hold(s, binary, data, len);
        return;
    }
    s->msgs_in++;
    if (!binary) {
        relay_client_text(s, data, len);
        return;
    }
    if (len < s->min_audio || len > s->max_audio || len % s->sample_bytes) {
        char why[120];
        snprintf(why, sizeof why, "audio messages must hold 50 to 1000 ms (this one: %.1f ms)",
                 (double)len / s->bytes_per_ms);
        relay_end(s, RELAY_BAD_AUDIO, 3007, why, 1);
        return;
    }
    ws_send(s->u, 1, data, len);
    s->bytes_in += len;
    s->audio_bytes += len;
    relay_pace(s);
    if (ws_queued_bytes(s->u) > RELAY_QUEUE_HIGH) ws_pause(s->b, 1);     /* relay_balance keeps it so */
}

static void relay_on_client_message(void *ud, int binary, const uint8_t *data, size_t len) {
    relay_session *s = ud;
    if (s->cause || !s->u) return;          /* ending: what still comes is dropped */
    relay_forward_client(s, binary, data, len);
}

void relay_session_forget(relay_session *s) {
    memset(&s->owner, 0, sizeof s->owner);
    if (s->b_hold) relay_session_update(s, NULL, 0);
    relay_end(s, RELAY_SHUTDOWN, WS_CODE_GOING_AWAY, "the server is shutting down", 1);
    relay_after_call(s);
}

void relay_session_update(relay_session *s, const char *msg, size_t len) {
    if (!s->b_hold) return;
    s->b_hold = 0;
    if (msg && !s->cause && s->u) {
        ws_send(s->u, 0, msg, len);
        s->bytes_in += len;
    }
    /* What arrived meanwhile goes now, in order (another update holds the rest again). */
    while (s->held && !s->b_hold && !s->cause) {
        relay_held *h = s->held;
        s->held = h->next;
        if (!s->held) s->held_tail = &s->held;
        s->held_bytes -= h->len;
        relay_forward_client(s, h->binary, h->data, h->len);
        free(h);
    }
    if (s->cause) relay_free_held(s);
    relay_after_call(s);
}

/* Whether text holds the key (the upstream echoing the Authorization it got, as some
 * servers do in their errors): any 8 characters of it in a row, in any case. */
static int relay_holds_key(const relay_session *s, const char *text, size_t len) {
    const char *key = s->hub->key;
    size_t klen = key ? strlen(key) : 0, w = klen < 8 ? klen : 8;
    if (!w || len < w) return 0;
    for (size_t i = 0; i + w <= klen; i++)
        for (size_t j = 0; j + w <= len; j++)
            if (strncasecmp(text + j, key + i, w) == 0) return 1;
    return 0;
}

/* A message from the upstream: read for what the relay records and the owner wants, then
 * passed on as is, but one that shows the key (never relayed; an Error is told without it). */
static void relay_on_upstream_message(void *ud, int binary, const uint8_t *data, size_t len) {
    relay_session *s = ud;
    if (!binary) {
        json_message m;
        const char *text = (const char *)data;
        int parsed = json_parse_message(text, len, &m) == 0;
        /* An error's text is where a server echoes what it was sent: searched for any piece
         * of the key; other messages for the key whole (a Turn a second costs no more). */
        if (parsed && strcmp(m.type, "Error") == 0 && len < RELAY_KEY_SCAN_MAX ? relay_holds_key(s, text, len)
            : memmem(text, len, s->hub->key, strlen(s->hub->key)) != NULL) {
            log_throttled(LOG_WARN, "relay", "relay %s: the streaming service sent a message with the server's key in it: "
                          "not passed on", s->id);
            return;
        }
        if (parsed) {
            if (strcmp(m.type, "Begin") == 0) {
                snprintf(s->upstream_id, sizeof s->upstream_id, "%s", m.id);
                if (s->owner.on_begin) s->owner.on_begin(s->ud, s, s->upstream_id, text, len);
            } else if (strcmp(m.type, "Turn") == 0 && m.end_of_turn) {
                if (s->owner.on_turn) s->owner.on_turn(s->ud, s, text, len);
            } else if (strcmp(m.type, "Termination") == 0) {
                s->got_termination = 1;
                s->up_audio_s = m.audio_duration_seconds;
                s->up_session_s = m.session_duration_seconds;
            }
        }
        if (s->every_message && s->owner.on_message && s->phase != RELAY_DONE) s->owner.on_message(s->ud, s, text, len);
    }
    if (s->b && ws_state(s->b) == WS_OPEN && ws_send(s->b, binary, data, len) == 0) {
        s->msgs_out++;
        s->bytes_out += len;
        if (ws_queued_bytes(s->b) > RELAY_QUEUE_HIGH) ws_pause(s->u, 1);
    }
}

/* ---- transports ---- */

/* The client's socket. A read shorter than asked for emptied it: the next read of the
 * same turn would only say so (level-triggered epoll tells when more comes). */
static ssize_t relay_client_recv(void *ud, uint8_t *buf, size_t len) {
    relay_session *s = ud;
    if (s->b_drained) return 0;
    ssize_t n = recv(s->bfd, buf, len, 0);
    if (n > 0 && (size_t)n < len) s->b_drained = 1;
    if (n > 0) return n;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
    return -1;
}

static ssize_t relay_client_send(void *ud, const uint8_t *data, size_t len, int more) {
    relay_session *s = ud;
    ssize_t n = send(s->bfd, data, len, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
    if (n > 0) return n;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
    return -1;
}

static ssize_t relay_upstream_recv(void *ud, uint8_t *buf, size_t len) {
    return fetch_conn_recv(((relay_session *)ud)->conn, buf, len);
}

static ssize_t relay_upstream_send(void *ud, const uint8_t *data, size_t len, int more) {
    (void)more;
    return fetch_conn_send(((relay_session *)ud)->conn, data, len);
}

/* ---- driving both sides ---- */

static void relay_on_client_fd(void *ud, int fd, unsigned events);
static void relay_on_upstream_fd(void *ud, int fd, unsigned events);

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
                        : peer ? RELAY_CLIENT_CLOSED : broke ? RELAY_PROTOCOL : RELAY_CLIENT_GONE;
        relay_end(s, c, peer ? peer : broke ? (sent ? sent : 1002) : 0, peer ? reason : "", 0);
    }
    if (s->u && !s->u_end_seen && ws_state(s->u) != WS_OPEN && s->phase == RELAY_OPEN) {
        s->u_end_seen = 1;
        if (!s->u_closing_ms) s->u_closing_ms = relay_now_ms();
        char reason[WS_REASON_MAX + 1];
        int peer = ws_peer_close(s->u, reason, sizeof reason);
        s->upstream_code = peer;
        if (relay_holds_key(s, reason, strlen(reason))) snprintf(reason, sizeof reason, "[redacted]");
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
static void relay_after(relay_session *s) {
    if (s->phase == RELAY_DONE) return;
    s->busy++;
    for (int round = 0; round < RELAY_ROUNDS; round++) {
        relay_side_ended(s);            /* the end of one side closes the other */
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

static void relay_upstream_handshake(relay_session *s);

static void relay_on_upstream_fd(void *ud, int fd, unsigned events) {
    relay_session *s = ud;
    (void)fd;
    if (!s->u) {
        relay_upstream_handshake(s);
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
static void relay_schedule(relay_session *s) {
    if (s->phase == RELAY_DONE) return;
    uint64_t due = UINT64_MAX, now = relay_now_ms();
#define RELAY_DUE(t) do { if ((t) && (t) < due) due = (t); } while (0)
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
        relay_end(s, RELAY_UPSTREAM_UNAVAILABLE, WS_CODE_TRY_AGAIN,
                  "the streaming service did not answer in time", 1);
    } else if (s->phase == RELAY_UPGRADING && now >= s->upgrade_deadline_ms) {
        relay_drop_client(s);       /* libmicrohttpd never handed the connection over */
        s->phase = RELAY_OPEN;
        if (!s->cause) relay_end(s, RELAY_CLIENT_GONE, 0, "", 0);
    } else if (s->phase == RELAY_OPEN && !s->cause) {
        char why[120];
        if (now >= s->opened_ms + s->max_ms) {
            snprintf(why, sizeof why, "the session reached its maximum duration (%llu s)",
                     (unsigned long long)(s->max_ms / 1000));
            relay_end(s, RELAY_MAX_SECONDS, 3008, why, 1);
        } else if (s->idle_ms && now >= s->last_client_ms + s->idle_ms) {
            snprintf(why, sizeof why, "nothing came from the client for %llu s", (unsigned long long)(s->idle_ms / 1000));
            relay_end(s, RELAY_IDLE, WS_CODE_POLICY, why, 1);
        } else if (s->stall_since_ms && now >= s->stall_since_ms + s->stall_ms) {
            size_t queued = s->u_pause_bp ? ws_queued_bytes(s->b) : ws_queued_bytes(s->u);
            if (queued < s->stall_queued) {         /* slow, but reading: patience again */
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

/* ---- opening: the upstream first, then the client ---- */

static const ws_handler relay_client_handler = { relay_on_client_message, relay_on_client_frame };
static const ws_handler relay_upstream_handler = { relay_on_upstream_message, NULL };
static const ws_io relay_client_io = { relay_client_recv, relay_client_send, 1 };
static const ws_io relay_upstream_io = { relay_upstream_recv, relay_upstream_send, 1 };
static const ws_io relay_upstream_tls_io = { relay_upstream_recv, relay_upstream_send, 0 };

/* libmicrohttpd sent the client its 101 and hands its socket over (or could not). */
static void relay_on_upgraded(void *ud, http_upgraded *u, int fd, const char *extra, size_t extra_len) {
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
    s->b = ws_create(WS_SERVER, &relay_client_io, &relay_client_handler, s,
                     max > RELAY_CLIENT_TEXT_MAX ? max : RELAY_CLIENT_TEXT_MAX);
    if (!s->b || ws_feed(s->b, extra, extra_len) < 0) {
        relay_end(s, RELAY_INTERNAL, 0, "", 0);
        relay_after(s);
        return;
    }
    s->opened_ms = s->last_client_ms = s->rate_ms = relay_now_ms();
    s->rate_tokens = RELAY_RATE_BURST;
    if (s->cause) {                 /* the upstream refused or failed: the client hears why */
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
    ws_pump(s->b);                  /* what came with the handshake */
    s->u_pause_phase = 0;
    ws_pause(s->u, 0);
    ws_pump(s->u);                  /* the Begin may be read already (with the 101, or held by TLS) */
    s->busy--;
    relay_after(s);
}

/* Answers the client's handshake 101; the relay starts once its socket is handed over. */
static void relay_upgrade_client(relay_session *s) {
    const char *headers[] = { "Upgrade", "websocket", "Sec-WebSocket-Accept", s->accept, NULL };
    http_request *req = s->req;
    s->req = NULL;
    s->bh = http_request_upgrade(req, headers, relay_on_upgraded, s);
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
static void relay_upstream_open(relay_session *s, const char *rest, size_t rest_len) {
    s->u = ws_create(WS_CLIENT, s->hub->tls ? &relay_upstream_tls_io : &relay_upstream_io, &relay_upstream_handler, s,
                     RELAY_UPSTREAM_MESSAGE_MAX);
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
    relay_upgrade_client(s);
}

/* The upstream answered its handshake with something else: why, for the client. */
static void relay_upstream_refused(relay_session *s, const ws_answer *a) {
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
static void relay_upstream_handshake(relay_session *s) {
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
        explicit_bzero(s->hs_out, s->hs_len);       /* it holds the key */
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
        if (!a.upgraded) relay_upstream_refused(s, &a);
        else relay_upstream_open(s, s->hs_in + a.header_len, s->hs_in_len - a.header_len);
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
static void relay_on_connected(void *ud, const fetch_conn_result *r) {
    relay_session *s = ud;
    if (r->failure != FAILURE_NONE) {
        relay_drop_upstream(s);
        log_msg(LOG_DEBUG, "relay %s: cannot reach the streaming service: %s", s->id, failure_name(r->failure));
        relay_end(s, RELAY_UPSTREAM_UNAVAILABLE, WS_CODE_TRY_AGAIN, "the streaming service could not be reached", 1);
        relay_after(s);
        return;
    }
    s->ufd = r->fd;
    relay_upstream_handshake(s);
}

/* Builds the upstream's URL and our handshake. Returns 0, or -1 when out of memory. */
static int relay_prepare(relay_session *s, const relay_options *o, char **url) {
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
    s->stall_ms = s->idle_ms ? s->idle_ms : RELAY_STALL_MS;     /* the same patience both ways */
    s->next = hub->sessions;
    if (hub->sessions) hub->sessions->prev = s;
    hub->sessions = s;
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
    } else if (relay_prepare(s, o, &url) < 0 ||
               !(s->conn = fetch_connect(hub->client, url, hub->proxy, hub->handshake_timeout_ms, relay_on_connected, s))) {
        relay_drop_upstream(s);
        relay_end(s, RELAY_INTERNAL, WS_CODE_INTERNAL, "out of memory", 1);
    }
    free(url);
    relay_schedule(s);          /* what ended at once finishes from the loop, not from here */
    return s;
}
