/* static.h: static file serving confined to mounted folders. */
#ifndef TOKEND_STATIC_H
#define TOKEND_STATIC_H

#include <stddef.h>

#include "http.h"

#define STATIC_OK 0
#define STATIC_BAD_PATH (-1)    /* "..", ".", a backslash: 400 */
#define STATIC_HIDDEN (-2)      /* a dot-file or dot-folder: 404 */
#define STATIC_TOO_LONG (-3)    /* longer than any path the system opens: 404 */

typedef struct static_mounts static_mounts;

/* How a mount answers; strings are copied. */
typedef struct static_options {
    const char *csp;            /* Content-Security-Policy of its HTML files; NULL = none */
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

/* Returns the Content-Type for a file name, by extension. */
const char *static_mime_type(const char *name);

/* Answers req from the mount covering its path: the file, index.html for a folder, a
 * redirect to add the trailing slash of a folder, 400/404/405 otherwise. Returns 1
 * when answered, 0 when no mount covers the path. */
int static_serve(const static_mounts *m, http_request *req);

#endif
