/* log.c: process-wide logging with levels, text or JSON lines, secret redaction. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>

#include "json.h"
#include "log.h"

#define LOG_LINE_MAX 8192
#define LOG_FRAGMENT 8       /* this many characters of a secret in a row are redacted */
#define LOG_GRAM_SLOTS 512   /* hash set of a secret's lower-cased 8-character pieces */
#define LOG_THROTTLE_MS 1000 /* a throttled kind of message: one a second, then a count */
#define LOG_THROTTLE_KINDS 16

static int log_min_level = LOG_INFO;
static int log_json = 0;
static tokend_log_fn *log_sink = NULL;
static void *log_sink_ud = NULL;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;           /* the throttles */
static pthread_rwlock_t log_secrets_lock = PTHREAD_RWLOCK_INITIALIZER; /* the secrets redacted */

static const char *const log_level_names[] = { "debug", "info", "warn", "error" };

/* What redaction knows of a secret: the secret, lower-cased, and the set of its pieces
 * of LOG_FRAGMENT characters (as 64-bit words), to find any such piece in a text. */
typedef struct log_secret {
    char *text;
    size_t len;
    uint64_t grams[LOG_GRAM_SLOTS]; /* 0 = empty slot */
} log_secret;

/* The secrets redacted from every line: the API key (log_set_secret), then the others
 * (log_add_secret). */
static log_secret log_registered;
static log_secret *log_more;
static size_t log_nmore;

/* ---- redaction ---- */

static uint64_t log_gram(const char *p) {
    uint64_t g = 0;
    for (int i = 0; i < LOG_FRAGMENT; i++) g = (g << 8) | (uint8_t)tolower((unsigned char)p[i]);
    return g;
}

static size_t log_gram_slot(uint64_t g) {
    return (size_t)((g * 0x9E3779B97F4A7C15ULL) >> 55) & (LOG_GRAM_SLOTS - 1);
}

static int log_gram_known(const log_secret *s, uint64_t g) {
    if (!g) return 0; /* eight NUL bytes (the empty slot's value): a secret has no NUL */
    for (size_t i = log_gram_slot(g);; i = (i + 1) & (LOG_GRAM_SLOTS - 1)) {
        if (s->grams[i] == g) return 1;
        if (!s->grams[i]) return 0;
    }
}

/* Fills s for secret (NULL or "" for none). Returns 0, or -1 when out of memory. */
static int log_secret_init(log_secret *s, const char *secret) {
    memset(s, 0, sizeof *s);
    if (!secret || !*secret) return 0;
    s->len = strlen(secret);
    if (!(s->text = strdup(secret))) return -1;
    for (size_t i = 0; i + LOG_FRAGMENT <= s->len && i < LOG_GRAM_SLOTS / 2; i++) {
        uint64_t g = log_gram(secret + i);
        size_t j = log_gram_slot(g);
        while (s->grams[j] && s->grams[j] != g) j = (j + 1) & (LOG_GRAM_SLOTS - 1);
        s->grams[j] = g;
    }
    return 0;
}

static void log_secret_clear(log_secret *s) {
    if (s->text) explicit_bzero(s->text, s->len);
    free(s->text);
    explicit_bzero(s, sizeof *s);
}

/* The secrets one scrub looks for: first (may be empty), then more[0..nmore). */
typedef struct log_secret_set {
    const log_secret *first;
    const log_secret *more;
    size_t nmore;
} log_secret_set;

/* Length of a secret's text found at src (case-insensitive): a piece of LOG_FRAGMENT or
 * more characters of it, or the whole of a shorter secret; 0 when there is none. gram is
 * log_gram(src) when left >= LOG_FRAGMENT. */
static size_t log_secret_at(const log_secret *s, const char *src, size_t left, uint64_t gram) {
    if (!s->len) return 0;
    if (s->len < LOG_FRAGMENT) return left >= s->len && strncasecmp(src, s->text, s->len) == 0 ? s->len : 0;
    if (left < LOG_FRAGMENT || !log_gram_known(s, gram)) return 0;
    size_t n = LOG_FRAGMENT;
    while (n < left && log_gram_known(s, log_gram(src + n - LOG_FRAGMENT + 1))) n++;
    return n;
}

/* The longest text of any secret of the set found at src, 0 when there is none. */
static size_t log_set_at(const log_secret_set *set, const char *src, size_t left, uint64_t gram) {
    size_t best = set->first ? log_secret_at(set->first, src, left, gram) : 0;
    for (size_t i = 0; i < set->nmore; i++) {
        size_t n = log_secret_at(&set->more[i], src, left, gram);
        if (n > best) best = n;
    }
    return best;
}

/* Where the secrets of set appear in src[0..len): calls piece(ud, text, n, redacted) for
 * each run of text and each secret found, in order; a secret's piece is "[redacted]".
 * Stops early when piece returns nonzero. Returns the number of secrets found. */
typedef int log_piece_fn(void *ud, const char *text, size_t n);
static size_t log_scan(const log_secret_set *set, const char *src, size_t len, log_piece_fn *piece, void *ud) {
    size_t found = 0, run = 0, i = 0;
    uint64_t gram = len >= LOG_FRAGMENT ? log_gram(src) : 0;
    while (i < len) {
        size_t n = log_set_at(set, src + i, len - i, gram);
        if (!n) {
            run++;
            i++;
            if (len - i >= LOG_FRAGMENT)
                gram = (gram << 8) | (uint8_t)tolower((unsigned char)src[i + LOG_FRAGMENT - 1]);
            continue;
        }
        found++;
        if ((run && piece(ud, src + i - run, run)) || piece(ud, "[redacted]", 10)) return found;
        run = 0;
        i += n;
        if (len - i >= LOG_FRAGMENT) gram = log_gram(src + i);
    }
    if (run) piece(ud, src + len - run, run);
    return found;
}

/* A piece into a bounded C string (the rest is cut). */
typedef struct log_cut {
    char *dst;
    size_t cap, len;
} log_cut;

static int log_cut_piece(void *ud, const char *text, size_t n) {
    log_cut *c = ud;
    size_t room = c->cap - 1 - c->len;
    if (n > room) n = room;
    memcpy(c->dst + c->len, text, n);
    c->len += n;
    return c->len + 1 >= c->cap;
}

/* Copies src into dst with the secrets of set replaced by "[redacted]". */
static char *log_scrub_with(char *dst, size_t dstlen, const char *src, const log_secret_set *set) {
    log_cut c = { dst, dstlen, 0 };
    if (dstlen == 0) return dst;
    log_scan(set, src, strlen(src), log_cut_piece, &c);
    dst[c.len] = '\0';
    return dst;
}

char *log_scrub(char *dst, size_t dstlen, const char *src, const char *secret) {
    log_secret s;
    if (log_secret_init(&s, secret) < 0) { /* no memory to scrub with: keep nothing */
        if (dstlen) snprintf(dst, dstlen, "[redacted]");
        return dst;
    }
    log_secret_set set = { &s, NULL, 0 };
    log_scrub_with(dst, dstlen, src, &set);
    log_secret_clear(&s);
    return dst;
}

char *log_redact(char *dst, size_t dstlen, const char *src) {
    pthread_rwlock_rdlock(&log_secrets_lock);
    log_secret_set set = { &log_registered, log_more, log_nmore };
    log_scrub_with(dst, dstlen, src, &set);
    pthread_rwlock_unlock(&log_secrets_lock);
    return dst;
}

/* A piece into a growing buffer. */
typedef struct log_grow {
    char *data;
    size_t len, cap;
    int failed;
} log_grow;

static int log_grow_piece(void *ud, const char *text, size_t n) {
    log_grow *g = ud;
    if (g->len + n + 1 > g->cap) {
        size_t cap = g->cap ? g->cap : 256;
        while (cap < g->len + n + 1) cap *= 2;
        char *d = malloc(cap);
        if (!d) {
            g->failed = 1;
            return 1;
        }
        if (g->len) memcpy(d, g->data, g->len);
        if (g->data) explicit_bzero(g->data, g->len);
        free(g->data);
        g->data = d;
        g->cap = cap;
    }
    memcpy(g->data + g->len, text, n);
    g->len += n;
    g->data[g->len] = '\0';
    return 0;
}

/* A piece that only counts. */
static int log_none_piece(void *ud, const char *text, size_t n) {
    (void)ud;
    (void)text;
    (void)n;
    return 1; /* the first secret found is enough */
}

int log_redact_mem(const char *src, size_t len, char **out, size_t *outlen) {
    int rc = 0;
    log_grow g = { NULL, 0, 0, 0 };
    *out = NULL;
    *outlen = 0;
    pthread_rwlock_rdlock(&log_secrets_lock);
    log_secret_set set = { &log_registered, log_more, log_nmore };
    if (log_scan(&set, src, len, log_none_piece, NULL)) {
        log_scan(&set, src, len, log_grow_piece, &g);
        rc = g.failed ? -1 : 1;
    }
    pthread_rwlock_unlock(&log_secrets_lock);
    if (rc == 1 && !g.data) log_grow_piece(&g, "", 0); /* all of it was a secret */
    if (rc == 1 && g.failed) rc = -1;
    if (rc < 0) {
        if (g.data) explicit_bzero(g.data, g.len);
        free(g.data);
        return -1;
    }
    *out = g.data;
    *outlen = g.len;
    return rc;
}

void log_set_secret(const char *secret) {
    pthread_rwlock_wrlock(&log_secrets_lock);
    log_secret_clear(&log_registered);
    log_secret_init(&log_registered, secret);
    pthread_rwlock_unlock(&log_secrets_lock);
}

int log_add_secret(const char *secret) {
    int rc = -1;
    if (!secret || !*secret) return 0;
    pthread_rwlock_wrlock(&log_secrets_lock);
    log_secret *more = realloc(log_more, (log_nmore + 1) * sizeof *more);
    if (more) {
        log_more = more;
        if (log_secret_init(&log_more[log_nmore], secret) == 0) {
            log_nmore++;
            rc = 0;
        }
    }
    pthread_rwlock_unlock(&log_secrets_lock);
    return rc;
}

/* ---- settings ---- */

void log_configure(int level, int json) {
    if (level >= LOG_DEBUG && level <= LOG_ERROR) log_min_level = level;
    log_json = json ? 1 : 0;
}

void log_set_sink(tokend_log_fn *sink, void *ud) {
    log_sink = sink;
    log_sink_ud = ud;
}

int log_enabled(int level) {
    return level >= log_min_level;
}

int log_level_from_name(const char *name) {
    for (int i = 0; i < 4; i++)
        if (name && strcmp(name, log_level_names[i]) == 0) return i;
    return -1;
}

/* ---- lines ---- */

/* Appends s to buf[off..cap) with line breaks written as \n and \r and other control
 * characters as \xNN, so that no text can start a log line of its own. Returns the new
 * offset; buf stays NUL-terminated. */
static size_t log_escape(char *buf, size_t off, size_t cap, const char *s) {
    for (; *s && off + 5 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\n') off += (size_t)snprintf(buf + off, cap - off, "\\n");
        else if (c == '\r') off += (size_t)snprintf(buf + off, cap - off, "\\r");
        else if ((c < 0x20 && c != '\t') || c == 0x7f) off += (size_t)snprintf(buf + off, cap - off, "\\x%02x", c);
        else buf[off++] = (char)c;
    }
    buf[off < cap ? off : cap - 1] = '\0';
    return off;
}

static void log_timestamp(char *out, size_t len) {
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, len - n, ".%03ldZ", ts.tv_nsec / 1000000L);
}

/* Emits an already-redacted line (without trailing newline). */
static void log_emit(int level, const char *line) {
    if (log_sink) {
        log_sink(log_sink_ud, level, line);
        return;
    }
    size_t n = strlen(line);
    char out[LOG_LINE_MAX + 2];
    memcpy(out, line, n);
    out[n] = '\n';
    ssize_t w = write(STDERR_FILENO, out, n + 1);
    (void)w;
}

/* Writes a field's key as letters, digits, '_', '-' and '.' only. */
static size_t log_key(char *buf, size_t off, size_t cap, const char *key) {
    static const char *const reserved[] = { "time", "level", "type", "msg" };
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (strcmp(key, reserved[i]) == 0) off += (size_t)snprintf(buf + off, cap > off ? cap - off : 0, "x_");
    for (; *key && off + 1 < cap; key++) {
        unsigned char c = (unsigned char)*key;
        buf[off++] = isalnum(c) || c == '_' || c == '-' || c == '.' ? (char)c : '_';
    }
    return off;
}

/* Appends the fields: ,"key":"value" in JSON, or key=value (quoted when it holds a space,
 * a quote or an '=') in text. Values are redacted. */
static size_t log_append_fields(char *line, size_t o, size_t cap, const log_field *f, size_t n) {
    char value[2048];
    for (size_t i = 0; i < n && o + 16 < cap; i++) {
        log_redact(value, sizeof value, f[i].value ? f[i].value : "");
        if (log_json) {
            o += (size_t)snprintf(line + o, cap - o, ",\"");
            o = log_key(line, o, cap - 8, f[i].key);
            o += (size_t)snprintf(line + o, cap - o, f[i].bare ? "\":" : "\":\"");
            o = json_escape(line, o, cap - 4, value);
            if (!f[i].bare) o += (size_t)snprintf(line + o, cap - o, "\"");
        } else {
            int quote = !*value || strpbrk(value, " \"=") != NULL;
            line[o++] = ' ';
            o = log_key(line, o, cap - 8, f[i].key);
            line[o++] = '=';
            if (quote) line[o++] = '"';
            for (const char *v = value; *v && o + 8 < cap; v++) {
                if (*v == '"' || *v == '\\') line[o++] = '\\';
                char one[2] = { *v, 0 };
                o = log_escape(line, o, cap - 4, one);
            }
            if (quote) line[o++] = '"';
            line[o] = '\0';
        }
    }
    return o < cap ? o : cap - 1;
}

size_t log_format(char *line, size_t cap, int level, const char *type, const char *msg, const log_field *f, size_t n) {
    char clean[LOG_LINE_MAX - 128], ts[40];
    size_t o;
    log_redact(clean, sizeof clean, msg);
    log_timestamp(ts, sizeof ts);
    if (log_json) {
        o = (size_t)snprintf(line, cap, "{\"time\":\"%s\",\"level\":\"%s\",\"type\":\"%s\",\"msg\":\"", ts,
                             log_level_names[level], type);
        o = json_escape(line, o < cap ? o : cap - 1, cap - 3, clean);
        o += (size_t)snprintf(line + o, cap - o, "\"");
        o = log_append_fields(line, o, cap - 2, f, n);
        o += (size_t)snprintf(line + o, cap - o, "}");
    } else {
        o = (size_t)snprintf(line, cap, "%s %-5s ", ts, log_level_names[level]);
        if (strcmp(type, "log") != 0) o += (size_t)snprintf(line + o, cap - o, "%s ", type);
        o = log_escape(line, o < cap ? o : cap - 1, cap, clean);
        o = log_append_fields(line, o, cap, f, n);
    }
    return o < cap ? o : cap - 1;
}

/* Writes one line: type, the message redacted with every control character escaped,
 * then the fields. */
static void log_write_fields(int level, const char *type, const char *msg, const log_field *f, size_t n) {
    char line[LOG_LINE_MAX];
    log_format(line, sizeof line, level, type, msg, f, n);
    log_emit(level, line);
}

int log_is_json(void) {
    return log_json;
}

static void log_write(int level, const char *msg) {
    log_write_fields(level, "log", msg, NULL, 0);
}

void log_fields(int level, const char *type, const char *msg, const log_field *fields, size_t n) {
    if (log_enabled(level)) log_write_fields(level, type, msg, fields, n);
}

void log_msg(int level, const char *fmt, ...) {
    if (!log_enabled(level)) return;
    char msg[LOG_LINE_MAX - 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_write(level, msg);
}

/* ---- throttled messages ---- */

/* A kind of message that outside events can repeat at will (a client resetting
 * connections): the first of each second is written, the others counted. */
typedef struct log_throttle {
    const char *kind;   /* static text; NULL = free slot */
    uint64_t window_ms; /* start of the current second */
    unsigned long suppressed;
    int level;
} log_throttle;

static log_throttle log_throttles[LOG_THROTTLE_KINDS];

static uint64_t log_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Writes the count of a throttle's suppressed messages (log_lock held). */
static void log_throttle_report(log_throttle *t) {
    char msg[200];
    if (!t->suppressed) return;
    snprintf(msg, sizeof msg, "%s: %lu more like the last in the past second (not written one by one)", t->kind,
             t->suppressed);
    t->suppressed = 0;
    pthread_mutex_unlock(&log_lock);
    log_write(t->level, msg);
    pthread_mutex_lock(&log_lock);
}

void log_throttled(int level, const char *kind, const char *fmt, ...) {
    if (!log_enabled(level)) return;
    uint64_t now = log_now_ms();
    log_throttle *t = NULL;
    pthread_mutex_lock(&log_lock);
    for (size_t i = 0; i < LOG_THROTTLE_KINDS && !t; i++)
        if (log_throttles[i].kind == kind || !log_throttles[i].kind) t = &log_throttles[i];
    if (t && !t->kind) *t = (log_throttle){ kind, 0, 0, level };
    if (t && now - t->window_ms < LOG_THROTTLE_MS) {
        t->suppressed++;
        pthread_mutex_unlock(&log_lock);
        return;
    }
    if (t) {
        log_throttle_report(t);
        t->window_ms = now;
    }
    pthread_mutex_unlock(&log_lock);
    char msg[LOG_LINE_MAX - 128];
    int n = snprintf(msg, sizeof msg, "%s: ", kind);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof msg - (size_t)n, fmt, ap);
    va_end(ap);
    log_write(level, msg);
}

void log_throttled_flush(void) {
    uint64_t now = log_now_ms();
    pthread_mutex_lock(&log_lock);
    for (size_t i = 0; i < LOG_THROTTLE_KINDS && log_throttles[i].kind; i++) {
        if (now - log_throttles[i].window_ms >= LOG_THROTTLE_MS) {
            log_throttle_report(&log_throttles[i]);
            log_throttles[i].window_ms = now;
        }
    }
    pthread_mutex_unlock(&log_lock);
}

void log_access(const log_access_entry *e) {
    if (!log_enabled(LOG_INFO)) return;
    char path[2048], line[LOG_LINE_MAX], ts[40], up[32];
    log_redact(path, sizeof path, e->path);
    log_timestamp(ts, sizeof ts);
    if (log_json) {
        size_t o = (size_t)snprintf(
                line, sizeof line,
                "{\"time\":\"%s\",\"level\":\"info\",\"type\":\"access\",\"client\":\"%s\",\"method\":\"", ts,
                e->client);
        o = json_escape(line, o, sizeof line, e->method);
        o += (size_t)snprintf(line + o, sizeof line - o, "\",\"path\":\"");
        o = json_escape(line, o, sizeof line, path);
        o += (size_t)snprintf(line + o, sizeof line - o, "\",\"status\":%d,\"bytes\":%llu,\"duration_ms\":%.3f",
                              e->status, e->bytes, e->duration_ms);
        if (e->upstream_ms >= 0)
            o += (size_t)snprintf(line + o, sizeof line - o, ",\"upstream_ms\":%.3f", e->upstream_ms);
        o = log_append_fields(line, o, sizeof line - 2, e->fields, e->nfields);
        snprintf(line + o, sizeof line - o, "}");
    } else {
        if (e->upstream_ms >= 0) snprintf(up, sizeof up, "%.3fms", e->upstream_ms);
        else snprintf(up, sizeof up, "-");
        /* Every byte a client chose is escaped: spaces and control characters in the path
         * as %XX (a path is a URL), the method like any text. */
        char safe_path[2048], safe_method[64];
        size_t o = 0;
        for (const char *p = path; *p && o + 5 < sizeof safe_path; p++) {
            unsigned char c = (unsigned char)*p;
            if (c < 0x20 || c == 0x7f || c == ' ')
                o += (size_t)snprintf(safe_path + o, sizeof safe_path - o, "%%%02X", c);
            else safe_path[o++] = (char)c;
        }
        safe_path[o] = '\0';
        log_escape(safe_method, 0, sizeof safe_method, e->method);
        int n = snprintf(line, sizeof line, "%s info  access %s %s %s %d %llu %.3fms upstream=%s", ts, e->client,
                         safe_method, safe_path, e->status, e->bytes, e->duration_ms, up);
        log_append_fields(line, n > 0 && (size_t)n < sizeof line ? (size_t)n : sizeof line - 1, sizeof line, e->fields,
                          e->nfields);
    }
    log_emit(LOG_INFO, line);
}
