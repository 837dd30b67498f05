#!/usr/bin/env python3
"""A fake of AssemblyAI's temporary-token endpoints (GET /v3/token, and the Voice Agent API's
GET /v1/token), for tokend's tests.

It behaves like the documented API (../shared/FIELD-NOTES.md): the raw key in
Authorization (no "Bearer"), expires_in_seconds 1..600, max_session_duration_seconds
60..10800, 200 {"token", "expires_in_seconds"}, JSON error bodies, HTTP/1.1 keep-alive.
Tokens are JWT-like and signed with HMAC-SHA256 over --secret, so the streaming fake can
check that a token came from here, is unexpired and is used once.

Faults are switched at start (--fault, --latency-ms) or at run time:
  POST /__control {"fault": "...", "latency_ms": N, "retry_after": S}
  GET  /__stats   -> {"requests", "connections", "tokens", "last_query", "last_authorization",
                      "last_user_agent", ...}
Faults: ok, 401, 401-echo (echoes the presented key), 401-echo-late (the key after 500
        characters of text), 401-echo-lower (the key in lower case), 403, 429 (Retry-After), 500, 503,
        malformed (truncated JSON), notoken (200 without token), noexpiry (200 with a token but
        no expires_in_seconds), html (200 text/html),
        hang (never answers), reset (TCP reset), flaky-500 (every other request 500).
It prints "listening <scheme>://127.0.0.1:<port>" once ready.
"""
import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import ssl
import time
import urllib.parse
import uuid

from httpwire import requests, reset, serve_main


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Fake:
    def __init__(self, key, secret, fault, latency_ms, retry_after):
        self.key = key
        self.secret = secret.encode()
        self.fault = fault
        self.latency_ms = latency_ms
        self.retry_after = retry_after
        self.requests = 0
        self.connections = 0
        self.tokens = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.last_query = None
        self.last_authorization = None
        self.last_user_agent = None
        self.last_path = None
        self.flaky = 0

    def mint(self, expires, max_session):
        now = int(time.time())
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = b64url(json.dumps({"jti": str(uuid.uuid4()), "iat": now, "exp": now + expires,
                                     "max_session_duration_seconds": max_session}).encode())
        sig = b64url(hmac.new(self.secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        self.tokens += 1
        return f"{header}.{payload}.{sig}"

    def answer(self, method, target, headers):
        """Returns (status, extra_headers, body_bytes) or a fault keyword."""
        url = urllib.parse.urlsplit(target)
        if url.path == "/__stats":
            return 200, {}, json.dumps({
                "requests": self.requests, "connections": self.connections, "tokens": self.tokens,
                "last_query": self.last_query, "last_authorization": self.last_authorization,
                "last_user_agent": self.last_user_agent, "last_path": self.last_path,
                "max_in_flight": self.max_in_flight, "in_flight": self.in_flight, "fault": self.fault}).encode()
        # /v3/token: Universal-Streaming; /v1/token: the Voice Agent API (agents.assemblyai.com),
        # the same parameters and answer (its reference shows the key raw or as "Bearer <key>").
        if url.path not in ("/v3/token", "/v1/token"):
            return 404, {}, json.dumps({"error": "Not found"}).encode()
        self.last_path = url.path
        if method != "GET":
            return 405, {}, json.dumps({"error": "Method not allowed"}).encode()
        self.requests += 1
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        self.last_query = query
        auth = headers.get("authorization")
        self.last_authorization = auth
        self.last_user_agent = headers.get("user-agent")
        fault = self.fault
        if fault == "flaky-500":
            self.flaky += 1
            fault = "500" if self.flaky % 2 == 1 else "ok"
        if fault in ("hang", "reset"):
            return fault
        if fault == "401-echo":
            return 401, {}, json.dumps({"error": f"Invalid API key: {auth}"}).encode()
        if fault == "401-echo-late":
            return 401, {}, json.dumps({"error": "x" * 500 + f" key {auth}"}).encode()
        if fault == "401-echo-lower":
            return 401, {}, json.dumps({"error": f"Invalid API key: {(auth or '').lower()}"}).encode()
        if fault in ("401", "403"):
            return int(fault), {}, json.dumps({"error": "Invalid API key"}).encode()
        if fault == "429":
            return 429, {"Retry-After": str(self.retry_after)}, json.dumps(
                {"error": "Too many requests", "code": "rate_limited"}).encode()
        if fault in ("500", "503"):
            return int(fault), {}, json.dumps({"error": "Internal server error"}).encode()
        if url.path == "/v1/token" and auth == f"Bearer {self.key}":
            auth = self.key
        if auth is None or auth != self.key:
            return 401, {}, json.dumps({"error": "Invalid API key"}).encode()
        try:
            expires = int(query["expires_in_seconds"])
        except (KeyError, ValueError):
            return 400, {}, json.dumps({"error": "expires_in_seconds is required and must be an integer",
                                        "code": "invalid_parameter"}).encode()
        if not 1 <= expires <= 600:
            return 400, {}, json.dumps({"error": "expires_in_seconds must be between 1 and 600",
                                        "code": "invalid_parameter"}).encode()
        max_session = 10800
        if "max_session_duration_seconds" in query:
            try:
                max_session = int(query["max_session_duration_seconds"])
            except ValueError:
                max_session = -1
            if not 60 <= max_session <= 10800:
                return 400, {}, json.dumps({"error": "max_session_duration_seconds must be between 60 and 10800",
                                            "code": "invalid_parameter"}).encode()
        if fault == "malformed":
            return 200, {}, b'{"token": "abc'
        if fault == "notoken":
            return 200, {}, json.dumps({"expires_in_seconds": expires}).encode()
        if fault == "noexpiry":
            return 200, {}, json.dumps({"token": self.mint(expires, max_session)}).encode()
        if fault == "html":
            return 200, {"Content-Type": "text/html"}, b"<html>oops</html>"
        return 200, {}, json.dumps({"token": self.mint(expires, max_session), "expires_in_seconds": expires}).encode()

    def control(self, body):
        cfg = json.loads(body or b"{}")
        self.fault = cfg.get("fault", self.fault)
        self.latency_ms = cfg.get("latency_ms", self.latency_ms)
        self.retry_after = cfg.get("retry_after", self.retry_after)
        return 200, {}, b'{"ok":true}'

    async def handle(self, reader, writer):
        self.connections += 1
        try:
            async for method, target, headers, body in requests(reader):
                if target.startswith("/__control"):
                    result = self.control(body)
                elif target.startswith("/__"):
                    result = self.answer(method, target, headers)
                else:
                    self.in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, self.in_flight)
                    try:
                        if self.latency_ms:
                            await asyncio.sleep(self.latency_ms / 1000)
                        result = self.answer(method, target, headers)
                    finally:
                        self.in_flight -= 1
                if result == "hang":
                    await reader.read()     # until the client gives up
                    return
                if result == "reset":
                    reset(writer)
                    return
                status, extra, payload = result
                head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}",
                        f"Content-Length: {len(payload)}"]
                if "Content-Type" not in extra:
                    head.append("Content-Type: application/json")
                head += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            writer.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--key", default="test-key")
    ap.add_argument("--secret", default="fake-signing-secret")
    ap.add_argument("--fault", default="ok")
    ap.add_argument("--latency-ms", type=int, default=0)
    ap.add_argument("--retry-after", type=int, default=7)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    args = ap.parse_args()
    fake = Fake(args.key, args.secret, args.fault, args.latency_ms, args.retry_after)
    serve_main(fake.handle, args.port, args.tls_cert, args.tls_key, backlog=4096)


if __name__ == "__main__":
    main()
