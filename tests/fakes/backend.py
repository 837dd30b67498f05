"""A fake application backend for tokend's tests of tokend.http.request and of the example
policies, on loopback, serving many requests at once (asyncio in a thread of its own).

    GET  /echo              -> {"method", "path", "target", "headers", "body"}   (any method; HEAD
                               gets its headers only)
    GET  /slow?ms=500       -> waits, then {"ok": true}; .slow_max_in_flight: most at once
    GET  /redirect          -> 302 to /echo (tokend must not follow it)
    GET  /reset             -> TCP reset
    GET  /hang              -> never answers
    GET  /big?mb=100        -> a body of that many MiB
    GET  /chunked?mb=10     -> the same, chunked (no length)
    GET  /status?code=304   -> that status, no body, an ETag
    GET  /hop               -> hop-by-hop headers (Connection: close, X-Hop; Keep-Alive; Proxy-
                               Authenticate), a Date of its own, X-End: 1 and a body
    GET  /check             -> the answer set in .decisions for the Authorization header:
                               {"allowed": bool, "user": ...}; counts in .checks
    POST /login             -> 200 {"user": ...} for a password in .passwords, else 401
    .connections, .requests count what came in.
"""
import asyncio
import json
import urllib.parse

from httpwire import ServerThread, requests, reset


class Backend:
    def __init__(self):
        self.connections = 0
        self.requests = 0
        self.checks = 0
        self.slow_in_flight = 0     # /slow requests waiting now, and at most at once
        self.slow_max_in_flight = 0
        self.decisions = {}         # Authorization header -> {"allowed": ..., "user": ...}
        self.passwords = {}         # password -> user
        self.served = ServerThread(self.handle, backlog=1024)
        self.port, self.url = self.served.port, self.served.url

    def stop(self):
        self.served.stop()

    async def handle(self, reader, writer):
        self.connections += 1
        try:
            async for method, target, headers, body in requests(reader):
                self.requests += 1
                url = urllib.parse.urlsplit(target)
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path == "/hang":
                    await reader.read()
                    return
                if url.path == "/reset":
                    reset(writer)
                    return
                if url.path in ("/big", "/chunked"):
                    size = int(query.get("mb", "1")) * 1024 * 1024
                    chunked = url.path == "/chunked"
                    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
                    writer.write(f"HTTP/1.1 200 OK\r\n{framing}\r\n\r\n".encode())
                    chunk = b"x" * 65536
                    sent = 0
                    while sent < size:
                        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                        sent += len(chunk)
                        await writer.drain()
                    if chunked:
                        writer.write(b"0\r\n\r\n")
                    continue
                if url.path == "/status":
                    code = int(query.get("code", "204"))
                    writer.write(f"HTTP/1.1 {code} X\r\nETag: \"v1\"\r\n\r\n".encode())
                    await writer.drain()
                    continue
                if url.path == "/hop":
                    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
                                 b"Proxy-Authenticate: Basic\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\nX-End: 1\r\n"
                                 b"Content-Length: 2\r\n\r\nok")
                    await writer.drain()
                    return
                status, extra, payload = 200, {}, b""
                if url.path == "/slow":
                    self.slow_in_flight += 1
                    self.slow_max_in_flight = max(self.slow_max_in_flight, self.slow_in_flight)
                    try:
                        await asyncio.sleep(int(query.get("ms", "500")) / 1000)
                    finally:
                        self.slow_in_flight -= 1
                    payload = b'{"ok":true}'
                elif url.path == "/redirect":
                    status, extra = 302, {"Location": "/echo"}
                elif url.path == "/check":
                    self.checks += 1
                    decision = self.decisions.get(headers.get("authorization", ""), {"allowed": False})
                    payload = json.dumps(decision).encode()
                elif url.path == "/login" and method == "POST":
                    user = self.passwords.get(json.loads(body or b"{}").get("password"))
                    status = 200 if user else 401
                    payload = json.dumps({"user": user} if user else {"error": "wrong password"}).encode()
                else:
                    payload = json.dumps({"method": method, "path": url.path, "target": target, "headers": headers,
                                          "body": body.decode("latin-1")}).encode()
                head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(payload)}", "Content-Type: application/json",
                        "X-Backend: fake", "Set-Cookie: a=1", "Set-Cookie: b=2"]
                head += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (payload if method != "HEAD" else b""))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()
