"""Attacks on a running tokend: each test fails if its defence is removed."""
import json
import os
import re
import socket
import threading
import time
import unittest

from harness import CANARIES, CANARY_KEY, DEFAULT_SCRIPT, SRC, TokendTestCase, request



def closed_by_server(sock, within):
    """True when the server closes (or resets) sock within `within` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


class RateLimit(TokendTestCase):
    def test_default_policy_allows_a_burst_of_5_then_429(self):
        fake = self.fake()
        t = self.tokend(fake=fake, policy={}, workers=2)
        statuses = [t.get("/token").status for _ in range(7)]
        self.assertEqual(statuses, [200] * 5 + [429] * 2)
        r = t.get("/token")
        self.assertEqual(r.status, 429)
        self.assertEqual(r.json(), {"error": "too many token requests; retry later"})
        self.assertIn(int(r.headers["retry-after"]), range(1, 7), "10 a minute: one every 6 s")
        self.assertEqual(r.headers["cache-control"], "no-store")
        self.assertEqual(fake.stats()["requests"], 5, "refused requests never reach the upstream")
        self.assertEqual(t.get("/").status, 200, "static files are not limited")

    def test_forwarded_for_is_ignored_unless_the_proxy_is_trusted(self):
        fake = self.fake()
        t = self.tokend(fake=fake, policy={"TOKEN_BURST": 1})
        self.assertEqual(t.get("/token", headers={"X-Forwarded-For": "198.51.100.1"}).status, 200)
        self.assertEqual(t.get("/token", headers={"X-Forwarded-For": "198.51.100.2"}).status, 429,
                         "a client cannot pick its own address")

    def test_trusted_proxy_gives_each_client_its_bucket(self):
        fake = self.fake()
        t = self.tokend(fake=fake, policy={"TOKEN_BURST": 1}, env={"TOKEND_TRUSTED_PROXIES": "127.0.0.0/8"})
        for client in ["198.51.100.1", "198.51.100.2"]:
            self.assertEqual(t.get("/token", headers={"X-Forwarded-For": f"6.6.6.6, {client}"}).status, 200)
        self.assertEqual(t.get("/token", headers={"X-Forwarded-For": "198.51.100.1"}).status, 429)
        self.assertIn("access 198.51.100.1 GET /token 429", t.wait_log("access 198.51.100.1 GET /token 429"), "the log names the real client")

    def test_buckets_are_shared_by_workers(self):
        fake = self.fake()
        t = self.tokend(fake=fake, policy={"TOKEN_BURST": 10}, workers=4)
        statuses = []
        lock = threading.Lock()

        def one():
            s = request(t.port, "/token").status
            with lock:
                statuses.append(s)
        threads = [threading.Thread(target=one) for _ in range(30)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        self.assertEqual(statuses.count(200), 10, statuses)
        self.assertEqual(statuses.count(429), 20)


# Two limiters, as an application with a login form would have them, and a dictionary of
# large values: the bounded tables must not let one kind of key crowd out another, nor
# grow without bound in bytes.
TABLES_SCRIPT = r'''
local tokend = require "tokend"
local login = tokend.limiter{ name = "login", rate = 1, per = 3600, burst = 1 }
local visits = tokend.limiter{ name = "visits", rate = 1, per = 3600, burst = 1, max_keys = 2 }
local refused = {
  max_keys = select(2, pcall(tokend.limiter, { name = "bad", rate = 1, max_keys = 1.5 })),
  max_bytes = select(2, pcall(tokend.shared, "bad", { max_bytes = 1000 })),
}
local big = tokend.shared("big", { max_bytes = 8 * 1024 * 1024 })
local tiny = tokend.shared("tiny", { max_bytes = 100000 })
tokend.route("GET", "/login", function(req)
  return login:take(req.query.user) and 200 or 429, {}
end)
tokend.route("GET", "/token", function(req)
  return visits:take(req.client) and 200 or 429, {}
end)
tokend.route("GET", "/fill", function(req)
  local first, n = tonumber(req.query.first), tonumber(req.query.n)
  for i = first, first + n - 1 do
    local ok, err = big:set("k" .. i, string.rep(string.char(65 + i % 26), 1024 * 1024 - 8) .. ("%08d"):format(i))
    if not ok then return 500, { error = err } end
  end
  return 200, {}
end)
tokend.route("GET", "/get", function(req)
  local v = big:get(req.query.key)
  return 200, { len = v and #v, tail = v and v:sub(-8) }
end)
tokend.route("GET", "/tiny", function(req)
  local ok, err = tiny:set("small", "x")
  local ok2, err2 = tiny:set("big", string.rep("x", 200000))
  return 200, { ok = ok, err = err, ok2 = ok2, err2 = err2, small = tiny:get("small"), big = tiny:get("big") }
end)
tokend.route("GET", "/metrics", function() return 200, tokend.metrics() end)
tokend.route("GET", "/refused", function() return 200, refused end)
'''


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


class Tables(TokendTestCase):
    def test_a_limiter_full_of_user_names_does_not_refuse_new_visitors(self):
        t = self.tokend(key=None, script=self.write("tables.lua", TABLES_SCRIPT),
                        env={"TOKEND_RATE_LIMIT_CLIENTS": "100", "TOKEND_TRUSTED_PROXIES": "127.0.0.0/8"})
        # One address tries 150 user names, once each: more than the 100 keys a limiter keeps.
        attacker = {"X-Forwarded-For": "203.0.113.66"}
        for i in range(150):
            self.assertEqual(t.get(f"/login?user=user{i}", headers=attacker).status, 200, i)
        self.assertEqual(t.get("/login?user=user149", headers=attacker).status, 429,
                         "a recent name is remembered: its bucket is empty")
        self.assertEqual(t.get("/login?user=someone-new", headers=attacker).status, 200,
                         "a new name is not refused because the table is full")
        self.assertEqual(t.get("/login?user=user0", headers=attacker).status, 200,
                         "the least recently used name was forgotten (a full burst again)")
        for visitor in ["198.51.100.1", "198.51.100.2", "2001:db8:5::1"]:
            self.assertEqual(t.get("/token", headers={"X-Forwarded-For": visitor}).status, 200,
                             f"a new visitor {visitor} of /token is not refused")
        self.assertEqual(t.get("/token", headers={"X-Forwarded-For": "2001:db8:5::1"}).status, 429,
                         "and its limit holds")
        m = t.get("/metrics").body.decode()
        self.assertRegex(m, r'tokend_limiter_evictions_total\{limiter="login"\} 52\n', "152 names, 100 kept")
        self.assertRegex(m, r'tokend_limiter_keys\{limiter="login"\} 100\n')
        self.assertRegex(m, r'tokend_limiter_keys\{limiter="visits"\} 2\n', "its own max_keys")
        self.assertRegex(m, r'tokend_limiter_evictions_total\{limiter="visits"\} 1\n')
        j = t.get("/refused").json()
        self.assertIn("max_keys must be a whole number", j["max_keys"])
        self.assertIn("max_bytes must be a whole number of bytes, 1024..", j["max_bytes"])

    def test_a_dictionary_of_large_values_stays_within_its_bytes(self):
        t = self.tokend(key=None, script=self.write("tables.lua", TABLES_SCRIPT))
        before = rss_bytes(t.proc.pid)
        for first in range(0, 200, 10):     # 200 values of 1 MiB into a dictionary of 8 MiB
            r = t.get(f"/fill?first={first}&n=10", timeout=60)
            self.assertEqual(r.status, 200, r.body)
        self.assertEqual(t.get("/get?key=k199").json(), {"len": 1024 * 1024, "tail": "00000199"}, "the newest is kept")
        self.assertEqual(t.get("/get?key=k0").json(), {}, "the oldest went")
        m = t.get("/metrics").body.decode()
        held = int(re.search(r'tokend_shared_bytes\{dict="big"\} (\d+)', m).group(1))
        self.assertLessEqual(held, 8 * 1024 * 1024)
        self.assertGreater(held, 6 * 1024 * 1024, "it is full, not emptied")
        self.assertRegex(m, r'tokend_shared_evictions_total\{dict="big"\} 193\n', "7 values of 1 MiB fit in 8 MiB")
        if not os.environ.get("ASAN_OPTIONS") and not os.environ.get("TOKEND_WRAPPER"):  # they keep freed memory
            grown = rss_bytes(t.proc.pid) - before
            self.assertLess(grown, 100 * 1024 * 1024, f"RSS grew by {grown >> 20} MiB for 200 MiB of values")
        j = t.get("/tiny").json()
        self.assertEqual((j["ok"], j["small"]), (True, "x"))
        self.assertIsNone(j.get("ok2"))
        self.assertIn("larger than the dictionary", j["err2"])
        self.assertIsNone(j.get("big"))


class Origins(TokendTestCase):
    def setUp(self):
        super().setUp()
        self.fake_ = self.fake()
        self.t = self.tokend(fake=self.fake_)

    def test_cross_origin_pages_not_listed_are_refused(self):
        for origin in ["https://evil.example", "http://localhost.evil.example", "null", "http://127.0.0.1.nip.io:8000"]:
            r = self.t.get("/token", headers={"Origin": origin})
            self.assertEqual(r.status, 403, origin)
            self.assertNotIn("access-control-allow-origin", r.headers)
        self.assertEqual(self.fake_.stats()["requests"], 0)

    def test_listed_origins_get_cors_headers(self):
        r = self.t.get("/token", headers={"Origin": "http://localhost:5173"})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["access-control-allow-origin"], "http://localhost:5173")
        self.assertEqual(r.headers["vary"], "Origin")

    def test_same_origin_and_no_origin_pass_without_cors_headers(self):
        for headers in [{}, {"Origin": f"http://127.0.0.1:{self.t.port}"}]:
            r = self.t.get("/token", headers=headers)
            self.assertEqual(r.status, 200, headers)
            self.assertNotIn("access-control-allow-origin", r.headers)

    def test_preflight(self):
        r = self.t.get("/token", method="OPTIONS", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept"})
        self.assertEqual(r.status, 204)
        self.assertEqual(r.headers["access-control-allow-origin"], "http://localhost:3000")
        self.assertEqual(r.headers["access-control-allow-methods"], "GET")
        self.assertEqual(r.headers["access-control-allow-headers"], "accept")
        self.assertEqual(r.headers["access-control-max-age"], "600")
        for headers in [{"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
                        {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "DELETE"},
                        {"Origin": "http://localhost:3000"}]:
            r = self.t.get("/token", method="OPTIONS", headers=headers)
            self.assertEqual(r.status, 403, headers)
            self.assertNotIn("access-control-allow-origin", r.headers)

    def test_allow_list_is_configurable(self):
        t = self.tokend(fake=self.fake_, policy={"ALLOWED_ORIGINS": "https://app.example.com", "TOKEN_BURST": 100})
        self.assertEqual(t.get("/token", headers={"Origin": "https://app.example.com"}).status, 200)
        self.assertEqual(t.get("/token", headers={"Origin": "http://localhost:3000"}).status, 403)


class Limits(TokendTestCase):
    def test_header_and_request_line_sizes(self):
        t = self.tokend(key=None, env={"TOKEND_MAX_HEADER_BYTES": "4096"})
        self.assertEqual(t.get("/", headers={"X-Pad": "a" * 2000}).status, 200)
        self.assertEqual(t.get("/", headers={"X-Pad": "a" * 6000}).status, 431)
        self.assertEqual(t.get("/" + "a" * 6000).status, 414)
        self.assertEqual(t.get("/").status, 200)

    def test_body_size(self):
        t = self.tokend(key=None, env={"TOKEND_MAX_BODY_BYTES": "1000"})
        self.assertEqual(t.get("/token", method="POST", body="x" * 1001).status, 413)
        self.assertEqual(t.get("/token", method="POST", body="x" * 1000).status, 405)

    def test_query_argument_count(self):
        t = self.tokend(key=None, env={"TOKEND_MAX_QUERY_ARGS": "3"})
        self.assertEqual(t.get("/token?a=1&b=2&c=3").status, 503)
        r = t.get("/token?a=1&b=2&c=3&d=4")
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json(), {"error": "too many query arguments"})
        self.assertEqual(t.get("/token?a=%zz").status, 400)

    def test_connections_per_address(self):
        t = self.tokend(key=None, env={"TOKEND_MAX_CONNECTIONS_PER_IP": "3"}, workers=2)
        held = [socket.create_connection(("127.0.0.1", t.port)) for _ in range(3)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", t.port))
        self.assertTrue(closed_by_server(extra, 2), "a fourth connection is refused")
        extra.close()
        held.pop().close()
        time.sleep(0.2)
        self.assertEqual(t.get("/").status, 200, "room again after one closes")
        for s in held:
            s.close()

    def test_connections_in_total(self):
        t = self.tokend(key=None, env={"TOKEND_MAX_CONNECTIONS": "4", "TOKEND_MAX_CONNECTIONS_PER_IP": "0"})
        held = [socket.create_connection(("127.0.0.1", t.port)) for _ in range(4)]
        time.sleep(0.2)
        # Past the limit, tokend stops accepting: the next client waits in the backlog, unserved.
        extra = socket.create_connection(("127.0.0.1", t.port))
        extra.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        extra.settimeout(1)
        with self.assertRaises(socket.timeout):
            extra.recv(100)
        held.pop().close()
        extra.settimeout(3)
        self.assertTrue(extra.recv(100).startswith(b"HTTP/1.1 200"), "served once a slot frees")
        for s in held + [extra]:
            s.close()

    def test_slow_and_idle_clients_are_cut_off(self):
        t = self.tokend(key=None, env={"TOKEND_REQUEST_TIMEOUT_S": "1"})
        idle = socket.create_connection(("127.0.0.1", t.port))
        slow = socket.create_connection(("127.0.0.1", t.port))
        slow.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        started = time.time()
        cut = False
        while time.time() - started < 4 and not cut:
            try:
                slow.sendall(b"X-Drip: 1\r\n")       # a byte now and then keeps idle timers alive
            except OSError:
                cut = True
                break
            slow.settimeout(0.3)
            try:
                cut = slow.recv(1) == b""
            except socket.timeout:
                pass
            except ConnectionResetError:
                cut = True
        self.assertTrue(cut, "a client dripping headers is cut off")
        self.assertLess(time.time() - started, 3.5)
        self.assertTrue(closed_by_server(idle, 1), "an idle connection is cut off")
        self.assertEqual(t.get("/").status, 200)


SCRIPT_ATTACKS = r'''
local tokend = require "tokend"
local function compiled() return string.dump(function() return 1 end) end

tokend.route("GET", "/load", function()
  local f, err = load(compiled(), "x", "b")
  return 200, { loaded = f ~= nil, err = tostring(err) }
end)
tokend.route("GET", "/loadfile", function()
  local path = os.tmpname()
  local out = assert(io.open(path, "wb")); out:write(compiled()); out:close()
  local f, err = loadfile(path, "b")
  local ok, derr = pcall(dofile, path)
  os.remove(path)
  return 200, { loaded = f ~= nil, err = tostring(err), dofile_ok = ok, dofile_err = tostring(derr) }
end)
tokend.route("GET", "/require", function()
  local ok, err = pcall(require, "evilmod")
  return 200, { ok = ok, err = tostring(err) }
end)
-- A secret the script uses: its bytes must be nowhere Lua can reach either.
local hunted = tokend.secret("HUNT_SECRET")
tokend.route("GET", "/use-secret", function(req)
  local res = tokend.http.request(req.query.url, { method = "POST", headers = { Authorization = { "Bearer ", hunted } },
                                                   query = { key = hunted }, json = { secret = hunted } })
  return 200, { status = res and res.status }
end)
tokend.route("GET", "/hunt", function()
  -- Look everywhere Lua can reach for the key.
  local seen, found = {}, {}
  local function visit(v, depth)
    if depth > 12 then return end
    local t = type(v)
    if t == "string" then
      if v:find("canary", 1, true) then found[#found + 1] = v end
      return
    end
    if (t ~= "table" and t ~= "function" and t ~= "thread" and t ~= "userdata") or seen[v] then return end
    seen[v] = true
    if t == "table" then
      for k, x in next, v do visit(k, depth + 1); visit(x, depth + 1) end
    elseif t == "function" then
      for i = 1, 255 do
        local name, x = debug.getupvalue(v, i)
        if not name then break end
        visit(x, depth + 1)
      end
    end
    local mt = debug.getmetatable(v)
    if mt then visit(mt, depth + 1) end
    if t == "userdata" then visit(debug.getuservalue(v), depth + 1) end
  end
  visit(debug.getregistry(), 0)
  visit(_G, 0)
  local env = {}
  for _, name in ipairs({ "ASSEMBLYAI_API_KEY", "API_KEY", "HUNT_SECRET" }) do env[#env + 1] = os.getenv(name) end
  local p = io.popen("env")
  local child_env = p:read("a"); p:close()
  return 200, { found = found, env = env, child_env_has_key = child_env:find("ASSEMBLYAI_API_KEY", 1, true) ~= nil
                                                      or child_env:find("HUNT_SECRET", 1, true) ~= nil }
end)
'''


class Scripts(TokendTestCase):
    def setUp(self):
        super().setUp()
        self.fake_ = self.fake()
        folder = os.path.join(self.workdir, "s")
        os.makedirs(folder)
        self.write("s/evilmod.lua", "placeholder")
        import subprocess
        subprocess.run(["luac5.4", "-o", os.path.join(folder, "evilmod.lua"), "-"], input=b"return 1", check=True)
        if HUNT_SECRET not in CANARIES:
            CANARIES.append(HUNT_SECRET)
        self.t = self.tokend(fake=self.fake_, script=self.write("s/routes.lua", SCRIPT_ATTACKS),
                             env={"HUNT_SECRET": HUNT_SECRET})

    def test_bytecode_is_refused_everywhere(self):
        j = self.t.get("/load").json()
        self.assertFalse(j["loaded"])
        self.assertIn("attempt to load a binary chunk", j["err"])
        j = self.t.get("/loadfile").json()
        self.assertFalse(j["loaded"])
        self.assertIn("binary chunk", j["err"])
        self.assertFalse(j["dofile_ok"])
        self.assertIn("binary chunk", j["dofile_err"])
        j = self.t.get("/require").json()
        self.assertFalse(j["ok"])
        self.assertIn("binary chunk", j["err"])

    def test_the_key_cannot_be_found_from_lua(self):
        self.assertEqual(self.t.get("/hunt").status, 200)     # warm up: a worker has minted nothing yet
        import sys
        sys.path.insert(0, os.path.join(SRC, "tests", "fakes"))
        from backend import Backend
        echo = Backend()
        self.addCleanup(echo.stop)
        self.assertEqual(self.t.get(f"/use-secret?url={echo.url}/echo").json(), {"status": 200},
                         "the secret went out (and came back echoed)")
        j = self.t.get("/hunt").json()
        self.assertFalse(j["found"], "no string holding the key is reachable")
        self.assertFalse(j["env"], "os.getenv finds no key")
        self.assertFalse(j["child_env_has_key"], "a child process inherits no key")


HUNT_SECRET = "canary-HUNT-7e1f0d2c3b4a5968"


# Where a secret handle must be refused (its bytes would leave C), or a bad name: each row a
# handler's body run with a secret at hand (`key`), and the error it must raise (or the
# answer's status when the refusal is a failed answer).
SECRET_MISUSE = [
    ("a log line", 'tokend.log.info("the key", key)', "tokend.log: secret:MISUSE_SECRET cannot go there"),
    ("a log field", 'tokend.log.warn("x", { key = key })', "tokend.log: secret:MISUSE_SECRET cannot go there"),
    ("a debug line too", 'tokend.log.debug("the key", key)', "tokend.log: secret:MISUSE_SECRET cannot go there"),
    ("a shared dictionary", 'tokend.shared("s"):set("k", key)', "values are strings, numbers or booleans"),
    ("cjson.encode", 'require("cjson").encode({ key })', "Cannot serialise userdata"),
    ("concatenation", 'local s = "Token " .. key', "a secret cannot be read, joined or indexed"),
    ("string.format", 'assert(string.format("%s", key) == "secret:MISUSE_SECRET")', None),
    ("a field", 'local b = key.bytes', "a secret cannot be read, joined or indexed"),
    ("tokend.env", 'tokend.env("MISUSE_SECRET")', "tokend.env: MISUSE_SECRET is a secret"),
    ("an unset secret", 'tokend.secret("UNSET_SECRET_NAME")', "the secret UNSET_SECRET_NAME is not set"),
    ("a name that is not one", 'tokend.secret("A-B")', "a secret's name is a variable name"),
    ("the request body", 'tokend.http.request("http://127.0.0.1:1/", { body = key })', "bad argument"),
    ("a JSON name", 'tokend.http.request("http://127.0.0.1:1/", { json = { [key] = 1 } })', "a secret cannot be a name"),
    ("a bad template", 'tokend.http.request("http://127.0.0.1:1/", { headers = { A = { key, {} } } })',
     "a template's parts are strings, numbers or secrets"),
    ("a redis argument", 'tokend.redis.command("SET", "k", key)', "string or number expected, got tokend.secret"),
]
SECRET_ANSWERS = [
    # route, the status the answer gets
    ("/body-table", 500), ("/body", 500), ("/header", 500),
]


class SecretHandles(TokendTestCase):
    def test_a_handle_is_refused_where_its_bytes_would_leave(self):
        cases = "\n".join(f'  [{i}] = function() {line} end,' for i, (_, line, _) in enumerate(SECRET_MISUSE, 1))
        script = self.write("misuse.lua", f'''
local tokend = require "tokend"
local key = tokend.secret("MISUSE_SECRET")
local cases = {{
{cases}
}}
tokend.route("GET", "/case/:i", function(req)
  local ok, err = pcall(cases[tonumber(req.params.i)])
  return 200, {{ ok = ok, err = tostring(err) }}
end)
tokend.route("GET", "/body-table", function() return 200, {{ key = key }} end)
tokend.route("GET", "/body", function() return 200, key end)
tokend.route("GET", "/header", function() return 200, "x", {{ ["X-Key"] = key }} end)
tokend.route("GET", "/user", function(req) req.log.user = key return 200, "logged" end)
''')
        secret = "misuse-SECRET-0a1b2c3d4e5f"
        CANARIES.append(secret)
        t = self.tokend(key=None, script=script, env={"MISUSE_SECRET": secret})
        for i, (what, _, message) in enumerate(SECRET_MISUSE, 1):
            with self.subTest(what):
                j = t.get(f"/case/{i}").json()
                if message is None:
                    self.assertTrue(j["ok"], j)
                else:
                    self.assertFalse(j["ok"], j)
                    self.assertIn(message, j["err"])
        for path, status in SECRET_ANSWERS:
            with self.subTest(path):
                self.assertEqual(t.get(path).status, status)
        self.assertEqual(t.get("/user").status, 200)
        t.stop()
        self.assertNotIn("secret:MISUSE", t.log, "req.log.user = handle writes nothing of it")


class KeyNeverLeaks(TokendTestCase):
    def test_upstream_echo_is_redacted_everywhere(self):
        fake = self.fake(fault="401-echo")
        t = self.tokend(fake=fake, args=["--log-level", "debug", "--log-format", "json"])
        r = t.get("/token")
        self.assertEqual(r.status, 502)
        t.stop()
        self.assertIn("[redacted]", t.wait_log("[redacted]"))
        self.assertNotIn(CANARY_KEY, t.log)


# ---- Regression tests for the attacker's findings (issue 11), as tables where they fit ----

def raw_exchange(port, data, timeout=5, src=None, family=socket.AF_INET, host="127.0.0.1"):
    """Sends raw bytes, reads until the server closes or goes quiet; returns (bytes, closed)."""
    s = socket.socket(family, socket.SOCK_STREAM)
    if src:
        s.bind((src, 0))
    s.settimeout(timeout)
    s.connect((host, port))
    s.sendall(data)
    out, closed = b"", False
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            out += chunk
            s.settimeout(0.5)       # the answer came: wait a little for anything after it
    except socket.timeout:
        pass
    except ConnectionResetError:
        closed = True
    s.close()
    return out, closed


def responses(data):
    """Splits raw bytes into (status, headers dict, body) of each HTTP/1.1 answer."""
    out = []
    while data.startswith(b"HTTP/1."):
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split()[1]), headers, rest[:n]))
        data = rest[n:]
    return out


CLIENT_ECHO = r'''
local tokend = require "tokend"
tokend.route("GET", "/who", function(req)
  return 200, { client = req.client, remote_addr = req.remote_addr }
end)
'''

# Requests as sent on the wire, and the one answer each must get: status, and whether the
# connection must be closed after it (request smuggling).
RAW_REQUESTS = [
    ("both Content-Length and Transfer-Encoding",
     b"POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, True),
    ("two Content-Lengths that differ",
     b"POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n"
     b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, True),
    ("a Transfer-Encoding other than chunked",
     b"POST /token HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400, True),
    ("a foreign Host (DNS rebinding)", b"GET /token HTTP/1.1\r\nHost: rebind.attacker.example:8000\r\n\r\n", 421, False),
    ("a malformed Host", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, True),
    ("localhost is served", b"GET /healthz HTTP/1.1\r\nHost: localhost:8000\r\n\r\n", 200, False),
    ("a subdomain of localhost is served", b"GET /healthz HTTP/1.1\r\nHost: app.localhost\r\n\r\n", 200, False),
    ("an address is served", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n", 200, False),
    ("a URI of 7.9 KB within the limit", b"GET /" + b"a" * 7900 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 404, False),
    ("a URI past the limit", b"GET /" + b"a" * 8300 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414, True),
    ("headers past the limit", b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"p" * 8300 + b"\r\n\r\n", 431, True),
    ("150 query arguments", b"GET /index.html?" + b"&".join(b"a%d=1" % i for i in range(150)) +
     b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, False),
    ("HEAD of a GET route mints nothing", b"HEAD /token HTTP/1.1\r\nHost: localhost\r\n\r\n", 200, False),
    ("a region the policy does not offer", b"GET /token?region=eu HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, False),
]


class Findings(TokendTestCase):
    def test_raw_requests(self):
        fake = self.fake()
        t = self.tokend(fake=fake)
        for name, data, status, closes in RAW_REQUESTS:
            with self.subTest(name):
                started = time.time()
                out, closed = raw_exchange(t.port, data)
                answers = responses(out)
                self.assertEqual([a[0] for a in answers], [status], out[:300])
                self.assertLess(time.time() - started, 3, "answered at once")
                headers = answers[0][1]
                self.assertEqual(headers.get("x-content-type-options"), "nosniff")
                if status >= 400:
                    self.assertEqual(headers.get("content-type"), "application/json")
                if closes:
                    self.assertTrue(closed, "the connection is closed after the refusal")
        self.assertEqual(fake.stats()["requests"], 0, "no request above reached the upstream")

    def test_forwarded_for_is_read_whole(self):
        fake = self.fake()
        t = self.tokend(fake=fake, policy={"TOKEN_BURST": 1}, env={"TOKEND_TRUSTED_PROXIES": "127.0.0.1"})
        statuses = []
        for i in range(4):
            # The client pads the header with addresses of its choosing, a fresh one each
            # time; the trusted proxy appends the real one.
            pad = ", ".join(f"203.0.{i}.{k % 250}" for k in range(150))
            statuses.append(t.get("/token", headers={"X-Forwarded-For": f"{pad}, 198.51.100.1"}).status)
        self.assertEqual(statuses, [200, 429, 429, 429], "one client, one bucket, however long its header")
        self.assertIn("access 198.51.100.1 GET /token 429", t.wait_log("access 198.51.100.1 GET /token 429"))
        for xff in ["198.51.100.7, ", "198.51.100.7,, 127.0.0.1", "not-an-address"]:
            r = t.get("/metrics", headers={"X-Forwarded-For": xff})
            self.assertEqual(r.status, 404, f"{xff!r}: /metrics is not for proxied requests")

    def test_dual_stack_clients_are_ipv4(self):
        fake = self.fake()
        script = self.write("routes.lua", CLIENT_ECHO + open(DEFAULT_SCRIPT).read()
                            .replace('local tokend = require "tokend"', "", 1))
        t = self.tokend(fake=fake, script=script, policy={"TOKEN_BURST": 2}, args=["--host", "::"],
                        env={"TOKEND_TRUSTED_PROXIES": "127.0.0.1"})
        out, _ = raw_exchange(t.port, b"GET /who HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertEqual(json.loads(responses(out)[0][2]), {"client": "127.0.0.1", "remote_addr": "127.0.0.1"})
        self.assertIn("access 127.0.0.1 GET /who", t.wait_log("access 127.0.0.1 GET /who"))
        out, _ = raw_exchange(t.port, b"GET /who HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 198.51.100.4\r\n\r\n")
        self.assertEqual(json.loads(responses(out)[0][2])["client"], "198.51.100.4", "127.0.0.1 is a trusted proxy")
        out, _ = raw_exchange(t.port, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertEqual(responses(out)[0][0], 200, "the metrics allow-list knows 127.0.0.1")
        # Each IPv4 client has its own bucket (two a minute here): one spending its own
        # does not lock out another, nor ::1.
        token = b"GET /token HTTP/1.1\r\nHost: localhost\r\n\r\n"
        first = [responses(raw_exchange(t.port, token, src="127.0.0.2")[0])[0][0] for _ in range(3)]
        self.assertEqual(first, [200, 200, 429])
        self.assertEqual(responses(raw_exchange(t.port, token, src="127.0.0.3")[0])[0][0], 200)
        out, _ = raw_exchange(t.port, token, family=socket.AF_INET6, host="::1")
        self.assertEqual(responses(out)[0][0], 200)

    def test_the_instruction_budget_cannot_be_caught(self):
        script = self.write("routes.lua", r'''
local tokend = require "tokend"
tokend.route("GET", "/pcall-loop", function()
  while true do pcall(function() while true do end end) end
end)
tokend.route("GET", "/xpcall-loop", function()
  while true do xpcall(function() while true do end end, function(e) return e end) end
end)
tokend.route("GET", "/coroutine-loop", function()
  while true do coroutine.resume(coroutine.create(function() while true do end end)) end
end)
tokend.route("GET", "/sort-loop", function()
  table.sort({ 3, 2, 1 }, function(a, b) while true do pcall(function() while true do end end) end end)
end)
tokend.route("GET", "/sethook", function()
  local ok = pcall(debug.sethook)
  while true do end
end)
tokend.route("GET", "/pattern", function()
  return 200, tostring(string.find(string.rep("a", 30000), ".-.-.-.-b"))
end)
tokend.route("GET", "/gsub-pattern", function()
  return 200, tostring((string.rep("a", 30000)):gsub("(.-)(.-)(.-)b", "%1"))
end)
tokend.route("GET", "/ok", function() return 200, "still serving" end)
''')
        t = self.tokend(key=None, script=script, env={"TOKEND_LUA_INSTRUCTIONS": "1000000"})
        for path in ["/pcall-loop", "/xpcall-loop", "/coroutine-loop", "/sort-loop", "/sethook", "/pattern",
                     "/gsub-pattern"]:
            with self.subTest(path):
                started = time.time()
                r = t.get(path, timeout=10)
                self.assertEqual(r.status, 500, r)
                self.assertLess(time.time() - started, 3)
                self.assertEqual(t.get("/ok").body, b"still serving")
        self.assertIn("instruction limit exceeded", t.wait_log("instruction limit exceeded"))
        started = time.time()
        self.assertEqual(t.stop(), 0)
        self.assertLess(time.time() - started, 5, "SIGTERM completes")

    def test_the_key_is_scrubbed_in_pieces_and_any_case(self):
        fake = self.fake()
        script = self.write("routes.lua", 'local tokend = require "tokend"\n'
                            'tokend.route("GET", "/err", function()\n'
                            '  local _, err = tokend.generate_temp_token(60)\n'
                            '  return 200, { err = err }\n'
                            'end)\n')
        t = self.tokend(fake=fake, script=script, args=["--log-level", "debug"])
        pieces = {CANARY_KEY[i:i + 8].lower() for i in range(len(CANARY_KEY) - 7)}
        for fault in ["401-echo", "401-echo-late", "401-echo-lower"]:
            with self.subTest(fault):
                fake.control(fault=fault)
                err = t.get("/err").json()["err"]
                self.assertIn("[redacted]", err)
                self.assertFalse([p for p in pieces if p in err.lower()], err)
        t.stop()
        log = t.log.lower()
        self.assertFalse([p for p in pieces if p in log], "no 8 characters of the key in the log")

    def test_the_key_leaves_no_trace_in_the_process(self):
        fake = self.fake()
        t = self.tokend(fake=fake)
        if not os.environ.get("TOKEND_WRAPPER"):     # under valgrind, the process image is valgrind's
            with open(f"/proc/{t.proc.pid}/environ", "rb") as f:
                environ = f.read()
            self.assertNotIn(b"ASSEMBLYAI_API_KEY", environ, "the entry is gone, not only its value")
            self.assertNotIn(CANARY_KEY.encode(), environ)
        with open(f"/proc/{t.proc.pid}/limits") as f:
            self.assertRegex(f.read(), r"Max core file size\s+0\s+0", "no core dump")

    def test_environment_proxies_are_ignored_and_the_setting_is_used(self):
        fake = self.fake()
        proxy = ForwardProxy(fake.port)
        self.addCleanup(proxy.close)
        env = {name: f"http://127.0.0.1:{proxy.port}" for name in
               ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]}
        t = self.tokend(fake=fake, env=env)
        self.assertEqual(t.get("/token").status, 200)
        self.assertEqual(proxy.requests, [], "the key never goes to a proxy from the environment")
        t2 = self.tokend(fake=fake, env={"TOKEND_UPSTREAM_PROXY": f"http://127.0.0.1:{proxy.port}"})
        self.assertEqual(t2.get("/token").status, 200)
        self.assertEqual(len(proxy.requests), 1, "TOKEND_UPSTREAM_PROXY carries the token call")
        self.assertIn("/v3/token?expires_in_seconds=", proxy.requests[0])

    def test_client_bytes_cannot_forge_log_lines(self):
        t = self.tokend(key=None, args=["--log-level", "debug"])
        for data in [b"G\x1b[31mET\rX / HTTP/1.1\r\nHost: localhost\r\n\r\n",
                     b"GET /a\x01b HTTP/1.1\r\nHost: localhost\r\n\r\n",
                     b"GET /%0d%0afake-line HTTP/1.1\r\nHost: localhost\r\n\r\n"]:
            raw_exchange(t.port, data, timeout=2)
        t.get("/")
        t.stop()
        for line in t.log.split("\n"):
            self.assertNotRegex(line, r"[\x00-\x08\x0b-\x1f\x7f]", f"a raw control character: {line!r}")
            self.assertFalse(line.startswith("fake-line"), line)

    def test_a_reset_flood_is_summed_up_not_logged_one_by_one(self):
        import struct
        t = self.tokend(key=None, args=["--log-level", "debug"])
        started = time.time()
        n = 0
        while time.time() - started < 2:
            s = socket.create_connection(("127.0.0.1", t.port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            n += 1
        time.sleep(1.2)
        lines = [l for l in t.log.splitlines() if "http" in l and "access" not in l]
        self.assertGreater(n, 200)
        self.assertLess(len(lines), 30, f"{n} resets gave {len(lines)} lines")

    def test_retry_after_is_clamped(self):
        fake = self.fake(fault="429")
        t = self.tokend(fake=fake)
        for given, wanted in [("9223372036854775807", "3600"), ("0", "1"), ("120", "120"),
                              ("Wed, 21 Oct 2015 07:28:00 GMT", "1"), ("soon", None)]:
            with self.subTest(given):
                fake.control(retry_after=given)
                r = t.get("/token")
                self.assertEqual(r.status, 503)
                self.assertEqual(r.headers.get("retry-after"), wanted)

    def test_no_scheme_relative_redirect(self):
        os.makedirs(os.path.join(self.workdir, "site", "sub"))
        self.write("site/sub/index.html", "sub")
        t = self.tokend(key=None, public=os.path.join(self.workdir, "site"))
        for path in ["//sub", "///sub", "/sub"]:
            r = t.get(path)
            self.assertEqual(r.status, 301, path)
            self.assertFalse(r.headers["location"].startswith("//"), r.headers["location"])
            self.assertEqual(r.headers["location"], "/sub/")

    def test_head_mints_nothing(self):
        fake = self.fake()
        t = self.tokend(fake=fake)
        r = t.get("/token", method="HEAD")
        self.assertEqual((r.status, r.body), (200, b""))
        self.assertEqual(fake.stats()["requests"], 0, "HEAD /token mints no token")
        self.assertEqual(t.get("/healthz", method="HEAD").status, 200)

    def test_the_page_has_a_content_security_policy(self):
        fake = self.fake()
        t = self.tokend(fake=fake)
        csp = t.get("/").headers.get("content-security-policy", "")
        self.assertIn("default-src 'self'", csp)
        self.assertIn("frame-ancestors 'none'", csp)
        self.assertIn(f"connect-src 'self' ws://127.0.0.1:{fake.port}", csp, "the streaming socket's origin")
        self.assertNotIn("content-security-policy", t.get("/app.js").headers, "HTML only")


JWT_ATTACKS = r'''
local tokend = require "tokend"
local cjson = require "cjson"
local function read(path) local f = assert(io.open(path)) local s = f:read("a") f:close() return s end
local function answer(claims, err, kind) return 200, { sub = claims and claims.sub, err = err, kind = kind } end
local PEM = { a = read(tokend.env("A_PUB")), b = read(tokend.env("B_PUB")) }
local JWK = { a = cjson.decode(tokend.env("A_JWK")), b = cjson.decode(tokend.env("B_JWK")) }
local SECRET = { a = "secret of tenant a", b = "secret of tenant b" }
-- One options table for every tenant, as a script serving many might write it.
local SHARED = { issuer = false, audience = false }
local SET = { keys = { keys = { JWK.a } }, issuer = false, audience = false }
local BY_SECRET = {}
local ALGS = { keys = PEM.a, issuer = false, audience = false }
local EC = { keys = { read(tokend.env("EC256_PUB")), read(tokend.env("EC384_PUB")) }, issuer = false, audience = false }
tokend.route("POST", "/tenant/:t", function(req)
  SHARED.keys = PEM[req.params.t]
  return answer(tokend.jwt.verify(req.body, SHARED))
end)
tokend.route("POST", "/in-place/:t", function(req)
  SET.keys.keys[1] = JWK[req.params.t]
  return answer(tokend.jwt.verify(req.body, SET))
end)
tokend.route("POST", "/secret/:t", function(req)
  BY_SECRET.secret = SECRET[req.params.t]
  return answer(tokend.jwt.verify(req.body, BY_SECRET))
end)
tokend.route("POST", "/algorithms/:alg", function(req)
  ALGS.algorithms = { req.params.alg }
  return answer(tokend.jwt.verify(req.body, ALGS))
end)
tokend.route("POST", "/ec", function(req) return answer(tokend.jwt.verify(req.body, EC)) end)
tokend.route("POST", "/hs", function(req) return answer(tokend.jwt.verify(req.body, { secret = SECRET.a })) end)
'''


def hs256_text(secret, header, payload):
    """An HS256 JWT of payload as given (JSON text a serializer would not write)."""
    import base64
    import hashlib
    import hmac
    part = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    signing_input = f"{part(json.dumps(header).encode())}.{part(payload.encode())}"
    return f"{signing_input}.{part(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest())}"


class JwtAttacks(TokendTestCase):
    """Tokens made to pass tokend.jwt.verify when they must not: each row is (what, route,
    token, the sub it gets or the kind of failure). Every refused token has an honest twin
    that passes, so no row passes by refusing everything."""

    def test_tokens_that_must_not_pass(self):
        import sys
        import tempfile
        sys.path.insert(0, os.path.join(SRC, "tests", "fakes"))
        from idp import KeySet, b64url, ecdsa_flip_s
        a = KeySet(tempfile.mkdtemp(dir=self.workdir), kinds=("rsa", "ec256", "ec384"))
        b = KeySet(tempfile.mkdtemp(dir=self.workdir), kinds=("rsa",))
        t = self.tokend(key=None, workers=1, script=self.write("jwt.lua", JWT_ATTACKS), env={
            "A_PUB": a.path("rsa", "pub.pem"), "B_PUB": b.path("rsa", "pub.pem"),
            "A_JWK": json.dumps(a.jwk("rsa", "k")), "B_JWK": json.dumps(b.jwk("rsa", "k")),
            "EC256_PUB": a.path("ec256", "pub.pem"), "EC384_PUB": a.path("ec384", "pub.pem")})
        exp = int(time.time()) + 300
        claims = {"sub": "alice", "exp": exp}
        by_a = a.sign("rsa", "RS256", claims)

        def high_s(token):
            head, payload, sig = token.split(".")
            import base64
            raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
            return f"{head}.{payload}.{b64url(ecdsa_flip_s(raw))}"

        def nul_alg(kind, alg):
            return a.sign(kind, alg, claims, header={"alg": alg + "\u0000junk"}) if kind != "hs" else \
                hs256_text("secret of tenant a", {"alg": alg + "\u0000junk", "typ": "JWT"}, json.dumps(claims))

        hs = lambda payload: hs256_text("secret of tenant a", {"alg": "HS256", "typ": "JWT"}, payload)
        es256, es384 = a.sign("ec256", "ES256", claims), a.sign("ec384", "ES384", claims)
        rows = [
            # Tenant confusion: one options table, its keys set per request.
            ("tenant a's token for tenant a", "/tenant/a", by_a, "alice"),
            ("tenant a's token for tenant b", "/tenant/b", by_a, "bad_signature"),
            ("tenant a's token for tenant a, again", "/tenant/a", by_a, "alice"),
            ("a key set changed in place: a", "/in-place/a", by_a, "alice"),
            ("a key set changed in place: b", "/in-place/b", by_a, "bad_signature"),
            ("tenant a's secret", "/secret/a", hs(json.dumps(claims)), "alice"),
            ("tenant b's secret", "/secret/b", hs(json.dumps(claims)), "bad_signature"),
            ("algorithms allowing RS256", "/algorithms/RS256", by_a, "alice"),
            ("algorithms changed to PS256", "/algorithms/PS256", by_a, "bad_algorithm"),
            # alg compared exactly: what follows a NUL byte counts.
            ("HS256 followed by a NUL", "/hs", nul_alg("hs", "HS256"), "bad_algorithm"),
            ("ES256 followed by a NUL", "/ec", nul_alg("ec256", "ES256"), "bad_algorithm"),
            # ECDSA malleability: (r, n - s) is as valid as (r, s); only the low form counts.
            ("ES256, low s", "/ec", es256, "alice"),
            ("ES256, the same signature with a high s", "/ec", high_s(es256), "bad_signature"),
            ("ES384, low s", "/ec", es384, "alice"),
            ("ES384, the same signature with a high s", "/ec", high_s(es384), "bad_signature"),
            # NumericDate: a JSON number and nothing else; NaN would never expire.
            ("exp a number", "/hs", hs(f'{{"sub": "alice", "exp": {exp}}}'), "alice"),
            ("exp NaN", "/hs", hs('{"sub": "alice", "exp": NaN}'), "malformed"),
            ("exp Infinity", "/hs", hs('{"sub": "alice", "exp": Infinity}'), "malformed"),
            ("nbf -Infinity", "/hs", hs(f'{{"sub": "alice", "exp": {exp}, "nbf": -Infinity}}'), "malformed"),
            ("exp 1e999", "/hs", hs('{"sub": "alice", "exp": 1e999}'), "malformed"),
            ("exp in hex", "/hs", hs('{"sub": "alice", "exp": 0x7fffffff}'), "malformed"),
            ("exp a string", "/hs", hs(f'{{"sub": "alice", "exp": "{exp}"}}'), "malformed"),
            ("nbf NaN", "/hs", hs(f'{{"sub": "alice", "exp": {exp}, "nbf": NaN}}'), "malformed"),
        ]
        for name, path, token, expected in rows:
            with self.subTest(name):
                j = t.get(path, method="POST", body=token).json()
                self.assertEqual(j.get("sub") or j.get("kind"), expected, j)


class ForwardProxy:
    """An HTTP forward proxy on loopback that records what it is asked and passes plain
    requests to the token fake."""

    def __init__(self, fake_port):
        import threading
        self.requests = []
        self.fake_port = fake_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(4096)
                if not chunk:
                    break
                data += chunk
            line = data.split(b"\r\n", 1)[0].decode("latin-1")
            self.requests.append(line)
            target = line.split(" ")[1]
            path = "/" + target.split("/", 3)[3] if target.startswith("http") else target
            rest = data.split(b"\r\n", 1)[1]
            upstream = socket.create_connection(("127.0.0.1", self.fake_port))
            upstream.sendall(f"GET {path} HTTP/1.1\r\n".encode() + rest.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
            answer = b""
            while True:
                chunk = upstream.recv(65536)
                if not chunk:
                    break
                answer += chunk
            upstream.close()
            c.sendall(answer.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
            c.close()

    def close(self):
        self.sock.close()


if __name__ == "__main__":
    unittest.main()
