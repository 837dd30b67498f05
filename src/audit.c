/* audit.c: the audit lines of token requests: who asked, from where, and what came of it. */
#include <stdio.h>

#include "audit.h"
#include "crypto.h"
#include "log.h"

void audit_token(const audit_who *who, const char *provider, const char *outcome, long expires_in_s, long max_session_s,
                 const char *token, size_t token_len) {
    char expires[24], session[24], token_sha256[17] = "";
    unsigned char digest[CRYPTO_MAX_DIGEST];
    if (!log_enabled(LOG_INFO)) return;
    if (token && crypto_digest("sha256", token, token_len, digest) == 32) crypto_hex(digest, 4, token_sha256);
    snprintf(expires, sizeof expires, "%ld", expires_in_s);
    snprintf(session, sizeof session, "%ld", max_session_s);
    log_field f[10] = {
        { "event", "token_minted", 0 },
        { "client", who->client, 0 },
        { "user", who->user, 0 },
        { "origin", who->origin, 0 },
        { "expires_in_seconds", expires, 1 },
        { "max_session_duration_seconds", max_session_s ? session : "null", 1 },
        { "outcome", outcome, 0 },
    };
    size_t n = 7;
    if (provider) f[n++] = (log_field){ "provider", provider, 0 };
    if (*token_sha256) f[n++] = (log_field){ "token_sha256", token_sha256, 0 };
    log_fields(LOG_INFO, "audit", "token", f, n);
}

void audit_refusal(const audit_who *who, int status, const char *reason) {
    char code[8];
    if (!log_enabled(LOG_INFO)) return;
    snprintf(code, sizeof code, "%d", status);
    log_field f[] = {
        { "event", "token_refused", 0 },
        { "client", who->client, 0 },
        { "user", who->user, 0 },
        { "origin", who->origin, 0 },
        { "outcome", status >= 500 ? "failed" : "refused", 0 },
        { "status", code, 1 },
        { "reason", reason, 0 },
    };
    log_fields(LOG_INFO, "audit", "token", f, sizeof f / sizeof f[0] - (*reason ? 0 : 1));
}
