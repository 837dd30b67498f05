/* pool.h: tokens minted ahead and handed out once: pools shared by all workers, their refill plan and circuit breaker. */
#ifndef TOKEND_POOL_H
#define TOKEND_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "failure.h"
#include "metrics.h"

#define POOL_MAX_SIZE 10000
#define POOL_MAX_TOKEN 4096

typedef struct pool_registry pool_registry;
typedef struct pool pool;

/* What a pool keeps: size tokens, each asked for expires_in_s seconds (1..600), handed out
 * only while at least min_remaining_s of them is left; max_session_s (60..10800, or 0 for
 * the upstream's default) is passed to every mint. */
typedef struct pool_params {
    long size;
    long expires_in_s;
    long min_remaining_s;
    long max_session_s;
} pool_params;

/* The pools of a server, by name; they outlive reloads. Thread-safe. */
pool_registry *pool_registry_create(void);
/* Frees every pool (their tokens wiped). */
void pool_registry_free(pool_registry *r);

/* Finds or creates the pool called name. The same name with the same parameters (another
 * worker, a reloaded script) gives the same pool and its tokens; other parameters empty it
 * (its tokens are dropped and counted) and apply from now on. Returns NULL with err set
 * for bad parameters or too many pools. */
pool *pool_open(pool_registry *r, const char *name, const pool_params *p, char *err, size_t errlen);

/* The pool's parameters now. */
pool_params pool_get_params(pool *p);

/* Hands out a ready token: copies it into out (cap bytes) and sets *remaining_s to the
 * seconds it has left. Tokens with less than min_remaining_s left are dropped on the way.
 * Returns 1 when one was taken, 0 when none is ready (-1: it does not fit out). */
int pool_take(pool *p, uint64_t now_ms, char *out, size_t cap, long *remaining_s);

/* How many tokens to mint now, which the caller must then do (each ends with
 * pool_minted or pool_failed with planned = 1): what is missing from size, counting those
 * being minted; none while the breaker is open, and a single trial once it is half-open. */
int pool_plan(pool *p, uint64_t now_ms);

/* A mint's token goes into the pool, valid for expires_in_s from now_ms; the breaker
 * closes. planned: it was one of pool_plan's (else an on-demand one, only counted). */
void pool_minted(pool *p, uint64_t now_ms, const char *token, long expires_in_s, int planned);

/* A mint failed: the breaker opens, for retry_after_s when the upstream said (a 429),
 * else for a back-off that doubles with each failure in a row (1 s to 60 s). Returns 1
 * when this is worth a log line (the first in a minute), 0 otherwise. */
int pool_failed(pool *p, uint64_t now_ms, failure_kind kind, long retry_after_s, int planned);

/* A mint given up before its outcome (its worker stopped): no longer counted as coming. */
void pool_abandoned(pool *p);

/* 1 while the breaker is open: take() must fail fast with *kind (the last failure) and
 * *retry_after_s (seconds until the next trial). */
int pool_breaker(pool *p, uint64_t now_ms, failure_kind *kind, long *retry_after_s);

/* Writes every pool's counters of every registry in the Prometheus text format: ready,
 * taken from the pool, minted on demand, dropped, breaker state. Never a token. */
void pool_metrics(metrics_write_fn *write, void *ud);

#endif
