/* policy.c: abuse control: token buckets and connection counts shared by all workers,
 * client addresses behind trusted proxies, and Origin allow-lists. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "policy.h"

#define POLICY_MAX_LIMITERS 32

/* FNV-1a over a limiter id and a key. */
static uint64_t policy_hash(int id, const char *key) {
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)(unsigned)id;
    for (; *key; key++) h = (h ^ (unsigned char)*key) * 1099511628211ULL;
    return h;
}

/* ---- token buckets ---- */

typedef struct policy_entry {
    struct policy_entry *next;
    uint64_t hash;
    int id;
    double tokens;
    uint64_t last_ms;
    char key[];
} policy_entry;

typedef struct policy_limiter_def {
    char name[64];
    double rate, per_s, burst;
    double per_ms;          /* tokens added per millisecond */
} policy_limiter_def;

struct policy_buckets {
    pthread_mutex_t lock;
    policy_limiter_def limiters[POLICY_MAX_LIMITERS];
    int nlimiters;
    policy_entry **slots;
    size_t nslots, count, max_keys;
};

policy_buckets *policy_buckets_create(size_t max_keys) {
    policy_buckets *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->nslots = 1024;
    b->slots = calloc(b->nslots, sizeof *b->slots);
    if (!b->slots) {
        free(b);
        return NULL;
    }
    b->max_keys = max_keys ? max_keys : 100000;
    pthread_mutex_init(&b->lock, NULL);
    return b;
}

void policy_buckets_free(policy_buckets *b) {
    if (!b) return;
    for (size_t i = 0; i < b->nslots; i++) {
        for (policy_entry *e = b->slots[i], *n; e; e = n) {
            n = e->next;
            free(e);
        }
    }
    pthread_mutex_destroy(&b->lock);
    free(b->slots);
    free(b);
}

int policy_limiter(policy_buckets *b, const char *name, double rate, double per_s, double burst,
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
    for (int i = 0; i < b->nlimiters; i++) {
        policy_limiter_def *d = &b->limiters[i];
        if (strcmp(d->name, name) != 0) continue;
        /* The same name again (another worker, or a reloaded script): the latest values
         * apply from now on, the buckets and what clients used of them stay. */
        d->rate = rate;
        d->per_s = per_s;
        d->burst = burst;
        d->per_ms = rate / (per_s * 1000.0);
        id = i;
        goto out;
    }
    if (b->nlimiters == POLICY_MAX_LIMITERS) {
        snprintf(err, errlen, "too many limiters (at most %d)", POLICY_MAX_LIMITERS);
        goto out;
    }
    id = b->nlimiters++;
    policy_limiter_def *d = &b->limiters[id];
    snprintf(d->name, sizeof d->name, "%s", name);
    d->rate = rate;
    d->per_s = per_s;
    d->burst = burst;
    d->per_ms = rate / (per_s * 1000.0);
out:
    pthread_mutex_unlock(&b->lock);
    return id;
}

/* Tokens the entry holds at now. */
static double policy_refill(const policy_buckets *b, const policy_entry *e, uint64_t now_ms) {
    const policy_limiter_def *d = &b->limiters[e->id];
    double t = e->tokens + (double)(now_ms > e->last_ms ? now_ms - e->last_ms : 0) * d->per_ms;
    return t > d->burst ? d->burst : t;
}

/* Drops the entries whose bucket has filled up again: they carry no information. */
static void policy_sweep(policy_buckets *b, uint64_t now_ms) {
    for (size_t i = 0; i < b->nslots; i++) {
        for (policy_entry **pp = &b->slots[i]; *pp;) {
            policy_entry *e = *pp;
            if (policy_refill(b, e, now_ms) >= b->limiters[e->id].burst) {
                *pp = e->next;
                free(e);
                b->count--;
            } else {
                pp = &e->next;
            }
        }
    }
}

static void policy_grow(policy_buckets *b) {
    size_t n = b->nslots * 2;
    policy_entry **slots = calloc(n, sizeof *slots);
    if (!slots) return;     /* longer chains, still correct */
    for (size_t i = 0; i < b->nslots; i++) {
        for (policy_entry *e = b->slots[i], *next; e; e = next) {
            next = e->next;
            e->next = slots[e->hash & (n - 1)];
            slots[e->hash & (n - 1)] = e;
        }
    }
    free(b->slots);
    b->slots = slots;
    b->nslots = n;
}

/* Writes the bucket key for a client: an IPv6 address counts per /64 network. */
static void policy_bucket_key(const char *key, char *out, size_t outlen) {
    unsigned char a6[16];
    if (strchr(key, ':') && inet_pton(AF_INET6, key, a6) == 1) {
        memset(a6 + 8, 0, 8);
        if (inet_ntop(AF_INET6, a6, out, (socklen_t)outlen)) {
            strncat(out, "/64", outlen - strlen(out) - 1);
            return;
        }
    }
    snprintf(out, outlen, "%s", key);
}

int policy_take(policy_buckets *b, int id, const char *key, uint64_t now_ms, long *retry_after_s) {
    char k[128];
    int allowed = 0;
    if (id < 0 || id >= b->nlimiters) return 0;
    policy_bucket_key(key, k, sizeof k);
    uint64_t h = policy_hash(id, k);
    pthread_mutex_lock(&b->lock);
    const policy_limiter_def *d = &b->limiters[id];
    policy_entry *e = b->slots[h & (b->nslots - 1)];
    while (e && !(e->hash == h && e->id == id && strcmp(e->key, k) == 0)) e = e->next;
    if (!e) {
        if (b->count >= b->max_keys) policy_sweep(b, now_ms);
        if (b->count >= b->max_keys || !(e = malloc(sizeof *e + strlen(k) + 1))) {
            *retry_after_s = 1;     /* full of active clients: refuse, do not forget anyone */
            goto out;
        }
        e->hash = h;
        e->id = id;
        e->tokens = d->burst;
        e->last_ms = now_ms;
        memcpy(e->key, k, strlen(k) + 1);
        e->next = b->slots[h & (b->nslots - 1)];
        b->slots[h & (b->nslots - 1)] = e;
        if (++b->count > b->nslots) policy_grow(b);
    }
    e->tokens = policy_refill(b, e, now_ms);
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

size_t policy_buckets_size(policy_buckets *b) {
    pthread_mutex_lock(&b->lock);
    size_t n = b->count;
    pthread_mutex_unlock(&b->lock);
    return n;
}

/* ---- connections per address ---- */

typedef struct policy_conn_entry {
    struct policy_conn_entry *next;
    unsigned int count;
    char addr[64];
} policy_conn_entry;

#define POLICY_CONN_SLOTS 4096

struct policy_conns {
    pthread_mutex_t lock;
    unsigned int limit;
    policy_conn_entry *slots[POLICY_CONN_SLOTS];
};

policy_conns *policy_conns_create(unsigned int limit_per_addr) {
    policy_conns *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->limit = limit_per_addr;
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

void policy_conns_free(policy_conns *c) {
    if (!c) return;
    for (size_t i = 0; i < POLICY_CONN_SLOTS; i++) {
        for (policy_conn_entry *e = c->slots[i], *n; e; e = n) {
            n = e->next;
            free(e);
        }
    }
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static policy_conn_entry **policy_conn_find(policy_conns *c, const char *addr) {
    policy_conn_entry **pp = &c->slots[policy_hash(0, addr) & (POLICY_CONN_SLOTS - 1)];
    while (*pp && strcmp((*pp)->addr, addr) != 0) pp = &(*pp)->next;
    return pp;
}

int policy_conns_allowed(policy_conns *c, const char *addr) {
    if (!c || !c->limit) return 1;
    pthread_mutex_lock(&c->lock);
    policy_conn_entry *e = *policy_conn_find(c, addr);
    int ok = !e || e->count < c->limit;
    pthread_mutex_unlock(&c->lock);
    return ok;
}

void policy_conns_opened(policy_conns *c, const char *addr) {
    if (!c || !c->limit) return;
    pthread_mutex_lock(&c->lock);
    policy_conn_entry **pp = policy_conn_find(c, addr);
    if (!*pp && (*pp = calloc(1, sizeof **pp))) snprintf((*pp)->addr, sizeof (*pp)->addr, "%s", addr);
    if (*pp) (*pp)->count++;
    pthread_mutex_unlock(&c->lock);
}

void policy_conns_closed(policy_conns *c, const char *addr) {
    if (!c || !c->limit) return;
    pthread_mutex_lock(&c->lock);
    policy_conn_entry **pp = policy_conn_find(c, addr);
    if (*pp && --(*pp)->count == 0) {
        policy_conn_entry *e = *pp;
        *pp = e->next;
        free(e);
    }
    pthread_mutex_unlock(&c->lock);
}

/* ---- trusted proxies ---- */

typedef struct policy_net {
    int family;
    unsigned char addr[16];
    int bits;
} policy_net;

struct policy_proxies {
    policy_net *nets;
    size_t len;
};

/* Parses an IP address text into family/bytes. Returns 0 or -1. */
static int policy_parse_ip(const char *s, int *family, unsigned char *out) {
    if (inet_pton(AF_INET, s, out) == 1) { *family = AF_INET; return 0; }
    if (inet_pton(AF_INET6, s, out) == 1) { *family = AF_INET6; return 0; }
    return -1;
}

int policy_proxies_parse(const char *spec, policy_proxies **out, char *err, size_t errlen) {
    policy_proxies *p = calloc(1, sizeof *p);
    *out = NULL;
    if (!p) goto nomem;
    for (const char *s = spec ? spec : ""; *s;) {
        while (*s == ',' || *s == ' ' || *s == '\t') s++;
        if (!*s) break;
        const char *start = s;
        size_t n = strcspn(s, ", \t");
        char item[80];
        s += n;
        if (n >= sizeof item) goto bad_long;
        memcpy(item, start, n);
        item[n] = '\0';
        policy_net net = { 0 };
        char *slash = strchr(item, '/');
        if (slash) *slash = '\0';
        if (policy_parse_ip(item, &net.family, net.addr) < 0) goto bad;
        int max = net.family == AF_INET ? 32 : 128;
        net.bits = max;
        if (slash) {
            char *end;
            long bits = strtol(slash + 1, &end, 10);
            if (!slash[1] || *end || bits < 0 || bits > max) goto bad;
            net.bits = (int)bits;
        }
        policy_net *v = realloc(p->nets, (p->len + 1) * sizeof *v);
        if (!v) goto nomem;
        p->nets = v;
        p->nets[p->len++] = net;
        continue;
    bad:
    bad_long:
        snprintf(err, errlen, "trusted proxy \"%.*s\" is not an IP address or CIDR network", (int)(n < 60 ? n : 60),
                 start);
        policy_proxies_free(p);
        return -1;
    }
    *out = p;
    return 0;
nomem:
    snprintf(err, errlen, "out of memory");
    policy_proxies_free(p);
    return -1;
}

void policy_proxies_free(policy_proxies *p) {
    if (!p) return;
    free(p->nets);
    free(p);
}

int policy_proxy_trusted(const policy_proxies *p, const char *addr) {
    int family;
    unsigned char a[16];
    if (!p || !p->len || policy_parse_ip(addr, &family, a) < 0) return 0;
    for (size_t i = 0; i < p->len; i++) {
        const policy_net *n = &p->nets[i];
        if (n->family != family) continue;
        int full = n->bits / 8, rest = n->bits % 8;
        if (memcmp(a, n->addr, (size_t)full) != 0) continue;
        if (rest && ((a[full] ^ n->addr[full]) & (0xFF << (8 - rest)) & 0xFF)) continue;
        return 1;
    }
    return 0;
}

void policy_client_address(const policy_proxies *p, const char *remote, const char *xff, char *out, size_t outlen) {
    snprintf(out, outlen, "%s", remote);
    if (!xff || !policy_proxy_trusted(p, remote)) return;
    size_t end = strlen(xff);
    while (end > 0) {
        size_t start = end;
        while (start > 0 && xff[start - 1] != ',') start--;
        size_t a = start, b = end;
        while (a < b && (xff[a] == ' ' || xff[a] == '\t')) a++;
        while (b > a && (xff[b - 1] == ' ' || xff[b - 1] == '\t')) b--;
        char item[64];
        int family;
        unsigned char bytes[16];
        if (b - a == 0 || b - a >= sizeof item) return;
        memcpy(item, xff + a, b - a);
        item[b - a] = '\0';
        if (policy_parse_ip(item, &family, bytes) < 0) return;   /* malformed: keep the last good one */
        snprintf(out, outlen, "%s", item);
        if (!policy_proxy_trusted(p, item)) return;
        end = start ? start - 1 : 0;
    }
}

/* ---- origins ---- */

typedef struct policy_origin_rule {
    char scheme[8];
    char host[256];         /* lower case; "*.example.com" matches subdomains */
    char port[8];           /* "" default port, "*" any */
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
    if (n == 0 || n >= hl || strpbrk(h, "/?#@ ") ) return -1;
    for (size_t i = 0; i < n; i++) host[i] = (char)tolower((unsigned char)h[i]);
    host[n] = '\0';
    const char *pt = *colon == ':' ? colon + 1 : "";
    if (strlen(pt) >= pl || (*colon == ':' && !*pt)) return -1;
    for (const char *q = pt; *q; q++)
        if (!isdigit((unsigned char)*q) && strcmp(pt, "*") != 0) return -1;
    snprintf(port, pl, "%s", pt);
    if ((strcmp(scheme, "http") == 0 && strcmp(port, "80") == 0) || (strcmp(scheme, "https") == 0 && strcmp(port, "443") == 0))
        port[0] = '\0';
    return 0;
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
        if (policy_split_origin(patterns[i], r->scheme, sizeof r->scheme, r->host, sizeof r->host, r->port, sizeof r->port) < 0 ||
            (strchr(r->host, '*') && (strncmp(r->host, "*.", 2) != 0 || strchr(r->host + 2, '*')))) {
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
        if (policy_split_origin(self, ss, sizeof ss, sh, sizeof sh, sp, sizeof sp) == 0 &&
            strcmp(s, ss) == 0 && strcmp(h, sh) == 0 && strcmp(p, sp) == 0)
            return POLICY_ORIGIN_SAME;
    }
    if (!o) return POLICY_ORIGIN_DENIED;
    if (o->any) return POLICY_ORIGIN_ALLOWED;
    for (size_t i = 0; i < o->len; i++) {
        const policy_origin_rule *r = &o->rules[i];
        if (strcmp(r->scheme, s) != 0) continue;
        if (strcmp(r->port, "*") != 0 && strcmp(r->port, p) != 0) continue;
        if (strncmp(r->host, "*.", 2) == 0) {
            size_t hl = strlen(h), rl = strlen(r->host) - 1;     /* ".example.com" */
            if (hl > rl && strcmp(h + hl - rl, r->host + 1) == 0) return POLICY_ORIGIN_ALLOWED;
        } else if (strcmp(r->host, h) == 0) {
            return POLICY_ORIGIN_ALLOWED;
        }
    }
    return POLICY_ORIGIN_DENIED;
}
