/* router.c: the route table: exact paths and :name segments, per method. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"
#include "url.h"

typedef struct router_segment {
    char *text; /* literal text, or the parameter name */
    size_t len;
    int is_param;
} router_segment;

typedef struct router_route {
    char method[16];
    char *pattern;
    router_segment *segs;
    size_t nsegs;
    size_t nliteral; /* literal segments: more is more specific */
    int handler;
    router_opts opts;
} router_route;

struct router {
    router_route *routes;
    size_t len;
};

router *router_create(void) {
    return calloc(1, sizeof(router));
}

static void router_route_clear(router_route *rt) {
    for (size_t i = 0; i < rt->nsegs; i++) free(rt->segs[i].text);
    free(rt->segs);
    free(rt->pattern);
}

void router_free(router *r, void (*release)(void *ud, int handler), void *ud) {
    if (!r) return;
    for (size_t i = 0; i < r->len; i++) {
        if (release) release(ud, r->routes[i].handler);
        router_route_clear(&r->routes[i]);
    }
    free(r->routes);
    free(r);
}

static int router_valid_method(const char *m) {
    size_t n = strlen(m);
    if (n == 0 || n >= 16) return 0;
    for (; *m; m++)
        if (!((*m >= 'A' && *m <= 'Z') || *m == '-' || *m == '_')) return 0;
    return 1;
}

/* Splits pattern into segments. Returns 0 or -1 with err set. */
static int router_compile(router_route *rt, const char *pattern, char *err, size_t errlen) {
    const char *p = pattern;
    size_t nparams = 0;
    if (*p != '/') {
        snprintf(err, errlen, "route path \"%s\" must start with /", pattern);
        return -1;
    }
    while (*p) {
        p++; /* skip '/' */
        const char *s = p;
        while (*p && *p != '/') p++;
        size_t n = (size_t)(p - s);
        if (n == 0 && *p) {
            snprintf(err, errlen, "route path \"%s\" has an empty segment", pattern);
            return -1;
        }
        if (n == 0) break; /* trailing slash */
        int is_param = s[0] == ':';
        if (is_param && (n == 1 || ++nparams > ROUTER_MAX_PARAMS)) {
            snprintf(err, errlen,
                     n == 1 ? "route path \"%s\" has a parameter without a name"
                            : "route path \"%s\" has too many parameters",
                     pattern);
            return -1;
        }
        router_segment *segs = realloc(rt->segs, (rt->nsegs + 1) * sizeof *segs);
        if (!segs) goto nomem;
        rt->segs = segs;
        router_segment *sg = &rt->segs[rt->nsegs];
        sg->text = strndup(s + is_param, n - (size_t)is_param);
        if (!sg->text) goto nomem;
        sg->len = n - (size_t)is_param;
        sg->is_param = is_param;
        rt->nsegs++;
        if (!is_param) rt->nliteral++;
    }
    return 0;
nomem:
    snprintf(err, errlen, "out of memory");
    return -1;
}

int router_add(router *r, const char *method, const char *pattern, int handler, const router_opts *o, char *err,
               size_t errlen) {
    router_route rt;
    memset(&rt, 0, sizeof rt);
    if (!router_valid_method(method)) {
        snprintf(err, errlen, "bad HTTP method \"%s\" (use upper case, like \"GET\")", method);
        return -1;
    }
    for (size_t i = 0; i < r->len; i++) {
        if (strcmp(r->routes[i].method, method) == 0 && strcmp(r->routes[i].pattern, pattern) == 0) {
            snprintf(err, errlen, "route %s %s is already defined", method, pattern);
            return -1;
        }
    }
    if (router_compile(&rt, pattern, err, errlen) < 0) goto fail;
    snprintf(rt.method, sizeof rt.method, "%s", method);
    rt.pattern = strdup(pattern);
    router_route *v = realloc(r->routes, (r->len + 1) * sizeof *v);
    if (!rt.pattern || !v) {
        if (v) r->routes = v;
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    rt.handler = handler;
    rt.opts = o ? *o : (router_opts){ 0, 1 };
    r->routes = v;
    r->routes[r->len++] = rt;
    return 0;
fail:
    router_route_clear(&rt);
    return -1;
}

/* Matches one route's segments against the raw path[0..len); fills m's params with raw
 * segments. A literal segment matches the decoded request segment. Returns 1 on a match. */
static int router_try(const router_route *rt, const char *path, size_t len, router_result *m) {
    const char *p = path, *end = path + len;
    size_t i = 0;
    m->nparams = 0;
    while (p < end) {
        if (*p != '/') return 0;
        p++;
        const char *s = p;
        while (p < end && *p != '/') p++;
        size_t n = (size_t)(p - s);
        if (n == 0 && p == end) break; /* trailing slash */
        if (i >= rt->nsegs || n == 0) return 0;
        const router_segment *sg = &rt->segs[i++];
        if (sg->is_param) {
            router_param *pa = &m->params[m->nparams++];
            pa->name = sg->text;
            pa->value = s;
            pa->value_len = n;
            continue;
        }
        char seg[512];
        size_t seglen = 0;
        if (n >= sizeof seg || url_decode_path(s, n, seg, sizeof seg, &seglen) != URL_OK || seglen != sg->len ||
            memcmp(seg, sg->text, seglen) != 0)
            return 0;
    }
    return i == rt->nsegs;
}

int router_match(const router *r, const char *method, const char *path, size_t pathlen, router_result *m, char *allow,
                 size_t allowlen) {
    const router_route *best = NULL;
    int best_exact = 0;
    router_result tmp;
    size_t alen = 0;
    int head = strcmp(method, "HEAD") == 0;
    memset(m, 0, sizeof *m);
    if (allowlen) allow[0] = '\0';
    for (size_t i = 0; i < r->len; i++) {
        const router_route *rt = &r->routes[i];
        if (!router_try(rt, path, pathlen, &tmp)) continue;
        int exact = strcmp(rt->method, method) == 0;
        if (exact || (head && strcmp(rt->method, "GET") == 0)) {
            /* More literal segments win; at a tie, the route of the method itself. */
            if (!best || rt->nliteral > best->nliteral || (rt->nliteral == best->nliteral && exact && !best_exact)) {
                best = rt;
                best_exact = exact;
                *m = tmp;
                m->handler = rt->handler;
                m->opts = rt->opts;
                m->pattern = rt->pattern;
                m->head_of_get = !exact;
            }
        } else if (allowlen && !strstr(allow, rt->method)) {
            int get = strcmp(rt->method, "GET") == 0; /* a GET route answers HEAD too */
            int n = snprintf(allow + alen, allowlen - alen, "%s%s%s", alen ? ", " : "", rt->method,
                             get ? ", HEAD" : "");
            if (n > 0 && (size_t)n < allowlen - alen) alen += (size_t)n;
        }
    }
    if (best) return ROUTER_FOUND;
    return alen ? ROUTER_METHOD_NOT_ALLOWED : ROUTER_NOT_FOUND;
}
