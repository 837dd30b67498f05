/* relayint.h: a relayed session's insides (the hub, a session, its limits), private to the relay's files relay*.c. */
#ifndef TOKEND_RELAYINT_H
#define TOKEND_RELAYINT_H

#include <stddef.h>
#include <stdint.h>

#include "audit.h"
#include "list.h"
#include "loop.h"
#include "relay.h"
#include "ws.h"

#define RELAY_QUEUE_HIGH (128 * 1024) /* bytes queued toward a side: past it, the other side is not read */
#define RELAY_QUEUE_LOW (32 * 1024)   /* ... until its queue is back under this */
#define RELAY_PACE_AHEAD_MS 500       /* audio may run this far ahead of the wall clock, then waits */
#define RELAY_CLIENT_TEXT_MAX (64 * 1024)
#define RELAY_UPSTREAM_MESSAGE_MAX (1024 * 1024)
#define RELAY_RATE_PER_S 50.0 /* frames a second from the client, on average */
#define RELAY_RATE_BURST 200.0
#define RELAY_TERMINATE_WAIT_MS 5000 /* for the upstream's Termination after our Terminate */
#define RELAY_CLOSE_WAIT_MS 3000     /* for a close handshake (or a queue to drain before it) */
#define RELAY_LINGER_MS 500          /* after a protocol error: what the client still sends is dropped */
#define RELAY_STALL_MS 30000  /* without an idle time: a side that reads nothing of a full queue for this long is cut */
#define RELAY_ANSWER_MAX 8192 /* bytes of the upstream's answer to the handshake */
#define RELAY_REQUEST_MAX 16384 /* bytes of our handshake to the upstream */
#define RELAY_ROUNDS 8          /* un-pause and pump rounds per event, at most */
#define RELAY_KEY_SCAN_MAX 4096 /* upstream text shorter than this is searched for pieces of the key */

/* Where a session is: connecting to the upstream, upgrading the client, relaying, finished. */
enum { RELAY_CONNECTING, RELAY_UPGRADING, RELAY_OPEN, RELAY_DONE };

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
    char *url;  /* <streaming URL>/v3/ws, for libcurl */
    char *host; /* host[:port], for the Host header */
    char *path; /* [/prefix]/v3/ws */
    char *key;  /* NULL: none */
    char *proxy;
    int tls; /* https: writes are retried with the same buffer */
    long handshake_timeout_ms;
    list_node sessions;
    size_t count;
};

struct relay_session {
    relay_hub *hub;
    list_node link; /* in the hub's sessions */
    relay_owner owner;
    void *ud;
    char id[17];
    char user[128];
    audit_who who;
    int phase;
    http_request *req; /* the client's handshake, until answered */
    char accept[WS_ACCEPT_LEN + 1];
    int every_message;
    /* the upstream */
    fetch_conn *conn;
    int ufd;
    ws *u;
    char *hs_out; /* our handshake (it holds the key: wiped once sent) */
    size_t hs_len, hs_off;
    char *hs_in; /* its answer so far */
    size_t hs_in_len;
    char hs_accept[WS_ACCEPT_LEN + 1];
    uint64_t start_us, up_open_us, up_end_us;
    /* the client */
    http_upgraded *bh;
    int bfd;
    int b_drained; /* a short read emptied its socket: no more reads this turn */
    ws *b;
    /* reading paused: backpressure, pacing, an update being decided */
    int b_pause_bp, b_pause_pace, b_hold, u_pause_bp, u_pause_phase;
    relay_held *held, **held_tail;
    size_t held_bytes;
    /* limits */
    double bytes_per_ms; /* audio */
    size_t sample_bytes, min_audio, max_audio;
    uint64_t max_ms, idle_ms, stall_ms;
    uint64_t opened_ms, last_client_ms, first_audio_ms, pace_until_ms, stall_since_ms;
    size_t stall_queued; /* what was queued toward the slow side when it last made progress */
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
    int client_terminate; /* the client sent Terminate */
    int got_termination;  /* the upstream's Termination arrived */
    int terminate_sent;   /* we sent one */
    int b_end_seen, u_end_seen;
    int busy;         /* inside a pump or an owner's call: never freed there */
    int counted_open; /* in the open sessions' gauge */
    int update_dropped;
    /* what it did */
    char upstream_id[80];
    unsigned long long bytes_in, bytes_out, msgs_in, msgs_out, audio_bytes;
    double up_audio_s, up_session_s, handshake_ms;
    int upstream_code, upstream_status, status;
};

/* The loop's clock in milliseconds: every deadline of a session is on it. */
static inline uint64_t relay_now_ms(void) {
    return loop_now_ms();
}

/* ---- relay.c: a session's life, both sides driven, its deadlines ---- */

/* Copies a close reason, cut to what a close frame holds on a character's boundary. */
void relay_set_reason(char dst[WS_REASON_MAX + 1], const char *src);

/* The client's side is done with: its socket goes back to libmicrohttpd, which closes it. */
void relay_drop_client(relay_session *s);

/* The upstream's side is done with: its connection closed, our handshake wiped. */
void relay_drop_upstream(relay_session *s);

/* Frees the client messages held for an update. */
void relay_free_held(relay_session *s);

/* Sends the client an Error message, as the upstream does before a close it decides. */
void relay_tell_client(relay_session *s, int code, const char *reason);

/* Starts the end of the session: the client is closed with code and reason (told why
 * first when notify), the upstream asked to Terminate and closed after. The first cause
 * stays. */
void relay_end(relay_session *s, relay_cause cause, int code, const char *reason, int notify);

/* After any event: what one side read is written to the other, reading is balanced, ends
 * are noticed, the sockets watched, and a session whose sides are both done is finished
 * (s may be gone on return). */
void relay_after(relay_session *s);

/* relay_after for an owner's call: the session is never finished inside it, but from the
 * loop at once. */
void relay_after_call(relay_session *s);

/* Arms the session's timer for its next deadline. */
void relay_schedule(relay_session *s);

/* The upstream's socket is ready (loop_watch's callback): its handshake goes on, or its
 * WebSocket is pumped. */
void relay_on_upstream_fd(void *ud, int fd, unsigned events);

/* ---- relaymsg.c: what passes through ---- */

/* ws_handler callbacks: a message and a frame of the client's, a message of the upstream's. */
void relaymsg_on_client_message(void *ud, int binary, const uint8_t *data, size_t len);
void relaymsg_on_client_frame(void *ud);
void relaymsg_on_upstream_message(void *ud, int binary, const uint8_t *data, size_t len);

/* Whether text holds the key: any 8 characters of it in a row, in any case. */
int relaymsg_holds_key(const relay_session *s, const char *text, size_t len);

/* ---- relayopen.c: how the two sides come to be ---- */

/* Answers the client's handshake 101; the relay starts once its socket is handed over. */
void relayopen_upgrade_client(relay_session *s);

/* Sends our handshake to the upstream and reads its answer, as far as the socket lets. */
void relayopen_handshake(relay_session *s);

#endif
