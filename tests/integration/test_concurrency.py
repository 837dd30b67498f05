"""Many /token requests in flight at once: none waits behind another's upstream call."""
import threading
import time
import unittest

from harness import TokendTestCase, request

IN_FLIGHT = 200
LATENCY_MS = 500


class Concurrency(TokendTestCase):
    def run_burst(self, t):
        results = [None] * IN_FLIGHT
        barrier = threading.Barrier(IN_FLIGHT + 1)

        def one(i):
            barrier.wait()
            results[i] = request(t.port, "/token", timeout=30).status

        threads = [threading.Thread(target=one, args=(i,)) for i in range(IN_FLIGHT)]
        for th in threads:
            th.start()
        barrier.wait()
        started = time.time()
        for th in threads:
            th.join()
        return time.time() - started, results

    def check(self, workers):
        fake = self.fake(latency_ms=LATENCY_MS)
        t = self.tokend(fake=fake, workers=workers, env={"TOKEND_MAX_CONNECTIONS_PER_IP": "0"})
        elapsed, results = self.run_burst(t)
        self.assertEqual(results, [200] * IN_FLIGHT)
        # Serially this would take 200 x 0.5 s = 100 s. Concurrently, about 0.5 s; the bound
        # leaves room for a loaded machine, not for serialisation; what the upstream saw at
        # once is the proof.
        self.assertLess(elapsed, 30.0, f"{IN_FLIGHT} requests took {elapsed:.2f}s")
        self.assertGreaterEqual(elapsed, LATENCY_MS / 1000 * 0.9)
        self.assertGreaterEqual(fake.stats()["max_in_flight"], IN_FLIGHT // 2,
                                "the upstream saw the requests at the same time")

    def test_one_worker(self):
        self.check(1)

    def test_default_workers(self):
        self.check(None)

    def test_a_second_burst_reuses_the_upstream_connections(self):
        # 200 calls in flight on one worker span several curl multi handles (64 each); once
        # the first burst has opened its connections, the same load opens none.
        fake = self.fake(latency_ms=LATENCY_MS)
        t = self.tokend(fake=fake, workers=1, env={"TOKEND_MAX_CONNECTIONS_PER_IP": "0"})
        _, first = self.run_burst(t)
        opened = fake.stats()["connections"]
        _, second = self.run_burst(t)
        self.assertEqual(first + second, [200] * (2 * IN_FLIGHT))
        self.assertGreaterEqual(opened, IN_FLIGHT // 2, "the first burst ran its calls side by side")
        # The stats query is a connection of its own.
        self.assertEqual(fake.stats()["connections"] - opened - 1, 0, "the second burst opened upstream connections")


if __name__ == "__main__":
    unittest.main()
