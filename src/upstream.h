/* upstream.h: the AssemblyAI token client: non-blocking libcurl transfers on a worker's loop. */
#ifndef TOKEND_UPSTREAM_H
#define TOKEND_UPSTREAM_H

#include "loop.h"

typedef struct upstream upstream;
typedef struct upstream_call upstream_call;

typedef struct upstream_options {
    const char *token_url;      /* e.g. https://streaming.assemblyai.com/v3/token */
    const char *api_key;        /* copied; NULL or "" = none */
    const char *ca_file;        /* NULL = system CA store */
    long timeout_ms;
    long connect_timeout_ms;
} upstream_options;

/* Outcome of one token request. Strings live until the callback returns. */
typedef struct upstream_result {
    const char *token;          /* non-NULL on success */
    long expires_in_seconds;
    const char *error;          /* message fit for a log: never holds the key */
    const char *kind;           /* "no_key", "timeout", "connect", "tls", "unauthorized",
                                   "rate_limited", "bad_request", "upstream_error", "bad_response" */
    int http_status;            /* upstream HTTP status, 0 when none was received */
    long retry_after;           /* seconds from Retry-After, -1 when absent */
    double elapsed_ms;          /* from the first attempt to the outcome */
    int attempts;               /* transfers made: 2 when a 5xx was retried */
} upstream_result;

typedef void upstream_done_fn(void *ud, const upstream_result *r);

/* Creates a client bound to lp (NULL for a client used only by upstream_mint_sync).
 * Returns NULL with err set on failure. */
upstream *upstream_create(loop *lp, const upstream_options *opts, char *err, size_t errlen);

/* Cancels every call in flight (their callbacks are not called) and frees. NULL allowed. */
void upstream_free(upstream *up);

/* Returns 1 when an API key is configured. */
int upstream_has_key(const upstream *up);

/* Starts a token request. An upstream 5xx is retried once after a jittered back-off of
 * 100..300 ms when the deadline leaves room. done(ud, result) is called exactly once from
 * the loop, never from inside this call. max_session_s <= 0 leaves the upstream default. Returns the call
 * or NULL when out of memory. */
upstream_call *upstream_mint(upstream *up, long expires_in_s, long max_session_s,
                             upstream_done_fn *done, void *ud);

/* Asks for a token and blocks until the outcome (same retry and deadline as
 * upstream_mint). Works without a loop (lp may be NULL at creation). Fills r (strings in
 * token and errbuf) and returns 0 on success, -1 otherwise. */
int upstream_mint_sync(upstream *up, long expires_in_s, long max_session_s, upstream_result *r,
                       char *token, size_t token_cap, char *errbuf, size_t errlen);

/* Connections opened and calls finished by every client of the process. */
void upstream_totals(long *connections_opened, long *calls);

/* Maps a finished transfer to a result: curl code, HTTP status, body, Retry-After.
 * Pure; exposed for tests. key is scrubbed from the error text. errbuf gets the message. */
void upstream_classify(int curl_code, const char *curl_error, long http_status, const char *body,
                       size_t body_len, long retry_after, long timeout_ms, const char *key,
                       upstream_result *r, char *token, size_t token_cap, char *errbuf, size_t errlen);

#endif
