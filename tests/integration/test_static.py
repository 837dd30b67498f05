"""Static files: a table of request paths and what tokend answers; the root cannot be left;
validators, ranges, compression and caching policy, as tables of request headers."""
import gzip
import os
import time
import unittest

from blocks import Block, Get, run_blocks
from harness import TokendTestCase, request

# path as sent on the wire, expected status, expected body (None: any)
CASES = [
    ("/", 200, b"<h1>home</h1>"),
    ("/index.html", 200, b"<h1>home</h1>"),
    ("/app.js", 200, b"console.log(1)"),
    ("/sub/", 200, b"sub index"),
    ("/sub/page.txt", 200, b"page"),
    ("/sub//page.txt", 200, b"page"),
    ("/%73ub/page.txt", 200, b"page"),
    ("/missing.txt", 404, None),
    ("/sub/missing/", 404, None),
    ("/../secret.txt", 400, None),
    ("/sub/../../secret.txt", 400, None),
    ("/%2e%2e/secret.txt", 400, None),
    ("/%2E%2E/secret.txt", 400, None),
    ("/%2e%2e%2fsecret.txt", 400, None),
    ("/sub/%2e%2e/%2e%2e/secret.txt", 400, None),
    ("/%252e%252e/secret.txt", 404, None),
    ("/..%5csecret.txt", 400, None),
    ("/sub\\..\\..\\secret.txt", 400, None),
    ("/index.html%00.txt", 400, None),
    ("/%00", 400, None),
    ("//etc/passwd", 404, None),
    ("/.env", 404, None),
    ("/.git/config", 404, None),
    ("/sub/.hidden", 404, None),
    ("/outside-link", 404, None),
    ("/inside-link", 200, b"page"),
    ("/%", 400, None),
    ("/%zz", 400, None),
    ("/" + "a" * 3000, 404, None),
]


class StaticFiles(TokendTestCase):
    def setUp(self):
        super().setUp()
        root = os.path.join(self.workdir, "site")
        self.write("secret.txt", "SECRET outside the root")
        self.write("site/index.html", "<h1>home</h1>")
        self.write("site/app.js", "console.log(1)")
        self.write("site/sub/index.html", "sub index")
        self.write("site/sub/page.txt", "page")
        self.write("site/sub/.hidden", "hidden")
        self.write("site/.env", "ASSEMBLYAI_API_KEY=leak")
        self.write("site/.git/config", "[core]")
        os.symlink(os.path.join(self.workdir, "secret.txt"), os.path.join(root, "outside-link"))
        os.symlink(os.path.join(root, "sub", "page.txt"), os.path.join(root, "inside-link"))
        self.t = self.tokend(key=None, public=root)

    def test_paths(self):
        for path, status, body in CASES:
            with self.subTest(path=path[:60]):
                r = self.t.get(path)
                self.assertEqual(r.status, status, r)
                self.assertEqual(r.headers.get("x-content-type-options"), "nosniff")
                if body is not None:
                    self.assertEqual(r.body, body)
                self.assertNotIn(b"SECRET", r.body)
                self.assertNotIn(b"leak", r.body)

    def test_content_types(self):
        for path, ctype in [("/", "text/html; charset=utf-8"), ("/app.js", "text/javascript; charset=utf-8"),
                            ("/sub/page.txt", "text/plain; charset=utf-8")]:
            self.assertEqual(self.t.get(path).headers["content-type"], ctype, path)
        self.assertEqual(self.t.get("/missing").headers["content-type"], "application/json")

    def test_folder_without_slash_redirects(self):
        r = self.t.get("/sub?x=1")
        self.assertEqual(r.status, 301)
        self.assertEqual(r.headers["location"], "/sub/?x=1")

    def test_head_has_no_body(self):
        r = self.t.get("/index.html", method="HEAD")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"")
        self.assertEqual(r.headers["content-length"], str(len("<h1>home</h1>")))

    def test_other_methods_get_405_with_allow(self):
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"]:
            r = self.t.get("/index.html", method=method)
            self.assertEqual(r.status, 405, method)
            self.assertEqual(r.headers["allow"], "GET, HEAD")
        r = self.t.get("/token", method="POST")
        self.assertEqual(r.status, 405)
        self.assertEqual(set(r.headers["allow"].split(", ")), {"GET", "HEAD", "OPTIONS"})

    def test_file_sizes(self):
        # Up to 16 KiB a file is read and sent with its headers; above, sendfile streams it.
        for size in [0, 1, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 3 * 1024 * 1024]:
            with self.subTest(size=size):
                data = os.urandom(size)
                with open(os.path.join(self.workdir, "site", f"f{size}.bin"), "wb") as f:
                    f.write(data)
                r = self.t.get(f"/f{size}.bin")
                self.assertEqual(r.status, 200)
                self.assertEqual(r.headers["content-length"], str(size))
                self.assertEqual(r.body, data)


def http_date(t):
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(t))


PAGE = b"".join(b"line %d of a text file\n" % i for i in range(200))      # 4.6 KB, compressible
DATA = os.urandom(100 * 1024)                                               # sendfile, not compressible


class Representations(TokendTestCase):
    """Validators, conditional requests, ranges, compression and caching policy."""

    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.workdir, "site")
        os.makedirs(os.path.join(self.root, "assets"))
        files = {
            "page.txt": PAGE, "data.bin": DATA, "tiny.txt": b"tiny", "logo.png": os.urandom(3000),
            "app.js": PAGE, "app.js.br": b"BROTLI-BYTES", "app.js.gz": gzip.compress(PAGE, mtime=0),
            "stale.css": PAGE, "stale.css.gz": b"OLD", "font.woff2": os.urandom(5000),
            "assets/app-3f2a9c.js": b"hashed", "book.epub": b"epub", "index.html": b"<h1>home</h1>",
        }
        for name, data in files.items():
            with open(os.path.join(self.root, name), "wb") as f:
                f.write(data)
        old = time.time() - 3600
        os.utime(os.path.join(self.root, "stale.css.gz"), (old, old))     # older than stale.css: not used
        self.t = self.tokend(key=None, public=self.root, env={"TOKEND_MAX_HEADER_BYTES": "32768"})
        first = self.t.get("/data.bin")
        self.etag, self.lm = first.headers["etag"], first.headers["last-modified"]
        self.page_etag = self.t.get("/page.txt").headers["etag"]

    def check(self, cases, path):
        for headers, status, want_headers, body in cases:
            headers = {k: v.format(etag=self.etag, lm=self.lm, page_etag=self.page_etag) for k, v in headers.items()}
            with self.subTest(path=path, headers=str(headers)[:120]):
                r = self.t.get(path, headers=headers)
                self.assertEqual(r.status, status, r)
                for name, value in want_headers.items():
                    if value is None:
                        self.assertNotIn(name, r.headers)
                    else:
                        self.assertEqual(r.headers.get(name), value.format(etag=self.etag, lm=self.lm))
                if body is not None:
                    self.assertEqual(r.body, body)

    def test_validators_on_every_file(self):
        r = self.t.get("/data.bin")
        self.assertRegex(r.headers["etag"], r'^"[0-9a-f]+-[0-9a-f]+"$')
        mtime = os.stat(os.path.join(self.root, "data.bin")).st_mtime
        self.assertEqual(r.headers["last-modified"], http_date(int(mtime)))
        self.assertEqual(r.headers["cache-control"], "no-cache")
        self.assertEqual(r.headers["accept-ranges"], "bytes")
        os.utime(os.path.join(self.root, "data.bin"), (mtime + 5, mtime + 5))
        self.assertNotEqual(self.t.get("/data.bin").headers["etag"], r.headers["etag"], "a changed file, another tag")

    def test_conditional_requests(self):
        past, future = http_date(time.time() - 86400), http_date(time.time() + 86400)
        many = ", ".join(f'"tag-{i}"' for i in range(800)) + ', {etag}'       # an 8 KB If-None-Match
        self.check([
            ({"If-None-Match": "{etag}"}, 304, {"etag": "{etag}", "cache-control": "no-cache",
                                               "content-length": "0"}, b""),
            ({"If-None-Match": "W/{etag}"}, 304, {}, b""),
            ({"If-None-Match": '"other", {etag}'}, 304, {}, b""),
            ({"If-None-Match": "*"}, 304, {}, b""),
            ({"If-None-Match": '"other"'}, 200, {}, DATA),
            ({"If-None-Match": '"unterminated'}, 200, {}, DATA),
            ({"If-None-Match": many}, 304, {}, b""),
            ({"If-Modified-Since": "{lm}"}, 304, {"last-modified": "{lm}"}, b""),
            ({"If-Modified-Since": future}, 304, {}, b""),
            ({"If-Modified-Since": past}, 200, {}, DATA),
            ({"If-Modified-Since": "yesterday at noon"}, 200, {}, DATA),
            ({"If-Modified-Since": "{lm}", "If-None-Match": '"other"'}, 200, {}, DATA),
            ({"If-Match": '"other"'}, 412, {}, None),
            ({"If-Match": "{etag}"}, 200, {}, DATA),
            ({"If-Match": "W/{etag}"}, 412, {}, None),
            ({"If-Match": "*"}, 200, {}, DATA),
            ({"If-Unmodified-Since": past}, 412, {}, None),
            ({"If-Unmodified-Since": future}, 200, {}, DATA),
            ({"If-Unmodified-Since": "not a date"}, 200, {}, DATA),
        ], "/data.bin")
        r = self.t.get("/data.bin", method="HEAD", headers={"If-None-Match": self.etag})
        self.assertEqual((r.status, r.body), (304, b""))

    def test_ranges(self):
        n = len(DATA)
        self.check([
            ({"Range": "bytes=0-99"}, 206, {"content-range": f"bytes 0-99/{n}", "content-length": "100"}, DATA[:100]),
            ({"Range": "bytes=102300-"}, 206, {"content-range": f"bytes 102300-{n - 1}/{n}"}, DATA[102300:]),
            ({"Range": "bytes=-100"}, 206, {"content-range": f"bytes {n - 100}-{n - 1}/{n}"}, DATA[-100:]),
            ({"Range": "bytes=50000-"}, 206, {}, DATA[50000:]),          # large: sendfile from an offset
            ({"Range": "bytes=0-999999"}, 206, {"content-range": f"bytes 0-{n - 1}/{n}"}, DATA),
            ({"Range": "bytes=9999999999999999999-"}, 416, {"content-range": f"bytes */{n}"}, None),
            ({"Range": f"bytes={n}-"}, 416, {"content-range": f"bytes */{n}"}, None),
            ({"Range": "bytes=-0"}, 416, {"content-range": f"bytes */{n}"}, None),
            ({"Range": "bytes=5-1"}, 200, {"content-range": None}, DATA),
            ({"Range": "bytes=a-b"}, 200, {}, DATA),
            ({"Range": "bytes=0-0,2-2"}, 200, {}, DATA),
            ({"Range": "bytes=" + ",".join(f"{i}-{i}" for i in range(1000))}, 200, {}, DATA),
            ({"Range": "pages=1-2"}, 200, {}, DATA),
            ({"Range": "bytes=0-9", "If-Range": "{etag}"}, 206, {}, DATA[:10]),
            ({"Range": "bytes=0-9", "If-Range": '"other"'}, 200, {}, DATA),
            ({"Range": "bytes=0-9", "If-Range": "W/{etag}"}, 200, {}, DATA),
            ({"Range": "bytes=0-9", "If-Range": "{lm}"}, 206, {}, DATA[:10]),
            ({"Range": "bytes=0-9", "If-Range": http_date(1)}, 200, {}, DATA),
            ({"Range": "bytes=0-9", "If-None-Match": "{etag}"}, 304, {}, b""),
        ], "/data.bin")
        self.check([({"Range": "bytes=10-19"}, 206, {"content-range": f"bytes 10-19/{len(PAGE)}"}, PAGE[10:20])],
                   "/page.txt")
        r = self.t.get("/data.bin", method="HEAD", headers={"Range": "bytes=0-9"})
        self.assertEqual((r.status, r.headers["content-length"]), (200, str(n)), "HEAD ignores Range")
        empty = os.path.join(self.root, "empty.txt")
        open(empty, "w").close()
        self.assertEqual(self.t.get("/empty.txt", headers={"Range": "bytes=0-"}).status, 416)

    def test_compression(self):
        gz_etag = self.page_etag[:-1] + '-gzip"'
        self.check([
            ({"Accept-Encoding": "gzip, deflate, br"}, 200, {"content-encoding": "br", "vary": "Accept-Encoding",
                                                              "accept-ranges": None}, b"BROTLI-BYTES"),
            ({"Accept-Encoding": "gzip"}, 200, {"content-encoding": "gzip"}, gzip.compress(PAGE, mtime=0)),
            ({"Accept-Encoding": "br;q=0.5, gzip;q=0.9"}, 200, {"content-encoding": "gzip"}, None),
            ({"Accept-Encoding": "gzip;q=0, br;q=0"}, 200, {"content-encoding": None, "vary": "Accept-Encoding"}, PAGE),
            ({"Accept-Encoding": "identity"}, 200, {"content-encoding": None}, PAGE),
            ({}, 200, {"content-encoding": None, "vary": "Accept-Encoding"}, PAGE),
            ({"Accept-Encoding": "gzip;q=abc"}, 200, {"content-encoding": None}, PAGE),
            ({"Accept-Encoding": "br;q=1.5, gzip;q=-1"}, 200, {"content-encoding": None}, PAGE),
            ({"Accept-Encoding": ";;;,,q=1,;q=0.5"}, 200, {"content-encoding": None}, PAGE),
            ({"Accept-Encoding": "*;q=0.001"}, 200, {"content-encoding": "br"}, b"BROTLI-BYTES"),
            ({"Accept-Encoding": "gzip", "Range": "bytes=0-4"}, 206, {"content-encoding": None}, PAGE[:5]),
        ], "/app.js")
        for _ in range(2):      # made once, then from the cache: the same bytes
            r = self.t.get("/page.txt", headers={"Accept-Encoding": "gzip"})
            self.assertEqual((r.status, r.headers["content-encoding"], r.headers["etag"]), (200, "gzip", gz_etag))
            self.assertEqual(gzip.decompress(r.body), PAGE)
            self.assertLess(len(r.body), len(PAGE) // 4)
        self.assertEqual(self.t.get("/page.txt", headers={"Accept-Encoding": "gzip", "If-None-Match": gz_etag}).status,
                         304)
        self.check([({"Accept-Encoding": "gzip"}, 200, {"content-encoding": None, "vary": "Accept-Encoding"}, b"tiny")],
                   "/tiny.txt")
        self.check([({"Accept-Encoding": "gzip"}, 200, {"content-encoding": None, "vary": None}, None)], "/logo.png")
        self.check([({"Accept-Encoding": "gzip"}, 200, {"content-encoding": None, "vary": None}, None)], "/font.woff2")
        r = self.t.get("/stale.css", headers={"Accept-Encoding": "gzip"})
        self.assertEqual(gzip.decompress(r.body), PAGE, "a stale sibling is not sent: compressed from the file")
        r = self.t.get("/app.js", method="HEAD", headers={"Accept-Encoding": "br"})
        self.assertEqual((r.headers["content-encoding"], r.headers["content-length"]), ("br", "12"))

    def test_media_types(self):
        for path, ctype in [("/book.epub", "application/epub+zip"), ("/page.txt", "text/plain; charset=utf-8"),
                            ("/font.woff2", "font/woff2"), ("/logo.png", "image/png"),
                            ("/app.js", "text/javascript; charset=utf-8")]:
            self.assertEqual(self.t.get(path).headers["content-type"], ctype, path)

    def test_caching_policy_from_the_script(self):
        script = self.write("static.lua", """
            local tokend = require "tokend"
            tokend.static("/", tokend.config.public, {
              max_age = 600, immutable = { "%.woff2$", "^/assets/.+%-%x+%.js$" }, index = "page.txt" })
        """)
        t = self.tokend(key=None, public=self.root, script=script)
        for path, cache in [("/data.bin", "max-age=600"), ("/font.woff2", "public, max-age=31536000, immutable"),
                            ("/assets/app-3f2a9c.js", "public, max-age=31536000, immutable")]:
            self.assertEqual(t.get(path).headers["cache-control"], cache, path)
        self.assertEqual(t.get("/").body, PAGE, "index = page.txt")
        self.assertEqual(t.get("/assets/").status, 404, "no page.txt there")
        script = self.write("noindex.lua", 'require("tokend").static("/", require("tokend").config.public, '
                                           '{ index = false })')
        t = self.tokend(key=None, public=self.root, script=script)
        self.assertEqual(t.get("/").status, 404)
        for options, error in [("{ max_age = -1 }", "max_age must be"), ("{ immutable = { '[' } }", "malformed"),
                               ("{ index = '../x' }", "must be a file name"), ("{ immutable = 'x' }", "list of Lua")]:
            bad = self.write("bad.lua", f'require("tokend").static("/", "{self.root}", {options})')
            r = self.run_tokend(["--check", "--script", bad])
            self.assertEqual(r.returncode, 1, options)
            self.assertIn(error, r.stderr, options)


class LargeHeaders(TokendTestCase):
    def test_an_8_kb_list_of_tags_is_past_the_default_limit(self):
        self.write("site/a.txt", "a")
        t = self.tokend(key=None, public=os.path.join(self.workdir, "site"))
        many = ", ".join(f'"tag-{i}"' for i in range(800))
        self.assertGreater(len(many), 8192)
        self.assertEqual(t.get("/a.txt", headers={"If-None-Match": many}).status, 431)
        self.assertEqual(t.get("/a.txt").status, 200, "and the server goes on")


HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}   # a browser navigating
SPA = {"index.html": "<div id=app></div>", "app.js": "app()", "assets/logo.svg": "<svg/>", "docs/index.html": "docs",
       ".secret": "s"}

FALLBACK_BLOCKS = [
    Block("a single-page app: missing pages get its page, assets keep their 404",
          'tokend.static("/", FILES, { fallback = "index.html", max_age = 3600 })', [
              Get("/users/42", headers=HTML, status=200, body="<div id=app></div>",
                  header={"cache-control": "no-cache", "content-type": "text/html; charset=utf-8"}),
              Get("/deep/route/", headers=HTML, status=200, body="<div id=app></div>"),
              Get("/users/42", method="HEAD", headers=HTML, status=200, body=""),
              Get("/users/42", headers={"Accept": "application/json"}, status=404),
              Get("/users/42", headers={"Accept": "*/*"}, status=404),       # fetch() and scripts: no page
              Get("/users/42", status=404),
              Get("/users/42", headers={"Accept": "text/html;q=0"}, status=404),
              Get("/missing.js", headers=HTML, status=404),
              Get("/assets/missing.svg", headers=HTML, status=404),
              Get("/v1.2/thing", headers=HTML, status=200),                  # the last segment decides
              Get("/app.js", headers=HTML, status=200, body="app()", header={"cache-control": "max-age=3600"}),
              Get("/", headers=HTML, status=200, body="<div id=app></div>", header={"cache-control": "max-age=3600"}),
              Get("/docs/", headers=HTML, status=200, body="docs"),
              Get("/docs", headers=HTML, status=301),
              Get("/.secret", headers=HTML, status=404),
              Get("/.hidden/route", headers=HTML, status=404),
              Get("/users/42", method="POST", send="", headers=HTML, status=405),
          ], files=SPA, fake=False),
    Block("under a prefix, with its page in a subfolder",
          'tokend.static("/app", FILES, { fallback = "docs/index.html" })', [
              Get("/app/settings", headers=HTML, status=200, body="docs"),
              Get("/other", headers=HTML, status=404),
          ], files=SPA, fake=False),
    Block("a fallback that is missing is a 404 like the path",
          'tokend.static("/", FILES, { fallback = "nothing.html" })', [
              Get("/users/42", headers=HTML, status=404),
          ], files=SPA, fake=False),
]


class Fallback(TokendTestCase):
    def test_blocks(self):
        run_blocks(self, FALLBACK_BLOCKS)

    def test_bad_fallbacks_raise(self):
        self.write("site/index.html", "x")
        for value, words in [('"../index.html"', "must be a file's path"), ('"/index.html"', "must be a file's path"),
                             ('"./index.html"', "must be a file's path"), ('""', "must be a file's path"),
                             ("true", "fallback must be")]:
            with self.subTest(value=value):
                script = self.write("bad.lua", 'local tokend = require "tokend"\n'
                                    f'tokend.static("/", "site", {{ fallback = {value} }})\n')
                r = self.run_tokend(["--check", "--script", script])
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn(words, r.stderr)


class Favicon(TokendTestCase):
    def test_the_page_has_a_favicon(self):
        t = self.tokend(key=None)
        r = t.get("/favicon.ico")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers["content-type"].startswith("image/"))
        self.assertIn(b'rel="icon"', t.get("/").body)


if __name__ == "__main__":
    unittest.main()
