/* audit.h: the audit lines of token requests: who asked, from where, and what came of it. */
#ifndef TOKEND_AUDIT_H
#define TOKEND_AUDIT_H

/* Who asked: a request's client, its Origin header and the user its handler named
 * (req.log.user). Empty strings when unknown. */
typedef struct audit_who {
    char client[64];
    char origin[256];
    char user[128];
} audit_who;

#include <stddef.h>

/* Writes the audit line of a mint: outcome is "minted", "pooled" or a failure kind; of
 * the token (NULL without one) only the first 8 hex digits of its SHA-256, computed only
 * when the line is written; max_session_s 0 for the upstream's default; provider names
 * another vendor's credential (tokend.audit from the providers' modules), NULL for
 * AssemblyAI's streaming token. */
void audit_token(const audit_who *who, const char *provider, const char *outcome, long expires_in_s, long max_session_s,
                 const char *token, size_t token_len);

/* Writes the audit line of a token request answered without a mint: refused (status
 * 4xx) or failed (5xx), with the reason the answer gave ("" if none). */
void audit_refusal(const audit_who *who, int status, const char *reason);

#endif
