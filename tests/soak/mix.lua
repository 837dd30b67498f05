-- mix.lua: a wrk script mixing token, static, missing and health requests, and counting
-- answers whose status is not one the soak test expects.
local paths = { "/token", "/", "/index.html", "/missing.txt", "/healthz", "/token?expires_in_seconds=30" }
local expected = { [200] = true, [404] = true, [502] = true, [503] = true, [504] = true }
local threads = {}

function setup(thread) threads[#threads + 1] = thread end

function init() n, unexpected = 0, 0 end

function request()
  n = n + 1
  return wrk.format("GET", paths[n % #paths + 1])
end

function response(status)
  if not expected[status] then unexpected = unexpected + 1 end
end

function done(summary)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + t:get("unexpected") end
  local e = summary.errors
  io.write(string.format("soak: requests=%d unexpected=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, bad, e.connect, e.read, e.write, e.timeout))
end
