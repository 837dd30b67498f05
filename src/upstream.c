/* upstream.c: the AssemblyAI token client: temporary tokens minted through a worker's fetch client. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <curl/curl.h>

#include "json.h"
#include "list.h"
#include "log.h"
#include "tokend.h"
#include "upstream.h"

#define UPSTREAM_BODY_MAX (64 * 1024) /* a token reply is well under 1 KiB */
#define UPSTREAM_URL_MAX 1024

/* An upstream 5xx is retried once, after a back-off of UPSTREAM_RETRY_MIN_MS plus up to
 * UPSTREAM_RETRY_JITTER_MS (so that many clients do not retry in step), and only when the
 * deadline leaves the retry at least UPSTREAM_RETRY_MIN_LEFT_MS to run after it. */
#define UPSTREAM_RETRY_MIN_MS 100
#define UPSTREAM_RETRY_JITTER_MS 200
#define UPSTREAM_RETRY_MIN_LEFT_MS 100
#define UPSTREAM_RETRY_AFTER_MAX 3600 /* a Retry-After passed on is 1..3600 s */

struct upstream_call {
    upstream *up;
    fetch_call *transfer; /* in flight; NULL while waiting to retry */
    upstream_done_fn *done;
    void *ud;
    char url[UPSTREAM_URL_MAX];
    long expires_in_s;
    uint64_t start_us;
    int attempts;           /* transfers started for this call */
    loop_timer retry_timer; /* armed while waiting to retry */
    list_node link;         /* in the active calls, or the idle pool */
};

struct upstream {
    fetch *client;
    loop *lp;
    char *token_url;
    char *key;
    char *proxy;
    fetch_headers *headers; /* holds "Authorization: <key>" */
    long timeout_ms;
    list_node active;
    list_node idle;    /* finished calls kept for reuse */
    unsigned int seed; /* for the retry jitter */
};

int upstream_has_key(const upstream *up) {
    return up->key != NULL;
}

upstream *upstream_create(fetch *f, const upstream_options *opts, char *err, size_t errlen) {
    upstream *up = calloc(1, sizeof *up);
    char *auth = NULL;
    if (!up) goto nomem;
    list_init(&up->active);
    list_init(&up->idle);
    up->client = f;
    up->lp = fetch_loop(f);
    up->seed = (unsigned int)loop_now_ms() ^ (unsigned int)(uintptr_t)up;
    up->timeout_ms = opts->timeout_ms;
    if (!(up->token_url = strdup(opts->token_url))) goto nomem;
    if (opts->proxy && *opts->proxy && !(up->proxy = strdup(opts->proxy))) goto nomem;
    if (opts->api_key && *opts->api_key) {
        for (const char *p = opts->api_key; *p; p++) {
            if ((unsigned char)*p < 0x20 || *p == 0x7f) {
                snprintf(err, errlen, "the API key contains a control character or line break");
                goto fail;
            }
        }
        if (!(up->key = strdup(opts->api_key))) goto nomem;
        size_t n = strlen(up->key) + sizeof "Authorization: ";
        if (!(auth = malloc(n))) goto nomem;
        snprintf(auth, n, "Authorization: %s", up->key);
        up->headers = fetch_headers_add(NULL, auth);
        explicit_bzero(auth, n);
        free(auth);
        if (!up->headers) goto nomem;
    }
    /* The user agent is in the fixed list rather than an option curl would format anew
     * for every request. */
    static const char *const fixed[] = { "Accept: application/json", "User-Agent: tokend/" TOKEND_VERSION };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (!(up->headers = fetch_headers_add(up->headers, fixed[i]))) goto nomem; /* freed, key wiped */
    return up;
nomem:
    snprintf(err, errlen, "out of memory");
fail:
    upstream_free(up);
    return NULL;
}

/* Stops what c is doing (its transfer, its retry timer) and puts it in the idle pool. */
static void upstream_release(upstream *up, upstream_call *c) {
    list_remove(&c->link);
    loop_timer_stop(up->lp, &c->retry_timer);
    if (c->transfer) fetch_cancel(c->transfer);
    c->transfer = NULL;
    c->done = NULL;
    c->ud = NULL;
    list_insert_after(&up->idle, &c->link);
}

void upstream_cancel(upstream_call *c) {
    upstream_release(c->up, c);
}

void upstream_free(upstream *up) {
    if (!up) return;
    for (list_node *n; (n = list_first(&up->active));) upstream_release(up, list_entry(n, upstream_call, link));
    for (list_node *n; (n = list_first(&up->idle));) {
        list_remove(n);
        free(list_entry(n, upstream_call, link));
    }
    fetch_headers_free(up->headers); /* wipes the key */
    if (up->key) {
        explicit_bzero(up->key, strlen(up->key));
        free(up->key);
    }
    free(up->token_url);
    free(up->proxy);
    free(up);
}

static void upstream_on_transfer(void *ud, const fetch_result *fr);

/* Starts (or restarts) the transfer of c with timeout_ms left. Returns 0 or -1. */
static int upstream_start(upstream *up, upstream_call *c, long timeout_ms) {
    fetch_request rq = {
        .url = c->url,
        .headers = up->headers,
        .timeout_ms = timeout_ms,
        .max_body = UPSTREAM_BODY_MAX,
        .proxy = up->proxy,
    };
    c->attempts++;
    c->transfer = fetch_start(up->client, &rq, upstream_on_transfer, c);
    return c->transfer ? 0 : -1;
}

upstream_call *upstream_mint(upstream *up, long expires_in_s, long max_session_s, upstream_done_fn *done, void *ud) {
    return upstream_mint_at(up, up->token_url, expires_in_s, max_session_s, done, ud);
}

upstream_call *upstream_mint_at(upstream *up, const char *token_url, long expires_in_s, long max_session_s,
                                upstream_done_fn *done, void *ud) {
    list_node *pooled = list_first(&up->idle);
    upstream_call *c = pooled ? list_entry(pooled, upstream_call, link) : calloc(1, sizeof *c);
    if (!c) return NULL;
    if (pooled) list_remove(pooled);
    c->up = up;
    if (max_session_s > 0)
        snprintf(c->url, sizeof c->url, "%s?expires_in_seconds=%ld&max_session_duration_seconds=%ld", token_url,
                 expires_in_s, max_session_s);
    else snprintf(c->url, sizeof c->url, "%s?expires_in_seconds=%ld", token_url, expires_in_s);
    c->done = done;
    c->ud = ud;
    c->attempts = 0;
    c->expires_in_s = expires_in_s;
    c->start_us = loop_now_us();
    list_insert_after(&up->active, &c->link);
    if (upstream_start(up, c, up->timeout_ms) < 0) {
        upstream_release(up, c);
        return NULL;
    }
    return c;
}

/* Ends c with result r: back to the pool, then the callback. */
static void upstream_finish(upstream_call *c, upstream_result *r) {
    upstream *up = c->up;
    upstream_done_fn *done = c->done;
    void *ud = c->ud;
    if (r->token && r->expires_in_seconds <= 0) r->expires_in_seconds = c->expires_in_s;
    r->elapsed_ms = (double)(loop_now_us() - c->start_us) / 1000.0;
    r->attempts = c->attempts;
    upstream_release(up, c);
    done(ud, r);
}

/* The back-off of a retry is over: send the request again with the time that is left. */
static void upstream_on_retry(void *ud) {
    upstream_call *c = ud;
    upstream *up = c->up;
    long left = up->timeout_ms - (long)((loop_now_us() - c->start_us) / 1000);
    if (upstream_start(up, c, left) == 0) return;
    upstream_result r; /* cannot even start: the 5xx we had is the outcome */
    memset(&r, 0, sizeof r);
    r.failure = FAILURE_UPSTREAM_ERROR;
    r.kind = failure_name(r.failure);
    r.error = "the upstream failed and the retry could not start";
    r.retry_after = -1;
    upstream_finish(c, &r);
}

/* The seconds a Retry-After value asks for (delta-seconds or an HTTP date), clamped to
 * 1..UPSTREAM_RETRY_AFTER_MAX; -1 when absent or not understood. */
static long upstream_retry_after(const fetch_result *fr) {
    char v[64], *end;
    long s;
    if (!fetch_result_header(fr, "retry-after", v, sizeof v)) return -1;
    if (isdigit((unsigned char)v[0])) {
        errno = 0;
        s = strtol(v, &end, 10);
        if (*end) return -1;
        if (errno == ERANGE) s = UPSTREAM_RETRY_AFTER_MAX;
    } else {
        time_t when = curl_getdate(v, NULL), now = time(NULL);
        if (when <= 0) return -1;
        s = when > now ? (long)(when - now) : 0;
    }
    return s < 1 ? 1 : s > UPSTREAM_RETRY_AFTER_MAX ? UPSTREAM_RETRY_AFTER_MAX : s;
}

static void upstream_on_transfer(void *ud, const fetch_result *fr) {
    upstream_call *c = ud;
    upstream *up = c->up;
    char token[JSON_TOKEN_MAX], errbuf[800];
    token[0] = '\0';
    c->transfer = NULL;
    long backoff = UPSTREAM_RETRY_MIN_MS + (long)(rand_r(&up->seed) % (UPSTREAM_RETRY_JITTER_MS + 1));
    long left = up->timeout_ms - (long)((loop_now_us() - c->start_us) / 1000);
    if (fr->failure == FAILURE_NONE && fr->status >= 500 && c->attempts == 1 &&
        left > backoff + UPSTREAM_RETRY_MIN_LEFT_MS) {
        log_msg(LOG_WARN, "upstream answered HTTP %ld; retrying once in %ld ms", fr->status, backoff);
        loop_timer_start(up->lp, &c->retry_timer, backoff, upstream_on_retry, c);
        return;
    }
    upstream_result r;
    upstream_classify(fr->curl_code, fr->error, fr->status, fr->body, fr->body_len, upstream_retry_after(fr),
                      up->timeout_ms, up->key, &r, token, sizeof token, errbuf, sizeof errbuf);
    upstream_finish(c, &r);
    explicit_bzero(token, strnlen(token, sizeof token)); /* the token's bytes, not the whole buffer */
}

void upstream_no_key(upstream_result *r) {
    memset(r, 0, sizeof *r);
    r->failure = FAILURE_NO_KEY;
    r->kind = failure_name(r->failure);
    r->error = "no AssemblyAI API key is configured (set ASSEMBLYAI_API_KEY in the environment or in .env)";
    r->retry_after = -1;
    r->elapsed_ms = -1;
}

int upstream_check_token_args(long expires_in_s, long max_session_s, char *err, size_t errlen) {
    if (expires_in_s < UPSTREAM_EXPIRES_MIN || expires_in_s > UPSTREAM_EXPIRES_MAX) {
        snprintf(err, errlen, "expires_in_seconds must be between %d and %d", UPSTREAM_EXPIRES_MIN,
                 UPSTREAM_EXPIRES_MAX);
        return -1;
    }
    if (max_session_s && (max_session_s < UPSTREAM_SESSION_MIN || max_session_s > UPSTREAM_SESSION_MAX)) {
        snprintf(err, errlen, "max_session_duration_seconds must be an integer between %d and %d", UPSTREAM_SESSION_MIN,
                 UPSTREAM_SESSION_MAX);
        return -1;
    }
    return 0;
}

void upstream_classify(int curl_code, const char *curl_error, long http_status, const char *body, size_t body_len,
                       long retry_after, long timeout_ms, const char *key, upstream_result *r, char *token,
                       size_t token_cap, char *errbuf, size_t errlen) {
    char msg[JSON_ERROR_MAX + 256], said[JSON_ERROR_MAX + 8], scrubbed[JSON_ERROR_MAX];
    json_token_reply reply; /* 8 KiB on the stack: a malloc per call cost more */
    memset(r, 0, sizeof *r);
    r->retry_after = retry_after;
    r->http_status = curl_code == CURLE_OK ? (int)http_status : 0;
    msg[0] = said[0] = '\0';
    int parsed = body && json_parse_token_reply(body, body_len, &reply) == 0;
    failure_kind transport = fetch_failure_of(curl_code);
    const char *detail = curl_error && *curl_error ? curl_error : curl_easy_strerror((CURLcode)curl_code);
    switch (transport) {
    case FAILURE_NONE: break;
    case FAILURE_TIMEOUT:
        r->failure = FAILURE_TIMEOUT;
        snprintf(msg, sizeof msg, "the upstream did not answer within %ld ms", timeout_ms);
        break;
    case FAILURE_TOO_LARGE:
        r->failure = FAILURE_BAD_RESPONSE;
        snprintf(msg, sizeof msg, "the upstream reply is larger than %d KiB", UPSTREAM_BODY_MAX / 1024);
        break;
    default:
        r->failure = transport == FAILURE_TLS || transport == FAILURE_CONNECT ? transport : FAILURE_NETWORK;
        snprintf(msg, sizeof msg, "%s talking to the upstream: %s",
                 r->failure == FAILURE_TLS               ? "TLS failure"
                         : r->failure == FAILURE_CONNECT ? "cannot connect"
                                                         : "network failure",
                 detail);
        break;
    }
    if (transport == FAILURE_NONE) {
        /* The upstream's own words may echo the key: scrubbed whole, before the message
         * cuts them to fit. */
        if (parsed && reply.has_error && reply.error[0])
            snprintf(said, sizeof said, ": %s", log_scrub(scrubbed, sizeof scrubbed, reply.error, key));
        if (http_status == 200 && parsed && reply.has_token) {
            if (strlen(reply.token) >= token_cap) {
                r->failure = FAILURE_BAD_RESPONSE;
                snprintf(msg, sizeof msg, "the upstream token is too long");
            } else {
                memcpy(token, reply.token, strlen(reply.token) + 1);
                r->token = token;
                r->expires_in_seconds = reply.has_expires ? reply.expires_in_seconds : 0;
            }
        } else if (http_status == 200) {
            r->failure = FAILURE_BAD_RESPONSE;
            snprintf(msg, sizeof msg,
                     parsed ? "the upstream answered 200 without a token"
                            : "the upstream answered 200 with a body that is not JSON");
        } else if (http_status == 401 || http_status == 403) {
            r->failure = FAILURE_UNAUTHORIZED;
            snprintf(msg, sizeof msg, "the upstream refused the API key (HTTP %ld)%s", http_status, said);
        } else if (http_status == 429) {
            r->failure = FAILURE_RATE_LIMITED;
            snprintf(msg, sizeof msg, "the upstream is rate limiting this key (HTTP 429)%s", said);
        } else if (http_status == 400) {
            r->failure = FAILURE_BAD_REQUEST;
            snprintf(msg, sizeof msg, "the upstream rejected the request (HTTP 400)%s", said);
        } else if (http_status >= 500) {
            r->failure = FAILURE_UPSTREAM_ERROR;
            snprintf(msg, sizeof msg, "the upstream failed (HTTP %ld)%s", http_status, said);
        } else {
            r->failure = FAILURE_BAD_RESPONSE;
            snprintf(msg, sizeof msg, "unexpected upstream answer (HTTP %ld)%s", http_status, said);
        }
    }
    r->kind = failure_name(r->failure);
    if (!r->token) {
        log_scrub(errbuf, errlen, msg, key);
        r->error = errbuf;
    }
}
