"""Many instances, one policy: limits and dictionaries in a real Redis (Debian's
redis-server), instances behind a real HAProxy, and Redis failing under them."""
import http.client
import json
import os
import re
import socket
import threading
import time
import unittest

from harness import DEFAULT_SCRIPT, UNLIMITED, TokendTestCase, request
from servers import HAProxy, Redis, SilentServer

# A script with one Redis limiter per on_store_error policy, the Redis dictionary and raw
# commands, for the failure and API tests.
POLICIES_SCRIPT = r"""
local tokend = require "tokend"
local cjson = require "cjson"
local limiters = {}
for _, policy in ipairs { "local", "allow", "deny" } do
  limiters[policy] = tokend.limiter { name = policy, rate = 1, per = 3600, burst = 2, store = "redis",
                                      on_store_error = policy }
end
local dict = tokend.shared("sessions", { store = "redis" })

tokend.route("GET", "/take/:policy", function(req)
  local ok, retry = limiters[req.params.policy]:take(req.headers["x-key"] or req.client)
  if ok then return 200, { ok = true } end
  return 429, { ok = false }, { ["Retry-After"] = retry }
end)

-- /dict/<op>?key=...&value=...&ttl=...: one dictionary call, its results as a list
tokend.route("GET", "/dict/:op", function(req)
  local q, op = req.query, req.params.op
  local key = req.headers["x-key"] or q.key
  local value = q.value
  if q.type == "number" then value = tonumber(value) elseif q.type == "boolean" then value = value == "true" end
  local results
  if op == "incr" then
    results = table.pack(dict:incr(key, tonumber(q.by), tonumber(q.init), tonumber(q.ttl)))
  else
    results = table.pack(dict[op](dict, key, value, tonumber(q.ttl)))
  end
  local out = {}
  for i = 1, results.n do out[i] = results[i] == nil and cjson.null or results[i] end
  return 200, { results = out, types = { type(results[1]) } }
end)

tokend.route("POST", "/redis", function(req)
  local args = cjson.decode(req.body)
  local reply, err = tokend.redis.command(table.unpack(args))
  return 200, { reply = reply, err = err, null = reply == tokend.redis.null }
end)

tokend.route("GET", "/status", function()
  return 200, { redis = tokend.redis.status(), configured = tokend.config.redis }
end)

tokend.route("GET", "/metrics", function() return 200, tokend.metrics() end)
"""


class RedisTestCase(TokendTestCase):
    def setUp(self):
        super().setUp()
        self.redis = Redis(self.workdir)
        self.addCleanup(self.redis.stop)
        self.upstream = self.fake()

    def instance(self, script=None, env=None, **kw):
        e = {"TOKEND_REDIS_URL": self.redis.url}
        e.update(env or {})
        return self.tokend(fake=self.upstream, script=script or self.policies(), env=e, **kw)

    def policies(self):
        return self.write("policies.lua", POLICIES_SCRIPT)


def statuses(responses):
    return [r.status for r in responses]


class SharedLimits(RedisTestCase):
    def test_three_instances_share_the_default_limit(self):
        # The default script, with its default numbers (10 a minute, bursts of 5).
        instances = [self.instance(script=DEFAULT_SCRIPT, policy={}) for _ in range(3)]
        for t in instances:
            self.assertEqual(t.get("/healthz").json()["redis"], "ok")
        answers = [instances[i % 3].get("/token") for i in range(30)]
        self.assertEqual(statuses(answers).count(200), 5, statuses(answers))
        self.assertEqual(statuses(answers).count(429), 25, statuses(answers))
        for r in answers:
            if r.status == 429:
                self.assertGreaterEqual(int(r.headers["retry-after"]), 1)
        self.assertEqual(self.upstream.stats()["tokens"], 5)
        self.assertIn(b"tokend.limiter:token:127.0.0.1", self.redis.command("KEYS", "tokend.limiter:*"))

    def test_each_instance_counts_alone_without_redis(self):
        # What the store changes: the same three instances, each with its own buckets.
        instances = [self.tokend(fake=self.upstream, policy={}) for _ in range(3)]
        answers = [instances[i % 3].get("/token") for i in range(30)]
        self.assertEqual(statuses(answers).count(200), 15)
        self.assertNotIn("redis", instances[0].get("/healthz").json())

    def test_dictionaries_are_shared_by_instances(self):
        a, b = self.instance(), self.instance()
        self.assertEqual(a.get("/dict/set?key=alice&value=revoked").json()["results"], [True])
        self.assertEqual(b.get("/dict/get?key=alice").json()["results"], ["revoked"])
        self.assertEqual(self.redis.command("GET", "tokend:sessions:alice"), b"\x01revoked")
        # Counters from both at once: incr is one step in Redis.
        threads = [threading.Thread(target=lambda t=t: [t.get("/dict/incr?key=n&by=1&init=0") for _ in range(10)])
                   for t in (a, b, a, b)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        self.assertEqual(a.get("/dict/get?key=n").json()["results"], [40])
        self.assertEqual(self.redis.command("GET", "tokend:sessions:n"), b"40")


class DictionaryInRedis(RedisTestCase):
    """The methods of a local dictionary, kept in Redis: (call, expected results)."""
    CASES = [
        ("/dict/get?key=nobody", [None]),
        ("/dict/set?key=s&value=hello", [True]),
        ("/dict/get?key=s", ["hello"]),
        ("/dict/set?key=n&value=5&type=number", [True]),
        ("/dict/get?key=n", [5]),
        ("/dict/incr?key=n&by=2.5", [7.5]),
        ("/dict/incr?key=missing&by=1", [None, "not found"]),
        ("/dict/incr?key=fresh&by=1&init=10&ttl=30", [11]),
        ("/dict/incr?key=s&by=1", [None, "not a number"]),
        ("/dict/set?key=b&value=false&type=boolean", [True]),
        ("/dict/get?key=b", [False]),
        ("/dict/add?key=s&value=again", [False, "exists"]),
        ("/dict/add?key=new&value=first", [True]),
        ("/dict/ttl?key=n", [0]),
        ("/dict/ttl?key=nobody", [None, "not found"]),
        ("/dict/delete?key=s", [True]),
        ("/dict/get?key=s", [None]),
        ("/dict/set?key=text-number&value=12", [True]),
        ("/dict/get?key=text-number", ["12"]),
    ]

    def test_methods(self):
        t = self.instance()
        for path, expected in self.CASES:
            self.assertEqual(t.get(path).json()["results"], expected, path)

    def test_ttl_is_kept_in_redis(self):
        t = self.instance()
        t.get("/dict/set?key=k&value=v&ttl=30")
        left = t.get("/dict/ttl?key=k").json()["results"][0]
        self.assertTrue(29 <= left <= 30, left)
        self.assertTrue(29000 <= self.redis.command("PTTL", "tokend:sessions:k") <= 30000)
        self.assertEqual(t.get("/dict/incr?key=c&by=1&init=0&ttl=20").json()["results"], [1])
        t.get("/dict/incr?key=c&by=1")     # a later incr keeps the TTL of the first
        self.assertTrue(19000 <= self.redis.command("PTTL", "tokend:sessions:c") <= 20000)

    def test_values_written_by_other_programs(self):
        t = self.instance()
        self.redis.command("SET", "tokend:sessions:counter", "41")
        self.assertEqual(t.get("/dict/incr?key=counter&by=1").json()["results"], [42])
        self.redis.command("HSET", "tokend:sessions:hash", "a", "b")
        results = t.get("/dict/get?key=hash").json()["results"]
        self.assertIsNone(results[0])
        self.assertIn("WRONGTYPE", results[1])


class RawCommands(RedisTestCase):
    def command(self, t, *args):
        return json.loads(request(t.port, "/redis", method="POST", body=json.dumps(list(args))).body)

    def test_replies_as_lua_values(self):
        t = self.instance()
        self.assertEqual(self.command(t, "INCR", "visits")["reply"], 1)
        self.assertEqual(self.command(t, "SET", "k", "v")["reply"], "OK")
        self.assertTrue(self.command(t, "GET", "nothing")["null"])
        self.command(t, "RPUSH", "list", "a", "b", 3)
        self.assertEqual(self.command(t, "LRANGE", "list", 0, -1)["reply"], ["a", "b", "3"])
        self.assertEqual(self.command(t, "EVAL", "return {1, 'two', {3}}", 0)["reply"], [1, "two", [3]])
        failed = self.command(t, "HGET", "k", "field")
        self.assertIsNone(failed.get("reply"))
        self.assertTrue(failed["err"].startswith("redis: WRONGTYPE"), failed)
        self.assertTrue(self.command(t, "NOSUCHCOMMAND")["err"].startswith("redis: ERR unknown command"))
        self.assertEqual(t.get("/status").json(), {"redis": "ok", "configured": True})

    def test_commands_that_would_take_the_shared_connection_are_refused(self):
        t = self.instance()
        for args in [["SUBSCRIBE", "news"], ["BLPOP", "q", 0], ["MULTI"], ["select", 2], ["XREAD", "BLOCK", 0,
                                                                                           "STREAMS", "s", "$"]]:
            r = request(t.port, "/redis", method="POST", body=json.dumps(args))
            self.assertEqual(r.status, 500, args)
            self.assertIn("would hold the connection", t.wait_log(f"{args[0].upper()}"), args)
        self.assertEqual(self.command(t, "PING")["reply"], "PONG")     # the connection is still fine

    def test_without_redis_configured(self):
        t = self.tokend(fake=self.upstream, script=self.write("raw.lua", """
            local tokend = require "tokend"
            tokend.route("GET", "/", function()
              local reply, err = tokend.redis.command("PING")
              return 200, { reply = reply, err = err, status = tokend.redis.status(), configured = tokend.config.redis }
            end)"""))
        self.assertEqual(t.get("/").json(), {"err": "down: Redis is not configured (TOKEND_REDIS_URL)",
                                             "configured": False})
        # Asking for the Redis store without Redis is a mistake in the script: it does not load.
        script = self.write("bad.lua", 'require("tokend").limiter{ name = "x", rate = 1, store = "redis" }')
        r = self.run_tokend(["--check", "--script", script])
        self.assertEqual(r.returncode, 1)
        self.assertIn('store = "redis" needs TOKEND_REDIS_URL', r.stderr)


class RedisFailures(RedisTestCase):
    def take(self, t, policy, key=None):
        started = time.time()
        r = t.get(f"/take/{policy}", headers={"X-Key": key} if key else None)
        return r.status, time.time() - started

    def wait_status(self, t, want, timeout, path="/status"):
        started = time.time()
        while time.time() - started < timeout:
            if t.get(path).json().get("redis") == want:
                return time.time() - started
            time.sleep(0.02)
        self.fail(f"Redis was not {want} within {timeout} s")

    def test_redis_stopped_then_back(self):
        a, b = self.instance(), self.instance()
        health = self.instance(script=DEFAULT_SCRIPT, policy={})
        self.assertEqual(health.get("/healthz").json()["redis"], "ok")
        self.assertEqual([self.take(a, "local")[0], self.take(a, "local")[0], self.take(b, "local")[0]],
                         [200, 200, 429])
        self.redis.stop()
        self.wait_status(a, "down", 2)
        self.wait_status(b, "down", 2)
        # local: each instance counts alone (2 each); allow: all pass; deny: none pass.
        for t in (a, b):
            outcomes = [self.take(t, "local") for _ in range(3)]
            self.assertEqual([s for s, _ in outcomes], [200, 200, 429])
            self.assertEqual([self.take(t, "allow")[0] for _ in range(4)], [200] * 4)
            self.assertEqual([self.take(t, "deny")[0] for _ in range(2)], [429] * 2)
            self.assertLess(max(d for _, d in outcomes), 0.5)     # no waiting on a Redis that is gone
        r = health.get("/healthz")      # tokend serves without Redis: still 200
        self.assertEqual((r.status, r.json()["redis"]), (200, "down"))
        self.assertEqual(a.log.count('limiter "'), 1, a.log)          # one warning a minute, not one a request
        metrics = a.get("/metrics").body.decode()
        self.assertRegex(metrics, r'tokend_limiter_fallbacks_total\{policy="local"\} [1-9]')
        self.assertRegex(metrics, r'tokend_limiter_fallbacks_total\{policy="deny"\} [1-9]')
        self.assertRegex(metrics, r'tokend_redis_errors_total\{kind="down"\} [1-9]')
        # Back: reconnected (each retry waits at most a second; the bound here leaves room for
        # a busy machine), and the limit is one again.
        self.redis.start()
        for t, path in ((a, "/status"), (b, "/status"), (health, "/healthz")):
            self.wait_status(t, "ok", 10, path)
        self.assertEqual([self.take(b, "local")[0], self.take(b, "local")[0], self.take(a, "local")[0]],
                         [200, 200, 429])

    def test_a_redis_that_stops_answering(self):
        a = self.instance(env={"TOKEND_REDIS_TIMEOUT_MS": "100"})
        self.assertEqual(self.take(a, "allow")[0], 200)
        self.redis.pause()
        self.addCleanup(self.redis.resume)
        outcomes = [self.take(a, policy) for policy in ["allow", "deny", "local", "allow", "allow", "deny"]]
        self.assertEqual([s for s, _ in outcomes], [200, 429, 200, 200, 200, 429])
        for _, took in outcomes:
            self.assertLess(took, 2, "each answered by the 100 ms deadline, not held by a Redis that hangs")
        metrics = a.get("/metrics").body.decode()
        self.assertRegex(metrics, r'tokend_redis_errors_total\{kind="timeout"\} [1-9]')
        self.redis.resume()
        self.wait_status(a, "ok", 3)
        deadline = time.time() + 3
        while self.take(a, "allow")[0] != 200 and time.time() < deadline:
            pass
        self.assertEqual(a.get("/dict/set?key=x&value=1").json()["results"], [True])

    def test_a_server_that_never_answers_at_start(self):
        silent = SilentServer()
        self.addCleanup(silent.stop)
        a = self.tokend(fake=self.upstream, script=self.policies(), env={"TOKEND_REDIS_URL": silent.url})
        self.assertIn("did not answer PING in time; serving without Redis until it answers", a.log)
        self.assertEqual(a.get("/status").json()["redis"], "down")
        for policy, want in [("allow", 200), ("deny", 429), ("local", 200)]:
            status, took = self.take(a, policy)
            self.assertEqual(status, want)
            self.assertLess(took, 2, "answered by the deadline, not held by a Redis that never answers")
        results = a.get("/dict/get?key=k").json()["results"]
        self.assertIsNone(results[0])
        self.assertRegex(results[1], r"^(timeout|down|lost): ")

    def test_a_key_of_the_wrong_type_in_redis(self):
        a = self.instance()
        self.redis.command("SET", "tokend.limiter:local:127.0.0.1", "not a bucket")
        self.assertEqual([self.take(a, "local")[0] for _ in range(3)], [200, 200, 429])     # falls back
        self.assertIn("WRONGTYPE", a.wait_log("WRONGTYPE"))

    def test_long_keys_from_clients(self):
        big_headers = {"TOKEND_MAX_HEADER_BYTES": "65536"}
        a, b = self.instance(env=big_headers), self.instance(env=big_headers)
        key = "k" * 10240
        self.assertEqual([self.take(a, "local", key)[0], self.take(b, "local", key)[0], self.take(a, "local", key)[0]],
                         [200, 200, 429])
        # Known by their SHA-256 in Redis: one key of bounded length.
        names = self.redis.command("KEYS", "tokend.limiter:local:*")
        self.assertEqual(len(names), 1)
        self.assertLess(len(names[0]), 120)
        # A key that differs only past the first hundred bytes is another client.
        self.assertEqual(self.take(a, "local", key[:-1] + "x")[0], 200)
        self.assertEqual(a.get("/dict/set?value=big", headers={"X-Key": key}).json()["results"], [True])
        self.assertEqual(b.get("/dict/get", headers={"X-Key": key}).json()["results"], ["big"])


class BadSettings(TokendTestCase):
    def test_a_malformed_url_is_a_bad_setting(self):
        for url, reason in [("http://127.0.0.1:6379", "must start with redis:// or unix://"),
                            ("redis://", "no host"), ("redis://127.0.0.1:99999", "the port must be 1..65535")]:
            r = self.run_tokend(["--port", "0"], env={"TOKEND_REDIS_URL": url})
            self.assertEqual(r.returncode, 2, (url, r.stdout, r.stderr))
            self.assertIn("TOKEND_REDIS_URL: ", r.stderr, url)
            self.assertIn(reason, r.stderr, url)

    def test_a_wrong_password_or_database_stops_the_start(self):
        redis = Redis(self.workdir, password="s3cret-pass")
        self.addCleanup(redis.stop)
        cases = [
            (f"redis://:wrong-pass@127.0.0.1:{redis.port}", "refused AUTH"),
            (f"redis://127.0.0.1:{redis.port}", "NOAUTH"),
            (f"redis://:s3cret-pass@127.0.0.1:{redis.port}/99", "refused SELECT"),
        ]
        for url, reason in cases:
            r = self.run_tokend(["--port", "0"], env={"TOKEND_REDIS_URL": url})
            self.assertEqual(r.returncode, 1, (url, r.stdout, r.stderr))
            self.assertIn("TOKEND_REDIS_URL", r.stderr, url)
            self.assertIn(reason, r.stderr, url)
            if "SELECT" not in reason:
                self.assertIn("redis://:password@host:port", r.stderr, "the message shows where the password goes")
            self.assertNotIn("pass", r.stderr.replace("password", ""), url)   # the password is never printed

    def test_a_redis_that_is_not_there_yet_is_waited_for(self):
        # A restart during a Redis outage, or Redis starting after tokend: tokend serves, says
        # so, counts as each limiter's on_store_error says, and uses Redis once it comes.
        redis = Redis(self.workdir, start=False)
        self.addCleanup(redis.stop)
        started = []
        for url, reason in [(redis.url, "Connection refused"),
                            ("redis://no-such-host.invalid:6379", "cannot reach Redis at no-such-host.invalid:6379"),
                            (f"unix://{self.workdir}/no.sock", "No such file or directory")]:
            t = self.tokend(fake=self.fake(), policy={}, env={"TOKEND_REDIS_URL": url})
            self.assertIn(reason, t.log)
            self.assertIn("serving without Redis until it answers", t.log)
            self.assertEqual(t.get("/healthz").json()["redis"], "down")
            self.assertEqual([t.get("/token").status for _ in range(6)], [200] * 5 + [429],
                             "the default script's limiter counts locally meanwhile")
            started.append(t)
        redis.start()       # on the port the first one names
        deadline = time.time() + 10
        while started[0].get("/healthz").json()["redis"] != "ok" and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(started[0].get("/healthz").json()["redis"], "ok")
        self.assertEqual(started[0].get("/token").status, 200, "a fresh bucket, in Redis now")
        self.assertIn(b"tokend.limiter:token:127.0.0.1", redis.command("KEYS", "tokend.limiter:*"))

    def test_the_right_password_and_database(self):
        redis = Redis(self.workdir, password="s3cret-pass")
        self.addCleanup(redis.stop)
        t = self.tokend(script=self.write("p.lua", POLICIES_SCRIPT),
                        env={"TOKEND_REDIS_URL": f"redis://:s3cret-pass@127.0.0.1:{redis.port}/3"})
        self.assertEqual(t.get("/dict/set?key=a&value=b").json()["results"], [True])
        self.assertEqual(redis.command("SELECT", 3), "OK")
        self.assertNotIn("s3cret-pass", t.log)


class BehindHAProxy(RedisTestCase):
    """docs/deploy.md's set-up: instances trusting HAProxy's X-Forwarded-For."""

    def start(self, n, **kw):
        env = {"TOKEND_TRUSTED_PROXIES": "127.0.0.1"}
        self.instances = [self.instance(script=DEFAULT_SCRIPT, env=env, **kw) for _ in range(n)]
        self.haproxy = HAProxy(self.workdir, [t.port for t in self.instances])
        self.addCleanup(self.haproxy.stop)
        self.wait_healthy()

    def wait_healthy(self, timeout=10):
        """Waits until HAProxy's stats page shows every instance up (checks every 200 ms)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            states = self.haproxy.servers()
            if len(states) == len(self.instances) and set(states.values()) == {"UP"}:
                return
            time.sleep(0.05)
        self.fail(f"HAProxy did not mark the instances up: {states}")

    def via(self, source, path="/token"):
        conn = http.client.HTTPConnection("127.0.0.1", self.haproxy.port, timeout=10, source_address=(source, 0))
        try:
            return request(self.haproxy.port, path, conn=conn)
        finally:
            conn.close()

    def test_the_client_is_the_address_haproxy_saw(self):
        self.start(3, policy={})
        # A client's own X-Forwarded-For is not believed: HAProxy appends the address it saw.
        first = [self.via("127.0.0.2").status for _ in range(30)]
        self.assertEqual(first.count(200), 5, first)
        self.assertEqual(first.count(429), 25)
        second = [self.via("127.0.0.3").status for _ in range(8)]
        self.assertEqual(second.count(200), 5, second)
        logs = "".join(t.log for t in self.instances)
        self.assertIn("client=127.0.0.2", logs)
        self.assertIn("client=127.0.0.3", logs)
        self.assertEqual(len(re.findall(r"access 127\.0\.0\.2 GET /token 200", logs)), 5)

    def test_a_client_padding_forwarded_for_past_the_line_limit(self):
        # 32 lines of its own, HAProxy's is the 33rd: still the client HAProxy saw, its
        # bucket, its name in the log; never HAProxy's address.
        self.start(1, policy={"TOKEN_BURST": 1})
        pad = "".join(f"X-Forwarded-For: 203.0.113.{k}\r\n" for k in range(32)).encode()
        self.assertEqual(self.via("127.0.0.2").status, 200)
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", self.haproxy.port))
        s.sendall(b"GET /token HTTP/1.1\r\nHost: localhost\r\n" + pad + b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        s.close()
        self.assertTrue(answer.startswith(b"HTTP/1.1 429 "), answer[:200])
        log = self.instances[0].wait_log("access 127.0.0.2 GET /token 429")
        self.assertIn("access 127.0.0.2 GET /token 429", log)
        self.assertNotIn("access 127.0.0.1 GET /token", log)

    def test_rolling_restart_loses_no_request(self):
        self.start(3, policy=UNLIMITED)
        results, stop = [], threading.Event()

        def load():
            while not stop.is_set():
                try:
                    results.append(self.via("127.0.0.2").status)
                except OSError as e:
                    results.append(repr(e))

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        try:
            for i in range(len(self.instances)):
                time.sleep(0.7)
                old = self.instances[i]
                self.assertEqual(old.stop(), 0)
                self.instances[i] = self.instance(script=DEFAULT_SCRIPT, policy=UNLIMITED,
                                                  env={"TOKEND_TRUSTED_PROXIES": "127.0.0.1"},
                                                  port=old.port)
                self.wait_healthy()
            time.sleep(0.5)
        finally:
            stop.set()
            for w in workers:
                w.join()
        self.assertGreater(len(results), 100)
        self.assertEqual([r for r in results if r != 200], [])


if __name__ == "__main__":
    unittest.main()
