/* metrics.c: process-wide counters for /metrics: requests by route and status, tokens,
 * upstream latency and errors, requests in flight, reloads. Thread-safe. */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "metrics.h"

#define METRICS_MAX_SERIES 512

typedef struct metrics_series {
    char route[64];
    int status;
    unsigned long long count;
} metrics_series;

static pthread_mutex_t metrics_lock = PTHREAD_MUTEX_INITIALIZER;
static metrics_series metrics_requests[METRICS_MAX_SERIES];
static size_t metrics_nrequests;
static unsigned long long metrics_requests_dropped;    /* past METRICS_MAX_SERIES series */

static atomic_long metrics_in_flight_now;
static atomic_ullong metrics_tokens;
static atomic_ullong metrics_reloads_ok, metrics_reloads_failed;

/* Upstream latency histogram (seconds), like Prometheus client defaults around 100 ms. */
static const double metrics_bounds[] = { 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10 };
#define METRICS_NBOUNDS (sizeof metrics_bounds / sizeof metrics_bounds[0])
static atomic_ullong metrics_latency_buckets[METRICS_NBOUNDS + 1];
static atomic_ullong metrics_latency_count;
static atomic_ullong metrics_latency_sum_us;

static atomic_ullong metrics_errors[FAILURE_COUNT];

void metrics_request(const char *route, int status) {
    pthread_mutex_lock(&metrics_lock);
    size_t i = 0;
    while (i < metrics_nrequests && !(metrics_requests[i].status == status &&
                                      strcmp(metrics_requests[i].route, route) == 0)) i++;
    if (i == metrics_nrequests) {
        if (i == METRICS_MAX_SERIES) {
            metrics_requests_dropped++;
            goto out;
        }
        snprintf(metrics_requests[i].route, sizeof metrics_requests[i].route, "%s", route);
        metrics_requests[i].status = status;
        metrics_nrequests++;
    }
    metrics_requests[i].count++;
out:
    pthread_mutex_unlock(&metrics_lock);
}

void metrics_in_flight(int delta) {
    atomic_fetch_add(&metrics_in_flight_now, delta);
}

void metrics_upstream(failure_kind failure, double elapsed_ms) {
    if (elapsed_ms < 0) goto counted;   /* no upstream call was made (no key) */
    double s = elapsed_ms / 1000.0;
    size_t b = 0;
    while (b < METRICS_NBOUNDS && s > metrics_bounds[b]) b++;
    atomic_fetch_add(&metrics_latency_buckets[b], 1);
    atomic_fetch_add(&metrics_latency_count, 1);
    atomic_fetch_add(&metrics_latency_sum_us, (unsigned long long)(elapsed_ms * 1000.0));
counted:
    if (failure == FAILURE_NONE) atomic_fetch_add(&metrics_tokens, 1);
    else if (failure < FAILURE_COUNT) atomic_fetch_add(&metrics_errors[failure], 1);
}

void metrics_reload(int ok) {
    atomic_fetch_add(ok ? &metrics_reloads_ok : &metrics_reloads_failed, 1);
}

/* printf into the output. */
static void metrics_printf(metrics_write_fn *write, void *ud, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void metrics_printf(metrics_write_fn *write, void *ud, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0) write(ud, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

/* Escapes a label value: backslash, double quote and newline. */
static void metrics_label(const char *in, char *out, size_t cap) {
    size_t o = 0;
    for (; *in && o + 3 < cap; in++) {
        if (*in == '\\' || *in == '"') { out[o++] = '\\'; out[o++] = *in; }
        else if (*in == '\n') { out[o++] = '\\'; out[o++] = 'n'; }
        else out[o++] = *in;
    }
    out[o] = '\0';
}

void metrics_render(metrics_write_fn *write, void *ud, long upstream_connections_opened) {
    metrics_printf(write, ud, "# HELP tokend_requests_total Requests answered, by route and status.\n"
                              "# TYPE tokend_requests_total counter\n");
    pthread_mutex_lock(&metrics_lock);
    for (size_t i = 0; i < metrics_nrequests; i++) {
        char label[140];
        metrics_label(metrics_requests[i].route, label, sizeof label);
        metrics_printf(write, ud, "tokend_requests_total{route=\"%s\",status=\"%d\"} %llu\n", label,
                       metrics_requests[i].status, metrics_requests[i].count);
    }
    unsigned long long dropped = metrics_requests_dropped;
    pthread_mutex_unlock(&metrics_lock);
    if (dropped) metrics_printf(write, ud, "tokend_requests_total{route=\"other\",status=\"other\"} %llu\n", dropped);
    metrics_printf(write, ud, "# HELP tokend_requests_in_flight Requests being handled now.\n"
                              "# TYPE tokend_requests_in_flight gauge\ntokend_requests_in_flight %ld\n",
                   atomic_load(&metrics_in_flight_now));
    metrics_printf(write, ud, "# HELP tokend_tokens_minted_total Temporary tokens minted.\n"
                              "# TYPE tokend_tokens_minted_total counter\ntokend_tokens_minted_total %llu\n",
                   atomic_load(&metrics_tokens));
    metrics_printf(write, ud, "# HELP tokend_upstream_duration_seconds Time from a token request to its outcome.\n"
                              "# TYPE tokend_upstream_duration_seconds histogram\n");
    unsigned long long cumulative = 0;
    for (size_t b = 0; b <= METRICS_NBOUNDS; b++) {
        cumulative += atomic_load(&metrics_latency_buckets[b]);
        if (b < METRICS_NBOUNDS)
            metrics_printf(write, ud, "tokend_upstream_duration_seconds_bucket{le=\"%g\"} %llu\n", metrics_bounds[b], cumulative);
        else
            metrics_printf(write, ud, "tokend_upstream_duration_seconds_bucket{le=\"+Inf\"} %llu\n", cumulative);
    }
    metrics_printf(write, ud, "tokend_upstream_duration_seconds_sum %.6f\ntokend_upstream_duration_seconds_count %llu\n",
                   (double)atomic_load(&metrics_latency_sum_us) / 1e6, atomic_load(&metrics_latency_count));
    metrics_printf(write, ud, "# HELP tokend_upstream_errors_total Failed token requests, by kind.\n"
                              "# TYPE tokend_upstream_errors_total counter\n");
    for (failure_kind k = FAILURE_NONE + 1; k < FAILURE_COUNT; k++)
        metrics_printf(write, ud, "tokend_upstream_errors_total{kind=\"%s\"} %llu\n", failure_name(k),
                       atomic_load(&metrics_errors[k]));
    metrics_printf(write, ud, "# HELP tokend_upstream_connections_opened_total Connections opened to the upstream.\n"
                              "# TYPE tokend_upstream_connections_opened_total counter\n"
                              "tokend_upstream_connections_opened_total %ld\n", upstream_connections_opened);
    metrics_printf(write, ud, "# HELP tokend_reloads_total Script reloads, by result.\n"
                              "# TYPE tokend_reloads_total counter\n"
                              "tokend_reloads_total{result=\"ok\"} %llu\ntokend_reloads_total{result=\"failed\"} %llu\n",
                   atomic_load(&metrics_reloads_ok), atomic_load(&metrics_reloads_failed));
}
