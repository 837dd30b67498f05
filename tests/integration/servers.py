"""Real servers the tests start from Debian packages, on loopback, in a test's folder:
Redis (redis-server) and HAProxy (haproxy)."""
import os
import re
import signal
import socket
import subprocess
import time

from harness import SRC, free_port


def resp_encode(*args):
    """A command in the Redis protocol (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def resp_read(f):
    """One reply from a file-like socket reader: bytes, int, None, list, or RedisError."""
    line = f.readline()
    if not line:
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [resp_read(f) for _ in range(n)]
    raise ValueError(f"not a Redis reply: {line!r}")


class RedisError(Exception):
    pass


class Redis:
    """redis-server on a free port, without persistence: stop() and start() are a restart
    that forgets everything, pause() and resume() a Redis that accepts and never answers."""

    def __init__(self, folder, password=None, port=None, start=True):
        self.folder = folder
        self.password = password
        self.port = port or free_port()
        self.proc = None
        if start:
            self.start()

    @property
    def url(self):
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    def start(self):
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.folder, "--logfile", os.path.join(self.folder, f"redis-{self.port}.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def command(self, *args, timeout=2):
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            f = s.makefile("rb")
            if self.password:
                s.sendall(resp_encode("AUTH", self.password))
                resp_read(f)
            s.sendall(resp_encode(*args))
            reply = resp_read(f)
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            self.proc.wait(10)

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)


class SilentServer:
    """Accepts connections and never answers: a Redis that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}"

    def stop(self):
        self.sock.close()


class HAProxy:
    """haproxy in front of tokend instances (their ports), with the configuration
    docs/deploy.md gives (dist/haproxy.cfg), on the test's own ports."""

    def __init__(self, folder, backends):
        self.port, self.stats_port = free_port(), free_port()
        with open(os.path.join(SRC, "dist", "haproxy.cfg")) as f:
            config = f.read()
        for given, port in (("8000", self.port), ("8404", self.stats_port)):
            config, n = re.subn(rf"^    bind 127\.0\.0\.1:{given}$", f"    bind 127.0.0.1:{port}", config, flags=re.M)
            assert n == 1, f"dist/haproxy.cfg binds 127.0.0.1:{given}"
        lines = [line for line in config.splitlines() if not line.startswith("    server ")]
        lines += [f"    server tokend{i} 127.0.0.1:{p} check" for i, p in enumerate(backends)]
        self.config = os.path.join(folder, "haproxy.cfg")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log = open(os.path.join(folder, "haproxy.log"), "wb")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", self.config], stdout=self.log, stderr=self.log)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"haproxy did not start:\n{open(os.path.join(folder, 'haproxy.log')).read()}")

    def servers(self):
        """The state HAProxy's stats page gives each instance: name -> "UP", "DOWN", ..."""
        import csv
        import http.client
        import io
        conn = http.client.HTTPConnection("127.0.0.1", self.stats_port, timeout=5)
        conn.request("GET", "/stats;csv")
        text = conn.getresponse().read().decode().lstrip("# ")
        conn.close()
        return {row["svname"]: row["status"] for row in csv.DictReader(io.StringIO(text))
                if row["pxname"] == "tokend" and row["svname"] not in ("BACKEND", "FRONTEND")}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()
