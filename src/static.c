/* static.c: static files from mounted folders, confined to them: validators, ranges, compression, caching policy. */
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

#include "devserver.h"
#include "gzcache.h"
#include "header.h"
#include "lpattern.h"
#include "mime.h"
#include "static.h"

/* Files up to this size are read and sent with their headers in one write; larger ones go
 * out with sendfile (libmicrohttpd's file responses), headers first. */
#define STATIC_INLINE_MAX (16 * 1024)
/* Compressed on the fly (once, then from gzcache): text types from 1 KiB (smaller ones
 * fit a packet anyway) to 1 MiB (larger ones should ship a precompressed sibling). */
#define STATIC_GZIP_MIN 1024
#define STATIC_GZIP_MAX (1024 * 1024)
#define STATIC_IMMUTABLE "public, max-age=31536000, immutable"
#define STATIC_PATTERN_STEPS 100000     /* a search of an immutable pattern, at most */
#define STATIC_INJECT_MAX (1024 * 1024) /* HTML pages up to this size get the live-reload script */

typedef struct static_mount_entry {
    char *prefix; /* "/" or "/assets" (no trailing slash) */
    size_t prefix_len;
    char *root; /* realpath of the folder */
    size_t root_len;
    int root_fd;            /* the folder, for openat2 lookups confined beneath it */
    char *csp;              /* Content-Security-Policy of HTML files, or NULL */
    char cache_control[40]; /* for files that are not immutable */
    char *immutable[STATIC_MAX_IMMUTABLE];
    size_t nimmutable;
    char *index;     /* or NULL */
    int live_reload; /* HTML pages get the live-reload script (tokend --dev) */
    char *fallback;  /* a single-page app's page for missing paths, or NULL */
} static_mount_entry;

/* What is sent for a request: the file, a precompressed sibling, or a gzip copy. */
typedef struct static_rep {
    int fd;               /* the file or sibling to send; -1 for a gzip copy */
    uint64_t size;        /* of what is sent */
    const char *encoding; /* NULL (identity), "br" or "gzip" */
    gzcache_entry *gz;    /* the gzip copy, or NULL */
    char etag[64];
} static_rep;

struct static_mounts {
    static_mount_entry *v;
    size_t len;
};

static_mounts *static_create(void) {
    return calloc(1, sizeof(static_mounts));
}

/* Frees what a mount entry owns. */
static void static_entry_clear(static_mount_entry *e) {
    free(e->prefix);
    free(e->root);
    free(e->csp);
    free(e->index);
    free(e->fallback);
    for (size_t i = 0; i < e->nimmutable; i++) free(e->immutable[i]);
    if (e->root_fd >= 0) close(e->root_fd);
}

void static_free(static_mounts *m) {
    if (!m) return;
    for (size_t i = 0; i < m->len; i++) static_entry_clear(&m->v[i]);
    free(m->v);
    free(m);
}

int static_mount(static_mounts *m, const char *prefix, const char *dir, const static_options *o, char *err,
                 size_t errlen) {
    static_mount_entry e = { .root_fd = -1 };
    struct stat st;
    int nomem = 0;
    if (prefix[0] != '/' || strstr(prefix, "//") || strchr(prefix, '?')) {
        snprintf(err, errlen, "static prefix \"%s\" must start with / and hold no // or ?", prefix);
        goto fail;
    }
    if (o->csp && strpbrk(o->csp, "\r\n")) {
        snprintf(err, errlen, "the content security policy holds a line break");
        goto fail;
    }
    if (o->index && (!*o->index || strchr(o->index, '/') || o->index[0] == '.')) {
        snprintf(err, errlen, "index \"%s\" must be a file name (no / and not hidden)", o->index);
        goto fail;
    }
    char clean[PATH_MAX];
    if (o->fallback &&
        (static_clean_path(o->fallback, clean, sizeof clean) != STATIC_OK || !*clean ||
         strcmp(clean, o->fallback) != 0)) {
        snprintf(err, errlen, "fallback \"%s\" must be a file's path in the folder (no leading /, no . or ..)",
                 o->fallback);
        goto fail;
    }
    if (o->nimmutable > STATIC_MAX_IMMUTABLE) {
        snprintf(err, errlen, "at most %d immutable patterns", STATIC_MAX_IMMUTABLE);
        goto fail;
    }
    e.root = realpath(dir, NULL);
    if (!e.root || stat(e.root, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "static folder \"%s\": %s", dir, e.root ? "not a folder" : strerror(errno));
        goto fail;
    }
    size_t plen = strlen(prefix);
    while (plen > 1 && prefix[plen - 1] == '/') plen--;
    e.prefix = strndup(prefix, plen);
    e.prefix_len = plen;
    e.root_len = strlen(e.root);
    e.live_reload = o->live_reload;
    nomem |= !e.prefix || (o->csp && !(e.csp = strdup(o->csp))) || (o->index && !(e.index = strdup(o->index))) ||
            (o->fallback && !(e.fallback = strdup(o->fallback)));
    for (size_t i = 0; i < o->nimmutable; i++) nomem |= !(e.immutable[e.nimmutable++] = strdup(o->immutable[i]));
    if (o->max_age >= 0) snprintf(e.cache_control, sizeof e.cache_control, "max-age=%ld", o->max_age);
    else snprintf(e.cache_control, sizeof e.cache_control, "no-cache");
    static_mount_entry *v = nomem ? NULL : realloc(m->v, (m->len + 1) * sizeof *v);
    if (!v) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    e.root_fd = open(e.root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    m->v = v;
    m->v[m->len++] = e;
    return 0;
fail:
    static_entry_clear(&e);
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
    static atomic_int no_openat2; /* set once when the kernel lacks openat2 */
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
    else if ((rc = open(real, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) < 0) rc = -errno;
    free(real);
    return rc;
}

/* Opens a precompressed sibling of rel (suffix ".br" or ".gz") for rep when it is a regular
 * file beneath the root that is not older than the file itself (a stale one is skipped).
 * Returns 1 when rep now sends it. */
static int static_open_sibling(const static_mount_entry *e, const char *rel, const struct stat *orig,
                               const char *suffix, const char *encoding, static_rep *rep) {
    char name[PATH_MAX], full[PATH_MAX + 16];
    struct stat st;
    if ((size_t)snprintf(name, sizeof name, "%s%s", rel, suffix) >= sizeof name) return 0;
    int fd = static_open_beneath(e, name, full, sizeof full);
    if (fd < 0) return 0;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
        (st.st_mtim.tv_sec < orig->st_mtim.tv_sec ||
         (st.st_mtim.tv_sec == orig->st_mtim.tv_sec && st.st_mtim.tv_nsec < orig->st_mtim.tv_nsec))) {
        close(fd);
        return 0;
    }
    rep->fd = fd;
    rep->size = (uint64_t)st.st_size;
    rep->encoding = encoding;
    snprintf(rep->etag, sizeof rep->etag, "\"%llx-%llx-%s\"", (unsigned long long)st.st_size,
             (unsigned long long)st.st_mtim.tv_sec * 1000000000ULL + (unsigned long long)st.st_mtim.tv_nsec,
             suffix + 1);
    return 1;
}

/* Chooses what to send for the file fd (rel beneath the mount, of type type): a
 * precompressed sibling or a gzip copy when Accept-Encoding prefers one (never for a Range
 * request: ranges are of the file itself), else the file. Returns 1 when the answer
 * depends on Accept-Encoding (Vary). */
static int static_choose(const static_mount_entry *e, http_request *req, const char *rel, int fd, const struct stat *st,
                         const char *type, static_rep *rep) {
    const char *ae = http_request_header(req, "Accept-Encoding");
    int compressible = mime_compressible(type), varies = compressible;
    rep->fd = fd;
    rep->size = (uint64_t)st->st_size;
    snprintf(rep->etag, sizeof rep->etag, "\"%llx-%llx\"", (unsigned long long)st->st_size,
             (unsigned long long)st->st_mtim.tv_sec * 1000000000ULL + (unsigned long long)st->st_mtim.tv_nsec);
    if (!ae || (strcmp(req->method, "GET") == 0 && http_request_header(req, "Range"))) return varies;
    int q_br = header_accepts(ae, "br"), q_gz = header_accepts(ae, "gzip"), q_id = header_accepts(ae, "identity");
    static_rep alt = { .fd = -1 };
    if (q_br > 0 && q_br >= q_gz && q_br >= q_id && static_open_sibling(e, rel, st, ".br", "br", &alt)) goto chosen;
    if (q_gz > 0 && q_gz >= q_id && static_open_sibling(e, rel, st, ".gz", "gzip", &alt)) goto chosen;
    if (q_gz > 0 && q_gz >= q_id && compressible && st->st_size >= STATIC_GZIP_MIN && st->st_size <= STATIC_GZIP_MAX) {
        char key[PATH_MAX + 80];
        snprintf(key, sizeof key, "%s/%s %s", e->root, rel, rep->etag);
        size_t len;
        if (!(alt.gz = gzcache_get(key, fd, (size_t)st->st_size))) return varies; /* no gain: the file */
        gzcache_data(alt.gz, &len);
        alt.size = len;
        alt.encoding = "gzip";
        snprintf(alt.etag, sizeof alt.etag, "%.*s-gzip\"", (int)strlen(rep->etag) - 1, rep->etag);
        goto chosen;
    }
    return varies;
chosen:
    *rep = alt;
    close(fd);
    return 1;
}

/* The Range to answer: HEADER_RANGE_NONE also when If-Range names another version. */
static int static_range(http_request *req, const static_rep *rep, time_t mtime, uint64_t *first, uint64_t *last) {
    const char *range = http_request_header(req, "Range"), *if_range = http_request_header(req, "If-Range");
    time_t when;
    if (!range || rep->encoding || strcmp(req->method, "GET") != 0) return HEADER_RANGE_NONE;
    if (if_range) {
        int same = if_range[0] == '"' ? header_etag_matches(if_range, rep->etag, 0)
                                      : header_date(if_range, &when) == 0 && when == mtime;
        if (!same) return HEADER_RANGE_NONE;
    }
    return header_range(range, rep->size, first, last);
}

/* The preconditions of RFC 9110 13.2.2: 412 when If-Match or If-Unmodified-Since fails,
 * 304 when If-None-Match or If-Modified-Since shows the client's copy is current, else 0. */
static int static_preconditions(http_request *req, const static_rep *rep, time_t mtime) {
    const char *im = http_request_header(req, "If-Match"), *ius = http_request_header(req, "If-Unmodified-Since");
    const char *inm = http_request_header(req, "If-None-Match"), *ims = http_request_header(req, "If-Modified-Since");
    time_t when;
    if (im && !header_etag_matches(im, rep->etag, 0)) return 412;
    if (!im && ius && header_date(ius, &when) == 0 && mtime > when) return 412;
    if (inm) return header_etag_matches(inm, rep->etag, 1) ? 304 : 0;
    if (ims && header_date(ims, &when) == 0 && mtime <= when) return 304;
    return 0;
}

/* The body of rep from offset, length bytes: in memory when small, else by sendfile (the
 * response then owns rep->fd, which becomes -1). NULL when out of memory. */
static http_response *static_body(static_rep *rep, uint64_t offset, uint64_t length, const char *type) {
    if (rep->gz) {
        size_t len;
        const void *data = gzcache_data(rep->gz, &len);
        gzcache_entry *gz = rep->gz;
        rep->gz = NULL; /* the response releases it */
        return http_response_shared(data, len, gzcache_release, gz, type);
    }
    if (length <= STATIC_INLINE_MAX) {
        char *buf = malloc(length ? (size_t)length : 1);
        ssize_t got = buf ? pread(rep->fd, buf, (size_t)length, (off_t)offset) : -1;
        if (got == (ssize_t)length) return http_response_take(buf, (size_t)length, type);
        free(buf); /* a short read (the file is changing) or no memory: stream it */
    }
    http_response *resp = http_response_file(rep->fd, offset, length, type);
    if (resp) rep->fd = -1;
    return resp;
}

/* The Cache-Control of a file at path: immutable when a pattern of the mount matches. */
static const char *static_cache_control(const static_mount_entry *e, const char *path) {
    for (size_t i = 0; i < e->nimmutable; i++)
        if (lpattern_search(path, strlen(path), e->immutable[i], strlen(e->immutable[i]), STATIC_PATTERN_STEPS) == 1)
            return STATIC_IMMUTABLE;
    return e->cache_control;
}

/* Whether a missing path gets the mount's fallback page: a GET or HEAD (checked before)
 * for a last segment without a dot, from a client that accepts HTML (a page being
 * navigated to, not an asset or an API call). */
static int static_falls_back(const static_mount_entry *e, http_request *req, const char *rel) {
    const char *slash = strrchr(rel, '/'), *last = slash ? slash + 1 : rel;
    return e->fallback && !strchr(last, '.') && header_accepts(http_request_header(req, "Accept"), "text/html") > 0;
}

/* Opens the file a request names: the file, or a folder's index (rel then names it), or
 * for a missing path the fallback page (*fallback is then set). Answers the request itself
 * when it cannot (and returns -1). */
static int static_open_file(const static_mount_entry *e, http_request *req, char *rel, size_t relcap, struct stat *st,
                            int *fallback) {
    char full[PATH_MAX + 16];
    int fd = static_open_beneath(e, rel, full, sizeof full);
    if ((fd == -ENOENT || fd == -ENOTDIR) && static_falls_back(e, req, rel)) {
        snprintf(rel, relcap, "%s", e->fallback);
        fd = static_open_beneath(e, rel, full, sizeof full);
        *fallback = 1;
    }
    if (fd < 0) {
        int missing = fd == -ENOENT || fd == -ENOTDIR || fd == -EXDEV || fd == -ELOOP || fd == -ENAMETOOLONG;
        if (fd == -EACCES) http_request_fail(req, 403, "forbidden");
        else if (missing) http_request_fail(req, 404, "not found"); /* or a link leading outside */
        else http_request_fail(req, 400, "bad path");
        return -1;
    }
    int ok = fstat(fd, st) == 0;
    if (ok && S_ISDIR(st->st_mode)) {
        size_t plen = strlen(req->path);
        close(fd);
        if (plen == 0 || req->path[plen - 1] != '/') {
            static_redirect_slash(req);
            return -1;
        }
        size_t n = strlen(rel);
        if (!e->index || (size_t)snprintf(rel + n, relcap - n, "%s%s", n ? "/" : "", e->index) >= relcap - n ||
            (fd = static_open_beneath(e, rel, full, sizeof full)) < 0) {
            http_request_fail(req, 404, "not found");
            return -1;
        }
        ok = fstat(fd, st) == 0;
    }
    if (!ok || !S_ISREG(st->st_mode)) {
        close(fd);
        http_request_fail(req, 404, "not found");
        return -1;
    }
    return fd;
}

/* Where the live-reload script goes in an HTML page: before its last </body>, else at its end. */
static size_t static_inject_at(const char *html, size_t len) {
    for (size_t i = len >= 6 ? len - 5 : 0; i-- > 0;)
        if (html[i] == '<' && strncasecmp(html + i, "</body", 6) == 0) return i;
    return len;
}

/* Answers with the HTML page fd (rel beneath the mount) with the live-reload script added:
 * another representation than the file, with an entity tag of its own; sent whole (no
 * range, no compression). */
static void static_serve_injected(const static_mount_entry *e, http_request *req, int fd, const struct stat *st,
                                  const char *type, int fallback) {
    static const char tag[] = DEVSERVER_SCRIPT_TAG;
    size_t size = (size_t)st->st_size, len = size + sizeof tag - 1;
    char last_modified[32];
    static_rep rep = { .fd = -1 };
    snprintf(rep.etag, sizeof rep.etag, "\"%llx-%llx-lr\"", (unsigned long long)st->st_size,
             (unsigned long long)st->st_mtim.tv_sec * 1000000000ULL + (unsigned long long)st->st_mtim.tv_nsec);
    header_format_date(st->st_mtim.tv_sec, last_modified);
    int pre = static_preconditions(req, &rep, st->st_mtim.tv_sec);
    if (pre == 412) {
        http_request_fail(req, 412, "precondition failed");
        return;
    }
    char *page = pre ? NULL : malloc(len + 1);
    http_response *resp = NULL;
    if (pre == 304) {
        resp = http_response_bytes("", 0, NULL);
        len = 0;
    } else if (page && pread(fd, page, size, 0) == (ssize_t)size) {
        size_t at = static_inject_at(page, size);
        memmove(page + at + sizeof tag - 1, page + at, size - at);
        memcpy(page + at, tag, sizeof tag - 1);
        resp = http_response_take(page, len, type);
        page = NULL;
    }
    free(page);
    if (!resp) {
        http_request_fail(req, 500, "cannot read the page");
        return;
    }
    http_response_header(resp, "ETag", rep.etag);
    http_response_header(resp, "Last-Modified", last_modified);
    http_response_header(resp, "Cache-Control", fallback ? "no-cache" : static_cache_control(e, req->path));
    if (e->csp) http_response_header(resp, "Content-Security-Policy", e->csp);
    http_request_respond(req, pre ? pre : 200, resp, strcmp(req->method, "HEAD") == 0 ? 0 : len);
}

int static_serve(const static_mounts *m, http_request *req) {
    const char *rest = NULL;
    const static_mount_entry *e = static_find(m, req->path, &rest);
    char rel[PATH_MAX], last_modified[32], range_text[96];
    static_rep rep = { .fd = -1 };
    struct stat st;
    uint64_t first = 0, last = 0;
    int status = 200;
    http_response *resp = NULL;
    if (!e) return 0;
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
        http_request_fail_allow(req, "GET, HEAD");
        goto out;
    }
    int rc = static_clean_path(rest, rel, sizeof rel);
    if (rc != STATIC_OK) {
        if (rc == STATIC_HIDDEN || rc == STATIC_TOO_LONG) http_request_fail(req, 404, "not found");
        else http_request_fail(req, 400, "bad path");
        goto out;
    }
    int fallback = 0;
    int fd = static_open_file(e, req, rel, sizeof rel, &st, &fallback);
    if (fd < 0) goto out;
    const char *type = mime_type(rel);
    if (e->live_reload && strncmp(type, "text/html", 9) == 0 && st.st_size <= STATIC_INJECT_MAX) {
        static_serve_injected(e, req, fd, &st, type, fallback);
        close(fd);
        goto out;
    }
    int varies = static_choose(e, req, rel, fd, &st, type, &rep);
    header_format_date(st.st_mtim.tv_sec, last_modified);
    int pre = static_preconditions(req, &rep, st.st_mtim.tv_sec);
    int range = pre ? HEADER_RANGE_NONE : static_range(req, &rep, st.st_mtim.tv_sec, &first, &last);
    if (pre == 412) {
        http_request_fail(req, 412, "precondition failed");
        goto out;
    }
    if (range == HEADER_RANGE_UNSATISFIABLE) {
        size_t len = 0;
        resp = http_response_error("range not satisfiable", &len);
        snprintf(range_text, sizeof range_text, "bytes */%llu", (unsigned long long)rep.size);
        if (resp) http_response_header(resp, "Content-Range", range_text);
        http_request_respond(req, 416, resp, len);
        goto out;
    }
    if (pre == 304) {
        /* No body; libmicrohttpd 0.9.75 writes a Content-Length all the same: 0, which
         * caches do not take from a 304 (RFC 9111 3.2), where the full length would make
         * clients that read bodies by it (wrk, older http_parser) wait for bytes. */
        status = 304;
        resp = http_response_bytes("", 0, NULL);
    } else if (range == HEADER_RANGE_ONE) {
        status = 206;
        resp = static_body(&rep, first, last - first + 1, type);
        snprintf(range_text, sizeof range_text, "bytes %llu-%llu/%llu", (unsigned long long)first,
                 (unsigned long long)last, (unsigned long long)rep.size);
        if (resp) http_response_header(resp, "Content-Range", range_text);
    } else {
        resp = static_body(&rep, 0, rep.size, type);
    }
    if (!resp) {
        http_request_fail(req, 500, "out of memory");
        goto out;
    }
    http_response_header(resp, "ETag", rep.etag);
    http_response_header(resp, "Last-Modified", last_modified);
    /* The fallback page answers many paths, and changes with each build of the app. */
    http_response_header(resp, "Cache-Control", fallback ? "no-cache" : static_cache_control(e, req->path));
    if (!rep.encoding) http_response_header(resp, "Accept-Ranges", "bytes");
    if (rep.encoding) http_response_header(resp, "Content-Encoding", rep.encoding);
    if (varies) http_response_header(resp, "Vary", "Accept-Encoding");
    if (e->csp && strncmp(type, "text/html", 9) == 0) http_response_header(resp, "Content-Security-Policy", e->csp);
    uint64_t sent = status == 304 || strcmp(req->method, "HEAD") == 0 ? 0 : status == 206 ? last - first + 1 : rep.size;
    http_request_respond(req, status, resp, sent);
out:
    if (rep.fd >= 0) close(rep.fd);
    gzcache_release(rep.gz);
    return 1;
}
