/* json.c: a strict, small JSON reader for the token endpoint's replies and the streaming messages the relay reads, and a string escaper. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define JSON_MAX_DEPTH 32

typedef struct json_cursor {
    const char *p, *end;
} json_cursor;

static void json_skip_ws(json_cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int json_hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = p[i];
        v <<= 4;
        if (ch >= '0' && ch <= '9') v |= (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'f') v |= (unsigned)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F') v |= (unsigned)(ch - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* Output of a decoded string: bytes are written while they fit, whole characters only. */
typedef struct json_out {
    char *buf;
    size_t cap, len;
    int full;
} json_out;

static void json_out_put(json_out *o, const char *b, size_t n) {
    if (!o->buf || o->full) return;
    if (o->len + n >= o->cap) {
        o->full = 1;
        return;
    }
    memcpy(o->buf + o->len, b, n);
    o->len += n;
}

/* Appends code point cp as UTF-8. */
static void json_put_utf8(json_out *o, unsigned cp) {
    char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xC0 | (cp >> 6));
        b[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xE0 | (cp >> 12));
        b[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (char)(0xF0 | (cp >> 18));
        b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    json_out_put(o, b, n);
}

/* Parses a string at c->p (which is '"'). Decodes into out (cap bytes, NUL-terminated,
 * may be NULL to skip). *truncated is set when it did not fit. Returns 0 or -1. */
static int json_string(json_cursor *c, char *out, size_t cap, int *truncated) {
    json_out o = { out, cap, 0, 0 };
    c->p++;
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p++;
        unsigned cp;
        if (ch == '"') {
            if (out) out[o.len] = '\0';
            if (truncated) *truncated = o.full;
            return 0;
        }
        if (ch < 0x20) return -1;
        if (ch != '\\') {
            char b = (char)ch;
            json_out_put(&o, &b, 1);
            continue;
        }
        if (c->p >= c->end) return -1;
        switch (*c->p++) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (c->end - c->p < 4 || json_hex4(c->p, &cp) < 0) return -1;
            c->p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (c->end - c->p < 6 || c->p[0] != '\\' || c->p[1] != 'u' || json_hex4(c->p + 2, &lo) < 0 ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return -1;
                c->p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return -1;
            }
            break;
        default: return -1;
        }
        json_put_utf8(&o, cp);
    }
    return -1;
}

/* Parses a number; sets *is_int and *ival when it is an integer that fits a long. */
static int json_number(json_cursor *c, int *is_int, long *ival) {
    int integral = 1, neg = 0;
    unsigned long v = 0;
    int overflow = 0;
    if (c->p < c->end && *c->p == '-') {
        neg = 1;
        c->p++;
    }
    if (c->p >= c->end) return -1;
    if (*c->p == '0') c->p++;
    else if (*c->p >= '1' && *c->p <= '9') {
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
            if (v > (unsigned long)(0x7fffffffffffffffL / 10 - 1)) overflow = 1;
            v = v * 10 + (unsigned long)(*c->p++ - '0');
        }
    } else return -1;
    if (c->p < c->end && *c->p == '.') {
        integral = 0;
        c->p++;
        if (c->p >= c->end || *c->p < '0' || *c->p > '9') return -1;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        integral = 0;
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-')) c->p++;
        if (c->p >= c->end || *c->p < '0' || *c->p > '9') return -1;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
    }
    *is_int = integral && !overflow;
    *ival = neg ? -(long)v : (long)v;
    return 0;
}

static int json_literal(json_cursor *c, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return -1;
    c->p += n;
    return 0;
}

static int json_value(json_cursor *c, int depth);

/* Called for each member of the top-level object with its key, the cursor at its value:
 * returns 1 when it read the value, 0 to have it skipped, -1 when it is malformed. */
typedef int json_field_fn(void *ud, const char *key, json_cursor *c);

static int json_container(json_cursor *c, int depth, json_field_fn *field, void *ud) {
    char open = *c->p++;
    char close = open == '{' ? '}' : ']';
    if (depth > JSON_MAX_DEPTH) return -1;
    json_skip_ws(c);
    if (c->p < c->end && *c->p == close) {
        c->p++;
        return 0;
    }
    for (;;) {
        json_skip_ws(c);
        if (open == '{') {
            char key[32];
            int trunc = 0;
            if (c->p >= c->end || *c->p != '"' || json_string(c, key, sizeof key, &trunc) < 0) return -1;
            json_skip_ws(c);
            if (c->p >= c->end || *c->p != ':') return -1;
            c->p++;
            json_skip_ws(c);
            if (field && !trunc && c->p < c->end) {
                int read = field(ud, key, c);
                if (read < 0) return -1;
                if (read) goto next;
            }
        }
        if (json_value(c, depth + 1) < 0) return -1;
    next:
        json_skip_ws(c);
        if (c->p >= c->end) return -1;
        if (*c->p == ',') {
            c->p++;
            continue;
        }
        if (*c->p == close) {
            c->p++;
            return 0;
        }
        return -1;
    }
}

/* The token reply's members: "token", "error", "expires_in_seconds". */
static int json_token_field(void *ud, const char *key, json_cursor *c) {
    json_token_reply *top = ud;
    if (strcmp(key, "token") == 0 && *c->p == '"') {
        int t = 0;
        if (json_string(c, top->token, sizeof top->token, &t) < 0) return -1;
        top->has_token = !t && top->token[0] != '\0';
        return 1;
    }
    if (strcmp(key, "error") == 0 && *c->p == '"') {
        int trunc = 0;
        if (json_string(c, top->error, sizeof top->error, &trunc) < 0) return -1;
        top->has_error = 1;
        return 1;
    }
    if (strcmp(key, "expires_in_seconds") == 0 && (*c->p == '-' || (*c->p >= '0' && *c->p <= '9'))) {
        int is_int = 0;
        long v = 0;
        if (json_number(c, &is_int, &v) < 0) return -1;
        top->has_expires = is_int;
        top->expires_in_seconds = v;
        return 1;
    }
    return 0;
}

static int json_value(json_cursor *c, int depth) {
    json_skip_ws(c);
    if (c->p >= c->end) return -1;
    switch (*c->p) {
    case '{':
    case '[': return json_container(c, depth, NULL, NULL);
    case '"': return json_string(c, NULL, 0, NULL);
    case 't': return json_literal(c, "true");
    case 'f': return json_literal(c, "false");
    case 'n': return json_literal(c, "null");
    default: {
        int is_int;
        long v;
        return json_number(c, &is_int, &v);
    }
    }
}

/* Empties a reply: its fields, not its 12 KiB of buffers (a memset of them per upstream
 * call showed in the profile); the strings stay NUL-terminated. */
static void json_reply_reset(json_token_reply *out) {
    out->token[0] = out->error[0] = '\0';
    out->has_token = out->has_expires = out->has_error = 0;
    out->expires_in_seconds = 0;
}

int json_parse_token_reply(const char *body, size_t len, json_token_reply *out) {
    json_cursor c = { body, body + len };
    json_reply_reset(out);
    json_skip_ws(&c);
    if (c.p >= c.end || *c.p != '{') return -1;
    if (json_container(&c, 1, json_token_field, out) < 0) goto bad;
    json_skip_ws(&c);
    if (c.p != c.end) goto bad;
    return 0;
bad:
    json_reply_reset(out);
    return -1;
}

/* A number's value as a double: the span the strict parser accepted, read by strtod. */
static int json_double(json_cursor *c, double *out) {
    const char *start = c->p;
    int is_int;
    long v;
    if (json_number(c, &is_int, &v) < 0) return -1;
    char text[64];
    size_t n = (size_t)(c->p - start);
    if (n >= sizeof text) return -1;
    memcpy(text, start, n);
    text[n] = '\0';
    *out = strtod(text, NULL);
    return 0;
}

/* The streaming messages' members the relay reads. */
static int json_message_field(void *ud, const char *key, json_cursor *c) {
    json_message *m = ud;
    int trunc = 0;
    if (strcmp(key, "type") == 0 && *c->p == '"') {
        if (json_string(c, m->type, sizeof m->type, &trunc) < 0) return -1;
        if (trunc) m->type[0] = '\0';
        return 1;
    }
    if (strcmp(key, "id") == 0 && *c->p == '"') {
        if (json_string(c, m->id, sizeof m->id, &trunc) < 0) return -1;
        if (trunc) m->id[0] = '\0';
        return 1;
    }
    if (strcmp(key, "end_of_turn") == 0 && *c->p == 't') {
        if (json_literal(c, "true") < 0) return -1;
        m->end_of_turn = 1;
        return 1;
    }
    if (*c->p == '-' || (*c->p >= '0' && *c->p <= '9')) {
        double *slot = strcmp(key, "audio_duration_seconds") == 0 ? &m->audio_duration_seconds
                : strcmp(key, "session_duration_seconds") == 0    ? &m->session_duration_seconds
                : strcmp(key, "error_code") == 0                  ? &m->error_code
                                                                  : NULL;
        if (slot) return json_double(c, slot) < 0 ? -1 : 1;
    }
    return 0;
}

int json_parse_message(const char *body, size_t len, json_message *out) {
    json_cursor c = { body, body + len };
    memset(out, 0, sizeof *out);
    out->audio_duration_seconds = out->session_duration_seconds = -1;
    json_skip_ws(&c);
    if (c.p >= c.end || *c.p != '{' || json_container(&c, 1, json_message_field, out) < 0) goto bad;
    json_skip_ws(&c);
    if (c.p == c.end) return 0;
bad:
    memset(out, 0, sizeof *out);
    out->audio_duration_seconds = out->session_duration_seconds = -1;
    return -1;
}

size_t json_escape(char *buf, size_t off, size_t cap, const char *s) {
    for (; *s && off + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[off++] = '\\';
            buf[off++] = (char)c;
        } else if (c == '\n') {
            buf[off++] = '\\';
            buf[off++] = 'n';
        } else if (c == '\t') {
            buf[off++] = '\\';
            buf[off++] = 't';
        } else if (c < 0x20 || c == 0x7f) off += (size_t)snprintf(buf + off, cap - off, "\\u%04x", c);
        else buf[off++] = (char)c;
    }
    return off;
}
