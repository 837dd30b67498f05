/* metrics.c: process-wide counters for /metrics: requests by route and status, tokens,
 * upstream and Redis latency and errors, requests in flight, reloads, relayed sessions. Thread-safe. */
#include <dirent.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "metrics.h"
#include "tokend.h"

#define METRICS_MAX_SERIES 512

typedef struct metrics_series {
    char route[64];
    int status;
    unsigned long long count;
} metrics_series;

static pthread_mutex_t metrics_lock = PTHREAD_MUTEX_INITIALIZER;
static metrics_series metrics_requests[METRICS_MAX_SERIES];
static size_t metrics_nrequests;
static unsigned long long metrics_requests_dropped; /* past METRICS_MAX_SERIES series */

static atomic_long metrics_in_flight_now;
static atomic_ullong metrics_tokens;
static atomic_ullong metrics_reloads_ok, metrics_reloads_failed;

/* A latency histogram in seconds. */
#define METRICS_MAX_BOUNDS 12
typedef struct metrics_histogram {
    const char *name; /* tokend_..._seconds */
    const char *help;
    double bounds[METRICS_MAX_BOUNDS]; /* ascending, 0-terminated when shorter */
    atomic_ullong buckets[METRICS_MAX_BOUNDS + 1];
    atomic_ullong count;
    atomic_ullong sum_us;
} metrics_histogram;

/* Upstream latency, like Prometheus client defaults around 100 ms. */
static metrics_histogram metrics_upstream_latency = {
    .name = "tokend_upstream_duration_seconds",
    .help = "Time from a token request to its outcome.",
    .bounds = { 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10 },
};
/* Redis command latency: sub-millisecond on a local network. */
static metrics_histogram metrics_redis_latency = {
    .name = "tokend_redis_command_duration_seconds",
    .help = "Time from sending a Redis command to its reply or deadline.",
    .bounds = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1 },
};

static atomic_ullong metrics_errors[FAILURE_COUNT];

/* Relayed sessions. */
static metrics_histogram metrics_relay_handshake_latency = {
    .name = "tokend_relay_handshake_duration_seconds",
    .help = "Time from a client's WebSocket handshake to the upstream's 101 (connect, TLS, upgrade).",
    .bounds = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5 },
};
static atomic_long metrics_relay_open;
static atomic_ullong metrics_relay_opened_total;
static atomic_ullong metrics_relay_ms_total;
static atomic_ullong metrics_relay_bytes[2]; /* client to upstream, upstream to client */
#define METRICS_RELAY_CAUSES 32
static struct {
    char cause[32];
    unsigned long long count;
} metrics_relay_causes[METRICS_RELAY_CAUSES];
static size_t metrics_nrelay_causes;

static const char *const metrics_redis_error_kinds[] = { "down", "timeout", "lost", "reply" };
#define METRICS_REDIS_KINDS (sizeof metrics_redis_error_kinds / sizeof metrics_redis_error_kinds[0])
static atomic_ullong metrics_redis_errors[METRICS_REDIS_KINDS];
static const char *const metrics_fallback_policies[] = { "local", "allow", "deny" };
#define METRICS_POLICIES (sizeof metrics_fallback_policies / sizeof metrics_fallback_policies[0])
static atomic_ullong metrics_fallbacks[METRICS_POLICIES];

static void metrics_observe(metrics_histogram *h, double elapsed_ms) {
    double s = elapsed_ms / 1000.0;
    size_t b = 0;
    while (b < METRICS_MAX_BOUNDS && h->bounds[b] > 0 && s > h->bounds[b]) b++;
    atomic_fetch_add(&h->buckets[b], 1);
    atomic_fetch_add(&h->count, 1);
    atomic_fetch_add(&h->sum_us, (unsigned long long)(elapsed_ms * 1000.0));
}

/* Counts name under kinds[i] when name is one of them. */
static void metrics_count_kind(const char *const *kinds, atomic_ullong *counters, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(kinds[i], name) == 0) atomic_fetch_add(&counters[i], 1);
}

void metrics_request(const char *route, int status) {
    pthread_mutex_lock(&metrics_lock);
    size_t i = 0;
    while (i < metrics_nrequests &&
           !(metrics_requests[i].status == status && strcmp(metrics_requests[i].route, route) == 0))
        i++;
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
    if (elapsed_ms >= 0) metrics_observe(&metrics_upstream_latency, elapsed_ms); /* < 0: no call was made */
    if (failure == FAILURE_NONE) atomic_fetch_add(&metrics_tokens, 1);
    else if (failure < FAILURE_COUNT) atomic_fetch_add(&metrics_errors[failure], 1);
}

void metrics_redis(double elapsed_ms, const char *error_kind) {
    if (elapsed_ms >= 0) metrics_observe(&metrics_redis_latency, elapsed_ms);
    if (error_kind)
        metrics_count_kind(metrics_redis_error_kinds, metrics_redis_errors, METRICS_REDIS_KINDS, error_kind);
}

void metrics_store_fallback(const char *policy) {
    metrics_count_kind(metrics_fallback_policies, metrics_fallbacks, METRICS_POLICIES, policy);
}

void metrics_relay_opened(void) {
    atomic_fetch_add(&metrics_relay_open, 1);
    atomic_fetch_add(&metrics_relay_opened_total, 1);
}

void metrics_relay_closed(const char *cause, int was_open, double seconds, unsigned long long bytes_in,
                          unsigned long long bytes_out) {
    if (was_open) atomic_fetch_sub(&metrics_relay_open, 1);
    atomic_fetch_add(&metrics_relay_ms_total, (unsigned long long)(seconds * 1000.0));
    atomic_fetch_add(&metrics_relay_bytes[0], bytes_in);
    atomic_fetch_add(&metrics_relay_bytes[1], bytes_out);
    pthread_mutex_lock(&metrics_lock);
    size_t i = 0;
    while (i < metrics_nrelay_causes && strcmp(metrics_relay_causes[i].cause, cause) != 0) i++;
    if (i == metrics_nrelay_causes && i < METRICS_RELAY_CAUSES) {
        snprintf(metrics_relay_causes[i].cause, sizeof metrics_relay_causes[i].cause, "%s", cause);
        metrics_nrelay_causes++;
    }
    if (i < metrics_nrelay_causes) metrics_relay_causes[i].count++;
    pthread_mutex_unlock(&metrics_lock);
}

void metrics_relay_handshake(double elapsed_ms) {
    metrics_observe(&metrics_relay_handshake_latency, elapsed_ms);
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
        if (*in == '\\' || *in == '"') {
            out[o++] = '\\';
            out[o++] = *in;
        } else if (*in == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else out[o++] = *in;
    }
    out[o] = '\0';
}

void metrics_family(metrics_write_fn *write, void *ud, const char *name, const char *type, const char *help) {
    metrics_printf(write, ud, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void metrics_sample(metrics_write_fn *write, void *ud, const char *name, const char *label, const char *value,
                    unsigned long long v) {
    char escaped[200];
    metrics_label(value, escaped, sizeof escaped);
    metrics_printf(write, ud, "%s{%s=\"%s\"} %llu\n", name, label, escaped, v);
}

static void metrics_render_histogram(metrics_write_fn *write, void *ud, metrics_histogram *h) {
    unsigned long long cumulative = 0;
    metrics_family(write, ud, h->name, "histogram", h->help);
    for (size_t b = 0; b <= METRICS_MAX_BOUNDS; b++) {
        cumulative += atomic_load(&h->buckets[b]);
        if (b < METRICS_MAX_BOUNDS && h->bounds[b] > 0)
            metrics_printf(write, ud, "%s_bucket{le=\"%g\"} %llu\n", h->name, h->bounds[b], cumulative);
        else {
            metrics_printf(write, ud, "%s_bucket{le=\"+Inf\"} %llu\n", h->name, cumulative);
            break;
        }
    }
    metrics_printf(write, ud, "%s_sum %.6f\n%s_count %llu\n", h->name, (double)atomic_load(&h->sum_us) / 1e6, h->name,
                   atomic_load(&h->count));
}

/* Writes a counter with one label, a series for each of its values. */
static void metrics_render_kinds(metrics_write_fn *write, void *ud, const char *name, const char *help,
                                 const char *label, const char *const *kinds, atomic_ullong *counters, size_t n) {
    metrics_family(write, ud, name, "counter", help);
    for (size_t i = 0; i < n; i++)
        metrics_printf(write, ud, "%s{%s=\"%s\"} %llu\n", name, label, kinds[i], atomic_load(&counters[i]));
}

/* The process's own gauges, as Prometheus clients name them, from /proc/self. */
static void metrics_render_process(metrics_write_fn *write, void *ud) {
    unsigned long utime = 0, stime = 0, vsize = 0;
    unsigned long long start = 0, boot = 0;
    long rss = 0, ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    char buf[1024], line[256];
    size_t fds = 0;
    struct rlimit rl = { 0, 0 };
    FILE *f = fopen("/proc/self/stat", "r");
    if (f && fgets(buf, sizeof buf, f)) {
        const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
        if (p &&
            sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %*d %*d %llu %lu %ld",
                   &utime, &stime, &start, &vsize, &rss) != 5)
            utime = stime = 0;
    }
    if (f) fclose(f);
    if ((f = fopen("/proc/stat", "r"))) {
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "btime %llu", &boot) == 1) break;
        fclose(f);
    }
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d && (e = readdir(d));)
        if (e->d_name[0] != '.') fds++;
    if (d) closedir(d);
    getrlimit(RLIMIT_NOFILE, &rl);
    if (ticks <= 0) ticks = 100;
    metrics_printf(write, ud,
                   "# HELP process_cpu_seconds_total User and system CPU time spent.\n"
                   "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.2f\n",
                   (double)(utime + stime) / (double)ticks);
    metrics_printf(write, ud,
                   "# HELP process_resident_memory_bytes Resident memory size.\n"
                   "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %lld\n",
                   (long long)rss * page);
    metrics_printf(write, ud,
                   "# HELP process_virtual_memory_bytes Virtual memory size.\n"
                   "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes %lu\n",
                   vsize);
    metrics_printf(write, ud,
                   "# HELP process_open_fds Open file descriptors.\n"
                   "# TYPE process_open_fds gauge\nprocess_open_fds %zu\n",
                   fds ? fds - 1 : 0); /* not opendir's own */
    metrics_printf(write, ud,
                   "# HELP process_max_fds The limit of open file descriptors.\n"
                   "# TYPE process_max_fds gauge\nprocess_max_fds %llu\n",
                   (unsigned long long)rl.rlim_cur);
    metrics_printf(write, ud,
                   "# HELP process_start_time_seconds Start time of the process since the Unix epoch.\n"
                   "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.2f\n",
                   (double)boot + (double)start / (double)ticks);
    metrics_printf(write, ud,
                   "# HELP tokend_build_info The version tokend was built as.\n"
                   "# TYPE tokend_build_info gauge\ntokend_build_info{version=\"%s\"} 1\n",
                   TOKEND_VERSION);
}

/* The relay's families. */
static void metrics_render_relay(metrics_write_fn *write, void *ud) {
    metrics_printf(write, ud,
                   "# HELP tokend_relay_sessions_open Relayed sessions open now.\n"
                   "# TYPE tokend_relay_sessions_open gauge\ntokend_relay_sessions_open %ld\n",
                   atomic_load(&metrics_relay_open));
    metrics_printf(write, ud,
                   "# HELP tokend_relay_sessions_opened_total Relayed sessions opened to the client.\n"
                   "# TYPE tokend_relay_sessions_opened_total counter\n"
                   "tokend_relay_sessions_opened_total %llu\n",
                   atomic_load(&metrics_relay_opened_total));
    metrics_family(write, ud, "tokend_relay_sessions_closed_total", "counter",
                   "Relayed sessions ended (or refused), by cause.");
    pthread_mutex_lock(&metrics_lock);
    for (size_t i = 0; i < metrics_nrelay_causes; i++)
        metrics_sample(write, ud, "tokend_relay_sessions_closed_total", "cause", metrics_relay_causes[i].cause,
                       metrics_relay_causes[i].count);
    pthread_mutex_unlock(&metrics_lock);
    metrics_printf(write, ud,
                   "# HELP tokend_relay_seconds_total Time relayed sessions were open upstream.\n"
                   "# TYPE tokend_relay_seconds_total counter\ntokend_relay_seconds_total %.3f\n",
                   (double)atomic_load(&metrics_relay_ms_total) / 1000.0);
    metrics_printf(write, ud,
                   "# HELP tokend_relay_bytes_total Message bytes relayed, by direction.\n"
                   "# TYPE tokend_relay_bytes_total counter\n"
                   "tokend_relay_bytes_total{direction=\"client_to_upstream\"} %llu\n"
                   "tokend_relay_bytes_total{direction=\"upstream_to_client\"} %llu\n",
                   atomic_load(&metrics_relay_bytes[0]), atomic_load(&metrics_relay_bytes[1]));
    metrics_render_histogram(write, ud, &metrics_relay_handshake_latency);
}

void metrics_render(metrics_write_fn *write, void *ud, long upstream_connections_opened) {
    metrics_printf(write, ud,
                   "# HELP tokend_requests_total Requests answered, by route and status.\n"
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
    metrics_printf(write, ud,
                   "# HELP tokend_requests_in_flight Requests being handled now.\n"
                   "# TYPE tokend_requests_in_flight gauge\ntokend_requests_in_flight %ld\n",
                   atomic_load(&metrics_in_flight_now));
    metrics_printf(write, ud,
                   "# HELP tokend_tokens_minted_total Temporary tokens minted.\n"
                   "# TYPE tokend_tokens_minted_total counter\ntokend_tokens_minted_total %llu\n",
                   atomic_load(&metrics_tokens));
    metrics_render_histogram(write, ud, &metrics_upstream_latency);
    const char *failures[FAILURE_COUNT];
    for (failure_kind k = FAILURE_NONE; k < FAILURE_COUNT; k++) failures[k] = failure_name(k);
    metrics_render_kinds(write, ud, "tokend_upstream_errors_total", "Failed token requests, by kind.", "kind",
                         failures + 1, metrics_errors + 1, FAILURE_COUNT - 1);
    metrics_printf(write, ud,
                   "# HELP tokend_upstream_connections_opened_total Connections opened to the upstream.\n"
                   "# TYPE tokend_upstream_connections_opened_total counter\n"
                   "tokend_upstream_connections_opened_total %ld\n",
                   upstream_connections_opened);
    metrics_printf(write, ud,
                   "# HELP tokend_reloads_total Script reloads, by result.\n"
                   "# TYPE tokend_reloads_total counter\n"
                   "tokend_reloads_total{result=\"ok\"} %llu\ntokend_reloads_total{result=\"failed\"} %llu\n",
                   atomic_load(&metrics_reloads_ok), atomic_load(&metrics_reloads_failed));
    metrics_render_histogram(write, ud, &metrics_redis_latency);
    metrics_render_kinds(write, ud, "tokend_redis_errors_total",
                         "Redis commands that failed: Redis down, no reply in time, connection lost, error reply.",
                         "kind", metrics_redis_error_kinds, metrics_redis_errors, METRICS_REDIS_KINDS);
    metrics_render_kinds(write, ud, "tokend_limiter_fallbacks_total",
                         "Limiter decisions made without Redis, by on_store_error policy.", "policy",
                         metrics_fallback_policies, metrics_fallbacks, METRICS_POLICIES);
    metrics_render_relay(write, ud);
    metrics_render_process(write, ud);
}
