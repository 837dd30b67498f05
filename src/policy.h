/* policy.h: abuse control: token buckets and connection counts shared by all workers, and
 * the Host and Origin allow-lists. */
#ifndef TOKEND_POLICY_H
#define TOKEND_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "metrics.h"

/* ---- token buckets, process-wide and thread-safe ---- */

typedef struct policy_buckets policy_buckets;

/* Creates the registry of limiters; each limiter tracks at most default_max_keys clients
 * (0: 100000) unless it says otherwise. NULL when out of memory. */
policy_buckets *policy_buckets_create(size_t default_max_keys);
void policy_buckets_free(policy_buckets *b);

/* Finds or creates the limiter called name: rate tokens every per_s seconds, holding at
 * most burst, for at most max_keys clients (0: the registry's default) in a table of its
 * own. Every worker's script asks for it by the same name and gets the same limiter; a
 * later definition (a reloaded script) updates its values and keeps its clients (the least
 * recently used go when max_keys shrank). Returns its id (>= 0), or -1 with err set when
 * the values are out of range, there are too many limiters, or memory ran out. */
int policy_limiter(policy_buckets *b, const char *name, double rate, double per_s, double burst, size_t max_keys,
                   char *err, size_t errlen);

#define POLICY_KEY_MAX 80 /* longer client keys are known by their SHA-256 */
#define POLICY_KEY_SIZE 128

/* Writes the name a limiter knows client key by: an IPv6 address as its /64 network, an
 * IPv4-mapped address as its IPv4 address, a key longer than POLICY_KEY_MAX bytes as
 * "sha256:<hex>", any other key as it is. */
void policy_client_key(const char *key, char out[POLICY_KEY_SIZE]);

/* Takes one token from key's bucket in limiter id (known by policy_client_key).
 * Returns 1 when allowed; 0 when refused, with *retry_after_s (whole seconds, >= 1) set
 * (also when memory runs out; an unknown id returns 0 alone). A new client in a full
 * limiter makes room in constant time: a client whose bucket is full again among the few
 * least recently used goes, or else the least recently used (it gets a full burst should
 * it come back). */
int policy_take(policy_buckets *b, int id, const char *key, uint64_t now_ms, long *retry_after_s);

/* What a limiter holds and did. */
typedef struct policy_stats {
    size_t keys;                /* clients tracked now */
    unsigned long long evicted; /* clients forgotten to make room while their bucket was not full */
    unsigned long long visited; /* clients looked at to make room (a few per new client at most) */
} policy_stats;

/* Fills out for limiter id. Returns 0, or -1 for an unknown id. */
int policy_limiter_stats(policy_buckets *b, int id, policy_stats *out);

/* Writes tokend_limiter_keys and tokend_limiter_evictions_total for every limiter. */
void policy_metrics(policy_buckets *b, metrics_write_fn *write, void *ud);

/* ---- open connections per client address, process-wide and thread-safe ---- */

typedef struct policy_conns policy_conns;

/* Counts by netaddr_key (an IPv6 address as its /64). limit_per_addr 0 means no limit. */
policy_conns *policy_conns_create(unsigned int limit_per_addr);
void policy_conns_free(policy_conns *c);
/* Returns 1 when addr may open one more connection. */
int policy_conns_allowed(policy_conns *c, const char *addr);
void policy_conns_opened(policy_conns *c, const char *addr);
void policy_conns_closed(policy_conns *c, const char *addr);

/* ---- Host allow-lists (against DNS rebinding) ---- */

typedef struct policy_hosts policy_hosts;

/* Parses the host names a request's Host may carry: "app.example.com", "*.example.com"
 * (its subdomains) or "*" (any), separated by commas or spaces. Always allowed besides:
 * localhost and *.localhost, IP addresses, and listen_host (the address tokend listens
 * on, when it is a name). Returns 0, or -1 with err naming the bad entry. */
int policy_hosts_parse(const char *spec, const char *listen_host, policy_hosts **out, char *err, size_t errlen);
void policy_hosts_free(policy_hosts *h);

#define POLICY_HOST_ALLOWED 0
#define POLICY_HOST_DENIED 1
#define POLICY_HOST_MALFORMED (-1) /* not a host at all */

/* Classifies a request's Host header ("name[:port]", "[v6]:port"); NULL (an HTTP/1.0
 * request without one) is allowed. */
int policy_host_check(const policy_hosts *h, const char *host);

/* ---- Origin allow-lists ---- */

typedef struct policy_origins policy_origins;

/* Parses patterns: "https://app.example.com", "http://localhost:*" (any port), a host
 * written "*.example.com" (any subdomain of example.com), or "*" (any origin). Returns 0,
 * or -1 with err. */
int policy_origins_parse(const char *const *patterns, size_t n, policy_origins **out, char *err, size_t errlen);
void policy_origins_free(policy_origins *o);

#define POLICY_ORIGIN_NONE 0    /* no Origin header: not a cross-origin browser request */
#define POLICY_ORIGIN_SAME 1    /* the server's own origin (scheme://Host) */
#define POLICY_ORIGIN_ALLOWED 2 /* another origin on the list */
#define POLICY_ORIGIN_DENIED 3

/* Classifies an Origin header against the list; scheme is this server's ("http"). */
int policy_origin_check(const policy_origins *o, const char *origin, const char *host, const char *scheme);

#endif
