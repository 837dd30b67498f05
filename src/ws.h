/* ws.h: one WebSocket connection (RFC 6455) over wslay, on a transport of its owner's (a socket, a libcurl connection): messages, the close handshake, the upgrade handshake's keys and which close codes may be sent. */
#ifndef TOKEND_WS_H
#define TOKEND_WS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct ws ws;

/* The transport under a connection. */
typedef struct ws_io {
    /* Reads up to len bytes into buf: the count (> 0), 0 when nothing can be read now, or
     * -1 at the end of the stream or on an error. */
    ssize_t (*recv)(void *ud, uint8_t *buf, size_t len);
    /* Writes up to len bytes (more: more follows at once): the count (> 0), 0 when
     * nothing can be written now, or -1 on an error. */
    ssize_t (*send)(void *ud, const uint8_t *data, size_t len, int more);
    /* 1: a write that would block may be retried with other bytes (a socket), so a frame's
     * header goes out with its payload in one write; 0: a retry must repeat the same
     * buffer (TLS through libcurl). */
    int coalesce;
} ws_io;

/* What a connection tells its owner, from inside ws_pump. */
typedef struct ws_handler {
    /* A whole message arrived, its fragments joined: text (valid UTF-8) or binary. */
    void (*on_message)(void *ud, int binary, const uint8_t *data, size_t len);
    /* A frame begins (data, continuation, ping or pong): for rate limits. May be NULL. */
    void (*on_frame)(void *ud);
} ws_handler;

#define WS_SERVER 0 /* the accepting side: reads masked frames, writes unmasked ones */
#define WS_CLIENT 1

/* States. */
#define WS_OPEN 0    /* messages flow */
#define WS_CLOSING 1 /* a close was asked for, sent or received; the handshake is not over */
#define WS_CLOSED 2  /* the close handshake is over, or the transport ended: nothing more to do */

/* What a connection waits for (ws_wants). */
#define WS_WANT_READ 1u
#define WS_WANT_WRITE 2u

/* Close codes tokend may send (RFC 6455 7.4; browsers refuse the others). */
#define WS_CODE_NORMAL 1000
#define WS_CODE_GOING_AWAY 1001
#define WS_CODE_NO_STATUS 1005 /* never sent: the peer's close frame had no code */
#define WS_CODE_POLICY 1008
#define WS_CODE_INTERNAL 1011
#define WS_CODE_TRY_AGAIN 1013

#define WS_KEY_LEN 24     /* a Sec-WebSocket-Key: 16 random bytes in base64 */
#define WS_ACCEPT_LEN 28  /* a Sec-WebSocket-Accept: a SHA-1 in base64 */
#define WS_REASON_MAX 123 /* bytes of a close frame's reason */

/* Creates a connection whose frames go through io (its functions get ud) and whose
 * messages go to h (with ud); messages longer than max_message are refused (1009).
 * NULL when out of memory. */
ws *ws_create(int role, const ws_io *io, const ws_handler *h, void *ud, size_t max_message);

/* Frees a connection (its transport is the owner's). NULL is allowed. */
void ws_free(ws *w);

/* Gives the connection bytes that were read from its transport before it existed (what
 * followed the upgrade handshake): they are read first. Returns 0, or -1 when out of memory. */
int ws_feed(ws *w, const void *data, size_t len);

/* Reads what the transport holds (unless paused; a TLS connection may hold decrypted
 * bytes its socket no longer shows: everything is read until it would block), calling
 * the handler for each message, then writes what is queued. Returns the state. */
int ws_pump(ws *w);

/* Writes what is queued, without reading. Returns the state. */
int ws_write_queued(ws *w);

/* Queues a message. Returns 0, or -1 once the connection is closing or when out of memory. */
int ws_send(ws *w, int binary, const void *data, size_t len);

/* Closes with code (0: a close frame without one) and reason (at most WS_REASON_MAX
 * bytes, valid UTF-8): the close frame goes once the messages queued before it are out
 * (wslay would send it first and drop them). Later calls are ignored. Returns 0, or -1
 * when out of memory. */
int ws_close(ws *w, int code, const char *reason, size_t len);

/* Ends the connection at once, without a close handshake: its state becomes WS_CLOSED. */
void ws_abort(ws *w);

/* Stops (1) or resumes (0) reading from the transport: bytes wait in the kernel. */
void ws_pause(ws *w, int paused);
int ws_paused(const ws *w);

/* WS_WANT_READ and/or WS_WANT_WRITE: what the transport should be watched for. */
unsigned ws_wants(const ws *w);

/* Bytes of messages queued and not yet written. */
size_t ws_queued_bytes(const ws *w);

int ws_state(const ws *w);

/* The close the peer sent: its code as sent (also one wslay refuses to echo, such as
 * 1012), WS_CODE_NO_STATUS when its close frame had none, or 0 when it sent none; its
 * reason (NUL-terminated, truncated to cap) in reason when not NULL. */
int ws_peer_close(const ws *w, char *reason, size_t cap);

/* The code of the close frame written (WS_CODE_NO_STATUS for one without a code), or 0. */
int ws_sent_close(const ws *w);

/* 1 when wslay closed the connection on its own: the peer broke the protocol (1002), sent
 * invalid UTF-8 (1007) or too long a message (1009). */
int ws_protocol_failed(const ws *w);

/* 1 when the transport ended or failed (no close handshake, or not a whole one). */
int ws_transport_ended(const ws *w);

/* Whether code may be sent in a close frame: 1000-1003, 1007-1013, 3000-4999 (what browsers
 * accept of RFC 6455 7.4). */
int ws_code_sendable(int code);

/* ---- the upgrade handshake ---- */

/* Checks a client's opening handshake (RFC 6455 4.2.1): method GET, HTTP/1.1, Upgrade
 * naming websocket, Connection naming Upgrade, Sec-WebSocket-Version 13 and a key of 16
 * bytes in base64 (any header may be NULL: absent). Returns 0 and writes the
 * Sec-WebSocket-Accept value into accept; or -1 with why (for a 400 answer). */
int ws_check_upgrade(const char *method, const char *http_version, const char *upgrade, const char *connection,
                     const char *version, const char *key, char accept[WS_ACCEPT_LEN + 1], char *why, size_t whylen);

/* The Sec-WebSocket-Accept value of key. Returns 0, or -1 when out of memory. */
int ws_accept_of(const char *key, char accept[WS_ACCEPT_LEN + 1]);

/* Writes a fresh random key. Returns 0, or -1 when the random source failed. */
int ws_new_key(char key[WS_KEY_LEN + 1]);

/* Writes a client's opening handshake for target ("/v3/ws?x=1") on host, with key and
 * extra header lines (each "Name: value\r\n"; may be NULL) into buf. Returns its length,
 * or -1 when it does not fit. */
int ws_client_request(char *buf, size_t cap, const char *host, const char *target, const char *key, const char *extra);

/* The server's answer to a client's opening handshake. */
typedef struct ws_answer {
    int status;        /* its HTTP status */
    int upgraded;      /* 101 with Upgrade, Connection and the Sec-WebSocket-Accept expected */
    long retry_after;  /* Retry-After in seconds (1..3600), or 0 */
    size_t header_len; /* bytes of the answer's head: what follows is the first frames */
} ws_answer;

/* Reads the head of a server's answer from buf (len bytes so far; accept: the value
 * expected). Returns 1 when it is whole (out filled), 0 when more bytes are needed, -1
 * when it is not an HTTP/1.1 answer (or its head passes limit bytes). */
int ws_client_answer(const char *buf, size_t len, size_t limit, const char *accept, ws_answer *out);

#endif
