/* log.h: process-wide logging with levels, text or JSON lines, secret redaction. */
#ifndef TOKEND_LOG_H
#define TOKEND_LOG_H

#include <stddef.h>
#include "tokend.h"

/* Log levels, lowest first. A message is written when its level >= the configured one. */
enum {
    LOG_DEBUG = TOKEND_LOG_DEBUG,
    LOG_INFO = TOKEND_LOG_INFO,
    LOG_WARN = TOKEND_LOG_WARN,
    LOG_ERROR = TOKEND_LOG_ERROR
};

/* A key = value pair added to a line: a script's (tokend.log.info(msg, fields), req.log)
 * or tokend's own (the audit of a mint). */
typedef struct log_field {
    const char *key;
    const char *value; /* text */
    int bare;          /* 1: a number or boolean, written unquoted in JSON */
} log_field;

/* One finished request, as the access log records it. */
typedef struct log_access_entry {
    const char *client; /* client address text */
    const char *method;
    const char *path; /* path only: query values are never logged */
    int status;
    unsigned long long bytes; /* response body bytes */
    double duration_ms;       /* from request start to response queued */
    double upstream_ms;       /* time spent waiting on outside calls, -1 if none */
    const log_field *fields;  /* the script's req.log, appended to the line */
    size_t nfields;
} log_access_entry;

/* Sets the minimum level and the line format (0 text, 1 JSON lines). Thread-safe enough:
 * call before worker threads start. */
void log_configure(int level, int json);

/* Routes every line to sink instead of stderr; NULL restores stderr. */
void log_set_sink(tokend_log_fn *sink, void *ud);

/* Registers a secret that is replaced by "[redacted]" in every line written from now on.
 * The string is copied. Passing NULL or "" clears it. */
void log_set_secret(const char *secret);

/* Registers one more secret redacted from every line from now on, and by log_redact and
 * log_redact_mem (tokend.secret's values): the string is copied. Returns 0, or -1 when out
 * of memory. NULL or "" adds nothing. */
int log_add_secret(const char *secret);

/* Returns 1 when a message of this level would be written. */
int log_enabled(int level);

/* Writes one formatted message at level, redacted, control characters escaped. Never
 * fails visibly. */
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Writes a message that outside events can repeat at will (kind: a static text such as
 * "http"): the first of each second is written, the rest counted and reported as one
 * line by the next one or by log_throttled_flush(). */
void log_throttled(int level, const char *kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Reports the counts of throttled messages whose second is over; call about once a second. */
void log_throttled_flush(void);

/* Writes one line of type ("log", "audit") with msg and fields: JSON keys in JSON mode,
 * key=value pairs in text mode. Keys are reduced to letters, digits, '_', '-' and '.';
 * one that would take the place of the line's own (time, level, type, msg) gets "x_". */
void log_fields(int level, const char *type, const char *msg, const log_field *fields, size_t n);

/* Formats the line log_fields would write into line (cap bytes, NUL-terminated, no
 * newline): for a line that goes elsewhere (tokend's start line, on stdout). Returns its
 * length. */
size_t log_format(char *line, size_t cap, int level, const char *type, const char *msg, const log_field *f, size_t n);

/* 1 when lines are JSON objects. */
int log_is_json(void);

/* Writes one access-log line (info level). */
void log_access(const log_access_entry *e);

/* Parses "debug", "info", "warn" or "error". Returns the level or -1. */
int log_level_from_name(const char *name);

/* Copies src into dst (size dstlen, always NUL-terminated) with the secret (NULL or ""
 * for none) replaced by "[redacted]" wherever 8 or more of its characters in a row appear,
 * in any case (a shorter secret: wherever it appears whole). Scrub before truncating: a
 * fragment cut short of 8 characters is kept. Returns dst. */
char *log_scrub(char *dst, size_t dstlen, const char *src, const char *secret);

/* log_scrub with every registered secret (tokend.http.request's error texts). Returns dst. */
char *log_redact(char *dst, size_t dstlen, const char *src);

/* log_redact for bytes that may hold NULs (an HTTP answer's body): 0 when src[0..len)
 * holds no registered secret (*out NULL), 1 with *out a malloc'd NUL-terminated copy in
 * which each is "[redacted]" (*outlen its length; the caller frees it), -1 when out of
 * memory. */
int log_redact_mem(const char *src, size_t len, char **out, size_t *outlen);

#endif
