/* policy.h: abuse control: token buckets and connection counts shared by all workers,
 * client addresses behind trusted proxies, and Origin allow-lists. */
#ifndef TOKEND_POLICY_H
#define TOKEND_POLICY_H

#include <stddef.h>
#include <stdint.h>

/* ---- token buckets, process-wide and thread-safe ---- */

typedef struct policy_buckets policy_buckets;

/* Creates the bucket table; it tracks at most max_keys clients across all limiters. */
policy_buckets *policy_buckets_create(size_t max_keys);
void policy_buckets_free(policy_buckets *b);

/* Finds or creates the limiter called name: rate tokens every per_s seconds, holding at
 * most burst. Every worker's script asks for it by the same name and gets the same
 * limiter; a later definition (a reloaded script) updates its values. Returns its id
 * (>= 0), or -1 with err set when the values are out of range or there are too many. */
int policy_limiter(policy_buckets *b, const char *name, double rate, double per_s, double burst,
                   char *err, size_t errlen);

/* Takes one token from key's bucket in limiter id. IPv6 keys count per /64 network.
 * Returns 1 when allowed; 0 when refused, with *retry_after_s (whole seconds, >= 1) set.
 * When the table is full of active clients, new clients are refused too. */
int policy_take(policy_buckets *b, int id, const char *key, uint64_t now_ms, long *retry_after_s);

/* Clients tracked now (for tests and metrics). */
size_t policy_buckets_size(policy_buckets *b);

/* ---- open connections per client address, process-wide and thread-safe ---- */

typedef struct policy_conns policy_conns;

/* limit_per_addr 0 means no limit. */
policy_conns *policy_conns_create(unsigned int limit_per_addr);
void policy_conns_free(policy_conns *c);
/* Returns 1 when addr may open one more connection. */
int policy_conns_allowed(policy_conns *c, const char *addr);
void policy_conns_opened(policy_conns *c, const char *addr);
void policy_conns_closed(policy_conns *c, const char *addr);

/* ---- trusted proxies and the client address ---- */

typedef struct policy_proxies policy_proxies;

/* Parses "127.0.0.1, 10.0.0.0/8, ::1, fd00::/8" (commas or spaces). "" gives an empty
 * list. Returns 0, or -1 with err naming the bad entry. */
int policy_proxies_parse(const char *spec, policy_proxies **out, char *err, size_t errlen);
void policy_proxies_free(policy_proxies *p);

/* Returns 1 when addr (an IP address text) is one of the proxies. */
int policy_proxy_trusted(const policy_proxies *p, const char *addr);

/* Writes the client's address into out: remote itself unless remote is a trusted proxy;
 * then the right-most address of X-Forwarded-For (xff, may be NULL) that is not a trusted
 * proxy. A malformed entry stops the walk at the last good address. */
void policy_client_address(const policy_proxies *p, const char *remote, const char *xff, char *out, size_t outlen);

/* ---- Origin allow-lists ---- */

typedef struct policy_origins policy_origins;

/* Parses patterns: "https://app.example.com", "http://localhost:*" (any port), a host
 * written "*.example.com" (any subdomain of example.com), or "*" (any origin). Returns 0,
 * or -1 with err. */
int policy_origins_parse(const char *const *patterns, size_t n, policy_origins **out, char *err, size_t errlen);
void policy_origins_free(policy_origins *o);

#define POLICY_ORIGIN_NONE 0       /* no Origin header: not a cross-origin browser request */
#define POLICY_ORIGIN_SAME 1       /* the server's own origin (scheme://Host) */
#define POLICY_ORIGIN_ALLOWED 2    /* another origin on the list */
#define POLICY_ORIGIN_DENIED (-1)

/* Classifies an Origin header against the list; scheme is this server's ("http"). */
int policy_origin_check(const policy_origins *o, const char *origin, const char *host, const char *scheme);

#endif
