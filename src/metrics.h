/* metrics.h: process-wide counters for /metrics: requests by route and status, tokens,
 * upstream and Redis latency and errors, requests in flight, reloads, relayed sessions. Thread-safe. */
#ifndef TOKEND_METRICS_H
#define TOKEND_METRICS_H

#include <stddef.h>

#include "failure.h"

/* Counts an answered request under its route label ("/token", "static", "none"). */
void metrics_request(const char *route, int status);

/* Moves the requests-in-flight gauge by delta (+1 when dispatched, -1 when answered). */
void metrics_in_flight(int delta);

/* Counts a token request's outcome: FAILURE_NONE for a minted token, else its failure;
 * elapsed_ms < 0 when no upstream call was made (it stays out of the histogram). */
void metrics_upstream(failure_kind failure, double elapsed_ms);

/* Counts a Redis command: its latency (< 0: none, it was not sent) and, when it failed,
 * why: "down", "timeout", "lost" or "reply" (an error reply). */
void metrics_redis(double elapsed_ms, const char *error_kind);

/* Counts a limiter decision made without Redis, by policy: "local", "allow" or "deny". */
void metrics_store_fallback(const char *policy);

/* A relayed session opened to its client. */
void metrics_relay_opened(void);

/* A relayed session ended (or was refused) for cause; was_open: it had been counted
 * opened. seconds: its time open upstream; bytes: message bytes each way. */
void metrics_relay_closed(const char *cause, int was_open, double seconds, unsigned long long bytes_in,
                          unsigned long long bytes_out);

/* The time an upstream WebSocket handshake took (connect, TLS, 101). */
void metrics_relay_handshake(double elapsed_ms);

/* Counts a script reload (ok 1) or a failed one (ok 0). */
void metrics_reload(int ok);

/* Appends text to an output; returns 0 to go on. */
typedef int metrics_write_fn(void *ud, const char *text, size_t len);

/* Writes a metric family's HELP and TYPE lines (type: "counter", "gauge"). */
void metrics_family(metrics_write_fn *write, void *ud, const char *name, const char *type, const char *help);

/* Writes one sample of a family with one label: name{label="value"} v, value escaped. */
void metrics_sample(metrics_write_fn *write, void *ud, const char *name, const char *label, const char *value,
                    unsigned long long v);

/* Writes every metric in the Prometheus text format (version 0.0.4). */
void metrics_render(metrics_write_fn *write, void *ud, long upstream_connections_opened);

#endif
