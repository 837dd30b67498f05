#!/usr/bin/env python3
"""Fakes of the realtime speech vendors' credential endpoints, for tokend's provider tests:
one loopback server, each vendor on its own path, checking what the vendor checks (the
auth header's exact form, the method, path and JSON body, with the ranges the references
give) and answering the documented shapes. Read in December 2026:

  OpenAI   POST /v1/realtime/client_secrets   Authorization: Bearer <key>
           {expires_after: {anchor: "created_at", seconds: 10..7200}, session: {type: realtime|transcription, model}}
           -> 200 {value: "ek_...", expires_at, session}
           developers.openai.com/api/reference/resources/realtime/subresources/client_secrets/methods/create
  Gemini   POST /v1alpha/auth_tokens          x-goog-api-key: <key>
           {uses, expireTime, newSessionExpireTime (RFC 3339, < 20 h ahead), bidiGenerateContentSetup: {model: "models/..."}, fieldMask?}
           -> 200 {name: "auth_tokens/...", ...}; a wrong key: 400 INVALID_ARGUMENT (API_KEY_INVALID)
           ai.google.dev/gemini-api/docs/ephemeral-tokens; googleapis/js-genai src/tokens.ts
  Deepgram POST /v1/auth/grant                Authorization: Token <key>   {ttl_seconds: 1..3600}
           -> 200 {access_token, expires_in}
           POST /v1/projects/<id>/keys        Authorization: Token <key>
           {comment, scopes, tags?, time_to_live_in_seconds?} -> 200 {api_key_id, key, comment, scopes, tags}
           developers.deepgram.com/reference/auth/tokens/grant, /reference/manage/keys/create
  Soniox   POST /v1/auth/temporary-api-key    Authorization: Bearer <key>
           {usage_type, expires_in_seconds: 1..3600, single_use?, max_session_duration_seconds?: 1..18000,
            client_reference_id?: <= 256} -> 201 {api_key: "temp:...", expires_at}
           soniox.com/docs/stt/api-reference/auth/create_temporary_api_key
  Speechmatics POST /v1/api_keys?type=rt      Authorization: Bearer <key>   {ttl: 60..86400, client_ref?}
           -> 201 {apikey_id, key_value}
           docs.speechmatics.com/get-started/authentication

Faults (Vendors.fault, or --fault): ok, 401, 401-echo (the error echoes the credential
presented), 429 (Retry-After: .retry_after), 500, 503, garbage (200, not JSON), notoken (200
JSON without the credential), hang, reset. .requests counts per vendor, .last holds each
vendor's last request {method, path, query, headers, json}.
Run as a script it prints "listening http://127.0.0.1:<port>" (--key vendor=key ...).
"""
import argparse
import asyncio
import base64
import datetime
import json
import secrets
import time
import urllib.parse

from httpwire import ServerThread, requests, reset, serve_main

VENDORS = ("openai", "gemini", "deepgram", "soniox", "speechmatics")


def rfc3339(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_rfc3339(s):
    try:
        return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return None


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


class Refused(Exception):
    """A request the vendor refuses: (status, body)."""

    def __init__(self, status, body):
        super().__init__(status)
        self.status = status
        self.body = body


class Vendors:
    def __init__(self, keys, fault="ok", retry_after="9", thread=True):
        self.keys = dict(keys)             # vendor -> the key it accepts
        self.fault = fault
        self.retry_after = retry_after
        self.requests = {v: 0 for v in VENDORS}
        self.last = {}
        self.issued = {}                   # vendor -> credentials handed out
        self.connections = 0
        if thread:
            self.served = ServerThread(self.handle)
            self.port, self.url = self.served.port, self.served.url

    def stop(self):
        self.served.stop()
        self.served.close()

    # ---- the vendors' rules ----

    @staticmethod
    def vendor_of(method, path):
        if path == "/v1/realtime/client_secrets":
            return "openai"
        if path == "/v1alpha/auth_tokens":
            return "gemini"
        if path == "/v1/auth/grant" or (path.startswith("/v1/projects/") and path.endswith("/keys")):
            return "deepgram"
        if path == "/v1/auth/temporary-api-key":
            return "soniox"
        if path == "/v1/api_keys":
            return "speechmatics"
        return None

    def refuse_key(self, vendor, presented):
        """The vendor's answer to a missing or wrong key."""
        echo = presented if self.fault == "401-echo" else None
        if vendor == "openai":
            return Refused(401, {"error": {"message": f"Incorrect API key provided: {echo or '***'}.",
                                           "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})
        if vendor == "gemini":
            status = 401 if self.fault.startswith("401") else 400
            return Refused(status, {"error": {"code": status, "message": f"API key not valid. {echo or ''}".strip(),
                                              "status": "UNAUTHENTICATED" if status == 401 else "INVALID_ARGUMENT"}})
        if vendor == "deepgram":
            return Refused(401, {"err_code": "INVALID_AUTH", "err_msg": f"Invalid credentials. {echo or ''}".strip(),
                                 "request_id": secrets.token_hex(8)})
        if vendor == "soniox":
            return Refused(401, {"status_code": 401, "error_type": "unauthenticated",
                                 "message": f"Incorrect API key provided. {echo or ''}".strip(),
                                 "validation_errors": [], "request_id": secrets.token_hex(8)})
        return Refused(401, {"code": 401, "error": f"Permission Denied {echo or ''}".strip()})

    def check_auth(self, vendor, headers):
        key = self.keys.get(vendor)
        if vendor == "gemini":
            presented = headers.get("x-goog-api-key")
            good = presented == key
        elif vendor == "deepgram":
            presented = headers.get("authorization")
            good = presented == f"Token {key}"
        else:
            presented = headers.get("authorization")
            good = presented == f"Bearer {key}"
        if self.fault in ("401", "401-echo") or not good:
            raise self.refuse_key(vendor, presented)

    @staticmethod
    def bad(vendor, why):
        if vendor == "soniox":
            return Refused(400, {"status_code": 400, "error_type": "invalid_request", "message": "Invalid request.",
                                 "validation_errors": [{"message": why}], "request_id": secrets.token_hex(8)})
        if vendor == "deepgram":
            return Refused(400, {"err_code": "Bad Request", "err_msg": why, "request_id": secrets.token_hex(8)})
        if vendor in ("openai",):
            return Refused(400, {"error": {"message": why, "type": "invalid_request_error", "param": None, "code": None}})
        if vendor == "gemini":
            return Refused(400, {"error": {"code": 400, "message": why, "status": "INVALID_ARGUMENT"}})
        return Refused(400, {"code": 400, "error": why})

    def answer(self, vendor, path, query, body):
        now = time.time()
        if vendor == "openai":
            seconds = 600
            if "expires_after" in body:
                ea = body["expires_after"]
                if not isinstance(ea, dict) or ea.get("anchor") != "created_at" or not is_int(ea.get("seconds")) \
                        or not 10 <= ea["seconds"] <= 7200:
                    raise self.bad(vendor, "expires_after.seconds must be between 10 and 7200")
                seconds = ea["seconds"]
            session = body.get("session")
            if not isinstance(session, dict) or session.get("type") not in ("realtime", "transcription"):
                raise self.bad(vendor, "session.type must be realtime or transcription")
            if session["type"] == "realtime" and not isinstance(session.get("model"), str):
                raise self.bad(vendor, "session.model is required")
            value = "ek_" + secrets.token_hex(16)
            return 200, {"value": value, "expires_at": int(now) + seconds,
                         "session": {**session, "id": "sess_" + secrets.token_hex(8), "object": "realtime.session"}}
        if vendor == "gemini":
            uses = body.get("uses", 1)
            if not is_int(uses) or uses < 0:
                raise self.bad(vendor, "uses must be a non-negative integer")
            for field in ("expireTime", "newSessionExpireTime"):
                if field in body:
                    t = parse_rfc3339(body[field])
                    if t is None or not now - 5 < t < now + 20 * 3600:
                        raise self.bad(vendor, f"{field} must be a time less than 20 hours in the future")
            setup = body.get("bidiGenerateContentSetup")
            if setup is not None and (not isinstance(setup, dict) or not str(setup.get("model", "")).startswith("models/")):
                raise self.bad(vendor, "bidiGenerateContentSetup.model must name models/...")
            name = "auth_tokens/" + secrets.token_hex(16)
            return 200, {"name": name, "uses": uses, "expireTime": body.get("expireTime", rfc3339(now + 1800)),
                         "newSessionExpireTime": body.get("newSessionExpireTime", rfc3339(now + 60))}
        if vendor == "deepgram" and path == "/v1/auth/grant":
            ttl = body.get("ttl_seconds", 30)
            if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not 1 <= ttl <= 3600:
                raise self.bad(vendor, "ttl_seconds must be between 1 and 3600")
            head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
            return 200, {"access_token": f"{head}.{secrets.token_hex(24)}.{secrets.token_hex(16)}", "expires_in": ttl}
        if vendor == "deepgram":
            if not isinstance(body.get("comment"), str) or not isinstance(body.get("scopes"), list) or not body["scopes"]:
                raise self.bad(vendor, "comment and scopes are required")
            if not all(isinstance(t, str) for t in body.get("tags", [])):
                raise self.bad(vendor, "tags must be strings")
            ttl = body.get("time_to_live_in_seconds")
            if ttl is not None and (not is_int(ttl) or ttl < 1):
                raise self.bad(vendor, "time_to_live_in_seconds must be a positive integer")
            key = {"api_key_id": secrets.token_hex(8), "key": secrets.token_hex(20), "comment": body["comment"],
                   "scopes": body["scopes"], "tags": body.get("tags", []),
                   "expiration_date": rfc3339(now + ttl) if ttl else None}
            return 200, key
        if vendor == "soniox":
            if body.get("usage_type") not in ("transcribe_websocket", "tts_rt"):
                raise self.bad(vendor, "usage_type must be transcribe_websocket or tts_rt")
            e = body.get("expires_in_seconds")
            if not is_int(e) or not 1 <= e <= 3600:
                raise self.bad(vendor, "expires_in_seconds must be between 1 and 3600")
            m = body.get("max_session_duration_seconds")
            if m is not None and (not is_int(m) or not 1 <= m <= 18000):
                raise self.bad(vendor, "max_session_duration_seconds must be between 1 and 18000")
            ref = body.get("client_reference_id")
            if ref is not None and (not isinstance(ref, str) or len(ref) > 256):
                raise self.bad(vendor, "client_reference_id is at most 256 characters")
            if "single_use" in body and not isinstance(body["single_use"], bool):
                raise self.bad(vendor, "single_use must be a boolean")
            return 201, {"api_key": "temp:" + secrets.token_hex(13).upper(), "expires_at": rfc3339(now + e)}
        if vendor == "speechmatics":
            if query.get("type") not in ("rt", "batch", "flow"):
                raise self.bad(vendor, "type must be rt, batch or flow")
            ttl = body.get("ttl")
            if not is_int(ttl) or not 60 <= ttl <= 86400:
                raise self.bad(vendor, "ttl must be between 60 and 86400")
            head = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT"}').rstrip(b"=").decode()
            return 201, {"apikey_id": None, "key_value": f"{head}.{secrets.token_hex(24)}.{secrets.token_hex(16)}"}
        raise Refused(404, {"error": "not found"})

    def serve(self, method, target, headers, raw):
        """Returns (status, extra headers, body bytes) or a fault keyword."""
        url = urllib.parse.urlsplit(target)
        vendor = self.vendor_of(method, url.path)
        if vendor is None:
            return 404, {}, b'{"error": "not found"}'
        self.requests[vendor] += 1
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.last[vendor] = {"method": method, "path": url.path, "query": query, "headers": headers, "json": body}
        if self.fault in ("hang", "reset"):
            return self.fault
        try:
            if method != "POST":
                raise Refused(405, {"error": "method not allowed"})
            self.check_auth(vendor, headers)
            if self.fault == "429":
                raise Refused(429, {"error": "Too many requests"})
            if self.fault in ("500", "503"):
                raise Refused(int(self.fault), {"error": "internal error"})
            if not headers.get("content-type", "").startswith("application/json") or not isinstance(body, dict):
                raise self.bad(vendor, "the body must be a JSON object (Content-Type: application/json)")
            status, answer = self.answer(vendor, url.path, query, body)
        except Refused as r:
            extra = {"Retry-After": self.retry_after} if r.status == 429 else {}
            return r.status, extra, json.dumps(r.body).encode()
        if self.fault == "garbage":
            return 200, {"Content-Type": "text/html"}, b"<html>upstream proxy error</html>"
        if self.fault == "notoken":
            return status, {}, b'{"expires_in": 30}'
        self.issued.setdefault(vendor, []).append(answer)
        return status, {}, json.dumps(answer).encode()

    async def handle(self, reader, writer):
        self.connections += 1
        try:
            async for method, target, headers, body in requests(reader):
                result = self.serve(method, target, headers, body)
                if result == "hang":
                    await reader.read()
                    return
                if result == "reset":
                    reset(writer)
                    return
                status, extra, payload = result
                head = [f"HTTP/1.1 {status} {'OK' if status < 300 else 'Error'}", f"Content-Length: {len(payload)}"]
                if "Content-Type" not in extra:
                    head.append("Content-Type: application/json")
                head += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--key", action="append", default=[], help="vendor=key (each vendor's accepted key)")
    ap.add_argument("--fault", default="ok")
    args = ap.parse_args()
    fake = Vendors(dict(k.split("=", 1) for k in args.key), fault=args.fault, thread=False)
    serve_main(fake.handle, args.port)


if __name__ == "__main__":
    main()
