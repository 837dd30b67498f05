-- examples/luv.lua: tokend inside a luv (libuv) application. The application's loop
-- drives tokend's: it polls server:fd() and calls server:step(0) when the descriptor is
-- readable or server:timeout() milliseconds have passed. A token is minted in the
-- background by a tokend timer, whose coroutine yields while AssemblyAI answers: the
-- application's loop never blocks.
--
--   ASSEMBLYAI_API_KEY=... lua5.4 examples/luv.lua [PORT]     (Debian: apt install lua-luv)
local uv = require "luv"
local tokend = require "tokend"

tokend.route("GET", "/hello", function() return 200, "hello from a luv application" end)
local server = assert(tokend.server{ port = tonumber(arg[1]) or 8000 })
print(("listening on http://127.0.0.1:%d"):format(server:port()))
io.stdout:flush()

-- tokend's work: when its descriptor is readable, or its next deadline comes.
local poll, deadline = uv.new_poll(server:fd()), uv.new_timer()
local function step()
  assert(server:step(0))
  local ms = server:timeout()              -- nil: nothing due later
  deadline:stop()
  if ms then deadline:start(ms, 0, step) end
end
poll:start("r", step)

-- The application's own work goes on meanwhile: a tick every 50 ms.
local ticks = 0
uv.new_timer():start(50, 50, function() ticks = ticks + 1 end)

-- Minting without blocking: tokend.timer.after runs the function on tokend's loop.
tokend.timer.after(0, function()
  local started = ticks
  local token, info, _, failure = tokend.generate_temp_token(60)
  if token then
    print(("minted in the background (%d s), the application ticked %d times meanwhile"):format(
      info.expires_in_seconds, ticks - started))
  else
    print("could not mint: " .. failure.kind)
  end
  io.stdout:flush()
end)
step()                                     -- the timer above is due: tell the loop

local function stop() server:stop(); server:close(); uv.stop() end
uv.new_signal():start("sigint", stop)
uv.new_signal():start("sigterm", stop)
uv.run()
