/* httpcheck.c: what a request must pass before it is dispatched: its head's syntax (RFC 9112), its framing, size, query and Host, its client behind a proxy, and the refusals of a malformed Content-Length. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "header.h"
#include "httpint.h"
#include "json.h"
#include "url.h"

#define HTTPCHECK_XFF_MAX 32 /* X-Forwarded-For header lines read, the last ones of a request */

/* Splits the raw target into the decoded path and the raw query. Returns 0, -1 for a
 * malformed path, or -2 when out of memory. */
int httpcheck_parse_target(http_request *req) {
    const char *t = req->target;
    if (!t) return -2;
    const char *q = strchr(t, '?');
    size_t plen = q ? (size_t)(q - t) : strlen(t);
    req->query = q ? q + 1 : "";
    req->query_len = strlen(req->query);
    req->path = malloc(plen + 1);
    if (!req->path) return -2;
    if (plen > 0 && t[0] == '/' && url_decode_path(t, plen, req->path, plen + 1, NULL) == URL_OK) return 0;
    memcpy(req->path, t, plen); /* refused: the access log shows what was sent */
    req->path[plen] = '\0';
    return -1;
}

/* The last HTTPCHECK_XFF_MAX X-Forwarded-For header lines of a request, as a ring. */
typedef struct httpcheck_xff {
    const char *values[HTTPCHECK_XFF_MAX];
    size_t n; /* lines seen */
} httpcheck_xff;

static enum MHD_Result httpcheck_collect_xff(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    httpcheck_xff *x = cls;
    (void)kind;
    if (strcasecmp(key, "X-Forwarded-For") == 0) x->values[x->n++ % HTTPCHECK_XFF_MAX] = value ? value : "";
    return MHD_YES;
}

/* Sets req->client: the peer, or the client a trusted proxy names in X-Forwarded-For. Each
 * proxy appends to the end (a line, or an entry of the last line), so the right-most
 * entries are the ones to read: lines past the limit are dropped from the start, where
 * the client wrote its own, and never make the client the proxy. */
void httpcheck_resolve_client(http_front *f, http_exchange *ex) {
    http_request *req = &ex->pub;
    if (!netaddr_nets_contain(f->proxies, req->peer)) return;
    httpcheck_xff x = { { 0 }, 0 };
    const char *lines[HTTPCHECK_XFF_MAX];
    MHD_get_connection_values(ex->conn, MHD_HEADER_KIND, httpcheck_collect_xff, &x);
    size_t kept = x.n < HTTPCHECK_XFF_MAX ? x.n : HTTPCHECK_XFF_MAX;
    for (size_t i = 0; i < kept; i++) lines[i] = x.values[(x.n - kept + i) % HTTPCHECK_XFF_MAX];
    netaddr_client(f->proxies, req->peer, lines, kept, req->client, sizeof req->client);
}

/* RFC 9110 5.6.2: whether c may be in a token (a header name). */
static int httpcheck_tchar(unsigned char c) {
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* libmicrohttpd 0.9.75 accepts request heads that RFC 9112 forbids and parses some of them
 * differently from the proxies in front of it: a bare LF as a line end, whitespace between
 * a header's name and its colon (kept in the name), and an obs-fold line (one starting
 * with a space or a tab), which it appends to the previous header's *name*, so that
 * "Content-Length:\r\n 44" frames no body here and 44 bytes in a proxy. What it did
 * shows in where it left the request: it parses the head in place in its read buffer,
 * replacing each CRLF (or bare LF) with NUL bytes and each header's colon with a NUL, and
 * hands out pointers into it, in arrival order; a name continued by a fold is moved
 * elsewhere. So a head is well-formed when, from the request line on, each header name
 * starts right after a CRLF ("\0\0"), is a token up to its colon, its value follows
 * after spaces or tabs and runs to the next "\0\0" without a CR, and the head ends with
 * an empty line exactly where libmicrohttpd says it does. A NUL in a value ends it early
 * and shows as well; one right before a bare LF cannot be told from a CRLF (its value
 * stops there for every reader). */
typedef struct httpcheck_head {
    const char *next;  /* where the next line must start */
    const char *end;   /* the end of the head */
    const char *error; /* the first violation, or NULL */
    int hosts;         /* Host headers */
} httpcheck_head;

/* Moves past the line end at eol, which must be a CRLF; returns 0 or -1. */
static int httpcheck_syntax_eol(httpcheck_head *sx, const char *eol) {
    if (eol < sx->next || sx->end - eol < 2 || eol[0] != '\0' || eol[1] != '\0') return -1;
    sx->next = eol + 2;
    return 0;
}

static enum MHD_Result httpcheck_syntax_line(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    httpcheck_head *sx = cls;
    (void)kind;
    if (key != sx->next || !value) {
        sx->error = "malformed header: a folded line, a bare LF or a NUL byte (RFC 9112 5.2, 2.2)";
        return MHD_NO;
    }
    size_t n = 0;
    while (httpcheck_tchar((unsigned char)key[n])) n++;
    if (n == 0 || key[n] != '\0') {
        sx->error = "malformed header name (RFC 9112 5.1: a token right before the colon)";
        return MHD_NO;
    }
    const char *v = key + n + 1;
    while (v < value && (*v == ' ' || *v == '\t')) v++;
    size_t len = strlen(value);
    if (v != value || memchr(value, '\r', len) || httpcheck_syntax_eol(sx, value + len) < 0) {
        sx->error = "malformed header value: a bare CR or LF, or a NUL byte (RFC 9112 2.2, RFC 9110 5.5)";
        return MHD_NO;
    }
    if (strcasecmp(key, "Host") == 0) sx->hosts++;
    return MHD_YES;
}

/* Checks the request head's syntax (see httpcheck_head) and its Host headers (RFC 9112 3.2:
 * one, and one at least in HTTP/1.1). Returns NULL, or what is wrong. */
static const char *httpcheck_syntax(http_exchange *x, const char *method, const char *version) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(x->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (!ci || !method || !version || version < method) return "malformed request";
    httpcheck_head sx = { method, method + ci->header_size, NULL, 0 };
    if (sx.end < version || httpcheck_syntax_eol(&sx, version + strlen(version)) < 0)
        return "malformed request line (RFC 9112 2.2: lines end with CRLF)";
    MHD_get_connection_values(x->conn, MHD_HEADER_KIND, httpcheck_syntax_line, &sx);
    if (sx.error) return sx.error;
    if (sx.end - sx.next != 2 || sx.next[0] != '\0' || sx.next[1] != '\0')
        return "malformed end of the request head (RFC 9112 2.2: CRLF)";
    if (sx.hosts > 1) return "more than one Host header";
    if (sx.hosts == 0 && strcmp(version, "HTTP/1.0") != 0) return "missing Host header (required in HTTP/1.1)";
    return NULL;
}

/* What the headers of a request tell about how its body is framed, and their size. */
typedef struct httpcheck_framing {
    size_t header_bytes; /* "Name: value\r\n" of every header */
    const char *length;  /* the first Content-Length */
    int lengths_differ;  /* another Content-Length with another value */
    const char *coding;  /* Transfer-Encoding ("" when there were two) */
} httpcheck_framing;

static enum MHD_Result httpcheck_collect_framing(void *cls, enum MHD_ValueKind kind, const char *key,
                                                 const char *value) {
    httpcheck_framing *fr = cls;
    (void)kind;
    value = value ? value : "";
    fr->header_bytes += strlen(key) + strlen(value) + 4;
    if (strcasecmp(key, "Content-Length") == 0) {
        if (!fr->length) fr->length = value;
        else if (strcmp(fr->length, value) != 0) fr->lengths_differ = 1;
    } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
        fr->coding = fr->coding ? "" : value; /* two of them: refused below */
    }
    return MHD_YES;
}

/* The arguments of a query string: its non-empty '&'-separated items. */
static size_t httpcheck_count_args(const char *q, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (q[i] != '&' && (i == 0 || q[i - 1] == '&')) n++;
    return n;
}

/* Checks what must hold before a request is dispatched: its syntax (httpcheck_syntax),
 * its size, one unambiguous framing of its body (RFC 9112 6.3: a request with both
 * Content-Length and Transfer-Encoding, or with Content-Lengths that differ, can be read
 * two ways, and the bytes after it smuggled in as a request of their own), and its Host.
 * Returns 0, or -1 once it answered the request. */
int httpcheck_request(http_front *f, http_exchange *x, const char *version) {
    http_request *req = &x->pub;
    httpcheck_framing fr = { 0, NULL, 0, NULL };
    const char *malformed = httpcheck_syntax(x, req->method, version);
    if (malformed) {
        http_request_fail_close(req, 400, malformed);
        return -1;
    }
    MHD_get_connection_values(x->conn, MHD_HEADER_KIND, httpcheck_collect_framing, &fr);
    size_t line = strlen(req->method) + x->target_len + sizeof " HTTP/1.1\r\n";
    if (x->target_len > f->max_header_bytes) {
        http_request_fail_close(req, 414, "request target too long");
        return -1;
    }
    if (line + fr.header_bytes > f->max_header_bytes) {
        http_request_fail_close(req, 431, "request headers too large");
        return -1;
    }
    if ((fr.coding && (fr.length || strcasecmp(fr.coding, "chunked") != 0)) || fr.lengths_differ) {
        http_request_fail_close(req, 400,
                                fr.lengths_differ   ? "conflicting Content-Length headers"
                                        : fr.length ? "both Content-Length and Transfer-Encoding"
                                                    : "unsupported Transfer-Encoding");
        return -1;
    }
    if (fr.length && strtoull(fr.length, NULL, 10) > f->max_body_bytes) {
        http_request_fail_close(req, 413, "request body too large");
        return -1;
    }
    if (httpcheck_count_args(req->query, req->query_len) > f->max_query_args) {
        http_request_fail(req, 400, "too many query arguments");
        return -1;
    }
    int host = policy_host_check(f->hosts, MHD_lookup_connection_value(x->conn, MHD_HEADER_KIND, "Host"));
    if (host == POLICY_HOST_MALFORMED) {
        http_request_fail_close(req, 400, "malformed Host header");
        return -1;
    }
    if (host == POLICY_HOST_DENIED) {
        http_request_fail(req, 421, "this server does not answer for that host name (TOKEND_ALLOWED_HOSTS)");
        return -1;
    }
    return 0;
}

/* libmicrohttpd 0.9.75 answers a malformed or overflowing Content-Length itself, then goes
 * on as if it had not and builds its answer's header a second time: the client would get
 * two header blocks and one body. It logs the cause first, while the request is the only
 * one whose head is whole and whose handler has not run (libmicrohttpd calls it at once
 * otherwise) with no answer yet. tokend answers it there with one well-formed response,
 * then shuts the sending side: libmicrohttpd's own answer fails and it closes. */
void httpcheck_refuse_framing(http_front *f, int status, const char *message) {
    http_exchange *x = NULL;
    for (list_node *n = list_first(&f->heads); n && !x; n = list_next(&f->heads, n)) {
        http_exchange *h = list_entry(n, http_exchange, link);
        if (!h->status && MHD_get_connection_info(h->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE) &&
            !MHD_get_connection_info(h->conn, MHD_CONNECTION_INFO_HTTP_STATUS))
            x = h;
    }
    const union MHD_ConnectionInfo *ci = x ? MHD_get_connection_info(x->conn, MHD_CONNECTION_INFO_CONNECTION_FD) : NULL;
    if (!ci) return;
    char body[200], date[32], out[600];
    size_t blen = json_escape(body, (size_t)snprintf(body, sizeof body, "{\"error\":\""), sizeof body - 3, message);
    memcpy(body + blen, "\"}", 3);
    blen += 2;
    header_format_date(time(NULL), date);
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 %d %s\r\nDate: %s\r\nConnection: close\r\n"
                     "X-Content-Type-Options: nosniff\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     status, status == 413 ? "Content Too Large" : "Bad Request", date, blen, body);
    /* Over HTTPS the socket carries TLS records, not this text: the client sees the close. */
    const union MHD_ConnectionInfo *di = MHD_get_connection_info(x->conn, MHD_CONNECTION_INFO_DAEMON);
    int tls = f->tls_daemon && di && di->daemon == f->tls_daemon;
    if (!tls && n > 0 && (size_t)n < sizeof out)
        (void)send(ci->connect_fd, out, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    shutdown(ci->connect_fd, SHUT_WR);
    x->pub.method = "-"; /* libmicrohttpd does not say which: the access line shows "-" */
    x->status = status;
    x->bytes = blen;
}
