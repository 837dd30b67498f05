"""The session relay, black-box: a WebSocket client as a browser, tokend, and the streaming
fake (tests/fakes/streaming_fake.py) checking what it receives: the enforced query, the
key, frame pacing, Terminate. One class per concern."""
import json
import os
import re
import signal
import socket
import time
import unittest

from harness import CANARY_KEY, UNLIMITED, TokendTestCase, make_ca, request, RSS_IS_TOKENDS
from wsclient import BIN, CLOSE, CONT, PING, TEXT, Closed, WsClient, frame

RELAY = {**UNLIMITED, "RELAY": "true", "RELAY_SESSIONS_PER_CLIENT": 1000}
QUERY = "/v3/ws?speech_model=universal-streaming-english&sample_rate=16000"

# A script with every hook: what they see goes to a shared dictionary, read back at /seen.
HOOKS_SCRIPT = r'''
local tokend = require "tokend"
local cjson = require "cjson"
local options = require("tokend.streaming").options{}
local seen = tokend.shared("seen")
local kill = tokend.shared("kill")

local function add(name, value)
  local n = seen:incr(name .. "#", 1, 0)
  seen:set(name .. n, type(value) == "table" and cjson.encode(value) or tostring(value))
end

tokend.route("GET", "/v3/ws", function(req)
  local q = req.query
  local query = assert(options:query(q))
  local hook = q.hook or ""
  return tokend.relay{
    query = query .. (q.format and "&format_turns=true" or ""), user = q.user,
    idle_seconds = tonumber(q.idle) or 30, max_seconds = tonumber(q.max) or 10800,
    tick_seconds = 1,
    on_begin = function(s, id, msg) add("begin", id); add("begin_type", msg.type); add("session", s.id) end,
    on_turn = function(s, turn)
      add("turn", turn)
      if hook == "close-on-turn" then s:close(4000, "closed by the script") end
      if hook == "raise-on-turn" then error("a hook that raises") end
      if hook == "loop-on-turn" then while true do end end
    end,
    on_message = q.messages and function(s, msg) add("message", msg.type) end or nil,
    on_update = q.update and function(s, msg)
      add("update", msg)
      if q.update == "refuse" then return nil, "not allowed" end
      msg.keyterms_prompt = { "enforced" }
      return msg
    end or nil,
    on_tick = function(s) if kill:get(s.id) then s:close(4001, "killed by an admin") end end,
    on_end = function(s, facts)
      add("end", facts)
      if hook == "loop-on-end" then while true do end end
    end,
  }
end)

tokend.route("GET", "/seen/:name", function(req)
  local out, n = {}, seen:get(req.params.name .. "#") or 0
  for i = 1, n do out[i] = seen:get(req.params.name .. i) end
  return 200, out
end)

tokend.route("POST", "/kill/:id", function(req) kill:set(req.params.id, true) return 204 end)
tokend.route("GET", "/ping", function() return 200, "pong" end)
'''


class RelayCase(TokendTestCase):
    """A streaming fake and a tokend relaying to it (the default script with RELAY = true,
    or a script of the test's)."""

    def start(self, script=None, policy=None, env=None, tls=False, **kw):
        ca = (make_ca(self.workdir) if not os.path.exists(os.path.join(self.workdir, "ca.pem"))
              else tuple(os.path.join(self.workdir, n) for n in ("ca.pem", "server.pem", "server.key"))) if tls else None
        self.fake_ = self.streaming_fake(tls=ca)
        env = dict(env or {})
        if ca:
            env["CURL_CA_BUNDLE"] = ca[0]
        if script:
            script = self.write("relay.lua", script)
        self.t = self.tokend(fake=self.fake_, script=script, policy={**RELAY, **(policy or {})}, env=env, **kw)
        return self.t

    def connect(self, path=QUERY, **kw):
        c = WsClient(self.t.port, path, **kw)
        self.addCleanup(c.__exit__)
        return c

    def seen(self, name):
        return [json.loads(v) if v.startswith("{") else v for v in self.t.get(f"/seen/{name}").json()]

    def wait_seen(self, name, n=1, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = self.seen(name)
            if len(got) >= n:
                return got
            time.sleep(0.05)
        self.fail(f"{name} seen {len(self.seen(name))} times, not {n}")

    def metric(self, name):
        text = self.t.get("/metrics").body.decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def audit(self, session_count=1, timeout=10):
        """The relay audit lines, once there are session_count of them."""
        deadline = time.time() + timeout
        while True:
            lines = [l for l in self.t.log.splitlines() if "event=relay_session" in l]
            if len(lines) >= session_count or time.time() > deadline:
                return lines
            time.sleep(0.05)


class Session(RelayCase):
    """A whole session: the script's query and the key reach the upstream, frames both
    ways, Terminate, Termination, close 1000."""

    def test_a_session_from_begin_to_termination(self):
        self.start()
        c = self.connect(QUERY + "&turn=fast")
        self.assertEqual(c.status, 101)
        begin = c.recv_json()
        self.assertEqual(begin["type"], "Begin")
        c.stream(2.0)
        c.send_json({"type": "Terminate"})
        code, _ = c.until_closed()
        self.assertEqual(code, 1000)
        types = [m["type"] for m in c.messages]
        self.assertEqual(types[0], "Begin")
        self.assertEqual(types[-1], "Termination")
        self.assertIn("Turn", types)
        up = self.fake_.wait_ended()[0]
        self.assertTrue(up["key_ok"], "the upstream got the server's key")
        self.assertEqual(up["frames"], 40)
        self.assertEqual(up["bytes"], 40 * 1600)
        self.assertEqual((up["min_frame"], up["max_frame"]), (1600, 1600))
        self.assertTrue(up["terminated"])
        self.assertEqual(up["texts"], ["Terminate"])
        self.assertEqual(up["closed_with"], 1000)
        self.assertLess(up["max_ahead_ms"], 1000)
        q = up["query"]
        self.assertEqual(q["speech_model"], "universal-streaming-english")
        self.assertEqual((q["sample_rate"], q["encoding"], q["format_turns"]), ("16000", "pcm_s16le", "true"))
        self.assertEqual([q["end_of_turn_confidence_threshold"], q["min_turn_silence"], q["max_turn_silence"]],
                         ["0.4", "160", "400"], "the fast preset the client chose")
        self.assertNotIn("token", q)
        self.assertTrue(up["user_agent"].startswith("tokend/"))
        line = self.audit()[0]
        self.assertIn("cause=terminated", line)
        self.assertIn("code=1000", line)
        self.assertIn(f"upstream_session={begin['id']}", line)
        self.assertRegex(line, r"audio_seconds=2\.000 ")
        self.assertIn("bytes_in=64021 ", line)      # 40 frames and {"type": "Terminate"}
        self.assertIn("GET /v3/ws 101", self.t.wait_log("GET /v3/ws 101"))

    def test_the_query_is_the_script_s_not_the_client_s(self):
        self.start()
        c = self.connect(QUERY + "&keyterms_prompt=%5B%22x%22%5D&token=abc&vad_threshold=0.1&webhook_url=http://x"
                         "&max_turn_silence=99&encoding=pcm_mulaw")
        self.assertEqual(c.status, 101)
        c.recv_json()
        c.close()
        self.assertEqual(c.until_closed()[0], 1000)
        q = self.fake_.wait_ended()[0]["query"]
        self.assertEqual(sorted(q), sorted(["speech_model", "end_of_turn_confidence_threshold", "min_turn_silence",
                                            "max_turn_silence", "format_turns", "sample_rate", "encoding"]))
        self.assertEqual((q["max_turn_silence"], q["encoding"]), ("1280", "pcm_s16le"))

    def test_options_the_policy_does_not_allow_are_refused(self):
        self.start(policy={"SPEECH_MODELS": "universal-streaming-english", "MAX_KEYTERMS": 2})
        for query, parameter in [("?speech_model=u3-rt-pro", "speech_model"), ("?keyterms=a,b,c", "keyterms"),
                                 ("?sample_rate=1000", "sample_rate"), ("?turn=sleepy", "turn")]:
            c = self.connect("/v3/ws" + query)
            self.assertEqual(c.status, 400, query)
            self.assertEqual(c.json()["parameter"], parameter)
        self.assertEqual(self.fake_.stats()["handshakes"], 0)
        c = self.connect("/v3/ws?keyterms=tokend,relay")
        self.assertEqual(c.status, 101)
        c.close()
        c.until_closed()
        self.assertEqual(json.loads(self.fake_.wait_ended()[0]["query"]["keyterms_prompt"]), ["tokend", "relay"])

    def test_over_tls_the_upstream_is_verified(self):
        self.start(tls=True)
        c = self.connect()
        self.assertEqual(c.recv_json()["type"], "Begin")
        c.stream(0.5)
        c.send_json({"type": "Terminate"})
        self.assertEqual(c.until_closed()[0], 1000)
        self.assertTrue(self.fake_.wait_ended()[0]["key_ok"])

    def test_over_https_to_tokend(self):
        """wss:// to tokend (libmicrohttpd's TLS, which forwards an upgraded connection
        through a socket pair of its own), to a wss:// upstream."""
        from harness import tls_context
        ca = make_ca(self.workdir)
        self.start(tls=True, args=["--tls-cert", ca[1], "--tls-key", ca[2]])
        c = WsClient(self.t.port, QUERY, tls=tls_context(ca[0]), origin="https://127.0.0.1:%d" % self.t.port)
        self.addCleanup(c.__exit__)
        self.assertEqual(c.status, 101)
        self.assertEqual(c.recv_json()["type"], "Begin")
        c.stream(1.0)
        c.send_json({"type": "Terminate"})
        self.assertEqual(c.until_closed()[0], 1000)
        self.assertEqual(self.fake_.wait_ended()[0]["frames"], 20)

    def test_config_tells_the_page_to_relay(self):
        self.start()
        self.assertEqual(self.t.get("/config").json()["relay_url"], "/v3/ws")

    def test_without_relay_there_is_no_relay(self):
        self.start(policy={"RELAY": "false"})
        self.assertNotIn("relay_url", self.t.get("/config").json())
        self.assertEqual(self.t.get(QUERY).status, 404)


class Handshake(RelayCase):
    """What is not a WebSocket handshake gets 400; a page of another origin 403."""

    def test_bad_handshakes_get_400(self):
        self.start()
        for kw, why in [({"key": "short"}, "Sec-WebSocket-Key"), ({"key": ""}, "Sec-WebSocket-Key"),
                        ({"version": "8"}, "Version"), ({"version": None}, "Version"),
                        ({"upgrade": None}, "Upgrade"), ({"upgrade": "h2c"}, "Upgrade"),
                        ({"connection": "keep-alive"}, "Connection"), ({"http": "HTTP/1.0"}, "HTTP/1.1")]:
            c = self.connect(**kw)
            self.assertEqual(c.status, 400, kw)
            self.assertIn(why, c.json()["error"], kw)
        r = self.t.get(QUERY)
        self.assertEqual(r.status, 400)
        self.assertEqual(self.fake_.stats()["handshakes"], 0, "nothing reached the upstream")
        self.assertEqual(len(self.audit(9)), 9)
        self.assertIn("cause=bad_handshake", self.audit()[0])

    def test_other_origins_get_403(self):
        self.start()
        for origin in ["https://evil.example", "null", "http://localhost.evil.example"]:
            c = self.connect(origin=origin)
            self.assertEqual(c.status, 403, origin)
        self.assertEqual(self.connect(origin="http://localhost:3000").status, 101)
        self.assertEqual(self.connect(origin=None).status, 101, "not a browser: no Origin to check")

    def test_frames_glued_to_the_handshake_are_relayed(self):
        self.start()
        c = self.connect(extra=frame(BIN, b"\x01\x00" * 800) + frame(BIN, b"\x02\x00" * 800))
        c.recv_json()
        c.send_json({"type": "Terminate"})
        self.assertEqual(c.until_closed()[0], 1000)
        self.assertEqual(self.fake_.wait_ended()[0]["frames"], 2)


class UpstreamCloses(RelayCase):
    """The upstream's close codes reach the client unchanged; a refusal, a hang or a drop
    gets a defined close; the key never reaches the client or the log."""

    def test_close_codes_pass_through(self):
        self.start()
        for code in [1008, 3005, 3006, 3007, 3008, 3009, 4321]:
            self.fake_.control(mode=f"close-{code}")
            c = self.connect()
            self.assertEqual(c.recv_json()["type"], "Begin")
            self.assertEqual(c.recv_json()["type"], "Error")
            self.assertEqual(c.until_closed(), (code, f"closed by the test (close-{code})"), code)
        lines = self.audit(7)
        self.assertEqual(len(lines), 7)
        self.assertTrue(all("cause=upstream_closed" in l for l in lines), lines)

    def test_a_refused_key_closes_1008(self):
        self.start(key="not-the-key")
        c = self.connect()
        self.assertEqual(c.status, 101)
        self.assertEqual(c.recv_json()["type"], "Error")
        self.assertEqual(c.until_closed()[0], 1008)
        self.assertFalse(self.fake_.wait_ended()[0]["key_ok"])

    def test_refused_handshakes(self):
        self.start()
        for i, (mode, code, cause) in enumerate([
                ("refuse-401", 1008, "upstream_refused"), ("refuse-403", 1008, "upstream_refused"),
                ("refuse-429", 3009, "upstream_refused"), ("refuse-503", 1013, "upstream_unavailable"),
                ("refuse-101", 1013, "upstream_unavailable")]):
            self.fake_.control(mode=mode)
            c = self.connect()
            self.assertEqual(c.status, 101, mode)
            error = c.recv_json()
            self.assertEqual((error["type"], error["error_code"]), ("Error", code), mode)
            self.assertNotIn("refused (Authorization", error["error"], "the upstream's text is not passed on")
            self.assertEqual(c.until_closed()[0], code, mode)
            self.assertIn(f"cause={cause}", self.audit(i + 1)[i])
        self.assertIn("HTTP 429", self.t.log)
        self.assertNotIn(CANARY_KEY, self.t.log)

    def test_an_upstream_that_hangs_or_is_down(self):
        self.start(env={"TOKEND_UPSTREAM_TIMEOUT_MS": "1000"})
        self.fake_.control(mode="hang")
        start = time.time()
        c = self.connect()
        self.assertEqual(c.status, 101)
        self.assertEqual(c.recv_json()["error_code"], 1013)
        self.assertEqual(c.until_closed()[0], 1013)
        self.assertLess(time.time() - start, 8)
        self.fake_.stop()
        c = self.connect()
        self.assertEqual(c.until_closed()[0], 1013)
        self.assertEqual(self.t.get("/healthz").status, 200)

    def test_an_upstream_that_drops(self):
        self.start()
        self.fake_.control(mode="drop")
        c = self.connect()
        self.assertEqual(c.until_closed()[0], 1011)
        self.fake_.control(mode="drop-after-turn")
        c = self.connect()
        c.recv_json()
        c.stream(0.6)
        self.assertEqual(c.until_closed()[0], 1011)
        self.assertIn("the connection to the streaming service was lost", c.close_reason)
        self.assertIn("cause=upstream_gone", self.audit(2)[1])


class ClientLimits(RelayCase):
    """Limits enforced in C: audio chunk sizes, text messages, message sizes, rates, pacing,
    the idle time, the session's length, a client that does not read or goes away."""

    def client(self, **kw):
        c = self.connect(**kw)
        self.assertEqual(c.status, 101, c.body)
        self.assertEqual(c.recv_json()["type"], "Begin")
        return c

    def test_bad_audio_and_text(self):
        self.start()
        for send, code in [(lambda c: c.send_binary(b"\0" * 1598), 3007), (lambda c: c.send_binary(b"\0" * 32002), 3007),
                           (lambda c: c.send_binary(b"\0" * 1601), 3007), (lambda c: c.send_text("hello"), 3006),
                           (lambda c: c.send_json({"type": "Other"}), 3006), (lambda c: c.send_text("[1]"), 3006),
                           (lambda c: c.send_text("x" * 70000), 1009),
                           (lambda c: c.send_raw(frame(TEXT, b"\xff\xfe")), 1007),
                           (lambda c: c.send_raw(frame(BIN, b"\0" * 1600, mask=False)), 1002),
                           (lambda c: c.send_raw(frame(CONT, b"\0" * 1600)), 1002),
                           (lambda c: c.send_raw(frame(BIN, b"\0" * 1600, rsv=4)), 1002)]:
            c = self.client()
            send(c)
            self.assertEqual(c.until_closed()[0], code)
        up = self.fake_.wait_ended(11)
        self.assertTrue(all(s["frames"] == 0 and s["client_close"] == 1000 for s in up), up)
        self.assertTrue(all(s["terminated"] for s in up), "the upstream was asked to Terminate")
        causes = [re.search(r"cause=(\w+)", l).group(1) for l in self.audit(11)]
        self.assertEqual(causes, ["bad_audio"] * 3 + ["bad_message"] * 3 + ["protocol"] * 5)

    def test_fragmented_audio_is_one_message(self):
        self.start()
        c = self.client()
        c.send_raw(frame(BIN, b"\1" * 800, fin=False) + frame(CONT, b"\2" * 800))
        c.send_raw(frame(BIN, b"\1" * 800, fin=False) + frame(PING, b"hi") + frame(CONT, b"\2" * 800))
        c.send_json({"type": "Terminate"})
        self.assertEqual(c.until_closed()[0], 1000)
        up = self.fake_.wait_ended()[0]
        self.assertEqual((up["frames"], up["min_frame"]), (2, 1600))

    def test_faster_than_real_time_is_paced_not_refused(self):
        self.start()
        c = self.client()
        start = time.time()
        for i in range(60):                     # 3 s of audio at once
            c.send_binary(b"\x10\x00" * 800)
        c.send_json({"type": "Terminate"})
        self.assertEqual(c.until_closed(20)[0], 1000)
        up = self.fake_.wait_ended()[0]
        self.assertEqual(up["frames"], 60)
        self.assertLessEqual(up["max_ahead_ms"], 1000, "the upstream never saw audio too far ahead")
        self.assertGreater(time.time() - start, 2.0, "paced to about real time")

    def test_idle_and_max_seconds(self):
        self.start(script=HOOKS_SCRIPT)
        c = self.client(path=QUERY + "&idle=1")
        self.assertEqual(c.until_closed()[0], 1008)
        self.assertIn("nothing came from the client for 1 s", c.close_reason)
        c = self.client(path=QUERY + "&max=2")
        c.stream(2.6)
        self.assertEqual(c.until_closed()[0], 3008)
        self.assertEqual(c.messages[-1]["type"], "Error")
        causes = [f["cause"] for f in self.wait_seen("end", 2)]
        self.assertEqual(causes, ["idle", "max_seconds"])

    def test_a_ping_flood_is_cut(self):
        self.start()
        c = self.client()
        c.send_raw(frame(PING, b"x") * 400)
        self.assertEqual(c.until_closed()[0], 1008)
        self.assertIn("too many messages", c.close_reason)

    def test_a_client_that_does_not_read(self):
        self.start(script=HOOKS_SCRIPT)
        self.fake_.control(mode="flood-2000")      # 32 MB toward a client that reads nothing
        c = self.connect(QUERY + "&idle=2")
        c.stream(4, read=False)                     # it sends, though: it is not idle
        self.assertTrue(c.ended(10), "the client was cut")
        f = self.wait_seen("end")[0]
        self.assertEqual(f["cause"], "stalled")
        self.assertLess(f["bytes_out"], 16 * 1024 * 1024, "not everything was read from the upstream")

    def test_a_client_that_goes_away(self):
        self.start(script=HOOKS_SCRIPT)
        c = self.client()
        c.stream(0.3)
        c.drop()
        f = self.wait_seen("end")[0]
        self.assertEqual(f["cause"], "client_gone")
        up = self.fake_.wait_ended()[0]
        self.assertTrue(up["terminated"], "the upstream was asked to Terminate")
        self.assertIn("termination", f, "and its figures arrived")


class Hooks(RelayCase):
    """The script's hooks: what each gets, the session closed from one, failures and
    budgets ending the session and not the server, updates through the script."""

    def test_what_each_hook_gets(self):
        self.start(script=HOOKS_SCRIPT)
        c = self.connect(QUERY + "&format&user=ada&messages")
        begin = c.recv_json()
        c.stream(2.0)
        c.send_json({"type": "Terminate"})
        self.assertEqual(c.until_closed()[0], 1000)
        self.assertEqual(self.wait_seen("begin"), [begin["id"]])
        self.assertEqual(self.seen("begin_type"), ["Begin"])
        turns = self.wait_seen("turn", 4)
        self.assertTrue(all(t["end_of_turn"] for t in turns), "only whole turns")
        self.assertEqual([t["turn_is_formatted"] for t in turns], [False, True, False, True])
        f = self.wait_seen("end")[0]
        self.assertEqual(f["cause"], "terminated")
        self.assertEqual(f["code"], 1000)
        self.assertEqual(f["user"], "ada")
        self.assertEqual(f["upstream_id"], begin["id"])
        self.assertEqual(f["id"], self.seen("session")[0])
        self.assertAlmostEqual(f["audio_seconds"], 2.0)
        self.assertEqual(f["bytes_in"], 64000 + 21)
        self.assertGreater(f["bytes_out"], 0)
        self.assertEqual(f["termination"]["audio_duration_seconds"], 2.0)
        self.assertGreater(f["termination"]["session_duration_seconds"], 1.9)
        self.assertGreater(f["seconds"], 1.9)
        self.assertEqual(f["status"], 101)
        self.assertIn("Termination", self.seen("message"))

    def test_the_script_closes_a_session(self):
        self.start(script=HOOKS_SCRIPT)
        c = self.connect(QUERY + "&hook=close-on-turn")
        c.stream(1.2)
        self.assertEqual(c.until_closed(), (4000, "closed by the script"))
        self.assertEqual(c.messages[-1], {"type": "Error", "error_code": 4000, "error": "closed by the script"})
        self.assertEqual(self.wait_seen("end")[0]["cause"], "script")
        self.assertTrue(self.fake_.wait_ended()[0]["terminated"])

    def test_an_admin_kill_through_a_shared_dictionary(self):
        self.start(script=HOOKS_SCRIPT)
        c = self.connect()
        c.recv_json()
        session = self.wait_seen("session")[0]
        self.assertEqual(self.t.get(f"/kill/{session}", method="POST").status, 204)
        c.stream(3, read=True)
        self.assertEqual(c.close_code or c.until_closed()[0], 4001)

    def test_a_hook_that_fails_ends_its_session_not_the_server(self):
        self.start(script=HOOKS_SCRIPT, env={"TOKEND_LUA_INSTRUCTIONS": "100000"})
        for hook in ["raise-on-turn", "loop-on-turn"]:
            c = self.connect(QUERY + "&hook=" + hook)
            c.stream(1.2)
            self.assertEqual(c.until_closed()[0], 1011, hook)
            self.assertEqual(self.t.get("/ping").body, b"pong")
        ends = self.wait_seen("end", 2)
        self.assertEqual([f["cause"] for f in ends], ["hook_failed", "hook_failed"])
        log = self.t.log
        self.assertIn("a hook that raises", log)
        self.assertIn("instruction limit exceeded", log)
        self.assertIn("its on_turn hook failed", log)
        # on_end that loops: stopped at its budget, the session is over anyway.
        c = self.connect(QUERY + "&hook=loop-on-end")
        c.close()
        self.assertEqual(c.until_closed()[0], 1000)
        self.wait_seen("end", 3)
        self.assertEqual(self.t.get("/ping").body, b"pong")

    def test_update_configuration_passes_through_the_script(self):
        self.start(script=HOOKS_SCRIPT)
        update = {"type": "UpdateConfiguration", "keyterms_prompt": ["anything"], "max_turn_silence": 500}
        c = self.connect(QUERY + "&update=rewrite")
        c.recv_json()
        c.send_json(update)
        c.send_json({"type": "ForceEndpoint"})
        c.send_json({"type": "Terminate"})
        self.assertEqual(c.until_closed()[0], 1000)
        up = self.fake_.wait_ended()[0]
        self.assertEqual(up["updates"], [{**update, "keyterms_prompt": ["enforced"]}])
        self.assertEqual(up["texts"], ["UpdateConfiguration", "ForceEndpoint", "Terminate"], "in order")
        for mode in ["refuse", None]:
            c = self.connect(QUERY + (f"&update={mode}" if mode else ""))
            c.recv_json()
            c.send_json(update)
            c.send_json({"type": "Terminate"})
            self.assertEqual(c.until_closed()[0], 1000)
            up = self.fake_.wait_ended()[0]
            self.assertEqual((up["updates"], up["texts"]), ([], ["Terminate"]), mode)


class Lifecycle(RelayCase):
    """A reload does not cut sessions; a shutdown drains them, then closes them 1001."""

    def test_a_reload_keeps_sessions_and_their_hooks(self):
        self.start(script=HOOKS_SCRIPT)
        c = self.connect(QUERY + "&user=before")
        c.recv_json()
        with open(os.path.join(self.workdir, "relay.lua"), "a") as f:
            f.write('\ntokend.route("GET", "/version", function() return 200, "2" end)\n')
        self.t.proc.send_signal(signal.SIGHUP)
        self.t.wait_log("reloaded")
        self.assertEqual(self.t.get("/version").body, b"2")
        c.stream(1.2)
        c.send_json({"type": "Terminate"})
        self.assertEqual(c.until_closed()[0], 1000)
        f = self.wait_seen("end")[0]
        self.assertEqual((f["cause"], f["user"]), ("terminated", "before"))
        self.assertEqual(len(self.seen("turn")), 1, "the old script's hooks ran")

    def test_sigterm_drains_then_closes_1001(self):
        self.start(env={"TOKEND_DRAIN_TIMEOUT_S": "1"})
        c = self.connect()
        c.recv_json()
        self.t.proc.send_signal(signal.SIGTERM)
        c.stream(0.5)
        self.assertEqual(c.until_closed()[0], 1001)
        self.assertEqual(self.t.wait(), 0)
        up = self.fake_.wait_ended()[0]
        self.assertTrue(up["terminated"])
        self.assertIn("cause=shutdown", self.t.log)


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


class Leaks(RelayCase):
    """Nothing leaks: descriptors, memory and shared counters return to their idle values,
    also after a thousand sessions opened and dropped at once."""

    def start_default(self, **kw):
        """The default script, with a route reading its count of a client's open sessions."""
        with open(os.path.join(os.environ.get("TOKEND_SOURCE_DIR", "../.."), "scripts", "routes.lua")) as f:
            script = f.read()
        script += '\ntokend.route("GET", "/open-sessions", function(req)\n' \
                  '  return 200, { n = tokend.shared("relay-sessions"):get(req.client) or 0 }\nend)\n'
        return self.start(script=script, **kw)

    def open_sessions(self):
        return self.t.get("/open-sessions").json()["n"]

    def settle(self, fds, timeout=20):
        """Waits for no session to be open and the descriptors back to fds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.metric("tokend_relay_sessions_open") == 0 and open_fds(self.t.proc.pid) == fds:
                return
            time.sleep(0.1)
        self.assertEqual(self.metric("tokend_relay_sessions_open"), 0)
        pid = self.t.proc.pid
        self.assertEqual(open_fds(pid), fds, "descriptors back to idle: " + ", ".join(
            sorted(os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd"))))

    def idle_fds(self):
        """The descriptors once no session is open and their count held for a second."""
        deadline = time.time() + 20
        while self.metric("tokend_relay_sessions_open") != 0 and time.time() < deadline:
            time.sleep(0.1)
        while time.time() < deadline:
            time.sleep(0.5)
            counts = set()
            for _ in range(5):
                counts.add(open_fds(self.t.proc.pid))
                time.sleep(0.2)
            if len(counts) == 1:
                return counts.pop()
        self.fail("the server did not settle")

    def every_kind_of_session(self):
        c = self.connect()
        c.recv_json()
        c.stream(0.2)
        c.send_json({"type": "Terminate"})
        c.until_closed()
        self.connect().drop()                               # gone before its 101
        c = self.connect()
        c.recv_json()
        c.drop()                                            # gone mid-session
        c = self.connect()
        c.send_text("nonsense")
        c.until_closed()
        self.assertEqual(self.connect(key="bad").status, 400)
        self.fake_.control(mode="refuse-401")
        self.connect().until_closed()
        self.fake_.control(mode="drop")
        self.connect().until_closed()
        self.fake_.control(mode="ok")

    def test_descriptors_counters_and_memory_return_to_idle(self):
        self.start_default(policy={"RELAY_SESSIONS_PER_CLIENT": 3})
        self.every_kind_of_session()            # libcurl's first multi handle, libmicrohttpd's first connections
        fds = self.idle_fds()
        for _ in range(3):
            self.every_kind_of_session()
        self.settle(fds)
        # Three at a time per client: the counter went back to 0 through all of that.
        held = [self.connect() for _ in range(3)]
        self.assertTrue(all(c.status == 101 for c in held))
        refused = self.connect()
        self.assertEqual(refused.status, 429)
        refused.drop()
        held[0].close()
        held[0].until_closed()
        deadline = time.time() + 5
        while time.time() < deadline:
            c = self.connect()
            c.drop()
            if c.status == 101:
                break
            time.sleep(0.1)
        for c in held[1:]:
            c.drop()
        self.settle(fds)
        rss = rss_kib(self.t.proc.pid)
        for _ in range(10):
            self.every_kind_of_session()
        self.settle(fds)
        if RSS_IS_TOKENDS:
            self.assertLess(rss_kib(self.t.proc.pid) - rss, 4096, "RSS flat over 70 more sessions")
        self.assertEqual(self.open_sessions(), 0)

    def test_a_thousand_sessions_opened_and_dropped_at_once(self):
        import asyncio
        self.start_default(env={"TOKEND_MAX_CONNECTIONS_PER_IP": "0"})
        self.every_kind_of_session()
        fds = self.idle_fds()
        port = self.t.port
        audio = frame(BIN, b"\0" * 1600)

        async def one(i):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return "refused"
            writer.write((f"GET {QUERY} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                          "Origin: http://127.0.0.1\r\n\r\n").encode())
            try:
                if i % 3:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                    if i % 3 == 2 and b" 101 " in head:
                        writer.write(audio * 3)
                        await writer.drain()
                        await asyncio.sleep(0.2)
                    return head.split(b" ", 2)[1].decode()
                return "dropped"
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return "cut"
            finally:
                writer.transport.abort()         # gone, without a close

        async def all_of_them():
            return await asyncio.gather(*(one(i) for i in range(1000)))

        results = asyncio.run(all_of_them())
        self.assertNotIn("refused", results)
        self.settle(fds, timeout=60)
        # Every session ended and was counted; the per-client counter is back to 0.
        self.assertGreaterEqual(self.metric("tokend_relay_sessions_closed_total"), 1000)
        self.assertEqual(self.open_sessions(), 0)
        self.assertGreater(results.count("101"), 300, results)
        c = self.connect()
        self.assertEqual(c.status, 101)
        self.assertEqual(c.recv_json()["type"], "Begin")
        c.send_json({"type": "Terminate"})
        self.assertEqual(c.until_closed()[0], 1000)
        self.assertEqual(self.t.get("/healthz").status, 200)


@unittest.skipIf(os.environ.get("ASAN_OPTIONS"), "the stock interpreter cannot load a sanitizer build")
class ModuleMode(RelayCase):
    """The relay in the Lua module: an application's own loop steps the server."""

    def test_a_lua_application_relays_from_its_own_loop(self):
        import subprocess
        from harness import SRC, read_line
        build = os.environ.get("TOKEND_BUILD_DIR") or os.path.join(SRC, "build")
        self.fake_ = self.streaming_fake()
        app = self.write("app.lua", r'''
local tokend = require "tokend"
tokend.route("GET", "/v3/ws", function(req)
  return tokend.relay{ query = "speech_model=universal-streaming-english",
                       on_end = function(s, f) print("ended", f.cause, f.code, f.audio_seconds); io.stdout:flush() end }
end)
local s = assert(tokend.server{ port = 0 })
print("port", s:port()); io.stdout:flush()
while true do assert(s:step(s:timeout() or 100)) end
''')
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSEMBLYAI_", "TOKEND_"))}
        env.update(LUA_CPATH=os.path.join(build, "?.so"), ASSEMBLYAI_API_KEY=CANARY_KEY,
                   ASSEMBLYAI_STREAMING_URL=self.fake_.url)
        p = subprocess.Popen(["lua5.4", app], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: (p.poll() is None and p.kill(), p.wait(), p.stdout.close(), p.stderr.close()))
        line = read_line(p, 15)
        self.assertIsNotNone(line, p.stderr.read1().decode() if p.poll() is not None else "no port")
        c = WsClient(int(line.split("\t")[1]), QUERY, origin=None)
        self.addCleanup(c.__exit__)
        self.assertEqual(c.recv_json()["type"], "Begin")
        c.stream(0.5)
        c.send_json({"type": "Terminate"})
        self.assertEqual(c.until_closed()[0], 1000)
        self.assertEqual(read_line(p, 10), "ended\tterminated\t1000\t0.5")
        self.assertEqual(self.fake_.wait_ended()[0]["frames"], 10)
