"""The development server: HTTPS (certificate files, HTTPS alone or beside HTTP, hostile
clients), the development CA (made on first use, private, reused, its leaf made again when the
names change), --dev and --dev-ca, the reserved paths under /__tokend/."""
import http.client
import os
import socket
import ssl
import stat
import subprocess
import time
import unittest

from harness import BIN, DEFAULT_SCRIPT, SRC, TokendTestCase, free_port, make_ca, read_line, request, tls_context


def cert_text(path):
    return subprocess.run(["openssl", "x509", "-in", path, "-noout", "-text"], capture_output=True, text=True,
                          check=True).stdout


def machine_addresses():
    """The machine's addresses but loopback and IPv6 link-local, as hostname -I lists them."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout
    return out.split()


def closed_or_answered(port, payload, timeout=10):
    """Sends payload on a new connection to port and reads until the server closes it:
    returns what came back (b"" for a bare close); raises socket.timeout on a hang."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        got = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    return got
                got += chunk
        except ConnectionResetError:
            return got


class Https(TokendTestCase):
    def setUp(self):
        super().setUp()
        self.ca, self.cert, self.key = make_ca(self.workdir)
        self.tls = tls_context(self.ca)

    def test_https_alone_on_the_port(self):
        t = self.tokend(key=None, args=["--tls-cert", self.cert, "--tls-key", self.key])
        self.assertIn("listening on https://127.0.0.1:", t.stdout_lines[0])
        self.assertEqual(t.tls_port, t.port)
        r = request(t.port, "/healthz", tls=self.tls)
        self.assertEqual(r.status, 200)
        r = request(t.port, "/", tls=self.tls, host="localhost")
        self.assertEqual(r.status, 200)
        self.assertIn(b"<!doctype html>", r.body.lower())

    def test_https_beside_http(self):
        tls_port = free_port()
        t = self.tokend(key=None, args=["--tls-cert", self.cert, "--tls-key", self.key, "--tls-port", str(tls_port)])
        self.assertRegex(t.stdout_lines[0], rf"listening on http://127\.0\.0\.1:\d+ and https://127\.0\.0\.1:{tls_port}$")
        self.assertEqual(t.tls_port, tls_port)
        self.assertEqual(t.get("/healthz").status, 200)
        self.assertEqual(request(tls_port, "/healthz", tls=self.tls).status, 200)
        with self.assertRaises(ssl.SSLError):        # the plain port speaks no TLS
            request(t.port, "/healthz", tls=self.tls)

    def test_a_large_file_over_https(self):
        """Files over 16 KiB go out with sendfile over plain HTTP; over TLS, libmicrohttpd reads them."""
        body = os.urandom(3 * 1024 * 1024 + 17)
        os.makedirs(os.path.join(self.workdir, "site"))
        with open(os.path.join(self.workdir, "site", "big.bin"), "wb") as f:
            f.write(body)
        t = self.tokend(key=None, public=os.path.join(self.workdir, "site"),
                        args=["--tls-cert", self.cert, "--tls-key", self.key])
        r = request(t.port, "/big.bin", tls=self.tls)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, body)
        r = request(t.port, "/big.bin", tls=self.tls, headers={"Range": "bytes=1000-1999"})
        self.assertEqual((r.status, r.body), (206, body[1000:2000]))

    def test_plain_http_to_the_https_port_is_closed_not_left_hanging(self):
        t = self.tokend(key=None, args=["--tls-cert", self.cert, "--tls-key", self.key])
        for payload in [b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", b"\x00" * 64, b"PRI * HTTP/2.0\r\n\r\n"]:
            with self.subTest(payload=payload[:20]):
                self.assertEqual(closed_or_answered(t.port, payload), b"")
        self.assertEqual(request(t.port, "/healthz", tls=self.tls).status, 200)     # still serving

    def test_slow_handshakes_are_cut_by_the_request_deadline(self):
        t = self.tokend(key=None, args=["--tls-cert", self.cert, "--tls-key", self.key],
                        env={"TOKEND_REQUEST_TIMEOUT_S": "1"})
        for payload in [b"", b"\x16\x03\x01"]:     # nothing, or the first bytes of a ClientHello
            with self.subTest(payload=payload):
                self.assertEqual(closed_or_answered(t.port, payload, timeout=15), b"")

    def test_a_handshake_flood_is_bounded_by_the_connection_limit(self):
        tls_port = free_port()
        t = self.tokend(key=None, args=["--tls-cert", self.cert, "--tls-key", self.key, "--tls-port", str(tls_port)],
                        env={"TOKEND_MAX_CONNECTIONS": "10", "TOKEND_MAX_CONNECTIONS_PER_IP": "0"})
        base = len(os.listdir(f"/proc/{t.proc.pid}/fd"))
        socks = []
        try:
            for _ in range(40):         # TCP connections that never start their handshake
                s = socket.socket()
                s.settimeout(5)
                s.connect(("127.0.0.1", tls_port))
                socks.append(s)
            time.sleep(0.5)
            held = len(os.listdir(f"/proc/{t.proc.pid}/fd")) - base
            self.assertLessEqual(held, 10, "tokend holds more connections than TOKEND_MAX_CONNECTIONS")
            # HTTP and HTTPS share the limit: the plain port has no room left either.
            self.assertEqual(closed_or_answered(t.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", 10), b"")
        finally:
            for s in socks:
                s.close()
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if request(tls_port, "/healthz", tls=self.tls, timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            self.fail("tokend did not serve HTTPS again once the flood went")

    def test_the_page_s_own_https_origin_is_same_origin(self):
        script = self.write("origins.lua", """
local tokend = require "tokend"
local origins = tokend.origins{}
tokend.route("POST", "/check", function(req)
  local headers, err = origins:check(req)
  return headers and 200 or 403, { scheme = req.scheme, https_port = tokend.config.tls_port }
end)
""")
        tls_port = free_port()
        t = self.tokend(key=None, script=script,
                        args=["--tls-cert", self.cert, "--tls-key", self.key, "--tls-port", str(tls_port)])
        cases = [(tls_port, self.tls, f"https://localhost:{tls_port}", 200, "https"),
                 (tls_port, self.tls, f"http://localhost:{tls_port}", 403, "https"),
                 (t.port, None, f"http://localhost:{t.port}", 200, "http"),
                 (t.port, None, f"https://localhost:{t.port}", 403, "http")]
        for port, tls, origin, status, scheme in cases:
            with self.subTest(origin=origin):
                r = request(port, "/check", method="POST", body="", tls=tls, host="localhost",
                            headers={"Origin": origin})
                self.assertEqual((r.status, r.json()), (status, {"scheme": scheme, "https_port": tls_port}))

    def test_bad_certificate_or_key_files_exit_2_naming_the_file(self):
        other = os.path.join(self.workdir, "other")
        os.makedirs(other)
        _, _, other_key = make_ca(other)
        garbage = self.write("garbage.pem", "not a certificate\n")
        encrypted = os.path.join(self.workdir, "encrypted.key")
        subprocess.run(["openssl", "pkey", "-in", self.key, "-aes256", "-passout", "pass:secret", "-out", encrypted],
                       check=True, capture_output=True)
        missing = os.path.join(self.workdir, "missing.pem")
        cases = [
            (["--tls-cert", missing, "--tls-key", self.key], missing),
            (["--tls-cert", self.cert, "--tls-key", missing], missing),
            (["--tls-cert", garbage, "--tls-key", self.key], garbage),
            (["--tls-cert", self.cert, "--tls-key", garbage], garbage),
            (["--tls-cert", self.cert, "--tls-key", other_key], other_key),
            (["--tls-cert", self.cert, "--tls-key", encrypted], "encrypted"),
            (["--tls-cert", self.workdir, "--tls-key", self.key], "not a file"),
            (["--tls-cert", self.cert], "--tls-key"),
            (["--tls-key", self.key], "--tls-cert"),
            (["--tls-port", "8443"], "--tls-port"),
            (["--tls-cert", self.cert, "--tls-key", self.key, "--port", "9000", "--tls-port", "9000"], "differ"),
            (["--tls-port", "0"], "tls-port"),
        ]
        for args, named in cases:
            with self.subTest(args=args):
                r = self.run_tokend(["--port", "0", *args] if "--port" not in args else args)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(named, r.stderr)
                self.assertNotIn("listening", r.stdout)


class DevCa(TokendTestCase):
    def setUp(self):
        super().setUp()
        self.data = os.path.join(self.workdir, "data")
        self.ca_dir = os.path.join(self.data, "tokend")
        self.env = {"XDG_DATA_HOME": self.data}

    def dev(self, *args, env=None, **kw):
        return self.tokend(key=None, port=0, args=["--dev", "--host", "127.0.0.1", *args],
                           env={**self.env, **(env or {})}, **kw)

    def read(self, name):
        with open(os.path.join(self.ca_dir, name), "rb") as f:
            return f.read()

    def test_made_on_first_use_private_and_reused(self):
        t = self.dev()
        mode = lambda name: stat.S_IMODE(os.stat(os.path.join(self.ca_dir, name)).st_mode)
        self.assertEqual(mode(""), 0o700)
        self.assertEqual(mode("ca.key"), 0o600)
        self.assertEqual(mode("leaf.key"), 0o600)
        self.assertIn("made a development CA", t.log)
        ca, leaf = self.read("ca.crt"), self.read("leaf.crt")
        # The leaf: signed by the CA, for loopback, this machine's addresses and <hostname>.local.
        ok = subprocess.run(["openssl", "verify", "-CAfile", os.path.join(self.ca_dir, "ca.crt"),
                             os.path.join(self.ca_dir, "leaf.crt")], capture_output=True, text=True)
        self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)
        text = cert_text(os.path.join(self.ca_dir, "leaf.crt"))
        self.assertIn("DNS:localhost", text)
        self.assertIn("IP Address:127.0.0.1", text)
        self.assertIn("IP Address:0:0:0:0:0:0:0:1", text)
        self.assertIn(f"DNS:{socket.gethostname().split('.')[0].lower()}.local", text)
        for address in machine_addresses():
            if ":" not in address:
                self.assertIn(f"IP Address:{address}", text)
        self.assertIn("TLS Web Server Authentication", text)
        self.assertIn("CA:TRUE", cert_text(os.path.join(self.ca_dir, "ca.crt")))
        # HTTPS with it, trusting only the CA.
        tls = tls_context(os.path.join(self.ca_dir, "ca.crt"))
        self.assertEqual(request(t.tls_port, "/healthz", tls=tls, host="localhost").status, 200)
        self.assertEqual(t.tls_port == t.port, False)
        t.stop()
        # Reused as it is by the next start.
        t = self.dev()
        self.assertNotIn("made a development", t.log)
        self.assertEqual((self.read("ca.crt"), self.read("leaf.crt")), (ca, leaf))

    def test_the_leaf_is_made_again_when_the_names_change(self):
        self.dev().stop()
        ca, leaf = self.read("ca.crt"), self.read("leaf.crt")
        t = self.dev("--allowed-hosts", "devbox.test")
        self.assertIn("made a development certificate", t.log)
        self.assertNotIn("made a development CA", t.log)
        self.assertEqual(self.read("ca.crt"), ca)
        self.assertNotEqual(self.read("leaf.crt"), leaf)
        self.assertIn("DNS:devbox.test", cert_text(os.path.join(self.ca_dir, "leaf.crt")))
        tls = tls_context(os.path.join(self.ca_dir, "ca.crt"))
        conn = http.client.HTTPSConnection("devbox.test", t.tls_port, context=tls, timeout=10)
        conn.sock = tls.wrap_socket(socket.create_connection(("127.0.0.1", t.tls_port)), server_hostname="devbox.test")
        self.assertEqual(request(t.tls_port, "/healthz", conn=conn).status, 200)
        conn.close()

    def test_a_folder_or_key_others_may_read_is_refused_with_the_fix(self):
        self.dev().stop()
        os.chmod(self.ca_dir, 0o755)
        r = self.run_tokend(["--dev", "--port", "0"], env=self.env)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn(f'chmod 700 "{self.ca_dir}"', r.stderr)
        os.chmod(self.ca_dir, 0o700)
        for key in ["ca.key", "leaf.key"]:
            with self.subTest(key=key):
                path = os.path.join(self.ca_dir, key)
                os.chmod(path, 0o640)
                r = self.run_tokend(["--dev", "--port", "0"], env=self.env)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(f'chmod 600 "{path}"', r.stderr)
                os.chmod(path, 0o600)
        r = self.run_tokend(["--dev-ca"], env=self.env)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_without_a_home_dev_says_it_is_for_a_developer_s_session(self):
        env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_DATA_HOME")}
        r = subprocess.run([BIN, "--dev", "--port", "0"], cwd=self.workdir, env=env, capture_output=True,
                           text=True, timeout=15)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("not a service", r.stderr)

    def test_dev_ca_says_where_and_how_to_trust_it(self):
        r = self.run_tokend(["--dev-ca", "--port", "8123"], env=self.env)
        self.assertEqual(r.returncode, 0, r.stderr)
        ca = os.path.join(self.ca_dir, "ca.crt")
        self.assertIn(ca, r.stdout)
        fingerprint = subprocess.run(["openssl", "x509", "-in", ca, "-noout", "-fingerprint", "-sha256"],
                                     capture_output=True, text=True, check=True).stdout.strip().split("=", 1)[1]
        self.assertIn(fingerprint, r.stdout)
        for words in ["certutil -d sql:$HOME/.pki/nssdb", "Firefox", "Android", "adb reverse tcp:8123 tcp:8123",
                      "iPhone", "Certificate Trust Settings", "/__tokend/ca.crt"]:
            self.assertIn(words, r.stdout)
        again = self.run_tokend(["--dev-ca"], env=self.env)
        self.assertIn(fingerprint, again.stdout)        # the same CA


class DevSwitch(TokendTestCase):
    def setUp(self):
        super().setUp()
        self.env = {"XDG_DATA_HOME": os.path.join(self.workdir, "data")}

    def test_dev_listens_everywhere_and_prints_the_network_urls(self):
        # HOST=127.0.0.1 as .env.example has it: --dev sets it aside.
        t = self.tokend(key=None, args=["--dev"], env={**self.env, "HOST": "127.0.0.1"})
        self.assertRegex(t.stdout_lines[0], r"listening on http://0\.0\.0\.0:\d+ and https://0\.0\.0\.0:\d+$")
        lines = [t.stdout_lines[0]]
        for _ in range(6):
            line = read_line(t.proc, 5)
            if line is None:
                break
            lines.append(line)
            if "tokend --dev-ca" in line:
                break
        out = "\n".join(lines)
        self.assertIn(f"on this machine: https://localhost:{t.tls_port}", out)
        self.assertIn(f"https://{socket.gethostname().split('.')[0].lower()}.local:{t.tls_port}", out)
        for address in machine_addresses():
            if ":" not in address:
                self.assertIn(f"https://{address}:{t.tls_port}", out)
        self.assertNotIn("\033[", out, "no QR code when stdout is not a terminal")
        # The machine's names are served (Host), others still are not.
        name = f"{socket.gethostname().split('.')[0].lower()}.local"
        self.assertEqual(t.get("/healthz", headers={"Host": f"{name}:{t.port}"}).status, 200)
        self.assertEqual(t.get("/healthz", headers={"Host": f"evil.example:{t.port}"}).status, 421)

    def test_on_a_terminal_a_qr_code_of_the_first_network_url(self):
        import pty
        if not [a for a in machine_addresses() if ":" not in a] and socket.gethostname() in ("", "localhost"):
            self.skipTest("this machine has no network name to show")
        master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSEMBLYAI_", "TOKEND_"))}
        proc = subprocess.Popen([BIN, "--dev", "--port", "0", "--workers", "1", "--script", DEFAULT_SCRIPT,
                                 "--public", os.path.join(SRC, "public")], cwd=self.workdir,
                                env={**env, **self.env}, stdout=slave, stderr=subprocess.DEVNULL)
        os.close(slave)
        out = b""
        try:
            deadline = time.time() + 15
            while time.time() < deadline and not out.rstrip().endswith(b"\033[0m"):
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
                time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(10)
            os.close(master)
        text = out.decode()
        rows = [line for line in text.splitlines() if line.startswith("\033[30;47m")]
        self.assertGreaterEqual(len(rows), 12, text)              # a version 1 code (21 modules) and its margin
        self.assertTrue(all("\u2580" in r or "\u2584" in r or "\u2588" in r for r in rows[1:-1]), text)
        widths = {len(r) for r in rows}
        self.assertEqual(len(widths), 1, "every row of the code is as wide")

    def test_dev_on_loopback_says_a_phone_cannot_reach_it(self):
        t = self.tokend(key=None, args=["--dev", "--host", "127.0.0.1"], env=self.env)
        self.assertIn("a phone on your network cannot", t.wait_log("a phone"))

    def test_dev_takes_the_next_port_for_https(self):
        for _ in range(50):         # two free ports in a row
            port = free_port()
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 1))
                break
            except OSError:
                continue
        t = self.tokend(key=None, port=port, args=["--dev", "--host", "127.0.0.1"], env=self.env)
        self.assertEqual((t.port, t.tls_port), (port, port + 1))


class EventStream:
    """A client of /__tokend/livereload: reads its events (kind, data) and comment lines."""

    def __init__(self, port, path="/__tokend/livereload", timeout=20, tls=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")
        try:
            self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n".encode())
            self.status = int(self.file.readline().split()[1])
        except (OSError, IndexError):
            self.close()
            raise
        self.headers = {}
        while True:
            line = self.file.readline().decode().strip()
            if not line:
                break
            name, value = line.split(":", 1)
            self.headers[name.lower()] = value.strip()
        self.comments = 0
        self.chunked = self.headers.get("transfer-encoding") == "chunked"
        self.pending = b""

    def _line(self):
        while b"\n" not in self.pending:
            if self.chunked:
                size = int(self.file.readline().strip(), 16)
                if size == 0:
                    raise EOFError("the stream ended")
                self.pending += self.file.read(size)
                self.file.readline()
            else:
                chunk = self.file.read1(4096)
                if not chunk:
                    raise EOFError("the stream ended")
                self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()

    def event(self):
        """The next event, as (kind, data); comments are counted on the way."""
        kind, data = "message", []
        while True:
            line = self._line()
            if line == "":
                if data or kind != "message":
                    return kind, "\n".join(data)
            elif line.startswith(":"):
                self.comments += 1
            elif line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" ") if line[5:6] == " " else line[5:])

    def close(self):
        self.file.close()
        self.sock.close()


class LiveReload(TokendTestCase):
    def setUp(self):
        super().setUp()
        self.site = os.path.join(self.workdir, "site")
        self.write("site/index.html", "<!doctype html>\n<html><body>\n<h1>home</h1>\n</BODY>\n</html>\n")
        self.write("site/plain.html", "<p>no body tag</p>")
        self.write("site/style.css", "body { color: red }")
        self.write("site/app.js", "console.log(1)")
        self.env = {"XDG_DATA_HOME": os.path.join(self.workdir, "data")}

    def dev(self, script=None, env=None, **kw):
        return self.tokend(key=None, public=self.site, script=script, args=["--dev", "--host", "127.0.0.1"],
                           env={**self.env, **(env or {})}, **kw)

    def stream(self, t):
        s = EventStream(t.port)
        self.addCleanup(s.close)
        self.assertEqual(s.status, 200)
        self.assertEqual(s.headers["content-type"], "text/event-stream; charset=utf-8")
        self.assertEqual(s.headers["cache-control"], "no-cache")
        kind, boot = s.event()
        self.assertEqual(kind, "hello")
        self.assertRegex(boot, r"^[0-9a-f]{16}$")
        return s

    def test_a_file_change_tells_open_pages_which_file(self):
        t = self.dev()
        s = self.stream(t)
        time.sleep(0.2)
        self.write("site/style.css", "body { color: blue }")
        self.assertEqual(s.event(), ("reload", "style.css"))
        os.makedirs(os.path.join(self.site, "deep", "er"))
        time.sleep(0.3)         # the new folders are watched once their creation is seen
        self.write("site/deep/er/page.html", "<p>new</p>")
        self.assertEqual(s.event(), ("reload", "deep/er/page.html"))
        # Several files at once come as one event; editors' scratch files are left out.
        self.write("site/.page.html.swp", "x")
        self.write("site/app.js", "console.log(2)")
        self.write("site/index.html", "<p>changed</p>")
        kind, data = s.event()
        self.assertEqual((kind, sorted(data.split("\n"))), ("reload", ["app.js", "index.html"]))

    def test_a_script_change_reloads_the_script_then_the_pages(self):
        script = self.write("scripts/routes.lua", 'local tokend = require "tokend"\n'
                            'local v = require "version"\n'
                            'tokend.route("GET", "/v", function() return 200, v end)\n')
        self.write("scripts/version.lua", 'return "one"')
        t = self.dev(script=script)
        s = self.stream(t)
        self.assertEqual(t.get("/v").body, b"one")
        time.sleep(0.2)
        self.write("scripts/version.lua", 'return "two"')      # a module beside the script counts too
        self.assertEqual(s.event(), ("reload", ""))
        self.assertIn("reloaded", t.wait_log("reloaded"))
        self.assertEqual(t.get("/v").body, b"two")

    def test_html_pages_get_the_client_as_their_own_representation(self):
        t = self.dev()
        r = t.get("/")
        self.assertEqual(r.status, 200)
        self.assertIn(b'<h1>home</h1>\n<script src="/__tokend/livereload.js" defer></script></BODY>', r.body)
        self.assertRegex(r.headers["etag"], r'^"[0-9a-f]+-[0-9a-f]+-lr"$')
        self.assertNotIn("accept-ranges", r.headers)
        self.assertIn("default-src 'self'", r.headers["content-security-policy"])
        self.assertEqual(t.get("/", headers={"If-None-Match": r.headers["etag"]}).status, 304)
        ranged = t.get("/", headers={"Range": "bytes=0-3", "Accept-Encoding": "gzip"})
        self.assertEqual((ranged.status, ranged.body), (200, r.body))
        self.assertNotIn("content-encoding", ranged.headers)
        head = t.get("/", method="HEAD")
        self.assertEqual((head.status, head.body, head.headers["etag"]), (200, b"", r.headers["etag"]))
        self.assertEqual(t.get("/plain.html").body, b'<p>no body tag</p><script src="/__tokend/livereload.js" defer>'
                                                     b'</script>')
        self.assertEqual(t.get("/app.js").body, b"console.log(1)")
        js = t.get("/__tokend/livereload.js")
        self.assertEqual(js.status, 200)
        self.assertEqual(js.headers["content-type"], "text/javascript; charset=utf-8")
        self.assertIn(b"new EventSource(url)", js.body)
        self.assertIn(b"new URL('livereload', document.currentScript.src)", js.body)
        self.assertNotIn(b"ws://", js.body)
        t.stop()
        plain = self.tokend(key=None, public=self.site)     # without --dev, the file as it is
        r = plain.get("/")
        self.assertNotIn(b"livereload", r.body)
        self.assertEqual(plain.get("/__tokend/livereload.js").status, 404)

    def test_the_reserved_paths_come_before_the_script_s_hooks(self):
        script = self.write("guard.lua", 'local tokend = require "tokend"\n'
                            'tokend.before(function(req) return 401, { error = "sign in" } end)\n'
                            'tokend.static("/", tokend.config.public)\n')
        t = self.dev(script=script)
        self.assertEqual(t.get("/").status, 401)
        self.assertEqual(t.get("/__tokend/livereload.js").status, 200)
        self.assertEqual(t.get("/__tokend/nothing").status, 404)
        self.assertEqual(t.get("/__tokend/livereload.js", method="POST", body="").status, 405)

    def test_a_heartbeat_comment_keeps_idle_streams_open(self):
        t = self.dev()
        s = self.stream(t)
        s.sock.settimeout(25)
        self.write("site/app.js", "console.log(3)")
        t0 = time.time()
        self.assertEqual(s.event(), ("reload", "app.js"))
        while s.comments == 0 and time.time() - t0 < 25:
            self.write("site/app.js", f"console.log({time.time()})")
            s.event()
        self.assertGreaterEqual(s.comments, 1, "no keep-alive comment within 25 s")

    def test_idle_pages_are_bounded_by_the_connection_limits(self):
        t = self.dev(env={"TOKEND_MAX_CONNECTIONS": "40", "TOKEND_MAX_CONNECTIONS_PER_IP": "30"})
        base = len(os.listdir(f"/proc/{t.proc.pid}/fd"))
        streams, refused = [], 0
        for _ in range(60):
            s = None
            try:
                s = EventStream(t.port, timeout=5)
                s.event()
                streams.append(s)
            except (OSError, EOFError, ValueError, IndexError):
                refused += 1
                if s:
                    s.close()
        try:
            self.assertEqual((len(streams), refused), (30, 30))       # the per-address limit
            self.assertLessEqual(len(os.listdir(f"/proc/{t.proc.pid}/fd")) - base, 30)
        finally:
            for s in streams:
                s.close()
        # The pages that left are forgotten: room again.
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                s = EventStream(t.port, timeout=5)
                s.event()
                s.close()
                break
            except (OSError, EOFError, ValueError, IndexError):
                time.sleep(0.2)
        else:
            self.fail("no room for a new page after the others left")

    def test_a_page_that_leaves_is_forgotten_before_the_next_heartbeat(self):
        t = self.dev(env={"TOKEND_MAX_CONNECTIONS_PER_IP": "1"})
        tls = tls_context(os.path.join(self.workdir, "data", "tokend", "ca.crt"))
        for port, context in [(t.port, None), (t.tls_port, tls), (t.port, None)]:
            with self.subTest(port=port):
                deadline = time.time() + 5      # the heartbeat would find it gone after 15 s
                while True:
                    try:
                        s = EventStream(port, tls=context, timeout=5)
                        self.assertEqual(s.event()[0], "hello")
                        break
                    except (OSError, EOFError, ValueError, IndexError):
                        self.assertLess(time.time(), deadline, "the page that left still holds its connection")
                        time.sleep(0.1)
                s.close()       # leaves without a word: the next one must get in

    def test_the_ca_certificate_goes_to_loopback_clients_only(self):
        t = self.tokend(key=None, public=self.site, args=["--dev", "--trusted-proxies", "0.0.0.0/0, ::/0"],
                        env=self.env)
        r = t.get("/__tokend/ca.crt")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["content-type"], "application/x-x509-ca-cert")
        with open(os.path.join(self.workdir, "data", "tokend", "ca.crt"), "rb") as f:
            self.assertEqual(r.body, f.read())
        lan = [a for a in machine_addresses() if ":" not in a]
        if not lan:
            self.skipTest("no network address to connect from")
        # From the machine's network address: another peer than loopback, whatever it claims.
        for headers in [{}, {"X-Forwarded-For": "127.0.0.1"}]:
            with self.subTest(headers=headers):
                r = request(t.port, "/__tokend/ca.crt", host=lan[0], headers={"Host": f"localhost:{t.port}", **headers})
                self.assertEqual(r.status, 404)
        t.stop()
        # With a certificate of one's own, the development CA is not in use: nothing to serve.
        ca, cert, key = make_ca(self.workdir)
        t = self.tokend(key=None, public=self.site, args=["--dev", "--host", "127.0.0.1", "--tls-cert", cert,
                                                          "--tls-key", key], env=self.env)
        self.assertEqual(t.get("/__tokend/ca.crt").status, 404)
        self.assertEqual(request(t.tls_port, "/healthz", tls=tls_context(ca), host="localhost").status, 200)


if __name__ == "__main__":
    unittest.main()
