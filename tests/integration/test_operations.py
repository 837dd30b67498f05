"""Running tokend as a service: retries, reloads, drain, health, metrics and logs."""
import json
import os
import re
import signal
import threading
import time
import unittest

from harness import TokendTestCase, request


def metric(text, name, labels=""):
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


class UpstreamRetry(TokendTestCase):
    def test_a_5xx_is_retried_once_with_backoff(self):
        fake = self.fake(fault="500")
        t = self.tokend(fake=fake)
        started = time.time()
        self.assertEqual(t.get("/token").status, 502)
        self.assertGreaterEqual(time.time() - started, 0.1, "a back-off before the retry")
        self.assertEqual(fake.stats()["requests"], 2, "one retry, not more")
        self.assertIn("retrying once", t.wait_log("retrying once"))

    def test_a_flaky_upstream_is_hidden_by_the_retry(self):
        fake = self.fake(fault="flaky-500")
        t = self.tokend(fake=fake)
        for _ in range(3):
            self.assertEqual(t.get("/token").status, 200)
        self.assertEqual(fake.stats()["requests"], 6)

    def test_other_failures_are_not_retried(self):
        fake = self.fake()
        t = self.tokend(fake=fake)
        for fault in ["401", "429", "malformed"]:
            fake.control(fault=fault)
            before = fake.stats()["requests"]
            t.get("/token")
            self.assertEqual(fake.stats()["requests"], before + 1, fault)


class Reload(TokendTestCase):
    def script(self, greeting):
        return ('local tokend = require "tokend"\n'
                'tokend.route("GET", "/hello", function() return 200, "%s" end)\n'
                'tokend.route("GET", "/slow", function()\n'
                '  local token = tokend.generate_temp_token(60)\n'
                '  return 200, "%s " .. tostring(token ~= nil)\n'
                'end)\n' % (greeting, greeting))

    def test_sighup_reloads_and_requests_in_flight_finish_on_the_old_script(self):
        fake = self.fake(latency_ms=600)
        path = self.write("routes.lua", self.script("one"))
        t = self.tokend(fake=fake, script=path, workers=2)
        self.assertEqual(t.get("/hello").body, b"one")
        result = {}
        th = threading.Thread(target=lambda: result.update(r=t.get("/slow")))
        th.start()
        time.sleep(0.2)
        self.write("routes.lua", self.script("two"))
        t.proc.send_signal(signal.SIGHUP)
        t.wait_log("reloaded")
        self.assertEqual(t.get("/hello").body, b"two")
        th.join()
        self.assertEqual(result["r"].body, b"one true", "the request in flight finished on the old state")
        self.assertEqual(t.get("/hello").body, b"two")

    def test_a_broken_script_leaves_the_old_one_serving(self):
        path = self.write("routes.lua", self.script("one"))
        t = self.tokend(key=None, script=path)
        self.write("routes.lua", 'local tokend = require "tokend"\ntokend.route("GET", "/x", function() end\n')
        t.proc.send_signal(signal.SIGHUP)
        log = t.wait_log("reload failed")
        self.assertRegex(log, r"reload failed, the previous script keeps serving: \S*routes\.lua:3:")
        self.assertEqual(t.get("/hello").body, b"one")
        self.assertIsNone(t.proc.poll())

    def test_watch_reloads_on_change(self):
        path = self.write("routes.lua", self.script("one"))
        t = self.tokend(key=None, script=path, args=["--watch"])
        time.sleep(0.1)
        self.write("routes.lua", self.script("changed"))
        t.wait_log("reloaded")
        self.assertEqual(t.get("/hello").body, b"changed")

    def test_reloads_are_counted(self):
        t = self.tokend(key=None)
        for _ in range(2):
            t.proc.send_signal(signal.SIGHUP)
            time.sleep(0.2)
        m = t.get("/metrics").body.decode()
        self.assertEqual(metric(m, "tokend_reloads_total", '{result="ok"}'), 2)


class Drain(TokendTestCase):
    def test_drain_is_bounded(self):
        fake = self.fake(fault="hang")
        t = self.tokend(fake=fake, env={"TOKEND_DRAIN_TIMEOUT_S": "1"})
        result = {}
        th = threading.Thread(target=lambda: result.update(r=t.get("/token")))
        th.start()
        time.sleep(0.2)
        started = time.time()
        t.proc.send_signal(signal.SIGTERM)
        self.assertEqual(t.wait(), 0)
        self.assertLess(time.time() - started, 3)
        th.join()
        self.assertEqual(result["r"].status, 503)
        self.assertEqual(result["r"].json(), {"error": "server shutting down"})


class HealthAndMetrics(TokendTestCase):
    def test_healthz(self):
        t = self.tokend(key=None)
        r = t.get("/healthz")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), {"status": "ok", "api_key_configured": False}, "no redis without TOKEND_REDIS_URL")

    def test_metrics_count_what_happened(self):
        fake = self.fake()
        t = self.tokend(fake=fake, env={"TOKEND_TRUSTED_PROXIES": "127.0.0.1"})
        for _ in range(3):
            t.get("/token")
        t.get("/")
        t.get("/missing")
        fake.control(fault="401")
        t.get("/token")
        r = t.get("/metrics")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8")
        m = r.body.decode()
        self.assertEqual(metric(m, "tokend_requests_total", '{route="/token",status="200"}'), 3)
        self.assertEqual(metric(m, "tokend_requests_total", '{route="/token",status="502"}'), 1)
        self.assertEqual(metric(m, "tokend_requests_total", '{route="static",status="200"}'), 1)
        self.assertEqual(metric(m, "tokend_requests_total", '{route="static",status="404"}'), 1)
        self.assertEqual(metric(m, "tokend_tokens_minted_total"), 3)
        self.assertEqual(metric(m, "tokend_upstream_errors_total", '{kind="unauthorized"}'), 1)
        self.assertEqual(metric(m, "tokend_upstream_duration_seconds_count"), 4)
        self.assertEqual(metric(m, "tokend_upstream_duration_seconds_bucket", '{le="+Inf"}'), 4)
        self.assertEqual(metric(m, "tokend_requests_in_flight"), 1, "the /metrics request itself")
        self.assertGreaterEqual(metric(m, "tokend_upstream_connections_opened_total"), 1)
        r = t.get("/metrics", headers={"X-Forwarded-For": "203.0.113.5"})
        self.assertEqual(r.status, 404, "not for clients from elsewhere")

    def test_process_gauges_and_build_info(self):
        t = self.tokend()
        m = t.get("/metrics").body.decode()
        self.assertGreater(metric(m, "process_resident_memory_bytes"), 1 << 20)
        self.assertGreater(metric(m, "process_virtual_memory_bytes"), metric(m, "process_resident_memory_bytes"))
        self.assertGreaterEqual(metric(m, "process_cpu_seconds_total"), 0)
        self.assertGreater(metric(m, "process_open_fds"), 3)
        self.assertGreaterEqual(metric(m, "process_max_fds"), metric(m, "process_open_fds"))
        self.assertLess(abs(metric(m, "process_start_time_seconds") - t.started), 5)
        self.assertEqual(metric(m, "tokend_build_info", '{version="0.1.0"}'), 1)
        for family in ["process_cpu_seconds_total counter", "process_resident_memory_bytes gauge",
                       "tokend_build_info gauge"]:
            self.assertIn(f"# TYPE {family}\n", m)

    def test_in_flight_gauge(self):
        fake = self.fake(latency_ms=500)
        t = self.tokend(fake=fake, workers=1)
        threads = [threading.Thread(target=t.get, args=("/token",)) for _ in range(5)]
        for th in threads:
            th.start()
        time.sleep(0.25)
        m = t.get("/metrics").body.decode()
        self.assertEqual(metric(m, "tokend_requests_in_flight"), 6)
        for th in threads:
            th.join()


class AccessLog(TokendTestCase):
    def test_text_line(self):
        fake = self.fake(latency_ms=50)
        t = self.tokend(fake=fake)
        t.get("/token?expires_in_seconds=30")
        line = [l for l in t.wait_log("GET /token").splitlines() if " access " in l][0]
        self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info  access 127\.0\.0\.1 GET /token 200 \d+ "
                               r"[\d.]+ms upstream=[\d.]+ms$")
        self.assertNotIn("expires_in_seconds", line)

    def test_json_line(self):
        fake = self.fake()
        t = self.tokend(fake=fake, args=["--log-format", "json"])
        t.get("/token")
        t.stop()
        access = [json.loads(l) for l in t.log.splitlines() if '"access"' in l][0]
        self.assertEqual(set(access), {"time", "level", "type", "client", "method", "path", "status", "bytes",
                                       "duration_ms", "upstream_ms"})
        self.assertEqual((access["method"], access["path"], access["status"]), ("GET", "/token", 200))

    def test_json_everywhere(self):
        """Under --log-format json every line is an object with a type: start-up notes, the
        start line on stdout, access lines, the stop, and fatal errors."""
        fake = self.fake()
        self.write(".env", "ASSEMBLYAI_API_KEY=x\nNOT_A_SETTING=1\n")   # a start-up note
        t = self.tokend(fake=fake, args=["--log-format", "json"])
        start = json.loads(t.stdout_lines[0])
        self.assertEqual((start["type"], start["url"]), ("start", f"http://127.0.0.1:{t.port}"))
        t.get("/token")
        self.assertEqual(t.stop(), 0)
        lines = [json.loads(line) for line in t.log.splitlines()]
        self.assertEqual({"log", "access", "audit"} - {line["type"] for line in lines}, set())
        self.assertTrue(all({"time", "level", "type", "msg"} <= set(line) or line["type"] == "access"
                            for line in lines), lines)
        self.assertTrue(any("NOT_A_SETTING" in line.get("msg", "") for line in lines))
        self.assertEqual(lines[-1]["msg"], "stopped")
        for args, env in [(["--log-format", "json", "--port", "x"], {}), (["--bogus", "--log-format=json"], {}),
                          (["--script", "missing.lua"], {"TOKEND_LOG_FORMAT": "json"})]:
            p = self.run_tokend(args, env)
            self.assertNotEqual(p.returncode, 0)
            fatal = [json.loads(line) for line in p.stderr.splitlines()]
            self.assertEqual(fatal[-1]["level"], "error", p.stderr)

    def test_durations_keep_their_fraction_of_a_millisecond(self):
        t = self.tokend(args=["--log-format", "json"])
        for _ in range(5):
            t.get("/config")
        t.stop()
        durations = [json.loads(line)["duration_ms"] for line in t.log.splitlines() if '"access"' in line]
        self.assertEqual(len(durations), 5)
        self.assertTrue(any(d != int(d) for d in durations), durations)

    def test_bytes_are_what_was_sent(self):
        import socket
        import struct
        public = os.path.join(self.workdir, "site")
        os.makedirs(public)
        with open(os.path.join(public, "big.bin"), "wb") as f:
            f.truncate(64 * 1024 * 1024)
        t = self.tokend(public=public, args=["--log-format", "json"])
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", t.port))
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
        got = 0
        while got < 4096:
            got += len(s.recv(4096 - got))
        time.sleep(0.2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()       # a reset after 4 KB of 64 MB
        log = t.wait_log('"path":"/big.bin"')
        sent = [json.loads(line)["bytes"] for line in log.splitlines() if '"/big.bin"' in line][0]
        self.assertGreater(sent, 4096)
        self.assertLess(sent, 1 << 20, "what the client acknowledged, not the file's size")
        r = t.get("/big.bin", method="HEAD")
        self.assertEqual(r.headers["content-length"], str(64 * 1024 * 1024))

    def test_log_level(self):
        t = self.tokend(key=None, args=["--log-level", "warn"])
        t.get("/")
        t.stop()
        self.assertNotIn(" access ", t.log)
        self.assertIn("no AssemblyAI API key", t.log)

    def test_a_route_may_be_left_out_or_sampled(self):
        script = self.write("p.lua", """
local tokend = require "tokend"
tokend.route("GET", "/quiet", function(req) return tonumber(req.query.status) or 200 end, { log = false })
tokend.route("GET", "/sampled", function() return 204 end, { log = 5 })
""")
        t = self.tokend(script=script)
        for _ in range(10):
            t.get("/quiet")
            t.get("/sampled")
        t.get("/quiet?status=503")
        t.stop()
        access = [line for line in t.log.splitlines() if " access " in line]
        self.assertEqual(sum(" GET /quiet 200 " in line for line in access), 0, "left out")
        self.assertEqual(sum(" GET /quiet 503 " in line for line in access), 1, "but for its errors")
        self.assertEqual(sum(" GET /sampled 204 " in line for line in access), 2, "one in five")

    def test_the_default_health_check_does_not_flood_the_log(self):
        t = self.tokend(policy={})
        for _ in range(20):
            self.assertEqual(t.get("/healthz").status, 200)
        t.get("/nowhere")
        t.stop()
        self.assertNotIn("GET /healthz", t.log)
        self.assertIn("GET /nowhere 404", t.log)


class Audit(TokendTestCase):
    """Every answer of an audited route (the default script's /token) leaves an audit line:
    the mint's, or the refusal's with its status and reason."""

    def audit(self, t):
        t.stop()
        return [json.loads(line) for line in t.log.splitlines() if '"audit"' in line]

    def test_refusals_by_origin_option_and_limit(self):
        t = self.tokend(fake=self.fake(), policy={"TOKEN_BURST": 1}, args=["--log-format", "json"])
        self.assertEqual(t.get("/token", headers={"Origin": "https://evil.example"}).status, 403)
        self.assertEqual(t.get("/token?speech_model=nope").status, 400)
        self.assertEqual(t.get("/token").status, 200)
        self.assertEqual(t.get("/token").status, 429)
        self.assertEqual(t.get("/healthz").status, 200)     # not audited
        lines = self.audit(t)
        self.assertEqual([(a["event"], a["outcome"], a.get("status")) for a in lines], [
            ("token_refused", "refused", 403), ("token_refused", "refused", 400),
            ("token_minted", "minted", None), ("token_refused", "refused", 429)])
        self.assertEqual(lines[0]["origin"], "https://evil.example")
        self.assertEqual(lines[0]["reason"], "this origin may not request tokens")
        self.assertIn("speech_model", lines[1]["reason"])
        self.assertEqual(lines[3]["reason"], "too many token requests; retry later")
        self.assertTrue(all(a["client"] == "127.0.0.1" for a in lines))

    def test_a_policy_refusal_names_the_user(self):
        script = self.write("p.lua", """
local tokend = require "tokend"
tokend.route("GET", "/token", function(req)
  req.log.user = req.headers["x-user"]
  if req.log.user == "mallory" then return 403, { error = "access revoked" } end
  if req.log.user == "oops" then error("a bug before the mint") end
  return 200, { token = tokend.generate_temp_token(60) }
end, { audit = true })
""")
        t = self.tokend(fake=self.fake(), script=script)
        self.assertEqual(t.get("/token", headers={"X-User": "mallory"}).status, 403)
        self.assertEqual(t.get("/token", headers={"X-User": "oops"}).status, 500)
        self.assertEqual(t.get("/token", headers={"X-User": "ada"}).status, 200)
        log = t.wait_log("user=ada")
        self.assertRegex(log, r"audit token event=token_refused client=127\.0\.0\.1 user=mallory origin=\"\" "
                              r"outcome=refused status=403 reason=\"access revoked\"")
        self.assertRegex(log, r"event=token_refused .*user=oops .*outcome=failed status=500")
        self.assertRegex(log, r"event=token_minted .*user=ada .*outcome=minted")

    def test_an_unknown_route_option_is_refused(self):
        script = self.write("p.lua", 'require "tokend".route("GET", "/t", function() end, { audited = true })\n')
        p = self.run_tokend(["--check", "--script", script])
        self.assertEqual(p.returncode, 1)
        self.assertIn("unknown option", p.stderr)


if __name__ == "__main__":
    unittest.main()
