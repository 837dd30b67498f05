#!/usr/bin/env python3
"""A fake of AssemblyAI's Universal-Streaming WebSocket (GET /v3/ws), for the relay's tests.

It behaves like the documented API (../shared/FIELD-NOTES.md) toward a server-side client:
  - the raw key in Authorization: otherwise it upgrades, sends an Error and closes 1008;
  - speech_model, sample_rate and encoding (pcm_s16le or pcm_mulaw) in the query: otherwise
    an Error and 3006;
  - sends Begin {id, expires_at} at once (in the same write as its 101, as the spike saw);
  - binary messages of 50..1000 ms of audio, no further ahead of the wall clock than
    --ahead-ms (1000) since the first: otherwise an Error and 3007;
  - a partial Turn every 10 audio messages, an end_of_turn Turn every 20 (and its
    formatted version with format_turns=true); ForceEndpoint ends the turn at once;
  - {"type":"Terminate"}: a Termination {audio_duration_seconds, session_duration_seconds},
    then close 1000; KeepAlive is taken; UpdateConfiguration recorded; other text: 3006;
  - a session past its max_seconds (control) closes 3008.
Modes, for every new session (POST /__control {"mode": ..., "max_seconds": N, "turn_every": N}):
  ok; refuse-NNN (the handshake answered HTTP NNN, 429 with Retry-After); hang (the
  handshake never answered); close-NNNN (Begin, then an Error and close NNNN); drop (Begin,
  then the TCP connection ends without a close); drop-after-turn; silent (Begin, then it
  stops reading: the relay's buffer toward it fills); no-termination (Terminate is not
  answered); flood-N (N messages of 16 KiB right after Begin); echo-key (a Turn, then an
  Error and a close whose texts hold the key it was sent, as a careless server's might).
GET /__stats -> {"sessions": [...], "handshakes": N, "open": N}: what each session received
(its query, whether the key was right, its frames, pacing, texts, close codes). The key is
never echoed. It prints "listening <scheme>://127.0.0.1:<port>" once ready.
"""
import argparse
import asyncio
import base64
import hashlib
import json
import os
import ssl
import struct
import time
import urllib.parse
import uuid

from httpwire import read_request, reset, serve_main

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONT, TEXT, BIN, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10


def frame(opcode, payload=b"", fin=True):
    """A server frame (unmasked)."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 126, n)
    else:
        head = struct.pack("!BBQ", b0, 127, n)
    return head + payload


def unmask(payload, key):
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big") if n else b""


class Session:
    def __init__(self, fake, query, key_ok, headers):
        self.fake = fake
        self.id = str(uuid.uuid4())
        self.query = query
        self.rec = {
            "id": self.id, "query": query, "key_ok": key_ok, "user_agent": headers.get("user-agent"),
            "frames": 0, "bytes": 0, "min_frame": None, "max_frame": 0, "max_ahead_ms": 0.0,
            "texts": [], "updates": [], "terminated": False, "client_close": None, "closed_with": None,
            "sent": [], "ended": False, "mode": fake.mode,
        }
        self.started = time.time()
        self.first_audio = None
        self.turn = 0
        self.words = 0


class Fake:
    def __init__(self, key, ahead_ms):
        self.key = key
        self.ahead_ms = ahead_ms
        self.mode = "ok"
        self.max_seconds = 10800
        self.turn_every = 10
        self.sessions = []
        self.handshakes = 0
        self.open = 0

    async def serve(self, reader, writer):
        try:
            req = await read_request(reader)
            if req is None:
                return
            method, target, headers, body = req
            url = urllib.parse.urlsplit(target)
            if url.path == "/__control" and method == "POST":
                settings = json.loads(body or b"{}")
                for name in ("mode", "max_seconds", "turn_every"):
                    if name in settings:
                        setattr(self, name, settings[name])
                await self.reply(writer, 200, {"ok": True})
            elif url.path == "/__stats":
                await self.reply(writer, 200, {"sessions": [s.rec for s in self.sessions],
                                               "handshakes": self.handshakes, "open": self.open})
            elif url.path == "/v3/ws":
                await self.websocket(reader, writer, url, headers)
            else:
                await self.reply(writer, 404, {"error": "Not found"})
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def reply(self, writer, status, obj, extra=""):
        data = json.dumps(obj).encode()
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                     f"Connection: close\r\n{extra}\r\n".encode() + data)
        await writer.drain()

    async def websocket(self, reader, writer, url, headers):
        self.handshakes += 1
        mode = self.mode
        if mode == "hang":
            await reader.read()           # until the client gives up
            return
        if mode.startswith("refuse-"):
            status = int(mode[7:])
            extra = "Retry-After: 30\r\n" if status == 429 else ""
            # An error text that echoes the key, as some servers do: the relay must not pass it on.
            await self.reply(writer, status, {"error": f"refused (Authorization: {headers.get('authorization')})"},
                             extra)
            return
        key = headers.get("sec-websocket-key", "")
        if headers.get("upgrade", "").lower() != "websocket" or not key:
            await self.reply(writer, 400, {"error": "WebSocket expected"})
            return
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        s = Session(self, query, headers.get("authorization") == self.key, headers)
        self.sessions.append(s)
        self.open += 1
        try:
            accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
            head = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode()
            if not s.rec["key_ok"]:
                writer.write(head)
                await self.fail(writer, s, 1008, "Unauthorized connection: Invalid API key")
                return
            bad = self.check_query(query)
            if bad:
                writer.write(head)
                await self.fail(writer, s, 3006, bad)
                return
            writer.write(head + frame(TEXT, self.message(s, {"type": "Begin", "id": s.id,
                                                              "expires_at": int(time.time()) + self.max_seconds})))
            await writer.drain()
            await self.session(reader, writer, s, mode)
        finally:
            s.rec["ended"] = True
            s.rec["seconds"] = round(time.time() - s.started, 3)
            self.open -= 1

    def check_query(self, q):
        if not q.get("speech_model"):
            return "speech_model is required"
        if q.get("encoding") not in ("pcm_s16le", "pcm_mulaw"):
            return f"Invalid encoding: {q.get('encoding')}"
        try:
            rate = int(q.get("sample_rate", ""))
        except ValueError:
            return "sample_rate is required"
        if not 8000 <= rate <= 48000:
            return f"Invalid sample_rate: {rate}"
        if "token" in q:
            return "a token and a key both"
        return None

    def message(self, s, obj):
        s.rec["sent"].append(obj["type"])
        return json.dumps(obj).encode()

    async def send(self, writer, s, obj):
        writer.write(frame(TEXT, self.message(s, obj)))
        await writer.drain()

    async def fail(self, writer, s, code, why):
        await self.send(writer, s, {"type": "Error", "error_code": code, "error": why})
        await self.close(writer, s, code, why)

    async def close(self, writer, s, code, why=""):
        s.rec["closed_with"] = code
        writer.write(frame(CLOSE, struct.pack("!H", code) + why.encode()[:120]))
        await writer.drain()

    async def recv(self, reader):
        """One whole message: (opcode, payload); pings answered by the caller."""
        data, op = b"", None
        while True:
            b0, b1 = await reader.readexactly(2)
            fin, opcode, masked, n = b0 >> 7, b0 & 15, b1 >> 7, b1 & 127
            if n == 126:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await reader.readexactly(8))[0]
            mask = await reader.readexactly(4) if masked else None
            payload = await reader.readexactly(n)
            if not masked:
                raise ConnectionError("a client frame without a mask")
            payload = unmask(payload, mask)
            if opcode >= 8:
                return opcode, payload
            op = opcode if opcode != CONT else op
            data += payload
            if fin:
                return op, data

    async def session(self, reader, writer, s, mode):
        if mode.startswith("close-"):
            await self.fail(writer, s, int(mode[6:]), f"closed by the test ({mode})")
            await self.wait_close(reader, s)
            return
        if mode == "drop":
            reset(writer)
            return
        if mode == "echo-key":
            await self.send(writer, s, {"type": "Turn", "transcript": f"you said {self.key}", "end_of_turn": True})
            await self.send(writer, s, {"type": "Error", "error_code": 1008,
                                        "error": f"bad Authorization: {self.key.upper()[:12]}..."})
            await self.close(writer, s, 1008, f"key {self.key} refused")
            await self.wait_close(reader, s)
            return
        if mode.startswith("flood-"):
            for i in range(int(mode[6:])):
                writer.write(frame(TEXT, json.dumps({"type": "Flood", "i": i, "pad": "x" * 16000}).encode()))
            await writer.drain()
        if mode == "silent":
            await asyncio.sleep(3600)
            return
        rate = int(s.query["sample_rate"])
        width = 1 if s.query["encoding"] == "pcm_mulaw" else 2
        deadline = s.started + self.max_seconds
        while True:
            timeout = deadline - time.time()
            if timeout <= 0:
                await self.fail(writer, s, 3008, "Session expired: maximum session duration exceeded")
                await self.wait_close(reader, s)
                return
            try:
                op, data = await asyncio.wait_for(self.recv(reader), timeout)
            except asyncio.TimeoutError:
                continue
            if op == CLOSE:
                s.rec["client_close"] = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                writer.write(frame(CLOSE, data[:2]))
                await writer.drain()
                return
            if op == PING:
                writer.write(frame(PONG, data))
                continue
            if op == PONG:
                continue
            if op == TEXT:
                if not await self.text(reader, writer, s, data, mode):
                    return
                continue
            if not await self.audio(writer, s, data, rate, width, mode):
                await self.wait_close(reader, s)
                return

    async def wait_close(self, reader, s):
        """After its own close: the client's answer (recorded), until it ends."""
        try:
            while True:
                op, data = await asyncio.wait_for(self.recv(reader), 5)
                if op == CLOSE:
                    s.rec["client_close"] = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                    return
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            return

    async def text(self, reader, writer, s, data, mode):
        try:
            msg = json.loads(data)
            kind = msg.get("type")
        except (ValueError, AttributeError):
            msg, kind = None, None
        s.rec["texts"].append(kind)
        if kind == "Terminate":
            s.rec["terminated"] = True
            if mode == "no-termination":
                return True
            audio = s.rec["bytes"] / (int(s.query["sample_rate"]) * (1 if s.query["encoding"] == "pcm_mulaw" else 2))
            await self.send(writer, s, {"type": "Termination", "audio_duration_seconds": round(audio, 3),
                                        "session_duration_seconds": round(time.time() - s.started, 3)})
            await self.close(writer, s, 1000)
            await self.wait_close(reader, s)
            return False
        if kind == "ForceEndpoint":
            await self.turn(writer, s, True)
            return True
        if kind == "KeepAlive":
            return True
        if kind == "UpdateConfiguration":
            s.rec["updates"].append(msg)
            return True
        await self.fail(writer, s, 3006, "Invalid message type")
        await self.wait_close(reader, s)
        return False

    async def turn(self, writer, s, end):
        s.words += 1
        turn = {"type": "Turn", "turn_order": s.turn, "turn_is_formatted": False, "end_of_turn": end,
                "end_of_turn_confidence": 0.9 if end else 0.2, "transcript": " ".join(["word"] * s.words),
                "words": [{"text": "word", "start": i * 100, "end": i * 100 + 80, "confidence": 0.9,
                           "word_is_final": True} for i in range(s.words)]}
        await self.send(writer, s, turn)
        if end:
            if s.query.get("format_turns") == "true":
                await self.send(writer, s, {**turn, "turn_is_formatted": True,
                                            "transcript": " ".join(["Word"] * s.words) + "."})
            s.turn += 1
            s.words = 0

    async def audio(self, writer, s, data, rate, width, mode):
        ms = len(data) / width / rate * 1000
        if len(data) % width or ms < 50 or ms > 1000:
            await self.fail(writer, s, 3007, f"Input duration violation: {ms:.1f} ms (expected between 50 and 1000 ms)")
            return False
        now = time.time()
        if s.first_audio is None:
            s.first_audio = now
        rec = s.rec
        rec["frames"] += 1
        rec["bytes"] += len(data)
        rec["min_frame"] = len(data) if rec["min_frame"] is None else min(rec["min_frame"], len(data))
        rec["max_frame"] = max(rec["max_frame"], len(data))
        ahead = rec["bytes"] / width / rate * 1000 - (now - s.first_audio) * 1000
        rec["max_ahead_ms"] = max(rec["max_ahead_ms"], round(ahead, 1))
        if ahead > self.ahead_ms:
            await self.fail(writer, s, 3007, "Audio sent faster than real time")
            return False
        if rec["frames"] % self.turn_every == 0:
            await self.turn(writer, s, rec["frames"] % (2 * self.turn_every) == 0)
            if mode == "drop-after-turn":
                reset(writer)
                return False
        return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--key", required=True)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--ahead-ms", type=float, default=1000)
    args = ap.parse_args()
    fake = Fake(args.key, args.ahead_ms)
    serve_main(fake.serve, args.port, args.tls_cert, args.tls_key, alpn=["http/1.1"], backlog=4096)


if __name__ == "__main__":
    main()
