"""Upstream faults, as a table: fault in the fake -> status, body and log of tokend."""
import time
import unittest

from harness import CANARY_KEY, TokendTestCase, free_port

# fault, expected status, Retry-After passed on, what the log says
FAULTS = [
    ("401", 502, None, "refused the API key (HTTP 401)"),
    ("401-echo", 502, None, "[redacted]"),
    ("403", 502, None, "refused the API key (HTTP 403)"),
    ("429", 503, "7", "rate limiting this key (HTTP 429)"),
    ("500", 502, None, "the upstream failed (HTTP 500)"),
    ("503", 502, None, "the upstream failed (HTTP 503)"),
    ("malformed", 502, None, "not JSON"),
    ("notoken", 502, None, "without a token"),
    ("html", 502, None, "not JSON"),
    ("reset", 502, None, "network failure"),
    ("hang", 504, None, "did not answer within 700 ms"),
]


class UpstreamFaults(TokendTestCase):
    def test_each_fault_gets_a_clear_json_error(self):
        fake = self.fake()
        t = self.tokend(fake=fake, args=["--upstream-timeout-ms", "700"])
        for fault, status, retry_after, logged in FAULTS:
            with self.subTest(fault=fault):
                fake.control(fault=fault)
                started = time.time()
                r = t.get("/token")
                self.assertEqual(r.status, status, r)
                self.assertLess(time.time() - started, 3, "answered promptly")
                self.assertIn("error", r.json())
                self.assertEqual(r.headers.get("retry-after"), retry_after)
                self.assertEqual(r.headers["cache-control"], "no-store")
                self.assertIn(logged, t.wait_log(logged))
        fake.control(fault="ok")
        self.assertEqual(t.get("/token").status, 200, "the server keeps serving after faults")
        self.assertNotIn(CANARY_KEY, t.log)

    def test_wrong_key_is_a_502_and_logged_as_refused(self):
        fake = self.fake(key="another-key")
        t = self.tokend(fake=fake)
        r = t.get("/token")
        self.assertEqual(r.status, 502)
        self.assertIn("refused the API key", t.wait_log("refused the API key"))

    def test_connection_refused(self):
        t = self.tokend(env={"ASSEMBLYAI_STREAMING_URL": f"http://127.0.0.1:{free_port()}"})
        r = t.get("/token")
        self.assertEqual(r.status, 502)
        self.assertIn("cannot connect", t.wait_log("cannot connect"))

    def test_slow_upstream_does_not_hold_other_requests(self):
        fake = self.fake(fault="hang")
        t = self.tokend(fake=fake, args=["--upstream-timeout-ms", "10000"], workers=1)
        import threading
        th = threading.Thread(target=t.get, args=("/token",))
        th.start()
        time.sleep(0.1)
        started = time.time()
        self.assertEqual(t.get("/").status, 200)
        self.assertLess(time.time() - started, 5, "answered while the token request waits (10 s)")
        th.join()


if __name__ == "__main__":
    unittest.main()
