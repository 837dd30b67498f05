/* ws.c: one WebSocket connection (RFC 6455) over wslay, on a transport of its owner's (a socket, a libcurl connection): messages, the close handshake, the upgrade handshake's keys and which close codes may be sent. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <wslay/wslay.h>

#include "crypto.h"
#include "ws.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_CONTROL_MAX 125      /* payload bytes of a control frame */
#define WS_DISCARD_CHUNK 4096   /* what a lingering close reads and drops at a time */
#define WS_MASKS 256            /* random bytes fetched at once for masking keys (a client's) */
#define WS_HEAD_MAX 14          /* a frame's header, kept to go out with its payload */
#define WS_COALESCE (16 * 1024) /* a header and this much payload go out in one write */

struct ws {
    wslay_event_context_ptr ctx;
    ws_io io;
    ws_handler h;
    void *ud;
    uint8_t *fed; /* bytes read before the connection existed */
    size_t fed_len, fed_off;
    int paused;
    int ended; /* the transport ended or failed */
    int aborted;
    int close_asked;  /* ws_close was called */
    int close_queued; /* and its frame handed to wslay */
    uint16_t close_code;
    uint8_t close_reason[WS_REASON_MAX];
    size_t close_reason_len;
    int in_close;                     /* the frame being received is a close frame */
    uint8_t peer_raw[WS_CONTROL_MAX]; /* its payload, as received (wslay drops codes it refuses) */
    size_t peer_raw_len;
    int peer_closed;         /* a whole close frame arrived */
    uint8_t masks[WS_MASKS]; /* random bytes for masking keys; used from masks_used on */
    size_t masks_used;
    uint8_t head[WS_HEAD_MAX]; /* a header wslay gave to write, held for its payload */
    size_t head_len;
    /* What the owner asks after every event, kept as of the last change (ws_refresh). */
    int state;
    unsigned wants;
    size_t queued;
};

static void ws_refresh(ws *w);

/* ---- wslay's callbacks ---- */

/* What a callback returns to wslay for n, what the transport's recv or send returned:
 * n bytes; 0 is "would block"; below 0 the stream ended (an error to wslay, which takes
 * 0 for "would block"). */
static ssize_t ws_io_result(ws *w, wslay_event_context_ptr ctx, ssize_t n) {
    if (n > 0) return n;
    if (n == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    w->ended = 1;
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
}

static ssize_t ws_on_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *ud) {
    ws *w = ud;
    (void)flags;
    if (w->fed_off < w->fed_len) {
        size_t n = w->fed_len - w->fed_off < len ? w->fed_len - w->fed_off : len;
        memcpy(buf, w->fed + w->fed_off, n);
        w->fed_off += n;
        if (w->fed_off == w->fed_len) {
            free(w->fed);
            w->fed = NULL;
            w->fed_len = w->fed_off = 0;
        }
        return (ssize_t)n;
    }
    if (w->paused) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    return ws_io_result(w, ctx, w->io.recv(w->ud, buf, len));
}

/* wslay writes a frame's header, then its payload: the header is held back and goes out
 * with (the start of) the payload in one write, a system call less per message. */
static ssize_t ws_on_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *ud) {
    ws *w = ud;
    int more = (flags & WSLAY_MSG_MORE) != 0;
    if (more && w->io.coalesce && !w->head_len && len <= WS_HEAD_MAX) {
        memcpy(w->head, data, len);
        w->head_len = len;
        return (ssize_t)len;
    }
    ssize_t n;
    if (w->head_len) {
        uint8_t joined[WS_HEAD_MAX + WS_COALESCE];
        size_t take = len < WS_COALESCE ? len : WS_COALESCE;
        memcpy(joined, w->head, w->head_len);
        memcpy(joined + w->head_len, data, take);
        n = w->io.send(w->ud, joined, w->head_len + take, more || take < len);
        if (n > 0) {
            /* What went of the header leaves it; only payload bytes count to wslay (none:
             * as if the write would block, and the rest of the header goes first next time). */
            size_t h = (size_t)n < w->head_len ? (size_t)n : w->head_len;
            memmove(w->head, w->head + h, w->head_len - h);
            w->head_len -= h;
            n -= (ssize_t)h;
        }
    } else {
        n = w->io.send(w->ud, data, len, more);
    }
    return ws_io_result(w, ctx, n);
}

/* Masking keys from the system's random source, fetched WS_MASKS bytes at a time (one
 * call per message would cost more than the message). */
static int ws_on_genmask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *ud) {
    ws *w = ud;
    (void)ctx;
    if (len > WS_MASKS) return crypto_random(buf, len) == 0 ? 0 : -1;
    if (w->masks_used + len > WS_MASKS) {
        if (crypto_random(w->masks, WS_MASKS) != 0) return -1;
        w->masks_used = 0;
    }
    memcpy(buf, w->masks + w->masks_used, len);
    explicit_bzero(w->masks + w->masks_used, len);
    w->masks_used += len;
    return 0;
}

static void ws_on_frame_start(wslay_event_context_ptr ctx, const struct wslay_event_on_frame_recv_start_arg *a,
                              void *ud) {
    ws *w = ud;
    (void)ctx;
    w->in_close = a->opcode == WSLAY_CONNECTION_CLOSE;
    if (w->in_close) w->peer_raw_len = 0;
    else if (w->h.on_frame) w->h.on_frame(w->ud);
}

static void ws_on_frame_chunk(wslay_event_context_ptr ctx, const struct wslay_event_on_frame_recv_chunk_arg *a,
                              void *ud) {
    ws *w = ud;
    (void)ctx;
    if (!w->in_close) return;
    size_t room = sizeof w->peer_raw - w->peer_raw_len;
    size_t n = a->data_length < room ? a->data_length : room;
    memcpy(w->peer_raw + w->peer_raw_len, a->data, n);
    w->peer_raw_len += n;
}

/* A close frame is whole: kept as received, whatever wslay makes of its code. */
static void ws_on_frame_end(wslay_event_context_ptr ctx, void *ud) {
    ws *w = ud;
    (void)ctx;
    if (w->in_close) w->peer_closed = 1;
    w->in_close = 0;
}

static void ws_on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *a, void *ud) {
    ws *w = ud;
    (void)ctx;
    /* Pings are answered by wslay; pongs and closes are not messages. */
    if (a->opcode != WSLAY_TEXT_FRAME && a->opcode != WSLAY_BINARY_FRAME) return;
    if (w->close_asked || w->aborted) return; /* closing: what still comes is dropped */
    w->h.on_message(w->ud, a->opcode == WSLAY_BINARY_FRAME, a->msg, a->msg_length);
}

/* ---- the connection ---- */

ws *ws_create(int role, const ws_io *io, const ws_handler *h, void *ud, size_t max_message) {
    static const struct wslay_event_callbacks server_cb = {
        ws_on_recv, ws_on_send, NULL, ws_on_frame_start, ws_on_frame_chunk, ws_on_frame_end, ws_on_msg,
    };
    static const struct wslay_event_callbacks client_cb = {
        ws_on_recv, ws_on_send, ws_on_genmask, ws_on_frame_start, ws_on_frame_chunk, ws_on_frame_end, ws_on_msg,
    };
    ws *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->masks_used = WS_MASKS; /* fetched at the first message */
    w->io = *io;
    w->h = *h;
    w->ud = ud;
    int rc = role == WS_CLIENT ? wslay_event_context_client_init(&w->ctx, &client_cb, w)
                               : wslay_event_context_server_init(&w->ctx, &server_cb, w);
    if (rc != 0) {
        free(w);
        return NULL;
    }
    wslay_event_config_set_max_recv_msg_length(w->ctx, max_message);
    ws_refresh(w);
    return w;
}

void ws_free(ws *w) {
    if (!w) return;
    wslay_event_context_free(w->ctx);
    free(w->fed);
    free(w);
}

int ws_feed(ws *w, const void *data, size_t len) {
    if (!len) return 0;
    uint8_t *b = realloc(w->fed, w->fed_len + len);
    if (!b) return -1;
    memcpy(b + w->fed_len, data, len);
    w->fed = b;
    w->fed_len += len;
    return 0;
}

static int ws_peer_closed(const ws *w) {
    return w->peer_closed || wslay_event_get_close_received(w->ctx);
}

static int ws_compute_state(const ws *w) {
    if (w->aborted || w->ended) return WS_CLOSED;
    int sent = wslay_event_get_close_sent(w->ctx);
    if (sent && ws_peer_closed(w)) return WS_CLOSED;
    if (sent || ws_peer_closed(w) || w->close_asked || !wslay_event_get_read_enabled(w->ctx)) return WS_CLOSING;
    return WS_OPEN;
}

/* Keeps the state, what the connection waits for and the bytes queued as of now: they
 * change only in ws.c's own calls (wslay's state too: it runs only from them), and an
 * owner asks for them several times an event. */
static void ws_refresh(ws *w) {
    w->state = ws_compute_state(w);
    w->queued = wslay_event_get_queued_msg_length(w->ctx);
    w->wants = 0;
    if (w->state == WS_CLOSED) return;
    if (!w->paused && (wslay_event_want_read(w->ctx) || !ws_peer_closed(w))) w->wants |= WS_WANT_READ;
    if (wslay_event_want_write(w->ctx) || (w->close_asked && !w->close_queued)) w->wants |= WS_WANT_WRITE;
}

int ws_state(const ws *w) {
    return w->state;
}

/* Writes what is queued; the close asked for goes once the messages before it are out. */
static void ws_flush(ws *w) {
    for (;;) {
        if (w->ended || w->aborted) return;
        if (w->close_asked && !w->close_queued && wslay_event_get_queued_msg_count(w->ctx) == 0) {
            w->close_queued = 1;
            /* Refused when wslay queued a close itself (an echo, a protocol error): that one goes. */
            wslay_event_queue_close(w->ctx, w->close_code, w->close_reason, w->close_code ? w->close_reason_len : 0);
        }
        if (!wslay_event_want_write(w->ctx)) return;
        if (wslay_event_send(w->ctx) != 0) {
            w->ended = 1;
            return;
        }
        if (wslay_event_want_write(w->ctx) || !w->close_asked || w->close_queued) return;
    }
}

/* After a close wslay sent on its own (a protocol error, a message too long), the peer
 * may still be sending: its bytes are read and dropped until it closes, so that the
 * kernel does not answer them with a reset that could overtake the close frame. */
static void ws_linger(ws *w) {
    uint8_t scratch[WS_DISCARD_CHUNK];
    for (;;) {
        ssize_t n = w->io.recv(w->ud, scratch, sizeof scratch);
        if (n == 0) return;
        if (n < 0) {
            w->ended = 1;
            return;
        }
    }
}

int ws_pump(ws *w) {
    if (w->state == WS_CLOSED) return WS_CLOSED;
    if (!w->paused) {
        if (wslay_event_want_read(w->ctx)) {
            int rc = wslay_event_recv(w->ctx);
            if (rc == WSLAY_ERR_NOMEM) w->ended = 1;
        } else if (!ws_peer_closed(w)) {
            ws_linger(w);
        }
    }
    ws_flush(w);
    ws_refresh(w);
    return w->state;
}

int ws_write_queued(ws *w) {
    if (w->state == WS_CLOSED || !(w->wants & WS_WANT_WRITE)) return w->state;
    ws_flush(w);
    ws_refresh(w);
    return w->state;
}

int ws_send(ws *w, int binary, const void *data, size_t len) {
    if (w->close_asked || w->aborted || w->ended) return -1;
    struct wslay_event_msg m = { binary ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME, data, len };
    if (wslay_event_queue_msg(w->ctx, &m) != 0) return -1;
    w->queued += len;
    w->wants |= WS_WANT_WRITE;
    return 0;
}

int ws_close(ws *w, int code, const char *reason, size_t len) {
    if (w->close_asked) return 0;
    w->close_asked = 1;
    w->close_code = (uint16_t)(code > 0 && code != WS_CODE_NO_STATUS ? code : 0);
    w->close_reason_len = len < WS_REASON_MAX ? len : WS_REASON_MAX;
    if (w->close_reason_len) memcpy(w->close_reason, reason, w->close_reason_len);
    ws_refresh(w);
    return 0;
}

void ws_abort(ws *w) {
    w->aborted = 1;
    ws_refresh(w);
}

void ws_pause(ws *w, int paused) {
    if (w->paused == paused) return;
    w->paused = paused;
    ws_refresh(w);
}

int ws_paused(const ws *w) {
    return w->paused;
}

unsigned ws_wants(const ws *w) {
    return w->wants;
}

size_t ws_queued_bytes(const ws *w) {
    return w->queued;
}

int ws_peer_close(const ws *w, char *reason, size_t cap) {
    if (reason && cap) reason[0] = '\0';
    if (!ws_peer_closed(w)) return 0;
    if (w->peer_raw_len < 2) return WS_CODE_NO_STATUS;
    if (reason && cap) {
        size_t n = w->peer_raw_len - 2 < cap - 1 ? w->peer_raw_len - 2 : cap - 1;
        memcpy(reason, w->peer_raw + 2, n);
        reason[n] = '\0';
    }
    return (w->peer_raw[0] << 8) | w->peer_raw[1];
}

int ws_sent_close(const ws *w) {
    if (!wslay_event_get_close_sent(w->ctx)) return 0;
    int code = wslay_event_get_status_code_sent(w->ctx);
    return code ? code : WS_CODE_NO_STATUS;
}

int ws_protocol_failed(const ws *w) {
    return !w->ended && !w->aborted && !w->close_asked && !ws_peer_closed(w) && !wslay_event_get_read_enabled(w->ctx);
}

int ws_transport_ended(const ws *w) {
    return w->ended || w->aborted;
}

int ws_code_sendable(int code) {
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1013) || (code >= 3000 && code <= 4999);
}

/* ---- the upgrade handshake ---- */

/* Whether a comma-separated header value (NULL: absent) holds token, in any case. */
static int ws_has_token(const char *value, const char *token) {
    size_t tl = strlen(token);
    for (const char *p = value; p && *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        const char *end = p + strcspn(p, ",");
        const char *e = end;
        while (e > p && (e[-1] == ' ' || e[-1] == '\t')) e--;
        if ((size_t)(e - p) == tl && strncasecmp(p, token, tl) == 0) return 1;
        p = end;
    }
    return 0;
}

int ws_accept_of(const char *key, char accept[WS_ACCEPT_LEN + 1]) {
    char text[WS_KEY_LEN + sizeof WS_GUID];
    unsigned char md[CRYPTO_MAX_DIGEST];
    int n = snprintf(text, sizeof text, "%s%s", key, WS_GUID);
    if (n < 0 || (size_t)n >= sizeof text) return -1;
    size_t mdlen = crypto_digest("sha1", text, (size_t)n, md);
    if (mdlen != 20) return -1;
    crypto_base64_encode(md, mdlen, accept, 0);
    return 0;
}

int ws_check_upgrade(const char *method, const char *http_version, const char *upgrade, const char *connection,
                     const char *version, const char *key, char accept[WS_ACCEPT_LEN + 1], char *why, size_t whylen) {
    unsigned char raw[32];
    size_t rawlen = 0;
    const char *bad = NULL;
    if (!method || strcmp(method, "GET") != 0) bad = "a WebSocket handshake is a GET request";
    else if (!http_version || strcmp(http_version, "HTTP/1.1") != 0) bad = "a WebSocket handshake needs HTTP/1.1";
    else if (!ws_has_token(upgrade, "websocket")) bad = "a WebSocket handshake needs \"Upgrade: websocket\"";
    else if (!ws_has_token(connection, "upgrade")) bad = "a WebSocket handshake needs \"Connection: Upgrade\"";
    else if (!version || strcmp(version, "13") != 0) bad = "Sec-WebSocket-Version must be 13";
    else if (!key || strlen(key) != WS_KEY_LEN || crypto_base64_decode(key, WS_KEY_LEN, raw, &rawlen, 0) != 0 ||
             rawlen != 16)
        bad = "Sec-WebSocket-Key must be 16 bytes in base64";
    else if (ws_accept_of(key, accept) < 0) bad = "out of memory";
    if (bad) {
        snprintf(why, whylen, "%s", bad);
        return -1;
    }
    return 0;
}

int ws_new_key(char key[WS_KEY_LEN + 1]) {
    unsigned char raw[16];
    if (crypto_random(raw, sizeof raw) != 0) return -1;
    crypto_base64_encode(raw, sizeof raw, key, 0);
    return 0;
}

int ws_client_request(char *buf, size_t cap, const char *host, const char *target, const char *key, const char *extra) {
    int n = snprintf(buf, cap,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
                     target, host, key, extra ? extra : "");
    return n < 0 || (size_t)n >= cap ? -1 : n;
}

/* Finds the end of an answer's head ("\r\n\r\n") in the first len bytes: the head's
 * length, or 0. */
static size_t ws_head_end(const char *buf, size_t len) {
    for (size_t i = 3; i < len; i++)
        if (buf[i] == '\n' && buf[i - 1] == '\r' && buf[i - 2] == '\n' && buf[i - 3] == '\r') return i + 1;
    return 0;
}

/* Reads one header line [p, eol) of an answer into out. Returns 0, or -1 when malformed. */
static int ws_answer_header(const char *p, const char *eol, const char *accept, ws_answer *out, int *found) {
    const char *colon = memchr(p, ':', (size_t)(eol - p));
    if (!colon || colon == p) return -1;
    for (const char *c = p; c < colon; c++)
        if (*c <= ' ' || *c >= 0x7f) return -1; /* no spaces or controls in a name */
    const char *v = colon + 1, *ve = eol;
    while (v < ve && (*v == ' ' || *v == '\t')) v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
    for (const char *c = v; c < ve; c++)
        if ((unsigned char)*c < 0x20 && *c != '\t') return -1;
    char value[256];
    size_t vl = (size_t)(ve - v) < sizeof value - 1 ? (size_t)(ve - v) : sizeof value - 1;
    memcpy(value, v, vl);
    value[vl] = '\0';
    size_t nl = (size_t)(colon - p);
#define WS_NAME_IS(name) (nl == sizeof name - 1 && strncasecmp(p, name, nl) == 0)
    if (WS_NAME_IS("Upgrade") && ws_has_token(value, "websocket")) *found |= 1;
    else if (WS_NAME_IS("Connection") && ws_has_token(value, "upgrade")) *found |= 2;
    else if (WS_NAME_IS("Sec-WebSocket-Accept") && accept && strcmp(value, accept) == 0) *found |= 4;
    else if (WS_NAME_IS("Retry-After") && vl > 0 && vl <= 10 && strspn(value, "0123456789") == vl) {
        long s = strtol(value, NULL, 10);
        out->retry_after = s < 1 ? 1 : s > 3600 ? 3600 : s;
    }
#undef WS_NAME_IS
    return 0;
}

int ws_client_answer(const char *buf, size_t len, size_t limit, const char *accept, ws_answer *out) {
    memset(out, 0, sizeof *out);
    size_t head = ws_head_end(buf, len < limit ? len : limit);
    if (!head) return len >= limit ? -1 : 0;
    const char *p = buf, *end = buf + head - 2; /* the last line's CRLF ends the head */
    const char *eol = memchr(p, '\r', (size_t)(end - p));
    /* "HTTP/1.1 101 Switching Protocols" (the reason may be empty or absent) */
    if (!eol || eol - p < 12 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') || p[8] != ' ' ||
        p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9' ||
        (eol - p > 12 && p[12] != ' ') || eol[1] != '\n')
        return -1;
    out->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    int found = 0, http11 = p[7] == '1';
    for (p = eol + 2; p < end; p = eol + 2) {
        eol = memchr(p, '\r', (size_t)(end - p));
        if (!eol || eol[1] != '\n' || *p == ' ' || *p == '\t') return -1; /* bare LF, folded line */
        if (ws_answer_header(p, eol, accept, out, &found) < 0) return -1;
    }
    out->upgraded = out->status == 101 && http11 && found == 7;
    out->header_len = head;
    return 1;
}
