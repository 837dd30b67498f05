/* netaddr.c: client IP addresses: parsing (IPv4-mapped IPv6 is IPv4), networks, keys, proxies. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "netaddr.h"

static const unsigned char netaddr_mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

/* Turns an IPv4-mapped IPv6 address into its IPv4 address; others stay as they are. */
static void netaddr_unmap(netaddr *a) {
    if (a->family == AF_INET6 && memcmp(a->bytes, netaddr_mapped_prefix, 12) == 0) {
        memmove(a->bytes, a->bytes + 12, 4);
        memset(a->bytes + 4, 0, 12);
        a->family = AF_INET;
    }
}

int netaddr_parse(const char *text, netaddr *out) {
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, text, out->bytes) == 1) {
        out->family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, text, out->bytes) == 1) {
        out->family = AF_INET6;
        netaddr_unmap(out);
        return 0;
    }
    return -1;
}

void netaddr_format(const netaddr *a, char *out, size_t outlen) {
    if (!inet_ntop(a->family, a->bytes, out, (socklen_t)outlen)) snprintf(out, outlen, "-");
}

void netaddr_of_sockaddr(const struct sockaddr *sa, char *out, size_t outlen) {
    netaddr a;
    memset(&a, 0, sizeof a);
    if (sa && sa->sa_family == AF_INET) {
        a.family = AF_INET;
        memcpy(a.bytes, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
    } else if (sa && sa->sa_family == AF_INET6) {
        a.family = AF_INET6;
        memcpy(a.bytes, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
        netaddr_unmap(&a);
    } else {
        snprintf(out, outlen, "-");
        return;
    }
    netaddr_format(&a, out, outlen);
}

void netaddr_key(const char *text, char *out, size_t outlen) {
    netaddr a;
    if (netaddr_parse(text, &a) < 0) {
        snprintf(out, outlen, "%s", text);
        return;
    }
    if (a.family == AF_INET6) memset(a.bytes + 8, 0, 8);
    netaddr_format(&a, out, outlen);
    if (a.family == AF_INET6) strncat(out, "/64", outlen - strlen(out) - 1);
}

/* ---- networks ---- */

typedef struct netaddr_net {
    netaddr base;
    int bits;
} netaddr_net;

struct netaddr_nets {
    netaddr_net *v;
    size_t len;
};

/* Parses "addr" or "addr/bits"; an IPv4-mapped IPv6 network becomes an IPv4 one.
 * Returns 0 or -1. */
static int netaddr_net_parse(char *item, netaddr_net *net) {
    char *slash = strchr(item, '/');
    if (slash) *slash = '\0';
    int v6 = strchr(item, ':') != NULL;
    if (netaddr_parse(item, &net->base) < 0) return -1;
    int max = v6 ? 128 : 32;
    net->bits = max;
    if (slash) {
        char *end;
        long bits = strtol(slash + 1, &end, 10);
        if (!slash[1] || *end || bits < 0 || bits > max) return -1;
        net->bits = (int)bits;
    }
    if (v6 && net->base.family == AF_INET) { /* ::ffff:a.b.c.d/n: the IPv4 part counts */
        if (net->bits < 96) return -1;
        net->bits -= 96;
    }
    return 0;
}

int netaddr_nets_parse(const char *spec, netaddr_nets **out, char *err, size_t errlen) {
    netaddr_nets *n = calloc(1, sizeof *n);
    *out = NULL;
    if (!n) goto nomem;
    for (const char *s = spec ? spec : ""; *s;) {
        while (*s == ',' || *s == ' ' || *s == '\t') s++;
        if (!*s) break;
        const char *start = s;
        size_t len = strcspn(s, ", \t");
        char item[80];
        netaddr_net net;
        s += len;
        if (len < sizeof item) {
            memcpy(item, start, len);
            item[len] = '\0';
        }
        if (len >= sizeof item || netaddr_net_parse(item, &net) < 0) {
            snprintf(err, errlen, "trusted proxy \"%.*s\" is not an IP address or CIDR network",
                     (int)(len < 60 ? len : 60), start);
            netaddr_nets_free(n);
            return -1;
        }
        netaddr_net *v = realloc(n->v, (n->len + 1) * sizeof *v);
        if (!v) goto nomem;
        n->v = v;
        n->v[n->len++] = net;
    }
    *out = n;
    return 0;
nomem:
    snprintf(err, errlen, "out of memory");
    netaddr_nets_free(n);
    return -1;
}

void netaddr_nets_free(netaddr_nets *n) {
    if (!n) return;
    free(n->v);
    free(n);
}

static int netaddr_nets_contain_addr(const netaddr_nets *n, const netaddr *a) {
    for (size_t i = 0; n && i < n->len; i++) {
        const netaddr_net *net = &n->v[i];
        if (net->base.family != a->family) continue;
        int full = net->bits / 8, rest = net->bits % 8;
        if (memcmp(a->bytes, net->base.bytes, (size_t)full) != 0) continue;
        if (rest && ((a->bytes[full] ^ net->base.bytes[full]) & (0xFF << (8 - rest)) & 0xFF)) continue;
        return 1;
    }
    return 0;
}

int netaddr_nets_contain(const netaddr_nets *n, const char *text) {
    netaddr a;
    return n && n->len && netaddr_parse(text, &a) == 0 && netaddr_nets_contain_addr(n, &a);
}

/* Parses the item s[a..b) of an X-Forwarded-For list, trimmed. Returns 0, or -1 when it
 * is empty or not an address. */
static int netaddr_item(const char *s, size_t a, size_t b, netaddr *out) {
    char item[NETADDR_TEXT];
    while (a < b && (s[a] == ' ' || s[a] == '\t')) a++;
    while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t')) b--;
    if (b == a || b - a >= sizeof item) return -1;
    memcpy(item, s + a, b - a);
    item[b - a] = '\0';
    return netaddr_parse(item, out);
}

void netaddr_client(const netaddr_nets *trusted, const char *peer, const char *const *values, size_t nvalues, char *out,
                    size_t outlen) {
    netaddr item, leftmost;
    int seen = 0;
    snprintf(out, outlen, "%s", peer);
    if (!nvalues || !netaddr_nets_contain(trusted, peer)) return;
    for (size_t v = nvalues; v-- > 0;) {
        const char *s = values[v];
        size_t end = strlen(s);
        for (;;) {
            size_t start = end;
            while (start > 0 && s[start - 1] != ',') start--;
            if (netaddr_item(s, start, end, &item) < 0) return; /* untrusted header: the peer */
            if (!netaddr_nets_contain_addr(trusted, &item)) {
                netaddr_format(&item, out, outlen);
                return;
            }
            leftmost = item;
            seen = 1;
            if (start == 0) break;
            end = start - 1;
        }
    }
    if (seen) netaddr_format(&leftmost, out, outlen); /* every hop a trusted proxy */
}
