/* router.h: the route table: exact paths and :name segments, per method. */
#ifndef TOKEND_ROUTER_H
#define TOKEND_ROUTER_H

#include <stddef.h>

#define ROUTER_MAX_PARAMS 16

#define ROUTER_FOUND 0
#define ROUTER_NOT_FOUND 1
#define ROUTER_METHOD_NOT_ALLOWED 2

typedef struct router router;

typedef struct router_param {
    const char *name;  /* owned by the router */
    const char *value; /* the raw segment, in the matched path (not NUL-terminated) */
    size_t value_len;
} router_param;

/* What a route asks of the host besides its handler (router_add copies it). */
typedef struct router_opts {
    int audit;          /* every answer leaves an audit line (token routes) */
    unsigned log_every; /* access log: 1 every answer; 0 only errors (>= 400); N one success in N */
} router_opts;

typedef struct router_result {
    int handler;         /* the value given to router_add */
    router_opts opts;    /* the route's options */
    const char *pattern; /* the route's path pattern, owned by the router */
    int head_of_get;     /* a HEAD request matched a GET route: its handler must not run */
    size_t nparams;
    router_param params[ROUTER_MAX_PARAMS];
} router_result;

router *router_create(void);

/* Frees the table; release(ud, handler) is called for every route's handler. */
void router_free(router *r, void (*release)(void *ud, int handler), void *ud);

/* Adds a route with options o (NULL: audit none, log every answer). method is an
 * upper-case token ("GET"); pattern starts with '/' and its segments are literal or
 * ":name". Returns 0, or -1 with err set (bad method or pattern, duplicate route, too many
 * parameters, out of memory). */
int router_add(router *r, const char *method, const char *pattern, int handler, const router_opts *o, char *err,
               size_t errlen);

/* Matches a path as received, path[0..pathlen) (%-escapes and all): split into segments
 * at '/' first, then each decoded, so that an escaped "/" (%2F) stays inside its segment.
 * A literal segment matches its decoded text; a parameter's value is the raw segment (its
 * user decodes it). A GET route also answers HEAD (then m->head_of_get is set), unless a
 * HEAD route matches as well. m is always initialised (no params unless found). Returns
 * ROUTER_FOUND (m filled), ROUTER_METHOD_NOT_ALLOWED (allow gets "GET, POST"), or
 * ROUTER_NOT_FOUND. Literal segments win over parameters at the same place. */
int router_match(const router *r, const char *method, const char *path, size_t pathlen, router_result *m, char *allow,
                 size_t allowlen);

#endif
