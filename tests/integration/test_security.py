"""Attacks on a running tokend: each test fails if its defence is removed."""
import json
import os
import re
import signal
import socket
import threading
import time
import unittest

from harness import CANARIES, CANARY_KEY, DEFAULT_SCRIPT, SRC, TokendTestCase, request, RSS_IS_TOKENDS
from wsclient import BIN, CLOSE, CONT, PING, TEXT, WsClient, frame



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
        # Each /fill makes 10 MiB with string.rep, charged a budget instruction per byte.
        t = self.tokend(key=None, script=self.write("tables.lua", TABLES_SCRIPT),
                        env={"TOKEND_LUA_INSTRUCTIONS": "100000000"})
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
        if RSS_IS_TOKENDS:
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

    def test_chunked_body_past_the_limit(self):
        # 413 once the body is over, then an orderly close: closing under the client's
        # upload would reset the connection, and the client could lose the answer.
        t = self.tokend(key=None, env={"TOKEND_MAX_BODY_BYTES": "1000"})

        def post(sizes):
            body = b"".join(b"%x\r\n%s\r\n" % (n, b"x" * n) for n in sizes) + b"0\r\n\r\n"
            s = socket.create_connection(("127.0.0.1", t.port))
            s.settimeout(10)
            s.sendall(b"POST /token HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                      b"Connection: close\r\n\r\n")
            for i in range(0, len(body), 4096):
                s.sendall(body[i:i + 4096])
            out = b""
            try:
                while chunk := s.recv(65536):
                    out += chunk
            except ConnectionResetError:
                self.fail(f"reset after {out[:100]!r}")
            finally:
                s.close()
            return out
        for sizes in [[1001], [600, 600], [1000, 1], [4000] * 50]:
            with self.subTest(sum(sizes)):
                answers = responses(post(sizes))
                self.assertEqual([a[0] for a in answers], [413])
                self.assertEqual(answers[0][1]["connection"], "close")
                self.assertEqual(json.loads(answers[0][2]), {"error": "request body too large"})
        self.assertEqual(post([500, 500])[:12], b"HTTP/1.1 405", "within the limit: the route answers")
        # Past 1 MiB more, the upload is cut rather than read for ever.
        s = socket.create_connection(("127.0.0.1", t.port))
        s.settimeout(10)
        s.sendall(b"POST /token HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = 0
        try:
            while sent < 8 << 20:
                s.sendall(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
                sent += 0x10000
        except OSError:
            pass
        self.assertLess(sent, 8 << 20, "the server stopped reading")
        self.assertTrue(closed_by_server(s, 5))
        s.close()
        self.assertIn("POST /token 413", t.wait_log("POST /token 413"))

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
tokend.route("GET", "/upvalues", function()
  -- The original load hides in the text-only one's upvalue: it would take bytecode.
  local got, original = pcall(debug.getupvalue, load, 1)
  local set = pcall(debug.setupvalue, string.format, 1, print)
  local id = pcall(debug.upvalueid, load, 1)
  local x = 1
  local function own() return x end
  local name, value = debug.getupvalue(own, 1)
  return 200, { got = got, original = type(original) == "function" and "function" or tostring(original), set = set,
                id = id, own = name .. "=" .. value }
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
        local ok, name, x = pcall(debug.getupvalue, v, i)    -- a C function's are refused
        if not ok or not name then break end
        visit(x, depth + 1)
      end
    end
    local mt = debug.getmetatable(v)
    if mt then visit(mt, depth + 1) end
    if t == "userdata" then visit(debug.getuservalue(v), depth + 1) end
  end
  local has_registry, registry = pcall(debug.getregistry)   -- refused: it holds the finalizers' metatables
  if has_registry then visit(registry, 0) end
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

    def test_the_upvalues_of_c_functions_are_out_of_reach(self):
        j = self.t.get("/upvalues").json()
        self.assertEqual((j["got"], j["set"], j["id"]), (False, False, False), j)
        self.assertIn("out of scripts' reach", j["original"])
        self.assertEqual(j["own"], "x=1", "a script's own closures are open to it")

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

def raw_exchange(port, data, timeout=5, src=None, family=socket.AF_INET, host="127.0.0.1", reset_ok=True):
    """Sends raw bytes, reads until the server closes or goes quiet; returns (bytes, closed).
    Unless reset_ok, a reset instead of an orderly close is an error."""
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
        assert reset_ok, f"the connection was reset after {out[:200]!r}"
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
    # libmicrohttpd answers these itself, with its header block twice: one answer here.
    ("a malformed Content-Length", b"POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n", 400, True),
    ("an empty Content-Length", b"POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Length:\r\n\r\n", 400, True),
    ("a Content-Length list", b"POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5, 5\r\n\r\nhello", 400, True),
    ("a signed Content-Length", b"POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Length: +5\r\n\r\nhello", 400, True),
    ("a Content-Length past 2^64",
     b"POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413, True),
    # RFC 9112 5.1, 5.2, 2.2 and 3.2: libmicrohttpd lets these through.
    ("an obs-fold line", b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-A: 1\r\n folded\r\n\r\n", 400, True),
    ("a Content-Length folded onto its next line (a smuggled request)",
     b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length:\r\n 44\r\n\r\n"
     b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, True),
    ("a tab-folded line", b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-A: 1\r\n\tfolded\r\n\r\n", 400, True),
    ("a space before the colon", b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length : 5\r\n\r\nhello", 400, True),
    ("a tab before the colon", b"GET /healthz HTTP/1.1\r\nHost\t: localhost\r\n\r\n", 400, True),
    ("a header name that is not a token", b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX(A): 1\r\n\r\n", 400, True),
    ("bare LF line ends", b"GET /healthz HTTP/1.1\nHost: localhost\n\n", 400, True),
    ("a bare LF after the request line", b"GET /healthz HTTP/1.1\nHost: localhost\r\n\r\n", 400, True),
    ("a bare LF after a header", b"GET /healthz HTTP/1.1\r\nHost: localhost\nX-A: 1\r\n\r\n", 400, True),
    ("a bare LF ending the head", b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\n", 400, True),
    ("a bare CR in a value", b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-A: 1\rX-B: 2\r\n\r\n", 400, True),
    ("a NUL in Host", b"GET /healthz HTTP/1.1\r\nHost: localhost\x00.attacker.example\r\n\r\n", 400, True),
    ("a NUL ending Host", b"GET /healthz HTTP/1.1\r\nHost: localhost\x00\r\n\r\n", 400, True),
    ("a NUL in another header", b"GET /healthz HTTP/1.1\r\nX-A: a\x00b\r\nHost: localhost\r\n\r\n", 400, True),
    ("two Host headers", b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: attacker.example\r\n\r\n", 400, True),
    ("two equal Host headers", b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nhost: localhost\r\n\r\n", 400, True),
    ("HTTP/1.1 without Host", b"GET /healthz HTTP/1.1\r\nX-A: 1\r\n\r\n", 400, True),
    ("HTTP/1.0 without Host is served", b"GET /healthz HTTP/1.0\r\n\r\n", 200, True),
    ("40 header lines are fine", b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" +
     b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 50) for i in range(40)) + b"\r\n", 200, False),
    ("empty values and tabs are fine", b"GET /healthz HTTP/1.1\r\nHost:localhost\r\nX-A:\r\nX-B: \t\r\n"
     b"X-C:\t1 \t2\t\r\n\r\n", 200, False),
]


class Findings(TokendTestCase):
    def test_raw_requests(self):
        fake = self.fake()
        t = self.tokend(fake=fake)
        for name, data, status, closes in RAW_REQUESTS:
            with self.subTest(name):
                started = time.time()
                out, closed = raw_exchange(t.port, data, reset_ok=False)
                answers = responses(out)
                self.assertEqual([a[0] for a in answers], [status], out[:300])
                self.assertEqual(out.count(b"HTTP/1.1 "), 1, f"one status line: {out[:300]!r}")
                self.assertLess(time.time() - started, 3, "answered at once")
                headers = answers[0][1]
                self.assertEqual(headers.get("x-content-type-options"), "nosniff")
                if status >= 400:
                    self.assertEqual(headers.get("content-type"), "application/json")
                if closes:
                    self.assertTrue(closed, "the connection is closed after the refusal")
        self.assertEqual(fake.stats()["requests"], 0, "no request above reached the upstream")
        # Requests after the first on a connection (libmicrohttpd moves them in its buffer)
        # are checked the same way: well-formed ones served, the rest refused.
        ok = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        out, _ = raw_exchange(t.port, ok * 3)
        self.assertEqual([a[0] for a in responses(out)], [200] * 3)
        out, closed = raw_exchange(t.port, ok + b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n folded\r\n\r\n" + ok)
        self.assertEqual(([a[0] for a in responses(out)], closed), ([200, 400], True))

    def test_malformed_content_length_among_other_heads(self):
        # The refusal goes to the request whose head just ended, not to another one whose
        # head is still coming, on this worker.
        t = self.tokend(key=None, workers=1, args=["--log-level", "debug"])
        a, b = (socket.create_connection(("127.0.0.1", t.port)) for _ in range(2))
        for s in (a, b):
            s.settimeout(5)
        a.sendall(b"POST /token HTTP/1.1\r\nHost: localhost\r\n")
        time.sleep(0.2)
        b.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.2)
        a.sendall(b"Content-Length: 1x\r\n\r\n")
        out = b""
        while chunk := a.recv(65536):
            out += chunk
        self.assertEqual([(r[0], json.loads(r[2])) for r in responses(out)],
                         [(400, {"error": "malformed Content-Length header"})])
        b.sendall(b"Host: localhost\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := b.recv(65536):
            out += chunk
        self.assertEqual([r[0] for r in responses(out)], [200])
        a.close()
        b.close()
        self.assertIn("access 127.0.0.1 - - 400", t.wait_log("access 127.0.0.1 - - 400"))

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

    def test_forwarded_for_past_the_line_limit(self):
        # Behind HAProxy (option forwardfor), each proxy adds its line at the end: a client
        # sending 32 lines of its own once made tokend fall back to the proxy's address,
        # giving the client a second bucket and naming the proxy in the logs.
        script = self.write("routes.lua", CLIENT_ECHO + open(DEFAULT_SCRIPT).read()
                            .replace('local tokend = require "tokend"', "", 1))
        t = self.tokend(fake=self.fake(), script=script, policy={"TOKEN_BURST": 1},
                        env={"TOKEND_TRUSTED_PROXIES": "127.0.0.1"})

        def get(path, lines):
            head = "".join(f"X-Forwarded-For: {line}\r\n" for line in lines)
            out, _ = raw_exchange(t.port, f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{head}\r\n".encode())
            return responses(out)[0]
        own = [f"203.0.113.{k}" for k in range(32)]
        self.assertEqual(get("/token", ["198.51.100.1"])[0], 200)
        self.assertEqual(get("/token", own + ["198.51.100.1"])[0], 429, "33 lines: the same client, the same bucket")
        self.assertEqual(get("/token", own * 3 + ["127.0.0.1"] * 5 + ["198.51.100.1"])[0], 429)
        for lines, client in [(own + ["198.51.100.2"], "198.51.100.2"),
                              (own + ["6.6.6.6, 198.51.100.3", "127.0.0.1"], "198.51.100.3"),
                              (["127.0.0.1"] * 40 + ["198.51.100.4"], "198.51.100.4")]:
            self.assertEqual(json.loads(get("/who", lines)[2])["client"], client)
        log = t.wait_log("access 198.51.100.1 GET /token 429")
        self.assertEqual(len(re.findall(r"access 198\.51\.100\.1 GET /token 429", log)), 2, log)
        self.assertNotIn("access 127.0.0.1", log, "the proxy is never taken for the client")

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


FORWARDING_SCRIPT = r'''
local tokend = require "tokend"
local cjson = require "cjson"
local BACKEND = tokend.env("BACKEND")
-- Forwards the client's headers as they are: what a script may well do.
tokend.route("POST", "/forward", function(req)
  local res, err = tokend.http.request(BACKEND .. "/echo", { method = "POST", headers = req.headers,
                                                             body = "prefix:" .. req.body })
  return 200, res and cjson.decode(res.body) or { err = err }
end)
tokend.route("GET", "/headers", function(req) return 200, req.headers end)
'''


class ForwardedHeaders(TokendTestCase):
    """A script forwarding a client's headers to its backend over the worker's kept-alive
    connection: framing and hop-by-hop headers must not reach it."""

    def test_framing_and_hop_by_hop_headers_are_dropped(self):
        import sys
        sys.path.insert(0, os.path.join(SRC, "tests", "fakes"))
        from backend import Backend
        backend = Backend()
        self.addCleanup(backend.stop)
        t = self.tokend(key=None, script=self.write("forward.lua", FORWARDING_SCRIPT), env={"BACKEND": backend.url})
        for i in range(3):
            # Content-Length: 1 forwarded with a longer body would leave "refix:x" on the
            # backend connection as the start of the next request.
            out, _ = raw_exchange(t.port, b"POST /forward HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n"
                                  b"Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nKeep-Alive: timeout=99\r\n"
                                  b"TE: trailers\r\nX-Mine: %d\r\n\r\nx" % i)
            echo = json.loads(responses(out)[0][2])
            self.assertEqual(echo["body"], "prefix:x", echo)
            self.assertEqual(echo["headers"].get("content-length"), "8", "libcurl frames the body itself")
            for name in ["connection", "upgrade", "keep-alive", "te", "transfer-encoding"]:
                self.assertNotIn(name, echo["headers"])
            self.assertEqual(echo["headers"]["x-mine"], str(i), "other headers are passed on")
        self.assertEqual(backend.connections, 1, "one kept-alive connection served every call")
        out, _ = raw_exchange(t.port, b"GET /headers HTTP/1.1\r\nHost: localhost\r\nCookie: a=1\r\nCookie: b=2\r\n"
                              b"Accept: x\r\nAccept: y\r\n\r\n")
        headers = json.loads(responses(out)[0][2])
        self.assertEqual((headers["cookie"], headers["accept"]), ("a=1; b=2", "x, y"), "one cookie-string, RFC 6265")


# ---- The instruction budget is final, whatever the script does (issue: finalizers, nested
# coroutines, generators, C library work). Each row loops for ever without its defence. ----

BUDGET_SCRIPT = r'''
local tokend = require "tokend"
SPUN = 0        -- turns of the innermost loops: what a request ran, counted without a clock
local function spin() while true do SPUN = SPUN + 1 end end
local function route(path, fn) tokend.route("GET", path, fn) end
local KiB = ("a"):rep(1024)
local MiB = KiB:rep(1024)

-- Finalizers: Lua runs them with hooks off.
route("/gc-setmetatable", function()
  setmetatable({}, { __gc = spin })
  collectgarbage()
  return 200, "finalized"
end)
route("/gc-getmetatable", function()    -- a C library's metatable, made to call a script's function
  getmetatable(io.stdout).__gc = spin
  io.tmpfile()
  collectgarbage()
  return 200, "finalized"
end)
route("/gc-debug-getmetatable", function()
  debug.getmetatable(io.stdout).__gc = spin
  io.tmpfile()
  collectgarbage()
  return 200, "finalized"
end)
route("/gc-debug-setmetatable", function()
  debug.setmetatable(io.tmpfile(), { __gc = spin })
  collectgarbage()
  return 200, "finalized"
end)
route("/gc-debug-setmetatable-later", function()   -- an object already marked gets a metatable without __gc first
  local mt = {}
  debug.setmetatable(io.tmpfile(), mt)
  mt.__gc = spin
  collectgarbage()
  return 200, "finalized"
end)
route("/gc-registry", function()
  debug.getregistry()["FILE*"].__gc = spin
  io.tmpfile()
  collectgarbage()
  return 200, "finalized"
end)

-- Nested coroutines: the hook suspends the innermost one only; its resumer resumes it again.
local function nest(levels)
  if levels == 0 then return spin end
  local inner = nest(levels - 1)
  return function() local f = coroutine.wrap(inner) while true do f() end end
end
route("/wrap-2", function() nest(2)() end)
route("/wrap-3", function() nest(3)() end)
local function fan(depth)     -- coroutines that each run less than the hook's count
  if depth == 0 then for _ = 1, 200 do SPUN = SPUN + 1 end return end
  for _ = 1, 8 do coroutine.wrap(fan)(depth - 1) end
end
route("/fan", function() while true do fan(6) end end)
route("/resume-pcall-2", function()
  local inner = coroutine.create(spin)
  local outer = coroutine.create(function() while true do pcall(coroutine.resume, inner) end end)
  while true do pcall(coroutine.resume, outer) end
end)

-- Generators: a generator that spends the budget must not end the loop as if it were done.
local function deny_list()
  return coroutine.wrap(function()
    local n = 0
    while true do SPUN = SPUN + 1 if SPUN < 0 then coroutine.yield("blocked") end end
  end)
end
route("/generator-wrap", function()
  for entry in deny_list() do if entry == "blocked" then return 403 end end
  return 200, "allowed"
end)
route("/generator-resume", function()
  local co = coroutine.create(function()
    while true do SPUN = SPUN + 1 if SPUN < 0 then coroutine.yield("blocked") end end
  end)
  while true do
    local ok, entry = coroutine.resume(co)
    if not ok or entry == nil then break end
    if entry == "blocked" then return 403 end
  end
  return 200, "allowed"
end)

-- C library work the count hook does not see.
route("/rep", function() while true do local s = string.rep("x", 1000000) end end)
route("/rep-empty", function() while true do local s = string.rep("", 1000000000) end end)
route("/upper", function() while true do local s = MiB:upper() end end)
route("/reverse", function() while true do local s = MiB:reverse() end end)
route("/concat", function()
  local t = {}
  for i = 1, 2048 do t[i] = KiB end
  while true do local s = table.concat(t) end
end)
route("/dotdot", function() while true do local s = MiB .. MiB end end)
route("/format", function() while true do local s = string.format("%s%s", MiB, MiB) end end)
route("/unpack", function() while true do local n = select("#", table.unpack({}, 1, 200000)) end end)
route("/byte", function() local s = KiB:rep(256) while true do local n = select("#", s:byte(1, -1)) end end)
route("/insert", function()
  local t = {}
  for i = 1, 100000 do t[i] = i end
  while true do table.insert(t, 1, 0) table.remove(t, 1) end
end)
route("/sort", function()
  local t = {}
  for i = 1, 50000 do t[i] = -i end
  while true do table.sort(t) end
end)

-- Work no count sees, stopped by the budget's time: an instruction that copies 200,000
-- values, a C function that hashes 16 MiB.
local function copies(...) while true do local n = select("#", ...) end end
route("/varargs", function() copies(table.unpack({}, 1, 200000)) end)
route("/sha256", function() local s = KiB:rep(16384) while true do tokend.crypto.sha256(s) end end)

-- An audited route's refusal reads req.log.user for the audit line after the answer.
tokend.route("GET", "/audit-spin", function(req)
  setmetatable(req.log, { __index = spin })
  return 403, { error = "refused" }
end, { audit = true })
tokend.route("GET", "/audit-raise", function(req)
  setmetatable(req.log, { __index = function() error("no user here") end })
  return 403, { error = "refused" }
end, { audit = true })

route("/sleep", function() os.execute("sleep 20") return 200, "slept" end)
route("/ok", function() return 200, "still serving" end)
route("/spun", function() local n = SPUN SPUN = 0 return 200, tostring(n) end)
'''

BUDGET_ROWS = ["/gc-setmetatable", "/gc-getmetatable", "/gc-debug-getmetatable", "/gc-debug-setmetatable",
               "/gc-debug-setmetatable-later", "/gc-registry", "/wrap-2", "/wrap-3", "/fan", "/resume-pcall-2", "/generator-wrap", "/generator-resume", "/rep", "/rep-empty", "/upper", "/reverse", "/concat",
               "/dotdot", "/format", "/unpack", "/byte", "/insert", "/sort", "/varargs", "/sha256"]

# What a script does at its top level that, without its defence, runs a looping finalizer
# when a reload closes the state (each attempt is caught: the script loads either way).
RELOAD_SCRIPT = r'''
local tokend = require "tokend"
local function spin() while true do end end
KEPT = {}
pcall(function() setmetatable(KEPT, { __gc = spin }) end)
pcall(function() getmetatable(io.stdout).__gc = spin end)
pcall(function() debug.getmetatable(io.stderr).__gc = spin end)
pcall(function() debug.setmetatable(io.stdin, { __gc = spin }) end)
pcall(function() debug.getregistry()["FILE*"].__gc = spin end)
tokend.route("GET", "/ok", function() return 200, "still serving" end)
'''


def spun_within(budget):
    """The most turns of SPUN = SPUN + 1 (4 instructions) a budget allows: the hook counts a
    thread's instructions in steps of 1,000, so one step may go uncounted."""
    return (budget + 1000) // 4


class BudgetIsFinal(TokendTestCase):
    """Each row ends with a 500, having run no more than its budget (counted by the script,
    not timed), the worker serves the next request, SIGTERM still exits. Timeouts are
    generous (a busy machine); a row whose defence is missing runs for ever or far past its
    budget."""

    def check_rows(self, budget, rows):
        t = self.tokend(key=None, workers=1, script=self.write("routes.lua", BUDGET_SCRIPT),
                        env={"TOKEND_LUA_INSTRUCTIONS": str(budget), "TOKEND_DRAIN_TIMEOUT_S": "2"})
        for path in rows:
            with self.subTest(path):
                r = t.get(path, timeout=60)
                self.assertEqual(r.status, 500, r)
                self.assertLessEqual(int(t.get("/spun", timeout=60).body), spun_within(budget))
                self.assertEqual(t.get("/ok", timeout=60).body, b"still serving")
        self.assertIn("instruction limit exceeded", t.wait_log("instruction limit exceeded"))
        started = time.time()
        self.assertEqual(t.stop(), 0)
        self.assertLess(time.time() - started, 15, "SIGTERM completes within the drain time")
        return t

    def test_hostile_scripts_end_with_500_and_the_worker_serves_on(self):
        t = self.check_rows(1000000, BUDGET_ROWS)
        self.assertIn("__gc metamethods are not available", t.log)
        self.assertIn("ran past their time", t.log, "/varargs")

    def test_an_audited_refusal_reads_req_within_the_budget(self):
        t = self.tokend(key=None, workers=1, script=self.write("routes.lua", BUDGET_SCRIPT),
                        env={"TOKEND_LUA_INSTRUCTIONS": "1000000"})
        for path in ["/audit-spin", "/audit-raise"]:
            with self.subTest(path):
                self.assertEqual(t.get(path, timeout=60).status, 403)
                self.assertEqual(t.get("/ok", timeout=60).body, b"still serving")
                self.assertLessEqual(int(t.get("/spun", timeout=60).body), spun_within(1000000))
        self.assertEqual(t.wait_log("token_refused").count("token_refused"), 2, "both refusals are audited")
        self.assertEqual(t.stop(), 0)

    def test_a_low_budget_ends_nested_coroutines(self):
        # The case: two levels ran more than 90 s at a budget of 1e5.
        self.check_rows(100000, ["/wrap-2", "/wrap-3", "/fan", "/resume-pcall-2", "/generator-wrap", "/generator-resume"])

    def test_a_timer_is_held_to_a_request_s_budget(self):
        script = BUDGET_SCRIPT + '''
local function spin() while true do SPUN = SPUN + 1 end end
tokend.timer.after(0, function() local f = coroutine.wrap(function()
  local g = coroutine.wrap(spin) while true do g() end end) while true do f() end end)
tokend.timer.after(0.2, function() for _ in coroutine.wrap(function() spin() coroutine.yield(1) end) do end end)
'''
        t = self.tokend(key=None, workers=1, script=self.write("routes.lua", script),
                        env={"TOKEND_LUA_INSTRUCTIONS": "100000"})
        def failed():
            return [line for line in t.log.splitlines() if "timer failed" in line and "instruction limit exceeded" in line]
        deadline = time.time() + 30
        while len(failed()) < 2 and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(len(failed()), 2, "both end with the budget's error (the generator's loop does not just end)")
        self.assertEqual(t.get("/ok", timeout=60).body, b"still serving")
        self.assertLessEqual(int(t.get("/spun", timeout=60).body), 2 * spun_within(100000))

    def test_a_reload_closes_the_old_state_without_running_a_script_finalizer(self):
        t = self.tokend(key=None, workers=1, script=self.write("routes.lua", RELOAD_SCRIPT))
        self.assertEqual(t.get("/ok").body, b"still serving")
        t.proc.send_signal(signal.SIGHUP)
        self.assertIn("reloaded", t.wait_log("reloaded", timeout=30))
        for _ in range(3):      # the old state is closed on the worker's next turns
            self.assertEqual(t.get("/ok", timeout=60).body, b"still serving")
        started = time.time()
        self.assertEqual(t.stop(), 0)
        self.assertLess(time.time() - started, 15)

    def test_sigterm_exits_after_the_drain_time_even_if_a_worker_is_stuck(self):
        # os.execute blocks the worker in waitpid: no budget can end that, the shutdown does.
        t = self.tokend(key=None, workers=1, script=self.write("routes.lua", BUDGET_SCRIPT),
                        env={"TOKEND_DRAIN_TIMEOUT_S": "1"})
        def sleep_request():
            try:
                request(t.port, "/sleep", timeout=60)
            except OSError:
                pass        # closed without an answer when tokend exits
        th = threading.Thread(target=sleep_request, daemon=True)
        th.start()
        time.sleep(1)       # the handler is in os.execute
        started = time.time()
        t.proc.send_signal(signal.SIGTERM)
        code = t.wait(timeout=30)
        self.assertLess(time.time() - started, 12, "1 s of drain, a margin, not the script's 20 s")
        self.assertEqual(code, 1)
        self.assertIn("did not stop", t.log)


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


# ---- The session relay (tests/integration/test_relay.py has its flows) ----

RELAY_POLICY = {"TOKENS_PER_MINUTE": 1000000, "TOKEN_BURST": 1000000, "RELAY": "true",
                "RELAY_SESSIONS_PER_CLIENT": 1000}
RELAY_PATH = "/v3/ws?speech_model=universal-streaming-english&sample_rate=16000"

# Handshakes that must not open a session: (name, WsClient arguments, status).
RELAY_HANDSHAKES = [
    ("no key", {"key": False}, 400),
    ("a key of 15 bytes", {"key": "AAAAAAAAAAAAAAAAAAAA"}, 400),
    ("a key that is not base64", {"key": "!!!!!!!!!!!!!!!!!!!!!!=="}, 400),
    ("version 8", {"version": "8"}, 400),
    ("no version", {"version": None}, 400),
    ("no Upgrade", {"upgrade": None}, 400),
    ("Upgrade: h2c", {"upgrade": "h2c"}, 400),
    ("no Connection: Upgrade", {"connection": "keep-alive"}, 400),
    ("HTTP/1.0", {"http": "HTTP/1.0"}, 400),
    ("another site's page (cross-site WebSocket hijacking)", {"origin": "https://evil.example"}, 403),
    ("a sandboxed page (Origin: null)", {"origin": "null"}, 403),
    ("a look-alike origin", {"origin": "http://127.0.0.1.evil.example"}, 403),
    ("an option the policy does not allow", {"path": "/v3/ws?speech_model=whisper-rt"}, 400),
]

# What a hostile client sends once open: (name, bytes, the close code it gets).
RELAY_FRAMES = [
    ("text where audio is expected", lambda: frame(TEXT, b"hello"), 3006),
    ("a message type that does not exist", lambda: frame(TEXT, b'{"type":"Shutdown"}'), 3006),
    ("audio shorter than 50 ms", lambda: frame(BIN, b"\0" * 1598), 3007),
    ("audio longer than 1000 ms", lambda: frame(BIN, b"\0" * 32002), 3007),
    ("half a sample", lambda: frame(BIN, b"\0" * 1601), 3007),
    ("a message past the size limit", lambda: frame(BIN, b"\0" * 100000), 1009),
    ("an unmasked frame", lambda: frame(BIN, b"\0" * 1600, mask=False), 1002),
    ("invalid UTF-8 in text", lambda: frame(TEXT, b"\xc3\x28"), 1007),
    ("a continuation with no start", lambda: frame(CONT, b"\0" * 1600), 1002),
    ("a reserved bit (compression never agreed)", lambda: frame(BIN, b"\0" * 1600, rsv=4), 1002),
    ("an unknown opcode", lambda: frame(3, b"x"), 1002),
    # Broken frames: wslay closes at once, with a close frame that holds no code (1005 to the client).
    ("a control frame of 126 bytes", lambda: frame(PING, b"x" * 126), 1005),
    ("a fragmented ping", lambda: frame(PING, b"x", fin=False), 1005),
    ("a ping flood", lambda: frame(PING, b"x") * 400, 1008),
    ("a close code no one may send", lambda: frame(CLOSE, b"\x03\xed"), 1002),
]


class RelayAttacks(TokendTestCase):
    def setUp(self):
        super().setUp()
        self.fake_ = self.streaming_fake()
        self.t = self.tokend(fake=self.fake_, policy=RELAY_POLICY, args=["--log-level", "debug"])

    def connect(self, **kw):
        c = WsClient(self.t.port, kw.pop("path", RELAY_PATH), **kw)
        self.addCleanup(c.__exit__)
        return c

    def test_handshakes_that_open_nothing(self):
        for name, kw, status in RELAY_HANDSHAKES:
            with self.subTest(name):
                c = self.connect(**kw)
                self.assertEqual(c.status, status, c.body)
                self.assertEqual(c.headers.get("content-type"), "application/json")
        self.assertEqual(self.fake_.stats()["handshakes"], 0, "nothing reached the upstream")

    def test_hostile_frames_get_a_defined_close(self):
        for name, data, code in RELAY_FRAMES:
            with self.subTest(name):
                c = self.connect()
                self.assertEqual(c.recv_json()["type"], "Begin")
                c.send_raw(data())
                self.assertEqual(c.until_closed()[0], code)
        sessions = self.fake_.wait_ended(len(RELAY_FRAMES))
        self.assertEqual([s["frames"] for s in sessions], [0] * len(RELAY_FRAMES), "nothing hostile was relayed")
        self.assertTrue(all(s["terminated"] for s in sessions))
        self.assertEqual(self.t.get("/healthz").status, 200)

    def test_frames_after_a_close_are_not_relayed(self):
        c = self.connect()
        c.recv_json()
        c.send_raw(frame(CLOSE, b"\x03\xe8") + frame(BIN, b"\0" * 1600) + frame(TEXT, b'{"type":"ForceEndpoint"}'))
        self.assertEqual(c.until_closed()[0], 1000)
        up = self.fake_.wait_ended()[0]
        self.assertEqual((up["frames"], up["texts"]), (0, ["Terminate"]))

    def test_an_upstream_that_echoes_the_key_in_messages_and_its_close(self):
        self.fake_.control(mode="echo-key")
        c = self.connect()                      # it fails at once if the key arrives
        self.assertEqual(c.until_closed(), (1008, "[redacted]"))
        self.assertEqual([m["type"] for m in c.messages], ["Begin"], "the Turn and the Error were held back")

    def test_the_key_never_reaches_a_client_or_the_log(self):
        # The upstream refuses and echoes the key in its answer's body, as some servers do.
        for mode in ["refuse-401", "refuse-429", "refuse-500"]:
            self.fake_.control(mode=mode)
            c = self.connect()
            error = c.recv_json()
            self.assertNotIn("Authorization", error["error"])
            c.until_closed()
        self.t.stop()
        self.assertNotIn(CANARY_KEY, self.t.log)
