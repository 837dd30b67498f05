/* test_ws.c: the WebSocket handshake's checks and keys, the answer parser, and two connections talking through memory (messages, close order, codes wslay refuses, limits). */
#include <stdlib.h>

#include "check.h"
#include "ws.h"

static void test_accept(void) {
    char accept[WS_ACCEPT_LEN + 1];
    CHECK(ws_accept_of("dGhlIHNhbXBsZSBub25jZQ==", accept) == 0, "accept");
    CHECK_STR(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "RFC 6455 1.3's example");
    char key[WS_KEY_LEN + 1], other[WS_KEY_LEN + 1];
    CHECK(ws_new_key(key) == 0 && ws_new_key(other) == 0, "keys");
    CHECK(strlen(key) == WS_KEY_LEN && strcmp(key, other) != 0, "fresh keys: %s %s", key, other);
}

static void test_check_upgrade(void) {
    static const struct {
        const char *method, *version, *upgrade, *connection, *ws_version, *key;
        int ok;
        const char *why;
    } cases[] = {
        { "GET", "HTTP/1.1", "websocket", "Upgrade", "13", "dGhlIHNhbXBsZSBub25jZQ==", 1, "" },
        { "GET", "HTTP/1.1", "WebSocket", "keep-alive, Upgrade", "13", "dGhlIHNhbXBsZSBub25jZQ==", 1, "" },
        { "GET", "HTTP/1.1", "h2c, websocket", "upgrade ,keep-alive", "13", "dGhlIHNhbXBsZSBub25jZQ==", 1, "" },
        { "POST", "HTTP/1.1", "websocket", "Upgrade", "13", "dGhlIHNhbXBsZSBub25jZQ==", 0, "GET" },
        { "GET", "HTTP/1.0", "websocket", "Upgrade", "13", "dGhlIHNhbXBsZSBub25jZQ==", 0, "HTTP/1.1" },
        { "GET", "HTTP/1.1", NULL, "Upgrade", "13", "dGhlIHNhbXBsZSBub25jZQ==", 0, "Upgrade: websocket" },
        { "GET", "HTTP/1.1", "websockets", "Upgrade", "13", "dGhlIHNhbXBsZSBub25jZQ==", 0, "Upgrade: websocket" },
        { "GET", "HTTP/1.1", "websocket", "keep-alive", "13", "dGhlIHNhbXBsZSBub25jZQ==", 0, "Connection" },
        { "GET", "HTTP/1.1", "websocket", "Upgrade", "8", "dGhlIHNhbXBsZSBub25jZQ==", 0, "Version" },
        { "GET", "HTTP/1.1", "websocket", "Upgrade", NULL, "dGhlIHNhbXBsZSBub25jZQ==", 0, "Version" },
        { "GET", "HTTP/1.1", "websocket", "Upgrade", "13", NULL, 0, "Key" },
        { "GET", "HTTP/1.1", "websocket", "Upgrade", "13", "short", 0, "Key" },
        { "GET", "HTTP/1.1", "websocket", "Upgrade", "13", "dGhlIHNhbXBsZSBub25jZQ=", 0, "Key" },
        { "GET", "HTTP/1.1", "websocket", "Upgrade", "13", "dGhlIHNhbXBsZSBub25jZ!==", 0, "Key" },
        { "GET", "HTTP/1.1", "websocket", "Upgrade", "13", "AAAAAAAAAAAAAAAAAAAAAAAAAAAA", 0, "Key" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char accept[WS_ACCEPT_LEN + 1] = "", why[128] = "";
        int rc = ws_check_upgrade(cases[i].method, cases[i].version, cases[i].upgrade, cases[i].connection,
                                  cases[i].ws_version, cases[i].key, accept, why, sizeof why);
        CHECK((rc == 0) == cases[i].ok, "case %zu: rc %d (%s)", i, rc, why);
        if (cases[i].ok) CHECK_STR(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "accept");
        else CHECK(strstr(why, cases[i].why) != NULL, "case %zu: why \"%s\" names %s", i, why, cases[i].why);
    }
}

static void test_client_answer(void) {
    const char *acc = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
    static const struct {
        const char *in;
        int rc, status, upgraded;
        long retry_after;
        size_t extra; /* bytes after the head */
    } cases[] = {
        { "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi",
          1, 101, 1, 0, 4 },
        { "HTTP/1.1 101\r\nupgrade:WebSocket\r\nconnection: keep-alive, upgrade\r\n"
          "sec-websocket-accept:   s3pPLMBiTxaQ9kYGzzhZRbK+xOo=  \r\n\r\n",
          1, 101, 1, 0, 0 },
        { "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          "Sec-WebSocket-Accept: wrong=\r\n\r\n",
          1, 101, 0, 0, 0 },
        { "HTTP/1.1 101 OK\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n", 1,
          101, 0, 0, 0 },
        { "HTTP/1.0 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
          1, 101, 0, 0, 0 },
        { "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", 1, 401, 0, 0, 0 },
        { "HTTP/1.1 429 Too Many\r\nRetry-After: 30\r\n\r\n{}", 1, 429, 0, 30, 2 },
        { "HTTP/1.1 429 Too Many\r\nRetry-After: 99999\r\n\r\n", 1, 429, 0, 3600, 0 },
        { "HTTP/1.1 429 Too Many\r\nRetry-After: -1\r\n\r\n", 1, 429, 0, 0, 0 },
        { "HTTP/1.1 101 Switching", 0, 0, 0, 0, 0 },
        { "HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\n", 0, 0, 0, 0, 0 },
        { "", 0, 0, 0, 0, 0 },
        { "SSH-2.0-OpenSSH\r\n\r\n", -1, 0, 0, 0, 0 },
        { "HTTP/1.1 1O1 x\r\n\r\n", -1, 0, 0, 0, 0 },
        { "HTTP/1.1 101x\r\n\r\n", -1, 0, 0, 0, 0 },
        { "HTTP/1.1 101 OK\r\nno colon here\r\n\r\n", -1, 0, 0, 0, 0 },
        { "HTTP/1.1 101 OK\r\nBad Name: x\r\n\r\n", -1, 0, 0, 0, 0 },
        { "HTTP/1.1 101 OK\r\n folded: x\r\n\r\n", -1, 0, 0, 0, 0 },
        { "HTTP/1.1 101 OK\r\nA: b\nC: d\r\n\r\n", -1, 0, 0, 0, 0 },
        { "HTTP/1.1 101 OK\r\n: empty\r\n\r\n", -1, 0, 0, 0, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ws_answer a;
        size_t len = strlen(cases[i].in);
        int rc = ws_client_answer(cases[i].in, len, 4096, acc, &a);
        CHECK(rc == cases[i].rc, "case %zu: rc %d, want %d", i, rc, cases[i].rc);
        if (rc != 1) continue;
        CHECK(a.status == cases[i].status, "case %zu: status %d", i, a.status);
        CHECK(a.upgraded == cases[i].upgraded, "case %zu: upgraded %d", i, a.upgraded);
        CHECK(a.retry_after == cases[i].retry_after, "case %zu: retry_after %ld", i, a.retry_after);
        CHECK(len - a.header_len == cases[i].extra, "case %zu: %zu bytes after the head", i, len - a.header_len);
    }
    ws_answer a;
    const char *big = "HTTP/1.1 101 OK\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    CHECK(ws_client_answer(big, strlen(big), 20, acc, &a) == -1, "a head past the limit");
    char req[512];
    int n = ws_client_request(req, sizeof req, "h:1", "/v3/ws?a=1", "KEY", "Authorization: k\r\n");
    CHECK(n > 0 && strstr(req, "GET /v3/ws?a=1 HTTP/1.1\r\nHost: h:1\r\n") == req, "request: %s", req);
    CHECK(strstr(req, "Authorization: k\r\n\r\n") != NULL && (size_t)n == strlen(req), "request ends: %s", req);
    CHECK(ws_client_request(req, 40, "h", "/", "KEY", NULL) == -1, "a request that does not fit");
}

static void test_codes(void) {
    static const struct {
        int code, ok;
    } cases[] = {
        { 999, 0 },  { 1000, 1 }, { 1003, 1 }, { 1004, 0 }, { 1005, 0 }, { 1006, 0 }, { 1007, 1 }, { 1011, 1 },
        { 1013, 1 }, { 1014, 0 }, { 1015, 0 }, { 2999, 0 }, { 3000, 1 }, { 3007, 1 }, { 4999, 1 }, { 5000, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(ws_code_sendable(cases[i].code) == cases[i].ok, "code %d", cases[i].code);
}

/* ---- two connections through memory ---- */

typedef struct pipe_buf {
    uint8_t data[1 << 16];
    size_t len;
    int closed;
} pipe_buf;

typedef struct end {
    pipe_buf *in, *out;
    size_t out_room; /* bytes the transport accepts before it "would block" */
    char got[8][64];
    int binary[8];
    size_t got_len[8];
    int n;
    int frames;
} end;

static ssize_t mem_recv(void *ud, uint8_t *buf, size_t len) {
    end *e = ud;
    if (!e->in->len) return e->in->closed ? -1 : 0;
    size_t n = e->in->len < len ? e->in->len : len;
    memcpy(buf, e->in->data, n);
    memmove(e->in->data, e->in->data + n, e->in->len - n);
    e->in->len -= n;
    return (ssize_t)n;
}

static ssize_t mem_send(void *ud, const uint8_t *data, size_t len, int more) {
    end *e = ud;
    (void)more;
    if (e->out->closed) return -1;
    size_t room = sizeof e->out->data - e->out->len;
    if (e->out_room < room) room = e->out_room;
    size_t n = len < room ? len : room;
    if (!n) return 0;
    memcpy(e->out->data + e->out->len, data, n);
    e->out->len += n;
    e->out_room -= n;
    return (ssize_t)n;
}

static void mem_message(void *ud, int binary, const uint8_t *data, size_t len) {
    end *e = ud;
    if (e->n == 8) return;
    size_t n = len < 63 ? len : 63;
    memcpy(e->got[e->n], data, n);
    e->got[e->n][n] = '\0';
    e->got_len[e->n] = len;
    e->binary[e->n++] = binary;
}

static void mem_frame(void *ud) {
    ((end *)ud)->frames++;
}

typedef struct duo {
    pipe_buf a2b, b2a;
    end a, b;
    ws *client, *server;
} duo;

static duo *duo_new_io(size_t max_message, int coalesce) {
    const ws_io io = { mem_recv, mem_send, coalesce };
    static const ws_handler h = { mem_message, mem_frame };
    duo *d = calloc(1, sizeof *d);
    d->a = (end){ &d->b2a, &d->a2b, (size_t)-1, { "" }, { 0 }, { 0 }, 0, 0 };
    d->b = (end){ &d->a2b, &d->b2a, (size_t)-1, { "" }, { 0 }, { 0 }, 0, 0 };
    d->client = ws_create(WS_CLIENT, &io, &h, &d->a, max_message);
    d->server = ws_create(WS_SERVER, &io, &h, &d->b, max_message);
    return d;
}

static duo *duo_new(size_t max_message) {
    return duo_new_io(max_message, 1);
}

static void duo_free(duo *d) {
    ws_free(d->client);
    ws_free(d->server);
    free(d);
}

static void duo_turns(duo *d, int n) {
    for (int i = 0; i < n; i++) {
        ws_pump(d->client);
        ws_pump(d->server);
    }
}

/* coalesce: headers go out with their payloads (a socket) or on their own (TLS). */
static void test_messages_then_close(int coalesce) {
    duo *d = duo_new_io(1 << 16, coalesce);
    CHECK(ws_send(d->client, 1, "\x01\x02\x03", 3) == 0, "send binary");
    CHECK(ws_send(d->client, 0, "{\"type\":\"Terminate\"}", 20) == 0, "send text");
    duo_turns(d, 2);
    CHECK(d->b.n == 2 && d->b.binary[0] == 1 && d->b.got_len[0] == 3, "binary arrived: %d", d->b.n);
    CHECK_STR(d->b.got[1], "{\"type\":\"Terminate\"}", "text arrived");
    CHECK(d->b.frames == 2, "two frames counted: %d", d->b.frames);
    /* The server answers, then closes: the close must not overtake the answer. */
    d->b.out_room = 10; /* the answer does not fit the transport at once */
    ws_send(d->server, 0, "{\"type\":\"Termination\",\"audio_duration_seconds\":1}", 48);
    ws_close(d->server, 3005, "bye", 3);
    CHECK(ws_send(d->server, 0, "late", 4) == -1, "nothing is queued after a close");
    CHECK(ws_state(d->server) == WS_CLOSING, "closing");
    for (int i = 0; i < 20; i++) {
        d->b.out_room = 10;
        duo_turns(d, 1);
    }
    CHECK(d->a.n == 1 && strstr(d->a.got[0], "Termination") != NULL, "the answer arrived before the close: %d", d->a.n);
    char reason[64];
    CHECK(ws_peer_close(d->client, reason, sizeof reason) == 3005, "the client saw 3005");
    CHECK_STR(reason, "bye", "reason");
    CHECK(ws_state(d->client) == WS_CLOSED && ws_state(d->server) == WS_CLOSED, "both closed: %d %d",
          ws_state(d->client), ws_state(d->server));
    CHECK(ws_sent_close(d->client) == 3005, "the echo carries the code: %d", ws_sent_close(d->client));
    CHECK(!ws_transport_ended(d->client), "a whole handshake");
    duo_free(d);
}

static void test_refused_code_and_limits(void) {
    /* A close code wslay will not echo (1012): the owner still learns it. */
    duo *d = duo_new(64);
    ws_close(d->server, 1012, "restart", 7);
    duo_turns(d, 3);
    CHECK(ws_peer_close(d->client, NULL, 0) == 1012, "raw code seen: %d", ws_peer_close(d->client, NULL, 0));
    CHECK(ws_state(d->client) == WS_CLOSED, "the client is done: %d", ws_state(d->client));
    duo_free(d);

    /* A message past the limit: 1009, and the sender's further bytes are read and dropped. */
    d = duo_new(64);
    char big[200];
    memset(big, 'x', sizeof big);
    ws_send(d->client, 1, big, sizeof big);
    duo_turns(d, 3);
    CHECK(d->b.n == 0, "the long message was not delivered");
    CHECK(ws_peer_close(d->client, NULL, 0) == 1009, "1009: %d", ws_peer_close(d->client, NULL, 0));
    CHECK(ws_sent_close(d->server) == 1009, "sent 1009");
    duo_free(d);

    /* The transport ends without a close. */
    d = duo_new(64);
    d->a2b.closed = 1;
    ws_pump(d->server);
    CHECK(ws_state(d->server) == WS_CLOSED && ws_transport_ended(d->server), "ended");
    CHECK(ws_peer_close(d->server, NULL, 0) == 0, "no close frame");
    duo_free(d);

    /* Paused: nothing is read; fed bytes come first. */
    d = duo_new(64);
    ws_send(d->client, 0, "one", 3);
    ws_pump(d->client);
    ws_pause(d->server, 1);
    ws_pump(d->server);
    CHECK(d->b.n == 0 && !(ws_wants(d->server) & WS_WANT_READ), "paused");
    ws_pause(d->server, 0);
    ws_feed(d->server, "\x81\x83\0\0\0\0two", 9); /* a masked text frame "two" */
    ws_pump(d->server);
    CHECK(d->b.n == 2 && strcmp(d->b.got[0], "two") == 0 && strcmp(d->b.got[1], "one") == 0, "fed first: %d", d->b.n);
    duo_free(d);
}

int main(void) {
    test_accept();
    test_check_upgrade();
    test_client_answer();
    test_codes();
    test_messages_then_close(1);
    test_messages_then_close(0);
    test_refused_code_and_limits();
    return check_report("unit.ws");
}
