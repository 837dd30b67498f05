/* static.c: static file serving confined to mounted folders. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/openat2.h>

#include "static.h"

/* Files up to this size are read and sent with their headers in one write; larger ones go
 * out with sendfile (libmicrohttpd's file responses), headers first. */
#define STATIC_INLINE_MAX (16 * 1024)

typedef struct static_mount_entry {
    char *prefix;       /* "/" or "/assets" (no trailing slash) */
    size_t prefix_len;
    char *root;         /* realpath of the folder */
    size_t root_len;
    int root_fd;        /* the folder, for openat2 lookups confined beneath it */
    char *csp;          /* Content-Security-Policy of HTML files, or NULL */
} static_mount_entry;

struct static_mounts {
    static_mount_entry *v;
    size_t len;
};

static_mounts *static_create(void) {
    return calloc(1, sizeof(static_mounts));
}

void static_free(static_mounts *m) {
    if (!m) return;
    for (size_t i = 0; i < m->len; i++) {
        free(m->v[i].prefix);
        free(m->v[i].root);
        free(m->v[i].csp);
        if (m->v[i].root_fd >= 0) close(m->v[i].root_fd);
    }
    free(m->v);
    free(m);
}

int static_mount(static_mounts *m, const char *prefix, const char *dir, const static_options *o, char *err,
                 size_t errlen) {
    char *root = NULL, *pfx = NULL, *csp = NULL;
    struct stat st;
    if (prefix[0] != '/' || strstr(prefix, "//") || strchr(prefix, '?')) {
        snprintf(err, errlen, "static prefix \"%s\" must start with / and hold no // or ?", prefix);
        goto fail;
    }
    if (o->csp && strpbrk(o->csp, "\r\n")) {
        snprintf(err, errlen, "the content security policy holds a line break");
        goto fail;
    }
    root = realpath(dir, NULL);
    if (!root || stat(root, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "static folder \"%s\": %s", dir, root ? "not a folder" : strerror(errno));
        goto fail;
    }
    size_t plen = strlen(prefix);
    while (plen > 1 && prefix[plen - 1] == '/') plen--;
    pfx = strndup(prefix, plen);
    csp = o->csp ? strdup(o->csp) : NULL;
    static_mount_entry *v = realloc(m->v, (m->len + 1) * sizeof *v);
    if (!pfx || !v || (o->csp && !csp)) {
        if (v) m->v = v;
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    m->v = v;
    m->v[m->len++] = (static_mount_entry){ pfx, plen, root, strlen(root),
                                            open(root, O_PATH | O_DIRECTORY | O_CLOEXEC), csp };
    return 0;
fail:
    free(root);
    free(pfx);
    free(csp);
    return -1;
}

/* Returns the longest mount covering path and the rest of the path after its prefix. */
static const static_mount_entry *static_find(const static_mounts *m, const char *path, const char **rest) {
    const static_mount_entry *best = NULL;
    for (size_t i = 0; i < m->len; i++) {
        const static_mount_entry *e = &m->v[i];
        int covers = e->prefix_len == 1 ||
            (strncmp(path, e->prefix, e->prefix_len) == 0 &&
             (path[e->prefix_len] == '\0' || path[e->prefix_len] == '/'));
        if (covers && (!best || e->prefix_len > best->prefix_len)) best = e;
    }
    if (best && rest) *rest = best->prefix_len == 1 ? path : path + best->prefix_len;
    return best;
}

int static_clean_path(const char *rel, char *out, size_t outcap) {
    size_t o = 0;
    const char *p = rel;
    if (outcap == 0) return STATIC_BAD_PATH;
    out[0] = '\0';
    if (strchr(rel, '\\')) return STATIC_BAD_PATH;
    while (*p) {
        while (*p == '/') p++;
        if (!*p) break;
        const char *seg = p;
        while (*p && *p != '/') p++;
        size_t n = (size_t)(p - seg);
        if ((n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.')) return STATIC_BAD_PATH;
        if (seg[0] == '.') return STATIC_HIDDEN;
        if (o + n + 2 > outcap) return STATIC_TOO_LONG;
        if (o) out[o++] = '/';
        memcpy(out + o, seg, n);
        o += n;
    }
    out[o] = '\0';
    return STATIC_OK;
}

static const struct { const char *ext, *type; } static_types[] = {
    { "html", "text/html; charset=utf-8" }, { "htm", "text/html; charset=utf-8" },
    { "css", "text/css; charset=utf-8" }, { "js", "text/javascript; charset=utf-8" },
    { "mjs", "text/javascript; charset=utf-8" }, { "json", "application/json" },
    { "map", "application/json" }, { "txt", "text/plain; charset=utf-8" },
    { "md", "text/markdown; charset=utf-8" }, { "xml", "application/xml" },
    { "svg", "image/svg+xml" }, { "png", "image/png" }, { "jpg", "image/jpeg" },
    { "jpeg", "image/jpeg" }, { "gif", "image/gif" }, { "webp", "image/webp" },
    { "ico", "image/x-icon" }, { "wasm", "application/wasm" }, { "wav", "audio/wav" },
    { "mp3", "audio/mpeg" }, { "ogg", "audio/ogg" }, { "webm", "video/webm" },
    { "woff", "font/woff" }, { "woff2", "font/woff2" }, { "pdf", "application/pdf" },
    { "webmanifest", "application/manifest+json" },
};

const char *static_mime_type(const char *name) {
    const char *dot = strrchr(name, '.');
    const char *slash = strrchr(name, '/');
    if (dot && (!slash || dot > slash)) {
        for (size_t i = 0; i < sizeof static_types / sizeof static_types[0]; i++)
            if (strcasecmp(dot + 1, static_types[i].ext) == 0) return static_types[i].type;
    }
    return "application/octet-stream";
}

/* A response for the open regular file fd of size bytes: its bytes in memory when it is
 * small, else the file itself (the response then owns fd and *fd becomes -1). NULL when
 * out of memory. */
static http_response *static_file_response(int *fd, off_t size, const char *content_type) {
    if (size <= STATIC_INLINE_MAX) {
        char *buf = malloc(size ? (size_t)size : 1);
        ssize_t got = buf ? pread(*fd, buf, (size_t)size, 0) : -1;
        if (got == (ssize_t)size) return http_response_take(buf, (size_t)size, content_type);
        free(buf);      /* a short read (the file is changing) or no memory: stream it */
    }
    http_response *resp = http_response_file(*fd, (uint64_t)size, content_type);
    if (resp) *fd = -1;
    return resp;
}

static void static_redirect_slash(http_request *req) {
    char loc[PATH_MAX + 2];
    http_response *resp = http_response_bytes("", 0, NULL);
    /* The raw target keeps the client's own escaping; insert the slash before any query.
     * Leading slashes collapse to one: "//sub/" would send the browser to the host "sub". */
    const char *path = req->target;
    while (path[0] == '/' && path[1] == '/') path++;
    size_t plen = strcspn(path, "?");
    snprintf(loc, sizeof loc, "%.*s/%s%s", (int)plen, path, req->query_len ? "?" : "", req->query);
    if (resp) http_response_header(resp, "Location", loc);
    http_request_respond(req, 301, resp, 0);
}

/* Opens clean (relative to the mount) for reading without leaving the root: one openat2
 * call with RESOLVE_BENEATH where the kernel has it; otherwise, and for absolute links
 * that the kernel refuses, a realpath check. full gets a name for the MIME type. Returns
 * the descriptor or -errno (-EXDEV: the path leads outside the root). */
static int static_open_beneath(const static_mount_entry *e, const char *clean, char *full, size_t fullcap) {
    static atomic_int no_openat2;   /* set once when the kernel lacks openat2 */
    int n = snprintf(full, fullcap, "%s/%s", e->root, clean);
    if (n < 0 || (size_t)n >= fullcap) return -ENAMETOOLONG;
    if (!no_openat2 && e->root_fd >= 0) {
        struct open_how how = { .flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK,
                                .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS };
        long fd = syscall(SYS_openat2, e->root_fd, *clean ? clean : ".", &how, sizeof how);
        if (fd >= 0) return (int)fd;
        if (errno == ENOSYS) no_openat2 = 1;
        else if (errno != EXDEV && errno != ELOOP) return -errno;
    }
    char *real = realpath(full, NULL);
    int rc;
    if (!real) rc = -errno;
    else if (strncmp(real, e->root, e->root_len) != 0 || (real[e->root_len] != '\0' && real[e->root_len] != '/'))
        rc = -EXDEV;
    else if ((rc = open(real, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) < 0)
        rc = -errno;
    free(real);
    return rc;
}

int static_serve(const static_mounts *m, http_request *req) {
    const char *rest = NULL;
    const static_mount_entry *e = static_find(m, req->path, &rest);
    char clean[PATH_MAX], full[PATH_MAX + 16];
    int fd = -1;
    struct stat st;
    if (!e) return 0;
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
        http_request_fail_allow(req, "GET, HEAD");
        goto out;
    }
    int rc = static_clean_path(rest, clean, sizeof clean);
    if (rc != STATIC_OK) {
        if (rc == STATIC_HIDDEN || rc == STATIC_TOO_LONG) http_request_fail(req, 404, "not found");
        else http_request_fail(req, 400, "bad path");
        goto out;
    }
    fd = static_open_beneath(e, clean, full, sizeof full);
    if (fd < 0) {
        int missing = fd == -ENOENT || fd == -ENOTDIR || fd == -EXDEV || fd == -ELOOP || fd == -ENAMETOOLONG;
        if (fd == -EACCES) http_request_fail(req, 403, "forbidden");
        else if (missing) http_request_fail(req, 404, "not found");   /* or a link leading outside */
        else http_request_fail(req, 400, "bad path");
        goto out;
    }
    if (fstat(fd, &st) < 0) {
        http_request_fail(req, 404, "not found");
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        size_t plen = strlen(req->path);
        if (plen == 0 || req->path[plen - 1] != '/') {
            static_redirect_slash(req);
            goto out;
        }
        int dfd = openat(fd, "index.html", O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        close(fd);
        fd = dfd;
        if (fd < 0 || fstat(fd, &st) < 0) {
            http_request_fail(req, 404, "not found");
            goto out;
        }
        snprintf(full, sizeof full, "index.html");
    }
    if (!S_ISREG(st.st_mode)) {
        http_request_fail(req, 404, "not found");
        goto out;
    }
    http_response *resp = static_file_response(&fd, st.st_size, static_mime_type(full));
    if (!resp) {
        http_request_fail(req, 500, "out of memory");
        goto out;
    }
    http_response_header(resp, "Cache-Control", "no-cache");
    if (e->csp && strncmp(static_mime_type(full), "text/html", 9) == 0)
        http_response_header(resp, "Content-Security-Policy", e->csp);
    http_request_respond(req, 200, resp, (unsigned long long)st.st_size);
out:
    if (fd >= 0) close(fd);
    return 1;
}
