-- examples/cqueues.lua: tokend inside a cqueues application. One coroutine of the
-- application's controller drives tokend: it waits for server:fd() to be readable, or for
-- server:timeout() milliseconds, then calls server:step(0). A token is minted in the
-- background by a tokend timer, whose coroutine yields while AssemblyAI answers: the
-- application's other coroutines never wait for it.
--
--   ASSEMBLYAI_API_KEY=... lua5.4 examples/cqueues.lua [PORT]   (Debian: apt install lua-cqueues)
local cqueues = require "cqueues"
local signal = require "cqueues.signal"
local tokend = require "tokend"

tokend.route("GET", "/hello", function() return 200, "hello from a cqueues application" end)
local server = assert(tokend.server{ port = tonumber(arg[1]) or 8000 })
print(("listening on http://127.0.0.1:%d"):format(server:port()))
io.stdout:flush()

local cq = cqueues.new()
local running = true

-- tokend's work: when its descriptor is readable, or its next deadline comes.
cq:wrap(function()
  local pollable = { pollfd = server:fd(), events = "r" }
  while running do
    local ms = server:timeout()            -- nil: nothing due later
    cqueues.poll(pollable, ms and ms / 1000 or 1)
    assert(server:step(0))
  end
end)

-- The application's own work goes on meanwhile: a tick every 50 ms.
local ticks = 0
cq:wrap(function()
  while running do cqueues.sleep(0.05); ticks = ticks + 1 end
end)

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

-- SIGINT/SIGTERM stop.
signal.block(signal.SIGINT, signal.SIGTERM)
cq:wrap(function()
  signal.listen(signal.SIGINT, signal.SIGTERM):wait()
  running = false
  server:stop()
end)

assert(cq:loop())
server:close()
