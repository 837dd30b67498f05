"""The Lua API, through routes scripts written by the tests."""
import os
import unittest

from harness import TokendTestCase

SCRIPT = r'''
local tokend = require "tokend"
local cjson = require "cjson"

tokend.before(function(req)
  if req.headers["x-block"] then return 403, { error = "blocked by policy" } end
end)

tokend.route("GET", "/hello/:name", function(req)
  return 200, "hello " .. req.params.name
end)

tokend.route("post", "/echo/:a/:b", function(req)
  return 201, {
    method = req.method, path = req.path, query = req.query, params = req.params,
    headers = req.headers, body = req.body, remote_addr = req.remote_addr,
  }, { ["X-Custom"] = "yes", ["X-Number"] = 42 }
end)

tokend.route("GET", "/token30", function(req)
  local token, info = tokend.generate_temp_token(30, { max_session_duration_seconds = 120 })
  return 200, { token = token, expires = info.expires_in_seconds }
end)

tokend.route("GET", "/two-tokens", function(req)
  local a = tokend.generate_temp_token(10)
  local ok, b = pcall(tokend.generate_temp_token, 20)
  return 200, { a = a, b = b, ok = ok }
end)

local bad_args = {
  str = { "x" }, zero = { 0 }, big = { 601 }, frac = { 1.5 }, none = {},
  lowmax = { 60, { max_session_duration_seconds = 59 } },
  highmax = { 60, { max_session_duration_seconds = 10801 } },
  unknown = { 60, { foo = 1 } }, opts = { 60, "x" },
}
tokend.route("GET", "/badarg/:what", function(req)
  local ok, err = pcall(tokend.generate_temp_token, table.unpack(bad_args[req.params.what]))
  return 200, { ok = ok, err = tostring(err) }
end)

tokend.route("GET", "/in-coroutine", function()
  local co = coroutine.wrap(function() return tokend.generate_temp_token(60) end)
  local ok, err = pcall(co)
  return 200, { ok = ok, err = tostring(err) }
end)

tokend.route("GET", "/config", function()
  local t = {}
  for k, v in pairs(tokend.config) do t[k] = v end
  t.write_ok = pcall(function() tokend.config.port = 1 end)
  t.env_key = os.getenv("ASSEMBLYAI_API_KEY") or "absent"
  t.late_route_ok = pcall(tokend.route, "GET", "/late", function() end)
  return 200, t
end)

tokend.route("GET", "/boom", function() error("kaboom") end)
tokend.route("GET", "/bad-status", function() return "teapot" end)
tokend.route("GET", "/no-status", function() end)
tokend.route("GET", "/bad-body", function() return 200, function() end end)
tokend.route("GET", "/bad-header", function() return 200, "x", { ["X-Evil"] = "a\r\nSet-Cookie: x" } end)
tokend.route("GET", "/yield", function() coroutine.yield() end)
tokend.route("GET", "/loop", function() while true do end end)
tokend.route("GET", "/alloc", function()
  local t = {}
  while true do t[#t + 1] = string.rep("x", 4096) .. #t end
end)
tokend.route("GET", "/log", function()
  tokend.log.warn("from", "lua", 42, nil)
  return 204
end)
tokend.route("GET", "/array", function() return 200, { 1, 2, 3 } end)
tokend.route("GET", "/typed", function()
  return 200, "<b>hi</b>", { ["Content-Type"] = "text/html" }
end)

tokend.static("/files", FILES_DIR)
'''


class LuaApi(TokendTestCase):
    def setUp(self):
        super().setUp()
        self.write("files/a.txt", "file a")
        script = SCRIPT.replace("FILES_DIR", repr(os.path.join(self.workdir, "files")))
        self.fake_ = self.fake()
        self.t = self.tokend(fake=self.fake_, script=self.write("routes.lua", script),
                             env={"TOKEND_LUA_INSTRUCTIONS": "2000000", "TOKEND_LUA_MEMORY_MB": "24"})

    def test_params_and_string_body(self):
        r = self.t.get("/hello/ada")
        self.assertEqual((r.status, r.body), (200, b"hello ada"))
        self.assertEqual(r.headers["content-type"], "text/plain; charset=utf-8")
        self.assertEqual(self.t.get("/hello/%C3%A9").body, "hello é".encode())
        # Segments are split before they are decoded: an escaped slash stays in its parameter.
        r = self.t.get("/echo/u1/r%2F2", method="POST")
        self.assertEqual((r.status, r.json()["params"]), (201, {"a": "u1", "b": "r/2"}))
        self.assertEqual(r.json()["path"], "/echo/u1/r/2")
        self.assertEqual(self.t.get("/hello/a%2Fb").body, b"hello a/b")
        self.assertEqual(self.t.get("/hello%2Fada").status, 404)

    def test_request_fields(self):
        r = self.t.get("/echo/x/y%20z?q=1&w=two+words&q=2&flag", method="POST",
                       headers={"X-Mixed-Case": "v1", "x-mixed-case": "v2"}, body="payload")
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.headers["x-custom"], "yes")
        self.assertEqual(r.headers["x-number"], "42")
        j = r.json()
        self.assertEqual(j["method"], "POST")
        self.assertEqual(j["path"], "/echo/x/y z")
        self.assertEqual(j["params"], {"a": "x", "b": "y z"})
        self.assertEqual(j["query"], {"q": "1", "w": "two words", "flag": ""})
        self.assertEqual(j["headers"]["x-mixed-case"], "v1, v2")
        self.assertEqual(j["headers"]["content-length"], "7")
        self.assertEqual(j["body"], "payload")
        self.assertEqual(j["remote_addr"], "127.0.0.1")

    def test_generate_temp_token_options(self):
        r = self.t.get("/token30")
        self.assertEqual(r.status, 200, self.t.log)
        self.assertEqual(r.json()["expires"], 30)
        self.assertEqual(self.fake_.stats()["last_query"],
                         {"expires_in_seconds": "30", "max_session_duration_seconds": "120"})
        j = self.t.get("/two-tokens").json()
        self.assertTrue(j["ok"])
        self.assertNotEqual(j["a"], j["b"])

    def test_bad_arguments_raise(self):
        for what, needle in [("str", "number expected"), ("zero", "between 1 and 600"), ("big", "between 1 and 600"),
                             ("frac", "no integer representation"), ("none", "number expected"),
                             ("lowmax", "between 60 and 10800"), ("highmax", "between 60 and 10800"),
                             ("unknown", "unknown option"), ("opts", "table expected")]:
            with self.subTest(what=what):
                j = self.t.get(f"/badarg/{what}").json()
                self.assertFalse(j["ok"])
                self.assertIn("bad argument", j["err"])
                self.assertIn(needle, j["err"])
        j = self.t.get("/in-coroutine").json()
        self.assertFalse(j["ok"])
        self.assertIn("must be called from a request handler", j["err"])

    def test_config_is_read_only_and_keyless(self):
        j = self.t.get("/config").json()
        self.assertEqual(j["websocket_url"], f"ws://127.0.0.1:{self.fake_.port}/v3/ws")
        self.assertEqual(j["token_url"], f"http://127.0.0.1:{self.fake_.port}/v3/token")
        self.assertEqual(j["port"], self.t.port)
        self.assertIs(j["api_key_configured"], True)
        self.assertFalse(j["write_ok"])
        self.assertFalse(j["late_route_ok"])
        self.assertEqual(j["env_key"], "absent")
        self.assertNotIn("api_key", j)

    def test_handler_failures_answer_500_and_log(self):
        for path, logged in [("/boom", "kaboom"), ("/bad-status", "invalid HTTP status"),
                             ("/no-status", "returned no status"), ("/bad-body", "function body"),
                             ("/bad-header", "bad name or value"), ("/yield", "yielded outside"),
                             ("/loop", "instruction limit exceeded"), ("/alloc", "not enough memory")]:
            with self.subTest(path=path):
                r = self.t.get(path)
                self.assertEqual(r.status, 500, r)
                self.assertEqual(r.json(), {"error": "internal server error"})
                self.assertNotIn(b"kaboom", r.body)
                self.assertIn(logged, self.t.wait_log(logged))
        self.assertIn("stack traceback", self.t.wait_log("stack traceback"))
        self.assertRegex(self.t.wait_log("stack traceback"), r"routes\.lua:\d+: kaboom")
        self.assertEqual(self.t.get("/hello/still").status, 200, "the server keeps serving")

    def test_before_hook_runs_for_routes_and_static(self):
        self.assertEqual(self.t.get("/files/a.txt").body, b"file a")
        for path in ["/files/a.txt", "/hello/x", "/nowhere"]:
            r = self.t.get(path, headers={"X-Block": "1"})
            self.assertEqual(r.status, 403, path)
            self.assertEqual(r.json(), {"error": "blocked by policy"})
        self.assertEqual(self.t.get("/nowhere").status, 404)

    def test_log_and_bodies(self):
        self.assertEqual(self.t.get("/log").status, 204)
        self.assertRegex(self.t.wait_log("from lua 42"), r"warn\s+from lua 42 nil")
        self.assertEqual(self.t.get("/array").json(), [1, 2, 3])
        r = self.t.get("/typed")
        self.assertEqual(r.headers["content-type"], "text/html")


class ScriptChangesBehaviour(TokendTestCase):
    def test_edited_expiry_policy_without_recompiling(self):
        fake = self.fake()
        t = self.tokend(fake=fake, policy={"DEFAULT_EXPIRES_IN": 45, "MAX_EXPIRES_IN": 90})
        self.assertEqual(t.get("/token").json()["expires_in_seconds"], 45)
        self.assertEqual(t.get("/token?expires_in_seconds=500").json()["expires_in_seconds"], 90)

    def test_a_new_route(self):
        fake = self.fake()
        script = self.write("routes.lua", 'local tokend = require "tokend"\n'
                            'tokend.route("GET", "/v2/session", function(req)\n'
                            '  local token = assert(tokend.generate_temp_token(15))\n'
                            '  return 200, { session_token = token, region = "test" }\n'
                            'end)\n')
        t = self.tokend(fake=fake, script=script)
        j = t.get("/v2/session").json()
        self.assertEqual(j["region"], "test")
        self.assertEqual(j["session_token"].count("."), 2)
        self.assertEqual(t.get("/token").status, 404)
        self.assertEqual(t.get("/").status, 404, "no static mount in this script")


# No before hook: handlers run directly on their coroutine, which is reused once it ends.
REUSE_SCRIPT = r'''
local tokend = require "tokend"
local runs = setmetatable({}, { __mode = "k" })    -- coroutine -> handlers it ran
tokend.route("GET", "/who", function(req, ...)
  local co = coroutine.running()
  runs[co] = (runs[co] or 0) + 1
  return 200, { runs = runs[co], q = req.query.q, extra = select("#", ...) }
end)
tokend.route("GET", "/token-then-boom", function()
  assert(tokend.generate_temp_token(60))
  error("after the token")
end)
tokend.route("GET", "/yield", function() coroutine.yield() end)
tokend.route("GET", "/loop", function() while true do end end)
local kept
tokend.route("GET", "/keep", function()
  kept = coroutine.running()
  coroutine.yield()
  return 200, { token = (tokend.generate_temp_token(60)) }
end)
tokend.route("GET", "/resume-kept", function()
  local ok, err = coroutine.resume(kept)
  return 200, { ok = ok, err = tostring(err) }
end)
'''


class ReusedCoroutines(TokendTestCase):
    def test_a_reused_coroutine_starts_clean_and_keeps_its_limits(self):
        t = self.tokend(fake=self.fake(), workers=1, script=self.write("routes.lua", REUSE_SCRIPT),
                        env={"TOKEND_LUA_INSTRUCTIONS": "2000000"})
        runs = []
        for i in range(10):
            r = t.get(f"/who?q={i}")
            self.assertEqual(r.status, 200, r)
            self.assertEqual((r.json()["q"], r.json()["extra"]), (str(i), 0), "the handler gets req only")
            runs.append(r.json()["runs"])
        self.assertEqual(runs, list(range(1, 11)), "one worker, one coroutine, reused")
        for path in ["/loop", "/token-then-boom", "/yield"]:    # /loop runs on that coroutine
            self.assertEqual(t.get(path).status, 500, path)
            r = t.get("/who")
            self.assertEqual((r.status, r.json()["runs"]), (200, 1), "a failed coroutine is not reused")
        # A script that kept an ended request's coroutine and resumes it is outside any
        # request there.
        self.assertEqual(t.get("/keep").status, 500)
        r = t.get("/resume-kept").json()
        self.assertFalse(r["ok"])
        self.assertIn("must be called from a request handler", r["err"])
        self.assertIn("instruction limit exceeded", t.wait_log("instruction limit exceeded"))
        self.assertIn("after the token", t.wait_log("after the token"))



if __name__ == "__main__":
    unittest.main()
