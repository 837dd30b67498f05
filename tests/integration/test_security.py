"""Attacks on a running tokend: each test fails if its defence is removed."""
import os
import socket
import threading
import time
import unittest

from harness import CANARY_KEY, SRC, TokendTestCase, default_script, request

DEFAULT_SCRIPT = os.path.join(SRC, "scripts", "routes.lua")


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
        t = self.tokend(fake=fake, script=DEFAULT_SCRIPT, workers=2)
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
        t = self.tokend(fake=fake, script=default_script(self.workdir, TOKEN_BURST=1))
        self.assertEqual(t.get("/token", headers={"X-Forwarded-For": "198.51.100.1"}).status, 200)
        self.assertEqual(t.get("/token", headers={"X-Forwarded-For": "198.51.100.2"}).status, 429,
                         "a client cannot pick its own address")

    def test_trusted_proxy_gives_each_client_its_bucket(self):
        fake = self.fake()
        t = self.tokend(fake=fake, script=default_script(self.workdir, TOKEN_BURST=1),
                        env={"TOKEND_TRUSTED_PROXIES": "127.0.0.0/8"})
        for client in ["198.51.100.1", "198.51.100.2"]:
            self.assertEqual(t.get("/token", headers={"X-Forwarded-For": f"6.6.6.6, {client}"}).status, 200)
        self.assertEqual(t.get("/token", headers={"X-Forwarded-For": "198.51.100.1"}).status, 429)
        self.assertIn("access 198.51.100.1 GET /token 429", t.wait_log("access 198.51.100.1 GET /token 429"), "the log names the real client")

    def test_buckets_are_shared_by_workers(self):
        fake = self.fake()
        t = self.tokend(fake=fake, script=default_script(self.workdir, TOKEN_BURST=10), workers=4)
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
        t = self.tokend(fake=self.fake_, script=default_script(
            self.workdir, ALLOWED_ORIGINS='{ "https://app.example.com" }', TOKEN_BURST=100))
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
        extra.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
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
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
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
  for _, name in ipairs({ "ASSEMBLYAI_API_KEY", "API_KEY" }) do env[#env + 1] = os.getenv(name) end
  local p = io.popen("env")
  local child_env = p:read("a"); p:close()
  return 200, { found = found, env = env, child_env_has_key = child_env:find("ASSEMBLYAI_API_KEY", 1, true) ~= nil }
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
        self.t = self.tokend(fake=self.fake_, script=self.write("s/routes.lua", SCRIPT_ATTACKS))

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
        j = self.t.get("/hunt").json()
        self.assertFalse(j["found"], "no string holding the key is reachable")
        self.assertFalse(j["env"], "os.getenv finds no key")
        self.assertFalse(j["child_env_has_key"], "a child process inherits no key")


class KeyNeverLeaks(TokendTestCase):
    def test_upstream_echo_is_redacted_everywhere(self):
        fake = self.fake(fault="401-echo")
        t = self.tokend(fake=fake, args=["--log-level", "debug", "--log-format", "json"])
        r = t.get("/token")
        self.assertEqual(r.status, 502)
        t.stop()
        self.assertIn("[redacted]", t.wait_log("[redacted]"))
        self.assertNotIn(CANARY_KEY, t.log)


if __name__ == "__main__":
    unittest.main()
