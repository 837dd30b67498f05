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

/* Writes the audit line of a mint: outcome is "minted", "pooled" or a failure kind;
 * token_sha256 the first hex digits of the token's SHA-256 ("" without a token);
 * max_session_s 0 for the upstream's default. */
void audit_token(const audit_who *who, const char *outcome, long expires_in_s, long max_session_s,
                 const char *token_sha256);

/* audit_token for a credential of another provider than AssemblyAI's streaming token
 * (tokend.audit from the providers' modules): a provider field names it (NULL: none). */
void audit_token_of(const audit_who *who, const char *provider, const char *outcome, long expires_in_s,
                    long max_session_s, const char *token_sha256);

/* Writes the audit line of a token request answered without a mint: refused (status
 * 4xx) or failed (5xx), with the reason the answer gave ("" if none). */
void audit_refusal(const audit_who *who, int status, const char *reason);

#endif
