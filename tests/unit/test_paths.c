/* test_paths.c: static path cleaning, MIME types and route matching, as tables. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "router.h"
#include "mime.h"
#include "static.h"

static void test_clean_path(void) {
    static const struct {
        const char *in;
        int rc;
        const char *out;
    } cases[] = {
        { "/", STATIC_OK, "" },
        { "", STATIC_OK, "" },
        { "/index.html", STATIC_OK, "index.html" },
        { "//a///b/", STATIC_OK, "a/b" },
        { "/a/b/c.js", STATIC_OK, "a/b/c.js" },
        { "/..", STATIC_BAD_PATH, "" },
        { "/a/../b", STATIC_BAD_PATH, "" },
        { "/a/./b", STATIC_BAD_PATH, "" },
        { "/..\\x", STATIC_BAD_PATH, "" },
        { "/a\\b", STATIC_BAD_PATH, "" },
        { "/.env", STATIC_HIDDEN, "" },
        { "/.git/config", STATIC_HIDDEN, "" },
        { "/a/.hidden/b", STATIC_HIDDEN, "" },
        { "/a..b/c", STATIC_OK, "a..b/c" },
        { "/...", STATIC_HIDDEN, "" },
        { "/%2e%2e", STATIC_OK, "%2e%2e" }, /* already decoded once: a literal name */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[64];
        int rc = static_clean_path(cases[i].in, out, sizeof out);
        CHECK(rc == cases[i].rc, "clean \"%s\": rc %d, want %d", cases[i].in, rc, cases[i].rc);
        if (rc == STATIC_OK) CHECK_STR(out, cases[i].out, cases[i].in);
    }
    char tiny[4];
    CHECK(static_clean_path("/abcdef", tiny, sizeof tiny) == STATIC_TOO_LONG, "too long for the buffer");
}

static void test_mime(void) {
    /* A mime.types of the system's format, and the built-in table for what it lacks. */
    char path[] = "/tmp/tokend-mime-XXXXXX";
    int fd = mkstemp(path);
    static const char types[] = "# comment\ntext/x-custom\t\tcst\napplication/x-foo  foo FOO2\nimage/png png\n"
                                "text/javascript js mjs\nnot-a-type x\n\n";
    CHECK(fd >= 0 && write(fd, types, sizeof types - 1) == (ssize_t)(sizeof types - 1), "temporary mime.types");
    close(fd);
    CHECK(mime_load(path) > 20, "loaded");
    unlink(path);
    static const struct {
        const char *name, *type;
    } cases[] = {
        { "a.cst", "text/x-custom; charset=utf-8" },
        { "b.foo2", "application/x-foo" },
        { "B.FOO", "application/x-foo" },
        { "index.html", "text/html; charset=utf-8" },
        { "app.JS", "text/javascript; charset=utf-8" },
        { "worklet.mjs", "text/javascript; charset=utf-8" },
        { "a.css", "text/css; charset=utf-8" },
        { "x.png", "image/png" },
        { "noext", "application/octet-stream" },
        { "a.x", "application/octet-stream" },
        { "dir.v1/file", "application/octet-stream" },
        { "a.wasm", "application/wasm" },
        { ".hidden", "application/octet-stream" },
        { "a.", "application/octet-stream" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK_STR(mime_type(cases[i].name), cases[i].type, cases[i].name);
    static const struct {
        const char *type;
        int yes;
    } compress[] = {
        { "text/html; charset=utf-8", 1 },
        { "application/json", 1 },
        { "image/svg+xml", 1 },
        { "application/ld+json", 1 },
        { "application/atom+xml", 1 },
        { "application/wasm", 1 },
        { "image/png", 0 },
        { "font/woff2", 0 },
        { "application/gzip", 0 },
        { "video/webm", 0 },
    };
    for (size_t i = 0; i < sizeof compress / sizeof compress[0]; i++)
        CHECK(mime_compressible(compress[i].type) == compress[i].yes, "%s", compress[i].type);
}

static void test_router(void) {
    router *r = router_create();
    char err[200];
    CHECK(router_add(r, "GET", "/token", 1, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(router_add(r, "GET", "/users/:id", 2, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(router_add(r, "GET", "/users/me", 3, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(router_add(r, "POST", "/users/:id/keys/:key", 4, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(router_add(r, "DELETE", "/token", 5, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(router_add(r, "GET", "/api/users/:user/rooms/:room", 6, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(router_add(r, "GET", "/hello world", 7, NULL, err, sizeof err) == 0, "%s", err);
    static const struct {
        const char *pattern, *method, *err;
    } bad[] = {
        { "token", "GET", "must start with /" }, { "/a//b", "GET", "empty segment" },
        { "/a/:", "GET", "without a name" },     { "/token", "GET", "already defined" },
        { "/x", "get", "bad HTTP method" },      { "/x", "", "bad HTTP method" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        CHECK(router_add(r, bad[i].method, bad[i].pattern, 9, NULL, err, sizeof err) < 0 && strstr(err, bad[i].err),
              "%s %s: error \"%s\" should mention \"%s\"", bad[i].method, bad[i].pattern, err, bad[i].err);
    }
    static const struct {
        const char *method, *path;
        int rc, handler;
        const char *params, *allow;
    } cases[] = {
        { "GET", "/token", ROUTER_FOUND, 1, "", "" },
        { "HEAD", "/token", ROUTER_FOUND, 1, "", "" },
        { "GET", "/token/", ROUTER_FOUND, 1, "", "" },
        { "POST", "/token", ROUTER_METHOD_NOT_ALLOWED, 0, "", "GET, HEAD, DELETE" },
        { "GET", "/users/42", ROUTER_FOUND, 2, "id=42;", "" },
        { "GET", "/users/me", ROUTER_FOUND, 3, "", "" },
        { "POST", "/users/7/keys/abc", ROUTER_FOUND, 4, "id=7;key=abc;", "" },
        { "GET", "/users", ROUTER_NOT_FOUND, 0, "", "" },
        { "GET", "/users/42/x", ROUTER_NOT_FOUND, 0, "", "" },
        { "GET", "/users//", ROUTER_NOT_FOUND, 0, "", "" },
        { "GET", "/tokens", ROUTER_NOT_FOUND, 0, "", "" },
        { "GET", "/", ROUTER_NOT_FOUND, 0, "", "" },
        /* Split first, then decoded: %2F stays in its segment; parameters are raw here. */
        { "GET", "/api/users/u1/rooms/r%2F2", ROUTER_FOUND, 6, "user=u1;room=r%2F2;", "" },
        { "GET", "/api/users/u%201/rooms/r", ROUTER_FOUND, 6, "user=u%201;room=r;", "" },
        { "GET", "/api/users/u1%2Frooms/r", ROUTER_NOT_FOUND, 0, "", "" },
        { "GET", "/users%2F42", ROUTER_NOT_FOUND, 0, "", "" },
        { "GET", "/hello%20world", ROUTER_FOUND, 7, "", "" },
        { "GET", "/t%6Fken", ROUTER_FOUND, 1, "", "" },
        { "GET", "/token?x=1", ROUTER_FOUND, 1, "", "" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        router_result m;
        char allow[64], params[128] = "";
        memset(&m, 0xA5, sizeof m); /* whatever the caller's stack held */
        int rc = router_match(r, cases[i].method, cases[i].path, strcspn(cases[i].path, "?"), &m, allow, sizeof allow);
        CHECK(rc == cases[i].rc, "%s %s: rc %d, want %d", cases[i].method, cases[i].path, rc, cases[i].rc);
        if (rc == ROUTER_FOUND) {
            CHECK(m.handler == cases[i].handler, "%s %s: handler %d", cases[i].method, cases[i].path, m.handler);
            for (size_t p = 0; p < m.nparams; p++) {
                size_t o = strlen(params);
                snprintf(params + o, sizeof params - o, "%s=%.*s;", m.params[p].name, (int)m.params[p].value_len,
                         m.params[p].value);
            }
            CHECK_STR(params, cases[i].params, cases[i].path);
        }
        if (rc == ROUTER_METHOD_NOT_ALLOWED) CHECK_STR(allow, cases[i].allow, cases[i].path);
        if (rc != ROUTER_FOUND)
            CHECK(m.nparams == 0, "%s %s: no params when not found", cases[i].method, cases[i].path);
    }
    router_free(r, NULL, NULL);
}

int main(void) {
    test_clean_path();
    test_mime();
    test_router();
    return check_report("paths");
}
