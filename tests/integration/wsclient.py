"""A WebSocket client for the relay's black-box tests (RFC 6455 on the standard library):
the handshake as a browser sends it, masked frames, messages, the close handshake, and
the few bad things a hostile client does (raw frames, unmasked frames, bad fragments)."""
import base64
import hashlib
import json
import os
import socket
import struct
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONT, TEXT, BIN, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10
CANARY_KEY = "canary-KEY-3f9a7c21d0e84b6f"


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0):
    """A client frame (masked unless told)."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    k = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big") if n else b""
    return head + key + masked


class Closed(Exception):
    """The connection ended; code is the close code received (None: no close frame)."""

    def __init__(self, code, reason=""):
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


class WsClient:
    """One connection. status/headers: the handshake's answer (101 or an HTTP error)."""

    def __init__(self, port, path="/v3/ws", origin="http://127.0.0.1", headers=None, timeout=10, extra=b"",
                 key=None, version="13", upgrade="websocket", connection="Upgrade", http="HTTP/1.1", tls=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:                         # an ssl.SSLContext: wss
            self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")
        self.key = key if key is not None else base64.b64encode(os.urandom(16)).decode()   # False: none
        lines = [f"GET {path} {http}", f"Host: 127.0.0.1:{port}"]
        for name, value in (("Upgrade", upgrade), ("Connection", connection), ("Sec-WebSocket-Key", self.key),
                            ("Sec-WebSocket-Version", version), ("Origin", origin)):
            if value is not None and value is not False:
                lines.append(f"{name}: {value}")
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + extra)
        self.buf = bytearray()
        self.messages = []          # text messages decoded, in order
        self.close_code = None
        self.close_reason = ""
        head = self._read_head()
        first, *rest = head.decode("latin-1").split("\r\n")
        self.status = int(first.split()[1])
        self.headers = {}
        for line in rest:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.body = b""
        if self.status == 101:
            want = base64.b64encode(hashlib.sha1(str(self.key).encode() + GUID).digest()).decode()
            assert self.headers.get("sec-websocket-accept") == want, self.headers
        else:
            length = int(self.headers.get("content-length", "0"))
            self.body = self._read(length) if length else bytes(self.buf)
        assert CANARY_KEY.encode() not in head + self.body, "the API key reached the client"

    def _read_head(self):
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise Closed(None, "ended during the handshake")
            self.buf += data
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        return head

    def _read(self, n):
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise Closed(self.close_code, "the connection ended")
            assert CANARY_KEY.encode() not in data, "the API key reached the client"
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def json(self):
        return json.loads(self.body)

    # ---- sending ----
    def send_raw(self, data):
        self.sock.sendall(data)

    def send_binary(self, data):
        self.sock.sendall(frame(BIN, data))

    def send_text(self, text):
        self.sock.sendall(frame(TEXT, text.encode() if isinstance(text, str) else text))

    def send_json(self, obj):
        self.send_text(json.dumps(obj))

    def close(self, code=1000, reason=b""):
        self.sock.sendall(frame(CLOSE, struct.pack("!H", code) + reason if code else b""))

    # ---- receiving ----
    def recv_frame(self):
        b0, b1 = self._read(2)
        n = b1 & 127
        assert not b1 & 0x80, "a server frame is never masked"
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        return b0 >> 7, b0 & 15, self._read(n)

    def recv(self, timeout=10):
        """The next message as (opcode, payload); raises Closed once a close arrives (after
        answering it) or the connection ends."""
        self.sock.settimeout(timeout)
        data, op = b"", None
        while True:
            try:
                fin, opcode, payload = self.recv_frame()
            except (ConnectionResetError, BrokenPipeError):
                raise Closed(self.close_code, "reset")
            except socket.timeout:
                raise TimeoutError("no message")
            if opcode == CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.close_reason = payload[2:].decode(errors="replace")
                try:
                    self.sock.sendall(frame(CLOSE, payload[:2]))
                except OSError:
                    pass
                raise Closed(self.close_code, self.close_reason)
            if opcode == PING:
                self.sock.sendall(frame(PONG, payload))
                continue
            if opcode == PONG:
                continue
            op = opcode if opcode != CONT else op
            data += payload
            if fin:
                if op == TEXT:
                    self.messages.append(json.loads(data))
                return op, data

    def recv_json(self, timeout=10):
        op, data = self.recv(timeout)
        assert op == TEXT, (op, data[:100])
        return json.loads(data)

    def until_closed(self, timeout=15):
        """Reads messages until the close (or returns the one that came); returns (code, reason)."""
        if self.close_code is not None:
            return self.close_code, self.close_reason
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                self.recv(max(0.1, deadline - time.time()))
            except Closed as c:
                return c.code, c.reason
            except TimeoutError:
                break
        raise TimeoutError(f"no close within {timeout} s; messages: {self.messages[-3:]}")

    def stream(self, seconds, frame_bytes=1600, interval=0.05, read=True):
        """Sends audio at real time for seconds, reading what comes meanwhile (unless not
        read); stops early once the server closed."""
        n = int(seconds / interval)
        start = time.time()
        try:
            for i in range(n):
                self.send_binary(bytes([i & 0x7f]) * frame_bytes)
                if read:
                    self.drain()
                delay = start + (i + 1) * interval - time.time()
                if delay > 0:
                    time.sleep(delay)
        except (Closed, BrokenPipeError, ConnectionResetError):
            pass

    def drain(self):
        """Reads the messages that are there, without waiting."""
        while True:
            try:
                self.recv(timeout=0.001 if not self.buf else 1)
            except TimeoutError:
                return

    def ended(self, timeout=5):
        """Whether the server closed the TCP connection (reads until EOF)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def drop(self):
        """Goes away without a close (TCP ends)."""
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.sock.close()
        except OSError:
            pass
