"""Black-box test harness: starts the token fake and tokend, talks HTTP to them.

Every test runs tokend with a recognisable canary API key and checks that the key
shows up in no response and no line tokend printed.
"""
import http.client
import json
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

BIN = os.path.abspath(os.environ.get("TOKEND_BIN") or "../../build/tokend")
SRC = os.environ.get("TOKEND_SOURCE_DIR") or os.path.abspath("../..")
TMP_ROOT = os.environ.get("TOKEND_TEST_TMP") or tempfile.gettempdir()
FAKE = os.path.join(SRC, "tests", "fakes", "token_fake.py")
STREAMING_FAKE = os.path.join(SRC, "tests", "fakes", "streaming_fake.py")
CANARY_KEY = "canary-KEY-3f9a7c21d0e84b6f"
# Whether tokend's RSS tells what tokend holds: AddressSanitizer keeps freed memory in
# quarantine and valgrind (TOKEND_WRAPPER) keeps its own, so memory-growth checks run in
# the plain build only.
RSS_IS_TOKENDS = not os.environ.get("ASAN_OPTIONS") and not os.environ.get("TOKEND_WRAPPER")
# Every secret a test gives tokend (the key, tokend.secret's): none may show up in an answer
# or in what tokend prints. Tests add their own.
CANARIES = [CANARY_KEY]


# Most tests mint far more tokens a minute than the default abuse policy allows one client.
# A script's named values (tokend.settings) are overridden by variables of their names.
UNLIMITED = {"TOKENS_PER_MINUTE": 1000000, "TOKEN_BURST": 1000000}
DEFAULT_SCRIPT = os.path.join(SRC, "scripts", "routes.lua")


def copy_script(source, folder, siblings=()):
    """Copies a script (relative to the repository) into folder, with the modules it
    requires from its own folder; returns its path."""
    path = os.path.join(folder, os.path.basename(source))
    shutil.copy(os.path.join(SRC, source), path)
    for sibling in siblings:
        shutil.copy(os.path.join(SRC, os.path.dirname(source), sibling), folder)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_line(proc, timeout):
    """Reads one stdout line of proc, or None after timeout or on exit."""
    deadline = time.time() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            ch = os.read(fd, 1)
            if not ch:
                return None
            if ch == b"\n":
                return buf.decode()
            buf += ch
        elif proc.poll() is not None:
            return None
    return None


def make_ca(folder):
    """Makes a CA and a localhost/127.0.0.1 server certificate; returns (ca, cert, key)."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=tokend test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    with open(os.path.join(folder, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return tuple(os.path.join(folder, n) for n in ("ca.pem", "server.pem", "server.key"))


class Response:
    def __init__(self, status, headers, body, header_list=()):
        self.status = status
        self.headers = headers          # lower-case name -> value (the last of a repeated name)
        self.body = body
        self.header_list = list(header_list)    # (name, value) as received, repeats included

    def all(self, name):
        """Every value of a header, in order (Set-Cookie)."""
        return [v for k, v in self.header_list if k.lower() == name]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.status} {self.headers} {self.body[:200]!r}>"


def tls_context(ca):
    """A client TLS context that trusts only the CA file ca (and checks host names)."""
    import ssl
    return ssl.create_default_context(cafile=ca)     # with a cafile, the system's CAs are not loaded


def request(port, path, method="GET", headers=None, body=None, timeout=10, conn=None, tls=None, host="127.0.0.1"):
    """One HTTP request; returns a Response. The path is sent as given (no escaping). tls: an
    ssl context to speak HTTPS with (to host, whose name the certificate must hold)."""
    own = conn is None
    if conn is None:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls) if tls \
            else http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True,
                        skip_host=any(k.lower() == "host" for k in (headers or {})))
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body.encode() if isinstance(body, str) else body)
        r = conn.getresponse()
        data = r.read()
        resp = Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data, r.getheaders())
    finally:
        if own:
            conn.close()
    for canary in CANARIES:
        assert canary.encode() not in data, f"a secret leaked into a response body: {data!r}"
        assert canary not in str(resp.headers), "a secret leaked into response headers"
    return resp


class Fake:
    """The token endpoint fake, on a free port."""

    def __init__(self, fault="ok", latency_ms=0, tls=None, key=CANARY_KEY):
        self._start("token fake", [FAKE, "--key", key, "--fault", fault, "--latency-ms", str(latency_ms)], tls)

    def _start(self, what, args, tls):
        """Runs the fake's script with args on a free port (over TLS with tls's certificate
        and key) and reads the URL it listens on."""
        cmd = [sys.executable] + args + ["--port", "0"]
        if tls:
            cmd += ["--tls-cert", tls[1], "--tls-key", tls[2]]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = read_line(self.proc, 10)
        if not line or not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"{what} did not start: {line!r}")
        self.url = line.split(" ", 1)[1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def _call(self, method, path, body=None):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=_insecure()) \
            if self.url.startswith("https") else http.client.HTTPConnection("127.0.0.1", self.port)
        conn.request(method, path, body=json.dumps(body) if body is not None else None)
        data = json.loads(conn.getresponse().read())
        conn.close()
        return data

    def control(self, **settings):
        return self._call("POST", "/__control", settings)

    def stats(self):
        return self._call("GET", "/__stats")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.stdout.close()


class StreamingFake(Fake):
    """The streaming WebSocket fake (tests/fakes/streaming_fake.py), on a free port: what
    the relay connects to. control(mode=...) and stats() as for the token fake."""

    def __init__(self, tls=None, key=CANARY_KEY, ahead_ms=1000):
        self._start("streaming fake", [STREAMING_FAKE, "--key", key, "--ahead-ms", str(ahead_ms)], tls)

    def sessions(self):
        return self.stats()["sessions"]

    def wait_ended(self, n=1, timeout=10):
        """The last n sessions once they all ended (the relay closed them upstream)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            sessions = self.sessions()
            if len(sessions) >= n and all(s["ended"] for s in sessions[-n:]):
                return sessions[-n:]
            time.sleep(0.05)
        raise AssertionError(f"the upstream sessions did not end: {self.sessions()[-n:]}")


def _insecure():
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Tokend:
    """A tokend process. cwd is a fresh folder (so no developer .env is read). policy
    overrides the script's named values (for the default script UNLIMITED unless given)."""

    def __init__(self, workdir, fake=None, key=CANARY_KEY, args=(), env=None, script=None, public=None,
                 workers=1, expect_start=True, port=0, policy=None):
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("ASSEMBLYAI_", "TOKEND_", "CURL_CA")) and k not in ("PORT", "HOST")}
        if key:
            self.env["ASSEMBLYAI_API_KEY"] = key
        if fake:
            self.env["ASSEMBLYAI_STREAMING_URL"] = fake.url
        if policy is None:          # the default script's own limits are for one visitor, not a test
            policy = UNLIMITED if script is None else {}
        self.env.update({name: str(value) for name, value in policy.items()})
        self.env.update(env or {})
        cmd = [BIN, "--script", script or DEFAULT_SCRIPT,
               "--public", public or os.path.join(SRC, "public")]
        if port is not None:
            cmd += ["--port", str(port)]
        if workers is not None:
            cmd += ["--workers", str(workers)]
        cmd += list(args)
        self.stderr_path = os.path.join(workdir, f"tokend-{time.time_ns()}.log")
        self.stderr = open(self.stderr_path, "wb")
        # TOKEND_WRAPPER runs tokend under a tool, e.g. "valgrind --error-exitcode=99 ...".
        wrapper = shlex.split(os.environ.get("TOKEND_WRAPPER", ""))
        self.started = time.time()
        self.proc = subprocess.Popen(wrapper + cmd, cwd=workdir, env=self.env, stdout=subprocess.PIPE,
                                     stderr=self.stderr)
        self.stdout_lines = []
        self.port = None
        self.tls_port = None    # the port that speaks HTTPS (port itself when HTTPS is served alone)
        if expect_start:
            line = read_line(self.proc, 60 if wrapper else 15)
            if not line or "listening on http" not in line:
                self.stop(check=False)
                raise RuntimeError(f"tokend did not start: {line!r}\n{self.log}")
            self.stdout_lines.append(line)
            if line.startswith("{"):
                start = json.loads(line)
                url, tls_url = start["url"], start.get("tls_url")
            else:       # "tokend listening on http://h:p[ and https://h:q]"
                words = line.split(" ")
                url, tls_url = words[3], words[5] if len(words) > 5 else None
            self.port = int(url.rsplit(":", 1)[1])
            if url.startswith("https:"):
                self.tls_port = self.port
            elif tls_url:
                self.tls_port = int(tls_url.rsplit(":", 1)[1])

    @property
    def log(self):
        if not self.stderr.closed:
            self.stderr.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    def get(self, path, **kw):
        return request(self.port, path, **kw)

    def wait_log(self, needle, timeout=5):
        """Returns the log once it holds needle (lines are written when a request completes,
        which can be just after the client has its answer); the log as it is after timeout."""
        deadline = time.time() + timeout
        while needle not in self.log and time.time() < deadline:
            time.sleep(0.02)
        return self.log

    def wait(self, timeout=15):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def stop(self, sig=signal.SIGTERM, check=True):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rest = self.proc.stdout.read().decode(errors="replace")
        self.proc.stdout.close()
        self.stdout_lines += rest.splitlines()
        self.stderr.close()
        output = self.log + "\n".join(self.stdout_lines)
        if check:
            for canary in CANARIES:
                assert canary not in output, "a secret leaked into tokend's output"
            if os.environ.get("TOKEND_WRAPPER") and self.proc.returncode == 99:
                raise AssertionError(f"the wrapper found memory errors:\n{self.log[-6000:]}")
        return self.proc.returncode


class TokendTestCase(unittest.TestCase):
    """Gives each test a work folder and stops what it started."""

    def setUp(self):
        os.makedirs(TMP_ROOT, exist_ok=True)
        self.workdir = tempfile.mkdtemp(prefix=f"{self.id().rsplit('.', 1)[-1]}-", dir=TMP_ROOT)
        self.addCleanup(shutil.rmtree, self.workdir, True)   # cleanups run last-in first-out

    def fake(self, **kw):
        f = Fake(**kw)
        self.addCleanup(f.stop)
        return f

    def streaming_fake(self, **kw):
        f = StreamingFake(**kw)
        self.addCleanup(f.stop)
        return f

    def tokend(self, **kw):
        t = Tokend(self.workdir, **kw)
        self.addCleanup(lambda: t.stop() if not t.stderr.closed else None)
        self.addCleanup(lambda: print(t.log, file=sys.stderr) if self._outcome.success is False else None)
        return t

    def write(self, name, text):
        path = os.path.join(self.workdir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def run_tokend(self, args, env=None, timeout=15):
        """Runs tokend to completion (for --check, --help, bad settings)."""
        e = {k: v for k, v in os.environ.items() if not k.startswith(("ASSEMBLYAI_", "TOKEND_"))}
        e.update(env or {})
        return subprocess.run([BIN, *args], cwd=self.workdir, env=e, capture_output=True, text=True, timeout=timeout)
