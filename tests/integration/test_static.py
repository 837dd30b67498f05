"""Static files: a table of request paths and what tokend answers; the root cannot be left."""
import os
import unittest

from harness import TokendTestCase

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


if __name__ == "__main__":
    unittest.main()
