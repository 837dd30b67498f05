"""Running tokend as a service: retries, reloads, drain, health, metrics and logs."""
import json
import os
import re
import signal
import threading
import time
import unittest

from harness import TokendTestCase, default_script, request


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
        self.assertEqual(r.json(), {"status": "ok", "api_key_configured": False})

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
        self.assertEqual(r.headers["content-type"], "text/plain; version=0.0.4")
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

    def test_log_level(self):
        t = self.tokend(key=None, args=["--log-level", "warn"])
        t.get("/")
        t.stop()
        self.assertNotIn(" access ", t.log)
        self.assertIn("no AssemblyAI API key", t.log)


if __name__ == "__main__":
    unittest.main()


class SystemdUnit(TokendTestCase):
    def test_unit_file_verifies_and_its_command_line_works(self):
        import shutil
        import subprocess
        from harness import BIN, SRC
        with open(os.path.join(SRC, "dist", "tokend.service")) as f:
            unit = f.read()
        self.assertIn("ExecReload=/bin/kill -HUP $MAINPID", unit)
        exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1).split()
        # The unit's own flags, with the installed paths mapped to this checkout.
        args = [a.replace("/usr/local/share/tokend", SRC) for a in exec_start[1:]]
        env_file = self.write("tokend.env", "ASSEMBLYAI_API_KEY=x\n")
        args[args.index("--env-file") + 1] = env_file
        p = self.run_tokend(args + ["--check"])
        self.assertEqual(p.returncode, 0, p.stderr)
        if not shutil.which("systemd-analyze"):
            self.skipTest("systemd-analyze is not installed")
        local = self.write("tokend.service", unit.replace("/usr/local/bin/tokend", BIN))
        p = subprocess.run(["systemd-analyze", "verify", local], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
