"""The Lua API, through routes scripts written by the tests: each case a block (blocks.py)."""
import unittest

from blocks import PORT, Block, Get, run_blocks
from harness import TokendTestCase

# Limits low enough for the runaway cases below to end quickly.
LIMITS = {"TOKEND_LUA_INSTRUCTIONS": "2000000", "TOKEND_LUA_MEMORY_MB": "24"}

ECHO = """
tokend.route("post", "/echo/:a/:b", function(req)
  return 201, {
    method = req.method, path = req.path, query = req.query, params = req.params,
    headers = req.headers, body = req.body, remote_addr = req.remote_addr,
  }, { ["X-Custom"] = "yes", ["X-Number"] = 42 }
end)
"""

HELLO = """
tokend.route("GET", "/hello/:name", function(req) return 200, "hello " .. req.params.name end)
"""

BAD_ARGS = [("str", "number expected"), ("zero", "between 1 and 600"), ("big", "between 1 and 600"),
            ("frac", "no integer representation"), ("none", "number expected"),
            ("lowmax", "between 60 and 10800"), ("highmax", "between 60 and 10800"),
            ("unknown", "unknown option"), ("opts", "table expected")]

FAILURES = """
tokend.route("GET", "/boom", function() error("kaboom") end)
tokend.route("GET", "/bad-status", function() return "teapot" end)
tokend.route("GET", "/no-status", function() end)
tokend.route("GET", "/bad-body", function() return 200, function() end end)
tokend.route("GET", "/bad-header", function() return 200, "x", { ["X-Evil"] = "a\\r\\nSet-Cookie: x" } end)
tokend.route("GET", "/yield", function() coroutine.yield() end)
tokend.route("GET", "/loop", function() while true do end end)
tokend.route("GET", "/alloc", function()
  local t, chunk = {}, string.rep("x", 65536)     -- copies charged 1 instruction per 64 bytes: memory runs out first
  while true do t[#t + 1] = chunk .. #t end
end)
""" + HELLO

BLOCKS = [
    Block("a :name segment is decoded into req.params; a string body is plain text", HELLO + ECHO, [
        Get("/hello/ada", status=200, body="hello ada", header={"content-type": "text/plain; charset=utf-8"}),
        Get("/hello/%C3%A9", body="hello \u00e9"),
        # Segments are split before they are decoded: an escaped slash stays in its parameter.
        Get("/echo/u1/r%2F2", method="POST", status=201, fields={"params": {"a": "u1", "b": "r/2"}, "path": "/echo/u1/r/2"}),
        Get("/hello/a%2Fb", body="hello a/b"),
        Get("/hello%2Fada", status=404),
    ]),
    Block("req holds the method, path, query, params, headers, body and peer", ECHO, [
        Get("/echo/x/y%20z?q=1&w=two+words&q=2&flag", method="POST", send="payload",
            headers={"X-Mixed-Case": "v1", "x-mixed-case": "v2"},
            status=201, header={"x-custom": "yes", "x-number": "42"},
            fields={"method": "POST", "path": "/echo/x/y z", "params": {"a": "x", "b": "y z"},
                    "query": {"q": "1", "w": "two words", "flag": ""},
                    "headers": {"x-mixed-case": "v1, v2", "content-length": "7"},
                    "body": "payload", "remote_addr": "127.0.0.1"}),
    ]),
    Block("generate_temp_token passes its options on; each call mints its own token", """
        tokend.route("GET", "/token30", function(req)
          local token, info = tokend.generate_temp_token(30, { max_session_duration_seconds = 120 })
          return 200, { token = token, expires = info.expires_in_seconds }
        end)
        tokend.route("GET", "/two-tokens", function(req)
          local a = tokend.generate_temp_token(10)
          local ok, b = pcall(tokend.generate_temp_token, 20)
          return 200, { a = a, b = b, ok = ok }
        end)
        """, [
        Get("/token30", status=200, fields={"expires": 30},
            upstream={"expires_in_seconds": "30", "max_session_duration_seconds": "120"}),
        Get("/two-tokens", fields={"ok": True}, verify=lambda r: r.json()["a"] != r.json()["b"]),
    ]),
    Block("bad arguments raise, and a waiting call outside a handler's coroutine raises", """
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
        """, [Get(f"/badarg/{what}", fields={"ok": False}, has=["bad argument", needle]) for what, needle in BAD_ARGS]
        + [Get("/in-coroutine", fields={"ok": False}, has=["must be called from a request handler"])]),
    Block("tokend.config is read-only and holds no key", """
        tokend.route("GET", "/config", function()
          local t = {}
          for k, v in pairs(tokend.config) do t[k] = v end
          t.write_ok = pcall(function() tokend.config.port = 1 end)
          t.env_key = os.getenv("ASSEMBLYAI_API_KEY") or "absent"
          t.late_route_ok = pcall(tokend.route, "GET", "/late", function() end)
          return 200, t
        end)
        """, [
        Get("/config", fields={"websocket_url": "ws://127.0.0.1:{fake_port}/v3/ws",
                               "token_url": "http://127.0.0.1:{fake_port}/v3/token", "port": PORT,
                               "api_key_configured": True, "write_ok": False, "late_route_ok": False,
                               "env_key": "absent"},
            verify=lambda r: "api_key" not in r.json()),
    ]),
    Block("a handler that fails answers 500, logs why with a traceback, and the server goes on", FAILURES, [
        Get(path, status=500, json={"error": "internal server error"}, lacks=["kaboom"], log=logged)
        for path, logged in [("/boom", "kaboom"), ("/bad-status", "invalid HTTP status"),
                             ("/no-status", "returned no status"), ("/bad-body", "function body"),
                             ("/bad-header", "bad name or value"), ("/yield", "yielded outside"),
                             ("/loop", "instruction limit exceeded"), ("/alloc", "not enough memory")]
    ] + [Get("/hello/still", status=200, log="stack traceback", log_re=r"block-\d+\.lua:\d+: kaboom")], env=LIMITS),
    Block("before hooks run first, for routes and static files alike", """
        tokend.before(function(req)
          if req.headers["x-block"] then return 403, { error = "blocked by policy" } end
        end)
        tokend.static("/files", FILES)
        """ + HELLO, [
        Get("/files/a.txt", body="file a"),
        *[Get(path, headers={"X-Block": "1"}, status=403, json={"error": "blocked by policy"})
          for path in ["/files/a.txt", "/hello/x", "/nowhere"]],
        Get("/nowhere", status=404),
    ], files={"a.txt": "file a"}),
    Block("tokend.log writes a line; table bodies are JSON; a handler may set Content-Type", """
        tokend.route("GET", "/log", function()
          tokend.log.warn("from", "lua", 42, nil)
          return 204
        end)
        tokend.route("GET", "/array", function() return 200, { 1, 2, 3 } end)
        tokend.route("GET", "/typed", function() return 200, "<b>hi</b>", { ["Content-Type"] = "text/html" } end)
        """, [
        Get("/log", status=204, log_re=r"warn\s+from lua 42 nil"),
        Get("/array", json=[1, 2, 3]),
        Get("/typed", header={"content-type": "text/html"}),
    ]),
    Block("a new route without recompiling", """
        tokend.route("GET", "/v2/session", function(req)
          local token = assert(tokend.generate_temp_token(15))
          return 200, { session_token = token, region = "test" }
        end)
        """, [
        Get("/v2/session", fields={"region": "test"}, verify=lambda r: r.json()["session_token"].count(".") == 2),
        Get("/token", status=404),
        Get("/", status=404),       # no static mount in this script
    ]),
    Block("the library functions guarded for the budget (lguard.c) behave as Lua's own", """
        tokend.route("GET", "/stdlib", function()
          local bad = {}
          local function check(name, got, want)
            if got ~= want then bad[#bad + 1] = name .. ": " .. tostring(got) .. " ~= " .. tostring(want) end
          end
          local co = coroutine.create(function(a, b)
            check("isyieldable inside", coroutine.isyieldable(), true)
            check("status inside", coroutine.status(coroutine.running()), "running")
            local c = coroutine.yield(a + b)
            error("late " .. c)
          end)
          check("status new", coroutine.status(co), "suspended")
          local ok, v = coroutine.resume(co, 1, 2)
          check("resume values", ok and v, 3)
          check("status yielded", coroutine.status(co), "suspended")
          local ok2, err = coroutine.resume(co, "x")
          check("resume error", ok2, false)
          check("resume error message", tostring(err):match("late x$") ~= nil, true)
          check("status dead", coroutine.status(co), "dead")
          check("dead", select(2, coroutine.resume(co)), "cannot resume dead coroutine")
          check("self", select(2, coroutine.resume(coroutine.running())), "cannot resume non-suspended coroutine")
          check("isyieldable in a handler", coroutine.isyieldable(), true)
          local sum = 0
          for i in coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end) do sum = sum + i end
          check("generator", sum, 6)
          local okw, errw = pcall(coroutine.wrap(function() error("boom") end))
          check("wrap error", okw, false)
          check("wrap error where", tostring(errw):match("%.lua:%d+: boom$") ~= nil, true)
          local closed = false
          local cc = coroutine.create(function()
            local x <close> = setmetatable({}, { __close = function() closed = true end })
            coroutine.yield()
          end)
          coroutine.resume(cc)
          check("close", coroutine.close(cc), true)
          check("close ran __close", closed, true)
          local mt = { __index = function(_, k) return k .. "!" end }
          local t = setmetatable({}, mt)
          check("getmetatable", getmetatable(t), mt)
          check("__index", t.hi, "hi!")
          check("__metatable", getmetatable(setmetatable({}, { __metatable = "locked" })), "locked")
          check("protected", select(2, pcall(setmetatable, setmetatable({}, { __metatable = 1 }), {})),
                "cannot change a protected metatable")
          check("string metatable", getmetatable("").__index, string)
          check("debug.getmetatable", debug.getmetatable(t), mt)
          check("debug.setmetatable", debug.setmetatable(t, nil), t)
          check("__gc refused", pcall(setmetatable, {}, { __gc = true }), false)
          check("a C finalizer's metatable", getmetatable(io.stdout), nil)
          check("rep", ("ab"):rep(3, ","), "ab,ab,ab")
          check("rep 0", ("ab"):rep(0), "")
          check("rep bad", tostring(select(2, pcall(string.rep))):match("bad argument #1 to '[%w.]*rep'") ~= nil, true)
          check("upper", ("abc"):upper(), "ABC")
          check("lower", ("ABC"):lower(), "abc")
          check("reverse", ("abc"):reverse(), "cba")
          check("byte", select("#", ("hello"):byte(1, -1)), 5)
          check("byte 1", ("A"):byte(), 65)
          check("byte -1", ("abc"):byte(-1), 99)
          check("concat", table.concat({ 1, 2, 3 }, "-", 2, 3), "2-3")
          check("concat bad", pcall(table.concat, { {} }), false)
          check("unpack", select("#", table.unpack({ 1, 2, 3 }, 2)), 2)
          local l = { 1, 2, 3 }
          table.insert(l, 1, 0)
          table.insert(l, 9)
          check("insert", table.concat(l, ","), "0,1,2,3,9")
          check("remove", table.remove(l, 1), 0)
          check("remove last", table.remove(l), 9)
          check("move", table.concat(table.move({ 1, 2, 3 }, 1, 3, 2), ","), "1,1,2,3")
          local s = { 3, 1, 2 }
          table.sort(s)
          check("sort", table.concat(s, ","), "1,2,3")
          table.sort(s, function(a, b) return a > b end)
          check("sort with a comparator", table.concat(s, ","), "3,2,1")
          check("utf8.len", utf8.len("h\\u{e9}llo"), 5)
          check("utf8.codepoint", utf8.codepoint("\\u{e9}"), 233)
          return 200, { failed = bad, n = #bad }
        end)
        """, [Get("/stdlib", status=200, json={"failed": {}, "n": 0})]),
]


class LuaApi(TokendTestCase):
    def test_blocks(self):
        run_blocks(self, BLOCKS)


class ScriptChangesBehaviour(TokendTestCase):
    def test_edited_expiry_policy_without_recompiling(self):
        fake = self.fake()
        t = self.tokend(fake=fake, policy={"DEFAULT_EXPIRES_IN": 45, "MAX_EXPIRES_IN": 90})
        self.assertEqual(t.get("/token").json()["expires_in_seconds"], 45)
        self.assertEqual(t.get("/token?expires_in_seconds=500").json()["expires_in_seconds"], 90)


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
