"""The token pool: minted ahead, handed out once across workers, dropped when stale,
refilled in the background, and a breaker that spares a failing upstream."""
import json
import re
import threading
import time
import unittest

from harness import TokendTestCase, UNLIMITED

# A pool and a route that takes from it, with its parameters as named constants.
POOL_SCRIPT = r"""
local tokend = require "tokend"
local SIZE, EXPIRES, MIN_REMAINING = 4, 600, 30
local pool = tokend.pool { name = "p", size = SIZE, expires_in_seconds = EXPIRES,
                           min_remaining_seconds = MIN_REMAINING }
tokend.route("GET", "/take", function()
  local token, info, status, failure = pool:take()
  if not token then
    return 503, { error = info, kind = failure.kind, retry_after = failure.retry_after }
  end
  return 200, { token = token, expires_in_seconds = info.expires_in_seconds, pooled = info.pooled }
end)
tokend.route("GET", "/metrics", function() return 200, tokend.metrics() end)
"""


def metric(text, name):
    m = re.search(rf'^{re.escape(name)}{{pool="p"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


class PoolTestCase(TokendTestCase):
    def pool(self, fake=None, workers=2, size=4, expires=600, min_remaining=30):
        script = self.write("pool.lua", POOL_SCRIPT.replace("SIZE, EXPIRES, MIN_REMAINING = 4, 600, 30",
                                                            f"SIZE, EXPIRES, MIN_REMAINING = {size}, {expires}, "
                                                            f"{min_remaining}"))
        return self.tokend(fake=fake, script=script, workers=workers)

    def gauge(self, t, name):
        return metric(t.get("/metrics").body.decode(), name)

    def wait_ready(self, t, n, timeout=5):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.gauge(t, "tokend_pool_ready") == n:
                return
            time.sleep(0.02)
        self.fail(f"the pool did not reach {n} ready tokens: {self.gauge(t, 'tokend_pool_ready')}")


class Pool(PoolTestCase):
    def test_filled_at_start_and_handed_out_once_across_workers(self):
        fake = self.fake(latency_ms=100)
        t = self.pool(fake)
        self.wait_ready(t, 4)
        self.assertEqual(fake.stats()["tokens"], 4, "size tokens, minted once between the workers")
        first = [t.get("/take").json() for _ in range(4)]
        for j in first:
            self.assertTrue(j["pooled"], "four takes from the pool, no upstream round trip")
            self.assertTrue(570 <= j["expires_in_seconds"] <= 600, j)
        # Then many at once from both workers: each token once, pooled or minted on demand.
        results = []
        threads = [threading.Thread(target=lambda: results.append(t.get("/take").json())) for _ in range(30)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        tokens = [j["token"] for j in first + results]
        self.assertEqual(len(tokens), len(set(tokens)), "no token handed out twice")
        self.wait_ready(t, 4)
        m = t.get("/metrics").body.decode()
        self.assertEqual(metric(m, "tokend_pool_taken_total") + metric(m, "tokend_pool_minted_on_demand_total"), 34)
        log = t.log
        for token in tokens:
            self.assertNotIn(token, log, "tokens never reach the log")
            self.assertNotIn(token, m, "nor the metrics")
        self.assertIn("outcome=pooled", log)

    def test_stale_tokens_are_dropped_and_replaced(self):
        fake = self.fake()
        t = self.pool(fake, workers=1, expires=3, min_remaining=2)
        self.wait_ready(t, 4)
        time.sleep(1.3)     # every token now has less than 2 s left: dropped, and minted again
        j = t.get("/take").json()
        self.assertGreaterEqual(j["expires_in_seconds"], 2, "never handed out with less than min_remaining")
        self.assertGreaterEqual(self.gauge(t, "tokend_pool_dropped_total"), 4)
        # Idle, a pool mints at most size tokens per (expires - min_remaining): here 4 a second.
        before = fake.stats()["tokens"]
        time.sleep(3)
        self.assertLessEqual(fake.stats()["tokens"] - before, 4 * 3 + 4)

    def test_the_default_script_with_a_pool(self):
        fake = self.fake(latency_ms=300)
        t = self.tokend(fake=fake, policy={"POOL_SIZE": 3, **UNLIMITED})
        def counter(name):
            m = re.search(rf'^{name}{{pool="token"}} (\d+)$', t.get("/metrics").body.decode(), re.M)
            return int(m.group(1)) if m else None
        deadline = time.time() + 10
        while counter("tokend_pool_ready") != 3 and time.time() < deadline:
            time.sleep(0.05)
        r = t.get("/token")
        self.assertEqual(r.status, 200)
        self.assertEqual((counter("tokend_pool_taken_total"), counter("tokend_pool_minted_on_demand_total")), (1, 0),
                         "from the pool, no 300 ms round trip")
        self.assertTrue(r.json()["expires_in_seconds"] > 500)
        self.assertNotIn("pooled", r.json(), "the answer is the same as without a pool")

    def test_a_reload_keeps_the_pool_unless_its_parameters_change(self):
        fake = self.fake()
        t = self.pool(fake, workers=1)
        self.wait_ready(t, 4)
        import signal
        t.proc.send_signal(signal.SIGHUP)
        t.wait_log("reloaded")
        time.sleep(0.3)
        self.assertEqual(fake.stats()["tokens"], 4, "the same pool: nothing minted again")
        with open(self.workdir + "/pool.lua", "w") as f:
            f.write(POOL_SCRIPT.replace("SIZE, EXPIRES, MIN_REMAINING = 4, 600, 30", "SIZE, EXPIRES, MIN_REMAINING = 4, 300, 30"))
        t.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 5
        while fake.stats()["tokens"] < 8 and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.gauge(t, "tokend_pool_dropped_total"), 4, "other parameters: the old tokens go")
        self.assertLessEqual(t.get("/take").json()["expires_in_seconds"], 300)

    def test_a_reply_without_expires_in_seconds(self):
        fake = self.fake(fault="noexpiry")
        t = self.pool(fake, workers=1)
        self.wait_ready(t, 4)
        j = t.get("/take").json()
        self.assertTrue(570 <= j["expires_in_seconds"] <= 600, "the window asked for")


class Breaker(PoolTestCase):
    def test_a_failing_upstream_is_not_hammered(self):
        fake = self.fake(fault="500")
        t = self.pool(fake)
        time.sleep(0.5)
        asked = fake.stats()["requests"]
        self.assertLessEqual(asked, 8, "one failed round of 4 (a 5xx is retried once), then the breaker opens")
        answers = [t.get("/take") for _ in range(20)]
        for r in answers:
            self.assertEqual(r.status, 503)
            self.assertEqual(r.json()["kind"], "upstream_error")
            self.assertGreaterEqual(r.json()["retry_after"], 1)
        self.assertEqual(fake.stats()["requests"], asked, "takes fail fast while it is open")
        self.assertEqual(self.gauge(t, "tokend_pool_breaker_open"), 1)
        # Back: after the back-off a trial succeeds, and the pool fills.
        fake.control(fault="ok")
        self.wait_ready(t, 4, timeout=10)
        self.assertEqual(self.gauge(t, "tokend_pool_breaker_open"), 0)
        self.assertEqual(t.get("/take").status, 200)

    def test_a_refused_key_opens_it_with_one_line_a_minute(self):
        fake = self.fake(fault="401")
        t = self.pool(fake)
        time.sleep(0.3)
        for _ in range(30):
            r = t.get("/take")
            self.assertEqual((r.status, r.json()["kind"]), (503, "unauthorized"))
        warnings = [line for line in t.log.splitlines() if "token pool" in line or "token request failed" in line]
        self.assertEqual(len(warnings), 1, warnings)

    def test_rate_limited_honours_retry_after(self):
        fake = self.fake()
        fake.control(fault="429", retry_after=30)
        t = self.pool(fake, workers=1)
        time.sleep(0.3)
        r = t.get("/take")
        self.assertEqual(r.json()["kind"], "rate_limited")
        self.assertGreaterEqual(r.json()["retry_after"], 29)
        fake.control(fault="ok")
        time.sleep(1.5)
        self.assertEqual(t.get("/take").json().get("kind"), "rate_limited", "still waiting as told")


class BadPools(PoolTestCase):
    def test_bad_parameters_stop_the_script(self):
        for options, error in [
            ("size = 0", "size must be 1.."), ("size = -3", "size must be 1.."), ("", "size is required"),
            ("size = 2, expires_in_seconds = 60, min_remaining_seconds = 60", "less than expires_in_seconds"),
            ("size = 2, expires_in_seconds = 601", "expires_in_seconds must be"),
            ("size = 2, max_session_duration_seconds = 30", "max_session_duration_seconds must be"),
            ("size = 2, name = 'a b'", "may hold letters"),
        ]:
            script = self.write("bad.lua", f'require("tokend").pool{{ {options} }}')
            r = self.run_tokend(["--check", "--script", script])
            self.assertEqual(r.returncode, 1, options)
            self.assertIn(error, r.stderr, options)
        script = self.write("load.lua", 'local p = require("tokend").pool{ size = 1 }\np:take()')
        r = self.run_tokend(["--check", "--script", script])
        self.assertIn("pool:take must be called from a request handler or a timer", r.stderr)


if __name__ == "__main__":
    unittest.main()
