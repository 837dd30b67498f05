"""GET /token end to end: the default script against the token fake."""
import os
import signal
import socket
import threading
import time
import unittest

from harness import CANARY_KEY, TokendTestCase, make_ca, request

# The default script's websocket_url carries the streaming options of a request that chose none.
DEFAULT_STREAMING_QUERY = ("?speech_model=universal-streaming-english&end_of_turn_confidence_threshold=0.4"
                           "&min_turn_silence=400&max_turn_silence=1280")


class TokenRoute(TokendTestCase):
    def test_token_answer_and_upstream_request(self):
        fake = self.fake()
        t = self.tokend(fake=fake)
        r = t.get("/token")
        self.assertEqual(r.status, 200, r)
        body = r.json()
        self.assertEqual(set(body), {"token", "expires_in_seconds", "websocket_url"})
        self.assertEqual(body["token"].count("."), 2, "a JWT-like token from the fake")
        self.assertEqual(body["expires_in_seconds"], 60)
        self.assertEqual(body["websocket_url"], f"ws://127.0.0.1:{fake.port}/v3/ws" + DEFAULT_STREAMING_QUERY)
        self.assertEqual(r.headers["cache-control"], "no-store")
        self.assertEqual(r.headers["content-type"], "application/json")
        self.assertNotIn(b"\\/", r.body, "slashes are not escaped")
        stats = fake.stats()
        self.assertEqual(stats["last_authorization"], CANARY_KEY, "the raw key, no Bearer")
        self.assertRegex(stats["last_user_agent"], r"^tokend/\d+\.\d+")
        self.assertEqual(stats["last_query"], {"expires_in_seconds": "60"})
        self.assertNotEqual(t.get("/token").json()["token"], body["token"], "every request mints a new token")

    def test_expiry_policy_clamps_what_clients_ask(self):
        fake = self.fake()
        t = self.tokend(fake=fake)
        for asked, given in [("30", 30), ("1", 1), ("600", 600), ("0", 1), ("-5", 1), ("601", 600),
                             ("99999", 600), ("12.7", 12), ("abc", 60), ("", 60)]:
            r = t.get(f"/token?expires_in_seconds={asked}")
            self.assertEqual(r.status, 200, (asked, r))
            self.assertEqual(r.json()["expires_in_seconds"], given, asked)
            self.assertEqual(fake.stats()["last_query"]["expires_in_seconds"], str(given), asked)

    def test_upstream_connection_is_kept_alive(self):
        fake = self.fake()
        t = self.tokend(fake=fake, workers=1)
        for _ in range(20):
            self.assertEqual(t.get("/token").status, 200)
        self.assertEqual(fake.stats()["connections"], 2, "one upstream connection, plus the stats call")

    def test_client_keep_alive(self):
        fake = self.fake()
        t = self.tokend(fake=fake)
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=5)
        for path in ["/token", "/", "/token", "/missing"]:
            r = request(t.port, path, conn=conn)
            self.assertIn(r.status, (200, 404))
        sock = conn.sock
        self.assertIsNotNone(sock, "the connection stayed open")
        conn.close()

    def test_without_key_static_works_and_token_says_503(self):
        t = self.tokend(key=None)
        r = t.get("/token")
        self.assertEqual(r.status, 503)
        self.assertIn("ASSEMBLYAI_API_KEY", r.json()["error"])
        self.assertEqual(r.headers["cache-control"], "no-store")
        self.assertEqual(t.get("/").status, 200)
        t.get("/token")
        self.assertEqual(t.log.count("no AssemblyAI API key configured"), 1, t.log)

    def test_https_upstream_with_test_ca(self):
        ca = make_ca(self.workdir)
        fake = self.fake(tls=ca)
        t = self.tokend(fake=fake, env={"CURL_CA_BUNDLE": ca[0]})
        r = t.get("/token")
        self.assertEqual(r.status, 200, t.log)
        self.assertEqual(r.json()["websocket_url"], f"wss://127.0.0.1:{fake.port}/v3/ws" + DEFAULT_STREAMING_QUERY)

    def test_https_upstream_is_verified(self):
        ca = make_ca(self.workdir)
        fake = self.fake(tls=ca)
        t = self.tokend(fake=fake)    # system CA store: the test CA is unknown
        r = t.get("/token")
        self.assertEqual(r.status, 502)
        self.assertIn("TLS failure", t.wait_log("TLS failure"))
        self.assertEqual(fake.stats()["requests"], 0, "no request went over an unverified connection")

    def test_client_gone_while_upstream_works(self):
        fake = self.fake(latency_ms=300)
        t = self.tokend(fake=fake)
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", t.port))
            s.sendall(b"GET /token HTTP/1.1\r\nHost: localhost\r\n\r\n")
            s.close()
        time.sleep(0.6)
        self.assertIsNone(t.proc.poll(), "tokend still runs")
        self.assertEqual(t.get("/token").status, 200)

    def test_sigterm_lets_requests_in_flight_finish(self):
        fake = self.fake(latency_ms=400)
        t = self.tokend(fake=fake)
        result = {}
        th = threading.Thread(target=lambda: result.update(r=t.get("/token")))
        th.start()
        time.sleep(0.15)
        t.proc.send_signal(signal.SIGTERM)
        th.join(5)
        self.assertEqual(result["r"].status, 200)
        self.assertEqual(t.wait(), 0)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", t.port), timeout=1).close()

    def test_sigint_exits_zero(self):
        t = self.tokend(key=None)
        self.assertEqual(t.stop(signal.SIGINT), 0)

    @unittest.skipIf(os.environ.get("TOKEND_WRAPPER"), "a wrapper (valgrind) shows its own copy of the environment")
    def test_key_is_not_in_the_process_environment(self):
        t = self.tokend(key=CANARY_KEY)
        with open(f"/proc/{t.proc.pid}/environ", "rb") as f:
            self.assertNotIn(CANARY_KEY.encode(), f.read())
        with open(f"/proc/{t.proc.pid}/cmdline", "rb") as f:
            self.assertNotIn(CANARY_KEY.encode(), f.read())


if __name__ == "__main__":
    unittest.main()
