-- app.lua: a Lua application that uses tokend as a library with the stock interpreter:
-- it mints a token directly, defines a route of its own, and serves.
--
--   ASSEMBLYAI_API_KEY=... lua5.4 app.lua [PORT]
local tokend = require "tokend"

-- Outside a server, generate_temp_token blocks until AssemblyAI answers.
local token, info, status, failure = tokend.generate_temp_token(30)
if token then
  print(("minted a token of %d characters, valid for %d s"):format(#token, info.expires_in_seconds))
else
  print(("could not mint a token: %s (%s)"):format(info, failure.kind))
end

local started = os.time()

-- A route of the application's own; inside a handler, minting yields instead of blocking.
tokend.route("GET", "/app/status", function(req)
  return 200, { up_seconds = os.time() - started, client = req.client }
end)

tokend.route("GET", "/app/token", function()
  local t, i, _, f = tokend.generate_temp_token(60, { max_session_duration_seconds = 600 })
  if not t then return 502, { error = f.kind } end
  return 200, { token = t, expires_in_seconds = i.expires_in_seconds,
                websocket_url = tokend.config.websocket_url }, { ["Cache-Control"] = "no-store" }
end)

local server = assert(tokend.server{ port = tonumber(arg[1]) or 8000 })
print(("app listening on http://127.0.0.1:%d"):format(server:port()))
io.stdout:flush()
assert(server:run())       -- until SIGINT or SIGTERM
server:close()
print("app stopped")
