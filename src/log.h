/* log.h: process-wide logging with levels, text or JSON lines, secret redaction. */
#ifndef TOKEND_LOG_H
#define TOKEND_LOG_H

#include <stddef.h>
#include "tokend.h"

/* Log levels, lowest first. A message is written when its level >= the configured one. */
enum { LOG_DEBUG = TOKEND_LOG_DEBUG, LOG_INFO = TOKEND_LOG_INFO,
       LOG_WARN = TOKEND_LOG_WARN, LOG_ERROR = TOKEND_LOG_ERROR };

/* One finished request, as the access log records it. */
typedef struct log_access_entry {
    const char *client;      /* client address text */
    const char *method;
    const char *path;        /* path only: query values are never logged */
    int status;
    unsigned long long bytes;     /* response body bytes */
    double duration_ms;      /* from request start to response queued */
    double upstream_ms;      /* time spent waiting on the upstream, -1 if none */
} log_access_entry;

/* Sets the minimum level and the line format (0 text, 1 JSON lines). Thread-safe enough:
 * call before worker threads start. */
void log_configure(int level, int json);

/* Routes every line to sink instead of stderr; NULL restores stderr. */
void log_set_sink(tokend_log_fn *sink, void *ud);

/* Registers a secret that is replaced by "[redacted]" in every line written from now on.
 * The string is copied. Passing NULL or "" clears it. */
void log_set_secret(const char *secret);

/* Returns 1 when a message of this level would be written. */
int log_enabled(int level);

/* Writes one formatted message at level. Never fails visibly. */
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Writes one access-log line (info level). */
void log_access(const log_access_entry *e);

/* Parses "debug", "info", "warn" or "error". Returns the level or -1. */
int log_level_from_name(const char *name);

/* Copies src into dst (size dstlen, always NUL-terminated) with every occurrence of
 * secret (NULL or "" for none) replaced by "[redacted]". Returns dst. */
char *log_scrub(char *dst, size_t dstlen, const char *src, const char *secret);

/* Copies src into dst (size dstlen, always NUL-terminated) with the registered secret
 * replaced by "[redacted]". Returns dst. */
char *log_redact(char *dst, size_t dstlen, const char *src);

#endif
