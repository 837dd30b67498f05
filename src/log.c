/* log.c: process-wide logging with levels, text or JSON lines, secret redaction. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>

#include "json.h"
#include "log.h"

#define LOG_LINE_MAX 8192

static int log_min_level = LOG_INFO;
static int log_json = 0;
static tokend_log_fn *log_sink = NULL;
static void *log_sink_ud = NULL;
static char *log_secret = NULL;
static size_t log_secret_len = 0;
static pthread_mutex_t log_secret_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const log_level_names[] = { "debug", "info", "warn", "error" };

void log_configure(int level, int json) {
    if (level >= LOG_DEBUG && level <= LOG_ERROR) log_min_level = level;
    log_json = json ? 1 : 0;
}

void log_set_sink(tokend_log_fn *sink, void *ud) {
    log_sink = sink;
    log_sink_ud = ud;
}

void log_set_secret(const char *secret) {
    pthread_mutex_lock(&log_secret_lock);
    if (log_secret) {
        explicit_bzero(log_secret, log_secret_len);
        free(log_secret);
    }
    log_secret = NULL;
    log_secret_len = 0;
    if (secret && *secret) {
        log_secret = strdup(secret);
        if (log_secret) log_secret_len = strlen(secret);
    }
    pthread_mutex_unlock(&log_secret_lock);
}

int log_enabled(int level) {
    return level >= log_min_level;
}

int log_level_from_name(const char *name) {
    for (int i = 0; i < 4; i++)
        if (name && strcmp(name, log_level_names[i]) == 0) return i;
    return -1;
}

char *log_scrub(char *dst, size_t dstlen, const char *src, const char *secret) {
    size_t o = 0, slen = secret ? strlen(secret) : 0;
    if (dstlen == 0) return dst;
    while (*src && o + 1 < dstlen) {
        if (slen && strncmp(src, secret, slen) == 0) {
            const char *r = "[redacted]";
            while (*r && o + 1 < dstlen) dst[o++] = *r++;
            src += slen;
        } else {
            dst[o++] = *src++;
        }
    }
    dst[o] = '\0';
    return dst;
}

char *log_redact(char *dst, size_t dstlen, const char *src) {
    pthread_mutex_lock(&log_secret_lock);
    log_scrub(dst, dstlen, src, log_secret);
    pthread_mutex_unlock(&log_secret_lock);
    return dst;
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

void log_msg(int level, const char *fmt, ...) {
    if (!log_enabled(level)) return;
    char msg[LOG_LINE_MAX - 128], clean[LOG_LINE_MAX - 128], line[LOG_LINE_MAX], ts[40];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_redact(clean, sizeof clean, msg);
    log_timestamp(ts, sizeof ts);
    if (log_json) {
        size_t o = (size_t)snprintf(line, sizeof line, "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":\"",
                                    ts, log_level_names[level]);
        o = json_escape(line, o, sizeof line - 3, clean);
        memcpy(line + o, "\"}", 3);
    } else {
        snprintf(line, sizeof line, "%s %-5s %s", ts, log_level_names[level], clean);
    }
    log_emit(level, line);
}

void log_access(const log_access_entry *e) {
    if (!log_enabled(LOG_INFO)) return;
    char path[2048], line[LOG_LINE_MAX], ts[40], up[32];
    log_redact(path, sizeof path, e->path);
    log_timestamp(ts, sizeof ts);
    if (log_json) {
        size_t o = (size_t)snprintf(line, sizeof line,
            "{\"time\":\"%s\",\"level\":\"info\",\"type\":\"access\",\"client\":\"%s\",\"method\":\"",
            ts, e->client);
        o = json_escape(line, o, sizeof line, e->method);
        o += (size_t)snprintf(line + o, sizeof line - o, "\",\"path\":\"");
        o = json_escape(line, o, sizeof line, path);
        o += (size_t)snprintf(line + o, sizeof line - o,
            "\",\"status\":%d,\"bytes\":%llu,\"duration_ms\":%.3f", e->status, e->bytes, e->duration_ms);
        if (e->upstream_ms >= 0)
            o += (size_t)snprintf(line + o, sizeof line - o, ",\"upstream_ms\":%.3f", e->upstream_ms);
        snprintf(line + o, sizeof line - o, "}");
    } else {
        if (e->upstream_ms >= 0) snprintf(up, sizeof up, "%.1fms", e->upstream_ms);
        else snprintf(up, sizeof up, "-");
        /* Control characters in the path are escaped so a client cannot forge log lines. */
        char safe[2048];
        size_t o = 0;
        for (const char *p = path; *p && o + 5 < sizeof safe; p++) {
            unsigned char c = (unsigned char)*p;
            if (c < 0x20 || c == 0x7f || c == ' ') o += (size_t)snprintf(safe + o, sizeof safe - o, "%%%02X", c);
            else safe[o++] = (char)c;
        }
        safe[o] = '\0';
        snprintf(line, sizeof line, "%s info  access %s %s %s %d %llu %.1fms upstream=%s",
                 ts, e->client, e->method, safe, e->status, e->bytes, e->duration_ms, up);
    }
    log_emit(LOG_INFO, line);
}
