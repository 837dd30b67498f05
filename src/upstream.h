/* upstream.h: the AssemblyAI token client: temporary tokens minted through a worker's fetch client. */
#ifndef TOKEND_UPSTREAM_H
#define TOKEND_UPSTREAM_H

#include "failure.h"
#include "fetch.h"

/* AssemblyAI's ranges for a temporary token (tokend.streaming.limits says the same in Lua). */
#define UPSTREAM_EXPIRES_MIN 1 /* expires_in_seconds: the window to open the WebSocket */
#define UPSTREAM_EXPIRES_MAX 600
#define UPSTREAM_SESSION_MIN 60 /* max_session_duration_seconds */
#define UPSTREAM_SESSION_MAX 10800

typedef struct upstream upstream;
typedef struct upstream_call upstream_call;

typedef struct upstream_options {
    const char *token_url; /* e.g. https://streaming.assemblyai.com/v3/token */
    const char *api_key;   /* copied; NULL or "" = none */
    const char *proxy;     /* NULL or "" = none */
    long timeout_ms;       /* the whole call, a retry included */
} upstream_options;

/* Outcome of one token request. Strings live until the callback returns. */
typedef struct upstream_result {
    const char *token;       /* non-NULL on success */
    long expires_in_seconds; /* the upstream's, or what was asked when it gave none */
    const char *error;       /* message fit for a log: never holds the key */
    failure_kind failure;    /* FAILURE_NONE on success */
    const char *kind;        /* failure_name(failure) */
    int http_status;         /* upstream HTTP status, 0 when none was received */
    long retry_after;        /* seconds from Retry-After, -1 when absent */
    double elapsed_ms;       /* from the first attempt to the outcome */
    int attempts;            /* transfers made: 2 when a 5xx was retried */
} upstream_result;

typedef void upstream_done_fn(void *ud, const upstream_result *r);

/* Creates a client that mints through f (and its loop). Returns NULL with err set. */
upstream *upstream_create(fetch *f, const upstream_options *opts, char *err, size_t errlen);

/* Cancels every call in flight (their callbacks are not called) and frees. NULL allowed. */
void upstream_free(upstream *up);

/* Returns 1 when an API key is configured. */
int upstream_has_key(const upstream *up);

/* Starts a token request. An upstream 5xx is retried once after a jittered back-off when
 * the deadline leaves room. done(ud, result) is called exactly once from the loop, never
 * from inside this call. max_session_s <= 0 leaves the upstream default. Returns the call
 * or NULL when out of memory. */
upstream_call *upstream_mint(upstream *up, long expires_in_s, long max_session_s, upstream_done_fn *done, void *ud);

/* upstream_mint at another of AssemblyAI's token endpoints with the same parameters and
 * answer (a data zone's, the Voice Agent API's): token_url is copied. */
upstream_call *upstream_mint_at(upstream *up, const char *token_url, long expires_in_s, long max_session_s,
                                upstream_done_fn *done, void *ud);

/* Ends a call in flight without calling its callback. */
void upstream_cancel(upstream_call *c);

/* Checks a token's expires_in_seconds and max_session_duration_seconds (0: the upstream's
 * default) against AssemblyAI's ranges. Returns 0, or -1 with err naming the one at fault. */
int upstream_check_token_args(long expires_in_s, long max_session_s, char *err, size_t errlen);

/* Fills r with the no_key outcome: what a mint without a key ends with. */
void upstream_no_key(upstream_result *r);

/* Maps a finished transfer to a result: curl code, HTTP status, body, Retry-After.
 * Pure; exposed for tests. key is scrubbed from the error text. errbuf gets the message. */
void upstream_classify(int curl_code, const char *curl_error, long http_status, const char *body, size_t body_len,
                       long retry_after, long timeout_ms, const char *key, upstream_result *r, char *token,
                       size_t token_cap, char *errbuf, size_t errlen);

#endif
