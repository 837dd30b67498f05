"""tokend.proxy: requests under a prefix forwarded to a backend (tests/fakes/backend.py), their
answers streamed back: what passes and what does not, X-Forwarded-*, large answers with flat
memory, a backend down or slow, loops, the hooks that guard the proxied paths."""
import os
import socket
import sys
import time
import unittest

from harness import SRC, TokendTestCase, request, RSS_IS_TOKENDS

sys.path.insert(0, os.path.join(SRC, "tests", "fakes"))
from backend import Backend  # noqa: E402

PRELUDE = 'local tokend = require "tokend"\n'


def rss_kib(pid, field="VmHWM"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


class Proxy(TokendTestCase):
    def setUp(self):
        super().setUp()
        self.backend = Backend()
        self.addCleanup(self.backend.stop)

    def serve(self, lua, env=None, args=(), **kw):
        script = self.write("proxy.lua", PRELUDE + lua.replace("BACKEND", self.backend.url))
        return self.tokend(key=None, script=script, env=env, args=args, **kw)

    def test_method_body_headers_path_and_query_pass(self):
        t = self.serve('tokend.proxy("/api", "BACKEND")')
        r = t.get("/api/echo/a%2Fb?x=1&y=%20z", method="PUT", body='{"a": 1}',
                  headers={"Content-Type": "application/json", "X-Custom": "yes", "Cookie": "s=1",
                           "Authorization": "Bearer t"})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["x-backend"], "fake")
        echo = r.json()
        self.assertEqual((echo["method"], echo["target"], echo["body"]), ("PUT", "/api/echo/a%2Fb?x=1&y=%20z", '{"a": 1}'))
        h = echo["headers"]
        for name, value in [("content-type", "application/json"), ("x-custom", "yes"), ("cookie", "s=1"),
                            ("authorization", "Bearer t"), ("content-length", "8"),
                            ("host", f"127.0.0.1:{self.backend.port}")]:
            self.assertEqual(h.get(name), value, name)
        # Nothing of libcurl's own: no Accept, no Expect, no form Content-Type on a bare POST.
        self.assertNotIn("accept", h)
        self.assertNotIn("expect", h)
        bare = t.get("/api/echo", method="POST", body="x" * 5000).json()["headers"]
        self.assertNotIn("content-type", bare)
        self.assertNotIn("expect", bare)
        self.assertEqual(t.get("/api/echo", method="DELETE").json()["method"], "DELETE")
        head = t.get("/api/echo", method="HEAD")
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(self.backend.requests, 4)

    def test_strip_prefix_and_a_backend_path(self):
        t = self.serve('tokend.proxy("/api", "BACKEND", { strip_prefix = true })\n'
                       'tokend.proxy("/v1", "BACKEND/base/", { headers = { ["X-Api-Key"] = "k1", Cookie = false } })')
        self.assertEqual(t.get("/api/echo?q=1").json()["target"], "/echo?q=1")
        self.assertEqual(t.get("/api").json()["target"], "/")
        echo = t.get("/v1/echo", headers={"Cookie": "session=secret"}).json()
        self.assertEqual(echo["target"], "/base/v1/echo")
        self.assertEqual(echo["headers"].get("x-api-key"), "k1")
        self.assertNotIn("cookie", echo["headers"])

    def test_hop_by_hop_headers_stay_on_their_hop_both_ways(self):
        t = self.serve('tokend.proxy("/api", "BACKEND", { strip_prefix = true })')
        h = t.get("/api/echo", headers={"Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1",
                                        "Keep-Alive": "timeout=9", "TE": "trailers", "Proxy-Authorization": "Basic x",
                                        "Proxy-Connection": "keep-alive", "Trailer": "X"}).json()["headers"]
        for name in ["x-secret-hop", "keep-alive", "te", "proxy-authorization", "proxy-connection", "trailer"]:
            self.assertNotIn(name, h)
        self.assertNotEqual(h.get("connection"), "keep-alive, X-Secret-Hop")
        r = t.get("/api/hop")
        self.assertEqual((r.status, r.body, r.headers.get("x-end")), (200, b"ok", "1"))
        for name in ["x-hop", "keep-alive", "proxy-authenticate"]:
            self.assertNotIn(name, r.headers)
        self.assertNotEqual(r.headers.get("connection"), "close, X-Hop")
        self.assertEqual(r.headers["date"], "Mon, 01 Jan 2001 00:00:00 GMT")
        # An upgrade (a WebSocket) is not forwarded.
        r = t.get("/api/echo", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
        self.assertEqual(r.status, 501)
        self.assertIn("WebSocket", r.json()["error"])

    def test_x_forwarded_headers(self):
        t = self.serve('tokend.proxy("/api", "BACKEND", { strip_prefix = true })')
        h = t.get("/api/echo", headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil",
                                        "X-Forwarded-Proto": "https", "Forwarded": "for=6.6.6.6",
                                        "Host": f"localhost:{t.port}"}).json()["headers"]
        self.assertEqual(h["x-forwarded-for"], "127.0.0.1")        # the client's own words are not passed on
        self.assertEqual(h["x-forwarded-proto"], "http")
        self.assertEqual(h["x-forwarded-host"], f"localhost:{t.port}")
        self.assertNotIn("forwarded", h)
        self.assertRegex(h["via"], r"^1\.1 tokend-[0-9a-f]{8}$")
        t.stop()
        t = self.serve('tokend.proxy("/api", "BACKEND", { strip_prefix = true })',
                       args=["--trusted-proxies", "127.0.0.1"])
        h = t.get("/api/echo", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
                                        "X-Forwarded-Host": "app.example", "Via": "1.1 edge"}).json()["headers"]
        self.assertEqual(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1")      # a trusted proxy's, extended
        self.assertEqual((h["x-forwarded-proto"], h["x-forwarded-host"]), ("https", "app.example"))
        self.assertRegex(h["via"], r"^1\.1 edge, 1\.1 tokend-[0-9a-f]{8}$")

    def test_fifty_megabytes_stream_through_with_flat_memory(self):
        t = self.serve('tokend.proxy("/api", "BACKEND", { strip_prefix = true })')
        t.get("/api/echo")
        before = rss_kib(t.proc.pid, "VmRSS")
        for path in ["/api/big?mb=50", "/api/chunked?mb=50"]:
            with self.subTest(path=path):
                with socket.create_connection(("127.0.0.1", t.port), timeout=30) as s:
                    s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
                    f = s.makefile("rb")
                    status = f.readline()
                    self.assertIn(b" 200 ", status)
                    headers = {}
                    while (line := f.readline().strip()):
                        name, value = line.decode().split(":", 1)
                        headers[name.lower()] = value.strip()
                    total, slow_until = 0, 4 * 1024 * 1024
                    if headers.get("transfer-encoding") == "chunked":
                        while (size := int(f.readline().strip(), 16)):
                            total += len(f.read(size))
                            f.readline()
                            if total < slow_until:
                                time.sleep(0.002)       # a slow client first: the backend must wait
                    else:
                        self.assertEqual(headers["content-length"], str(50 * 1024 * 1024))
                        while total < 50 * 1024 * 1024:
                            chunk = f.read1(65536)
                            self.assertTrue(chunk, "the answer ended early")
                            total += len(chunk)
                            if total < slow_until:
                                time.sleep(0.002)
                    self.assertEqual(total, 50 * 1024 * 1024)
        grown = rss_kib(t.proc.pid) - before
        if RSS_IS_TOKENDS:
            self.assertLess(grown, 16 * 1024, f"tokend's memory grew by {grown} KiB for 50 MB answers")

    def test_a_client_that_leaves_mid_answer_ends_the_transfer(self):
        t = self.serve('tokend.proxy("/api", "BACKEND", { strip_prefix = true })')
        t.get("/api/echo")
        base = len(os.listdir(f"/proc/{t.proc.pid}/fd"))
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", t.port), timeout=10) as s:
                s.sendall(b"GET /api/big?mb=500 HTTP/1.1\r\nHost: localhost\r\n\r\n")
                got = 0
                while got < 1024 * 1024:
                    got += len(s.recv(65536))
        deadline = time.time() + 10
        while len(os.listdir(f"/proc/{t.proc.pid}/fd")) > base + 1 and time.time() < deadline:
            time.sleep(0.1)
        self.assertLessEqual(len(os.listdir(f"/proc/{t.proc.pid}/fd")), base + 1, "transfers left behind")
        self.assertEqual(t.get("/api/echo").status, 200)

    def test_a_backend_that_is_down_or_slow(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        t = self.serve(f'tokend.proxy("/down", "http://127.0.0.1:{closed_port}")\n'
                       'tokend.proxy("/api", "BACKEND", { strip_prefix = true, timeout_ms = 400 })')
        r = t.get("/down/x")
        self.assertEqual((r.status, r.json()), (502, {"error": f"the backend at http://127.0.0.1:{closed_port} is not "
                                                               "answering"}))
        r = t.get("/api/hang")
        self.assertEqual(r.status, 504)
        self.assertIn("did not answer within 400 ms", r.json()["error"])
        self.assertEqual(t.get("/api/reset").status, 502)
        self.assertEqual(t.get("/api/slow?ms=100").status, 200)
        self.assertIn("proxy: http://127.0.0.1:", t.log)

    def test_answers_without_a_body_and_redirects_pass_as_they_are(self):
        t = self.serve('tokend.proxy("/api", "BACKEND", { strip_prefix = true })')
        for code in [204, 304]:
            r = t.get(f"/api/status?code={code}")
            self.assertEqual((r.status, r.body, r.headers.get("etag")), (code, b"", '"v1"'))
        r = t.get("/api/redirect")
        self.assertEqual((r.status, r.headers["location"]), (302, "/echo"))

    def test_a_loop_is_stopped(self):
        t = self.serve('tokend.proxy("/self", "http://127.0.0.1:" .. tokend.config.port)')
        r = t.get("/self/x")
        self.assertEqual(r.status, 508)
        self.assertIn("loop", r.json()["error"])
        deadline = time.time() + 5          # a line is written once its answer has gone out
        while t.log.count("GET /self/x 508") < 2 and time.time() < deadline:
            time.sleep(0.02)
        self.assertEqual(t.log.count("GET /self/x 508"), 2, t.log)        # went round once, then stopped
        t.stop()
        t = self.serve('tokend.proxy("/api", "BACKEND")')
        self.assertEqual(t.get("/api/echo", headers={"Via": ", ".join(["1.1 p"] * 25)}).status, 508)
        self.assertEqual(self.backend.requests, 0)

    def test_hooks_routes_and_paths_come_first(self):
        t = self.serve('''
tokend.before(function(req)
  if req.path:match("^/api/admin") and req.headers["x-admin"] ~= "yes" then return 403, { error = "admins only" } end
end)
tokend.route("GET", "/api/local", function() return 200, "answered here" end)
tokend.proxy("/api", "BACKEND", { strip_prefix = true })
tokend.static("/", tokend.config.public)
''')
        self.assertEqual(t.get("/api/admin/echo").status, 403)
        self.assertEqual(t.get("/api/%61dmin/echo").status, 403)            # the hook sees the decoded path
        self.assertEqual(self.backend.requests, 0)
        self.assertEqual(t.get("/api/admin/echo", headers={"X-Admin": "yes"}).status, 200)
        self.assertEqual(t.get("/api/local").body, b"answered here")
        self.assertEqual(t.get("/api/x/../admin/echo").status, 400)          # no path the backend resolves past the hook
        self.assertEqual(t.get("/api/x/%2e%2e/admin/echo").status, 400)
        self.assertEqual(t.get("/%61pi/echo").status, 404)                   # an escaped prefix is not forwarded
        self.assertEqual(self.backend.requests, 1)
        self.assertEqual(t.get("/").status, 200)                             # the rest: static files

    def test_the_default_script_forwards_api_and_falls_back_when_asked(self):
        t = self.tokend(key=None, policy={"API_BACKEND": self.backend.url, "SPA_FALLBACK": "true"})
        self.assertEqual(t.get("/api/echo?q=1").json()["target"], "/api/echo?q=1")
        r = t.get("/settings/profile", headers={"Accept": "text/html"})
        self.assertEqual(r.status, 200)
        self.assertIn(b"<title>Live transcription", r.body)
        self.assertEqual(t.get("/settings/profile").status, 404)
        t.stop()
        t = self.tokend(key=None)           # by default: neither
        self.assertEqual(t.get("/api/echo").status, 404)
        self.assertEqual(t.get("/settings/profile", headers={"Accept": "text/html"}).status, 404)
        self.assertEqual(self.backend.requests, 1)

    def test_script_mistakes_raise(self):
        cases = [
            ('tokend.proxy("api", "http://127.0.0.1:1")', "prefix"),
            ('tokend.proxy("/api", "ftp://127.0.0.1:1")', "is not http(s)"),
            ('tokend.proxy("/api", "http://user:pw@127.0.0.1:1")', "no user name"),
            ('tokend.proxy("/api", "http://127.0.0.1:1/?q=1")', "no query"),
            ('tokend.proxy("/api", "http://127.0.0.1:1", { timeout = 5 })', "unknown option"),
            ('tokend.proxy("/api", "http://127.0.0.1:1", { timeout_ms = 0 })', "timeout_ms"),
            ('tokend.proxy("/api", "http://127.0.0.1:1", { headers = { ["Bad Name"] = "x" } })', "Name: value"),
            ('tokend.proxy("/api", "http://127.0.0.1:1", { headers = { X = "a\\r\\nB: c" } })', "Name: value"),
            ('tokend.route("GET", "/x", function() tokend.proxy("/a", "http://127.0.0.1:1") end)', None),
        ]
        for lua, words in cases:
            with self.subTest(lua=lua):
                script = self.write("bad.lua", PRELUDE + lua)
                r = self.run_tokend(["--check", "--script", script])
                if words is None:
                    self.assertEqual(r.returncode, 0, r.stderr)
                    t = self.tokend(key=None, script=script)
                    self.assertEqual(t.get("/x").status, 500)
                    self.assertIn("tokend.proxy: only while the script loads", t.wait_log("only while"))
                    t.stop()
                else:
                    self.assertEqual(r.returncode, 1, r.stderr)
                    self.assertIn("tokend.proxy", r.stderr)
                    self.assertIn(words, r.stderr)


if __name__ == "__main__":
    unittest.main()
