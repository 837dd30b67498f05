/* static.h: static files from mounted folders, confined to them: validators, ranges, compression, caching policy. */
#ifndef TOKEND_STATIC_H
#define TOKEND_STATIC_H

#include <stddef.h>

#include "http.h"

#define STATIC_OK 0
#define STATIC_BAD_PATH (-1) /* "..", ".", a backslash: 400 */
#define STATIC_HIDDEN (-2)   /* a dot-file or dot-folder: 404 */
#define STATIC_TOO_LONG (-3) /* longer than any path the system opens: 404 */

typedef struct static_mounts static_mounts;

#define STATIC_MAX_IMMUTABLE 32

/* How a mount answers; strings are copied. */
typedef struct static_options {
    const char *csp;                             /* Content-Security-Policy of its HTML files; NULL = none */
    long max_age;                                /* Cache-Control: max-age=N; -1: no-cache (revalidate each time) */
    const char *immutable[STATIC_MAX_IMMUTABLE]; /* Lua patterns of request paths cached for a
                                                       year, unchanged (fingerprinted names) */
    size_t nimmutable;
    const char *index;    /* the file a folder answers with; NULL: none (404) */
    int live_reload;      /* tokend --dev: HTML pages get the live-reload script */
    const char *fallback; /* a single-page app's page (relative to the folder): the answer to a
                                   GET for a missing path without an extension that accepts HTML */
} static_options;

static_mounts *static_create(void);
void static_free(static_mounts *m);

/* Serves files under dir for request paths starting with prefix ("/" or "/assets").
 * dir must be an existing folder. Returns 0, or -1 with err set (bad prefix, missing
 * folder, a header value that cannot be sent, out of memory). */
int static_mount(static_mounts *m, const char *prefix, const char *dir, const static_options *o, char *err,
                 size_t errlen);

/* Cleans a decoded path relative to a mount: drops empty segments, refuses "." and ".."
 * (STATIC_BAD_PATH), backslashes and NUL (STATIC_BAD_PATH), dot-names (STATIC_HIDDEN),
 * and what does not fit out (STATIC_TOO_LONG). Writes "a/b/c" (no leading slash, "" for the root) into out. */
int static_clean_path(const char *rel, char *out, size_t outcap);

/* Answers req from the mount covering its path: the file (or the part Range asks for;
 * 304 when the client's copy is current; a precompressed sibling or a gzip copy when
 * Accept-Encoding allows), the index file of a folder, a redirect to add the trailing
 * slash of a folder, the mount's fallback page (no-cache) for a missing path whose last
 * segment has no dot when Accept names text/html, 400/404/405/412/416 otherwise. Returns
 * 1 when answered, 0 when no mount covers the path. */
int static_serve(const static_mounts *m, http_request *req);

#endif
