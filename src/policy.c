/* policy.c: abuse control: token buckets and connection counts shared by all workers, and
 * the Host and Origin allow-lists. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "crypto.h"
#include "hashtab.h"
#include "list.h"
#include "netaddr.h"
#include "policy.h"

#define POLICY_MAX_LIMITERS 32
#define POLICY_EVICT_PROBE 8 /* the least recently used clients looked at for a full bucket */

/* ---- token buckets ---- */

typedef struct policy_entry {
    hashtab_node node; /* in its limiter's table */
    list_node recency; /* in its limiter's list, most recently used first */
    double tokens;
    uint64_t last_ms;
    size_t klen;
    char key[];
} policy_entry;

typedef struct policy_limiter_def {
    char name[64];
    double rate, per_s, burst;
    double per_ms; /* tokens added per millisecond */
    size_t max_keys;
    hashtab *table;
    list_node recency;
    unsigned long long evicted; /* clients forgotten while their bucket was not full */
    unsigned long long visited; /* entries looked at to make room */
} policy_limiter_def;

struct policy_buckets {
    pthread_mutex_t lock;
    policy_limiter_def limiters[POLICY_MAX_LIMITERS];
    int nlimiters;
    size_t default_max_keys;
};

policy_buckets *policy_buckets_create(size_t default_max_keys) {
    policy_buckets *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->default_max_keys = default_max_keys ? default_max_keys : 100000;
    pthread_mutex_init(&b->lock, NULL);
    return b;
}

static void policy_drop(policy_limiter_def *d, policy_entry *e) {
    hashtab_remove(d->table, &e->node);
    list_remove(&e->recency);
    free(e);
}

void policy_buckets_free(policy_buckets *b) {
    if (!b) return;
    for (int i = 0; i < b->nlimiters; i++) {
        policy_limiter_def *d = &b->limiters[i];
        for (list_node *n; (n = list_first(&d->recency));) policy_drop(d, list_entry(n, policy_entry, recency));
        hashtab_free(d->table);
    }
    pthread_mutex_destroy(&b->lock);
    free(b);
}

/* Tokens the entry holds at now. */
static double policy_refill(const policy_limiter_def *d, const policy_entry *e, uint64_t now_ms) {
    double t = e->tokens + (double)(now_ms > e->last_ms ? now_ms - e->last_ms : 0) * d->per_ms;
    return t > d->burst ? d->burst : t;
}

/* Forgets one client to make room, in constant time: among the POLICY_EVICT_PROBE least
 * recently used, the first whose bucket is full again (it carries no information); else
 * the least recently used, which gets a full burst should it come back. */
static void policy_evict(policy_limiter_def *d, uint64_t now_ms) {
    list_node *victim = list_last(&d->recency);
    int probed = 0, full = 0;
    for (list_node *n = victim; n && probed < POLICY_EVICT_PROBE && !full; n = list_prev(&d->recency, n), probed++) {
        d->visited++;
        if (policy_refill(d, list_entry(n, policy_entry, recency), now_ms) >= d->burst) {
            victim = n;
            full = 1;
        }
    }
    if (!full) d->evicted++;
    policy_drop(d, list_entry(victim, policy_entry, recency));
}

int policy_limiter(policy_buckets *b, const char *name, double rate, double per_s, double burst, size_t max_keys,
                   char *err, size_t errlen) {
    int id = -1;
    if (!(rate > 0 && rate <= 1e9 && per_s > 0 && per_s <= 86400 * 365 && burst >= 1 && burst <= 1e9)) {
        snprintf(err, errlen, "limiter \"%s\": rate and per must be > 0 and burst >= 1", name);
        return -1;
    }
    if (strlen(name) >= sizeof b->limiters[0].name) {
        snprintf(err, errlen, "limiter name \"%s\" is too long", name);
        return -1;
    }
    pthread_mutex_lock(&b->lock);
    policy_limiter_def *d = NULL;
    for (int i = 0; i < b->nlimiters && !d; i++)
        if (strcmp(b->limiters[i].name, name) == 0) d = &b->limiters[i];
    if (!d && b->nlimiters == POLICY_MAX_LIMITERS) {
        snprintf(err, errlen, "too many limiters (at most %d)", POLICY_MAX_LIMITERS);
        goto out;
    }
    if (!d) {
        d = &b->limiters[b->nlimiters];
        if (!(d->table = hashtab_create())) {
            snprintf(err, errlen, "out of memory");
            goto out;
        }
        snprintf(d->name, sizeof d->name, "%s", name);
        list_init(&d->recency);
        b->nlimiters++;
    }
    /* The same name again (another worker, or a reloaded script): the latest values apply
     * from now on, the buckets and what clients used of them stay. */
    d->rate = rate;
    d->per_s = per_s;
    d->burst = burst;
    d->per_ms = rate / (per_s * 1000.0);
    d->max_keys = max_keys ? max_keys : b->default_max_keys;
    while (hashtab_count(d->table) > d->max_keys) policy_evict(d, 0);
    id = (int)(d - b->limiters);
out:
    pthread_mutex_unlock(&b->lock);
    return id;
}

void policy_client_key(const char *key, char out[POLICY_KEY_SIZE]) {
    size_t len = strlen(key);
    unsigned char digest[CRYPTO_MAX_DIGEST];
    if (len <= POLICY_KEY_MAX) {
        netaddr_key(key, out, POLICY_KEY_SIZE);
        return;
    }
    memcpy(out, "sha256:", 7);
    if (crypto_digest("sha256", key, len, digest) == 32) crypto_hex(digest, 32, out + 7);
    else snprintf(out, POLICY_KEY_SIZE, "%.*s", POLICY_KEY_MAX, key); /* OpenSSL failed: cut */
}

/* Whether a client's entry is the one for key. */
static int policy_entry_is(const hashtab_node *n, const void *key, size_t len) {
    const policy_entry *e = hashtab_entry(n, const policy_entry, node);
    return e->klen == len && memcmp(e->key, key, len) == 0;
}

int policy_take(policy_buckets *b, int id, const char *key, uint64_t now_ms, long *retry_after_s) {
    char k[POLICY_KEY_SIZE];
    int allowed = 0;
    policy_client_key(key, k);
    size_t klen = strlen(k);
    pthread_mutex_lock(&b->lock);
    if (id < 0 || id >= b->nlimiters) goto out;
    policy_limiter_def *d = &b->limiters[id];
    uint64_t h = hashtab_hash(d->table, k, klen);
    hashtab_node *found = hashtab_find(d->table, h, policy_entry_is, k, klen);
    policy_entry *e = found ? hashtab_entry(found, policy_entry, node) : NULL;
    if (e) {
        list_move_front(&d->recency, &e->recency);
    } else {
        while (hashtab_count(d->table) >= d->max_keys) policy_evict(d, now_ms);
        if (!(e = malloc(sizeof *e + klen + 1))) {
            *retry_after_s = 1; /* out of memory: refuse rather than not count */
            goto out;
        }
        e->tokens = d->burst;
        e->last_ms = now_ms;
        e->klen = klen;
        memcpy(e->key, k, klen + 1);
        hashtab_insert(d->table, &e->node, h);
        list_insert_after(&d->recency, &e->recency);
    }
    e->tokens = policy_refill(d, e, now_ms);
    e->last_ms = now_ms;
    if (e->tokens >= 1.0) {
        e->tokens -= 1.0;
        allowed = 1;
    } else {
        double wait_s = (1.0 - e->tokens) / d->per_ms / 1000.0;
        *retry_after_s = (long)ceil(wait_s);
        if (*retry_after_s < 1) *retry_after_s = 1;
    }
out:
    pthread_mutex_unlock(&b->lock);
    return allowed;
}

int policy_limiter_stats(policy_buckets *b, int id, policy_stats *out) {
    int rc = -1;
    pthread_mutex_lock(&b->lock);
    if (id >= 0 && id < b->nlimiters) {
        const policy_limiter_def *d = &b->limiters[id];
        out->keys = hashtab_count(d->table);
        out->evicted = d->evicted;
        out->visited = d->visited;
        rc = 0;
    }
    pthread_mutex_unlock(&b->lock);
    return rc;
}

void policy_metrics(policy_buckets *b, metrics_write_fn *write, void *ud) {
    static const char *const families[][3] = {
        { "tokend_limiter_keys", "gauge", "Clients a local limiter tracks now." },
        { "tokend_limiter_evictions_total", "counter",
          "Clients a local limiter forgot to make room for new ones, before their bucket was full again." },
    };
    struct {
        char name[64];
        unsigned long long v[2];
    } seen[POLICY_MAX_LIMITERS];
    int n;
    /* Copied out first: write may raise a Lua error, which must not leave the lock held. */
    pthread_mutex_lock(&b->lock);
    for (n = 0; n < b->nlimiters; n++) {
        memcpy(seen[n].name, b->limiters[n].name, sizeof seen[n].name);
        seen[n].v[0] = hashtab_count(b->limiters[n].table);
        seen[n].v[1] = b->limiters[n].evicted;
    }
    pthread_mutex_unlock(&b->lock);
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        metrics_family(write, ud, families[f][0], families[f][1], families[f][2]);
        for (int i = 0; i < n; i++) metrics_sample(write, ud, families[f][0], "limiter", seen[i].name, seen[i].v[f]);
    }
}

/* ---- connections per address ---- */

typedef struct policy_conn_entry {
    hashtab_node node; /* in the table, by addr */
    list_node all;     /* in the list of entries (to free them) */
    unsigned int count;
    char addr[NETADDR_TEXT];
} policy_conn_entry;

struct policy_conns {
    pthread_mutex_t lock;
    unsigned int limit;
    hashtab *table; /* keyed: a client cannot pick addresses that share a chain */
    list_node entries;
};

policy_conns *policy_conns_create(unsigned int limit_per_addr) {
    policy_conns *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    if (!(c->table = hashtab_create())) {
        free(c);
        return NULL;
    }
    c->limit = limit_per_addr;
    list_init(&c->entries);
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

static void policy_conn_drop(policy_conns *c, policy_conn_entry *e) {
    hashtab_remove(c->table, &e->node);
    list_remove(&e->all);
    free(e);
}

void policy_conns_free(policy_conns *c) {
    if (!c) return;
    for (list_node *n; (n = list_first(&c->entries));) policy_conn_drop(c, list_entry(n, policy_conn_entry, all));
    hashtab_free(c->table);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static int policy_conn_is(const hashtab_node *n, const void *key, size_t len) {
    const policy_conn_entry *e = hashtab_entry(n, const policy_conn_entry, node);
    return strlen(e->addr) == len && memcmp(e->addr, key, len) == 0;
}

/* The entry counting addr's connections (an IPv6 address counts as its /64 network, like
 * the rate limits), or NULL. key gets the counting key, *hash its hash. */
static policy_conn_entry *policy_conn_find(policy_conns *c, const char *addr, char key[NETADDR_TEXT], uint64_t *hash) {
    netaddr_key(addr, key, NETADDR_TEXT);
    size_t len = strlen(key);
    *hash = hashtab_hash(c->table, key, len);
    hashtab_node *n = hashtab_find(c->table, *hash, policy_conn_is, key, len);
    return n ? hashtab_entry(n, policy_conn_entry, node) : NULL;
}

int policy_conns_allowed(policy_conns *c, const char *addr) {
    if (!c || !c->limit) return 1;
    char key[NETADDR_TEXT];
    uint64_t hash;
    pthread_mutex_lock(&c->lock);
    policy_conn_entry *e = policy_conn_find(c, addr, key, &hash);
    int ok = !e || e->count < c->limit;
    pthread_mutex_unlock(&c->lock);
    return ok;
}

void policy_conns_opened(policy_conns *c, const char *addr) {
    if (!c || !c->limit) return;
    char key[NETADDR_TEXT];
    uint64_t hash;
    pthread_mutex_lock(&c->lock);
    policy_conn_entry *e = policy_conn_find(c, addr, key, &hash);
    if (!e && (e = calloc(1, sizeof *e))) {
        memcpy(e->addr, key, sizeof e->addr);
        hashtab_insert(c->table, &e->node, hash);
        list_insert_after(&c->entries, &e->all);
    }
    if (e) e->count++;
    pthread_mutex_unlock(&c->lock);
}

void policy_conns_closed(policy_conns *c, const char *addr) {
    if (!c || !c->limit) return;
    char key[NETADDR_TEXT];
    uint64_t hash;
    pthread_mutex_lock(&c->lock);
    policy_conn_entry *e = policy_conn_find(c, addr, key, &hash);
    if (e && --e->count == 0) policy_conn_drop(c, e);
    pthread_mutex_unlock(&c->lock);
}

/* ---- origins ---- */

typedef struct policy_origin_rule {
    char scheme[8];
    char host[256]; /* lower case; "*.example.com" matches subdomains */
    char port[8];   /* "" default port, "*" any */
} policy_origin_rule;

struct policy_origins {
    int any;
    policy_origin_rule *rules;
    size_t len;
};

/* Splits "scheme://host[:port]" (host may be [v6]) into lower-case parts. Returns 0 or -1. */
static int policy_split_origin(const char *s, char *scheme, size_t sl, char *host, size_t hl, char *port, size_t pl) {
    const char *sep = strstr(s, "://");
    if (!sep || sep == s || (size_t)(sep - s) >= sl) return -1;
    for (size_t i = 0; s + i < sep; i++) scheme[i] = (char)tolower((unsigned char)s[i]);
    scheme[sep - s] = '\0';
    const char *h = sep + 3, *colon;
    if (*h == '[') {
        const char *close = strchr(h, ']');
        if (!close) return -1;
        colon = close[1] == ':' ? close + 1 : (close[1] ? NULL : close + 1);
        if (!colon) return -1;
    } else {
        colon = strchr(h, ':');
        if (!colon) colon = h + strlen(h);
    }
    size_t n = (size_t)(colon - h);
    if (n == 0 || n >= hl || strpbrk(h, "/?#@ ")) return -1;
    for (size_t i = 0; i < n; i++) host[i] = (char)tolower((unsigned char)h[i]);
    host[n] = '\0';
    const char *pt = *colon == ':' ? colon + 1 : "";
    if (strlen(pt) >= pl || (*colon == ':' && !*pt)) return -1;
    for (const char *q = pt; *q; q++)
        if (!isdigit((unsigned char)*q) && strcmp(pt, "*") != 0) return -1;
    snprintf(port, pl, "%s", pt);
    if ((strcmp(scheme, "http") == 0 && strcmp(port, "80") == 0) ||
        (strcmp(scheme, "https") == 0 && strcmp(port, "443") == 0))
        port[0] = '\0';
    return 0;
}

/* Returns 1 when a lower-case host name matches a pattern: the same name, or, for
 * "*.example.com", a name ending in ".example.com". */
static int policy_name_matches(const char *pattern, const char *name) {
    if (strncmp(pattern, "*.", 2) != 0) return strcmp(pattern, name) == 0;
    size_t nl = strlen(name), pl = strlen(pattern) - 1; /* ".example.com" */
    return nl > pl && strcmp(name + nl - pl, pattern + 1) == 0;
}

/* Returns 1 when a pattern is a valid host pattern: no '*' but a leading "*.". */
static int policy_name_pattern_ok(const char *p) {
    return !strchr(p, '*') || (strncmp(p, "*.", 2) == 0 && p[2] && !strchr(p + 2, '*'));
}

int policy_origins_parse(const char *const *patterns, size_t n, policy_origins **out, char *err, size_t errlen) {
    policy_origins *o = calloc(1, sizeof *o);
    *out = NULL;
    if (!o || (n && !(o->rules = calloc(n, sizeof *o->rules)))) {
        snprintf(err, errlen, "out of memory");
        policy_origins_free(o);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(patterns[i], "*") == 0) {
            o->any = 1;
            continue;
        }
        policy_origin_rule *r = &o->rules[o->len];
        if (policy_split_origin(patterns[i], r->scheme, sizeof r->scheme, r->host, sizeof r->host, r->port,
                                sizeof r->port) < 0 ||
            !policy_name_pattern_ok(r->host)) {
            snprintf(err, errlen, "origin \"%s\" is not scheme://host[:port] (port may be *, host may start with *.)",
                     patterns[i]);
            policy_origins_free(o);
            return -1;
        }
        o->len++;
    }
    *out = o;
    return 0;
}

void policy_origins_free(policy_origins *o) {
    if (!o) return;
    free(o->rules);
    free(o);
}

int policy_origin_check(const policy_origins *o, const char *origin, const char *host, const char *scheme) {
    char s[8], h[256], p[8];
    if (!origin || !*origin) return POLICY_ORIGIN_NONE;
    if (policy_split_origin(origin, s, sizeof s, h, sizeof h, p, sizeof p) < 0 || strcmp(p, "*") == 0)
        return o && o->any ? POLICY_ORIGIN_ALLOWED : POLICY_ORIGIN_DENIED;
    if (host && *host) {
        char self[300], ss[8], sh[256], sp[8];
        snprintf(self, sizeof self, "%s://%s", scheme, host);
        if (policy_split_origin(self, ss, sizeof ss, sh, sizeof sh, sp, sizeof sp) == 0 && strcmp(s, ss) == 0 &&
            strcmp(h, sh) == 0 && strcmp(p, sp) == 0)
            return POLICY_ORIGIN_SAME;
    }
    if (!o) return POLICY_ORIGIN_DENIED;
    if (o->any) return POLICY_ORIGIN_ALLOWED;
    for (size_t i = 0; i < o->len; i++) {
        const policy_origin_rule *r = &o->rules[i];
        if (strcmp(r->scheme, s) != 0) continue;
        if (strcmp(r->port, "*") != 0 && strcmp(r->port, p) != 0) continue;
        if (policy_name_matches(r->host, h)) return POLICY_ORIGIN_ALLOWED;
    }
    return POLICY_ORIGIN_DENIED;
}

/* ---- hosts ---- */

#define POLICY_HOST_MAX 256

struct policy_hosts {
    int any;
    char (*names)[POLICY_HOST_MAX]; /* lower case; "*.example.com" matches subdomains */
    size_t len;
};

/* Splits a Host value into its lower-case name (without brackets or a trailing dot).
 * Returns 0, or -1 when it is not "name[:port]" or "[v6][:port]". */
static int policy_host_name(const char *host, char *name, size_t namelen) {
    char url[POLICY_HOST_MAX + 16], scheme[8], port[8];
    if (strlen(host) >= POLICY_HOST_MAX) return -1;
    snprintf(url, sizeof url, "http://%s", host);
    if (policy_split_origin(url, scheme, sizeof scheme, name, namelen, port, sizeof port) < 0 || strcmp(port, "*") == 0)
        return -1;
    size_t n = strlen(name);
    if (name[0] == '[') { /* [v6] */
        memmove(name, name + 1, n - 2);
        name[n - 2] = '\0';
    } else if (n > 1 && name[n - 1] == '.') {
        name[n - 1] = '\0';
    }
    return 0;
}

int policy_hosts_parse(const char *spec, const char *listen_host, policy_hosts **out, char *err, size_t errlen) {
    policy_hosts *h = calloc(1, sizeof *h);
    *out = NULL;
    if (!h) goto nomem;
    for (int pass = 0; pass < 2; pass++) {
        const char *s = pass == 0 ? (spec ? spec : "") : (listen_host ? listen_host : "");
        while (*s) {
            while (*s == ',' || *s == ' ' || *s == '\t') s++;
            if (!*s) break;
            const char *start = s;
            size_t n = strcspn(s, ", \t");
            s += n;
            if (n == 1 && *start == '*') {
                h->any = 1;
                continue;
            }
            char item[POLICY_HOST_MAX], name[POLICY_HOST_MAX];
            if (n >= sizeof item) goto bad;
            memcpy(item, start, n);
            item[n] = '\0';
            if (policy_host_name(item, name, sizeof name) < 0 || !policy_name_pattern_ok(name)) {
                if (pass == 1) break; /* a listen address that is no name: nothing to add */
                goto bad;
            }
            void *v = realloc(h->names, (h->len + 1) * sizeof *h->names);
            if (!v) goto nomem;
            h->names = v;
            snprintf(h->names[h->len++], POLICY_HOST_MAX, "%s", name);
            continue;
        bad:
            snprintf(err, errlen, "allowed host \"%.*s\" is not a host name or *.domain", (int)(n < 80 ? n : 80),
                     start);
            policy_hosts_free(h);
            return -1;
        }
    }
    *out = h;
    return 0;
nomem:
    snprintf(err, errlen, "out of memory");
    policy_hosts_free(h);
    return -1;
}

void policy_hosts_free(policy_hosts *h) {
    if (!h) return;
    free(h->names);
    free(h);
}

int policy_host_check(const policy_hosts *h, const char *host) {
    char name[POLICY_HOST_MAX];
    unsigned char addr[16];
    if (!host) return POLICY_HOST_ALLOWED;
    if (policy_host_name(host, name, sizeof name) < 0) return POLICY_HOST_MALFORMED;
    if (h && h->any) return POLICY_HOST_ALLOWED;
    /* A page can only be rebound through a name: an address, or a name that always means
     * this machine, is safe. */
    if (inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1 ||
        policy_name_matches("localhost", name) || policy_name_matches("*.localhost", name))
        return POLICY_HOST_ALLOWED;
    for (size_t i = 0; h && i < h->len; i++)
        if (policy_name_matches(h->names[i], name)) return POLICY_HOST_ALLOWED;
    return POLICY_HOST_DENIED;
}
