/* lcroute.h: routes written in C (tokend_server_route), answered through the Lua host. */
#ifndef TOKEND_LCROUTE_H
#define TOKEND_LCROUTE_H

#include "lhost.h"
#include "tokend.h"

typedef struct lcroute {
    char method[16]; /* upper case */
    char *path;
    tokend_route_fn *fn;
    void *ud;
} lcroute;

/* Adds route r (which must outlive h) to h, next to the script's. Returns 0, or -1 with
 * err set (bad method or path, a route defined twice, no memory). */
int lcroute_add(lhost *h, lcroute *r, char *err, size_t errlen);

#endif
