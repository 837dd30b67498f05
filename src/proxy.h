/* proxy.h: requests under a prefix forwarded to an HTTP(S) backend through libcurl, their answers streamed back. */
#ifndef TOKEND_PROXY_H
#define TOKEND_PROXY_H

#include <stddef.h>

#include "fetch.h"
#include "http.h"

#define PROXY_MAX_HEADERS 32

typedef struct proxy_mounts proxy_mounts;

/* How a mount forwards; strings are copied. */
typedef struct proxy_options {
    long timeout_ms;                        /* for the answer's head, and then between two of its bytes */
    int strip_prefix;                       /* /api/users goes to <url>/users rather than <url>/api/users */
    const char *headers[PROXY_MAX_HEADERS]; /* "Name: value" lines set on every request
                                                   ("Name:" removes the header) */
    size_t nheaders;
} proxy_options;

proxy_mounts *proxy_create(void);
void proxy_free(proxy_mounts *m);

/* Forwards the requests under prefix ("/api") to url ("http://127.0.0.1:3000", maybe with a
 * path: "https://api.example/v1"). Returns 0, or -1 with err set (a bad prefix or URL, a
 * header that cannot be sent, out of memory). */
int proxy_mount(proxy_mounts *m, const char *prefix, const char *url, const proxy_options *o, char *err, size_t errlen);

/* Forwards req through client when a mount covers its path: the method, the body and the
 * end-to-end headers, with Via (a request that comes back, a loop, gets 508) and
 * X-Forwarded-For, -Proto and -Host; the answer's status, headers and body come back as they
 * arrive, paced by the client. 502 when the backend cannot be reached, 504 when it does
 * not answer in time. Returns 1 when it took req, 0 when no mount covers it. */
int proxy_serve(const proxy_mounts *m, fetch *client, http_request *req);

#endif
