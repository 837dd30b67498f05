-- scripts/routes.lua: tokend's default behaviour. Edit it and restart: no recompiling.
local tokend = require "tokend"

-- Expiry policy. A token is valid for opening one streaming session within this many
-- seconds (AssemblyAI accepts 1..600). Clients may ask for another value with
-- ?expires_in_seconds=N; it is clamped into [MIN, MAX].
local DEFAULT_EXPIRES_IN = 60
local MIN_EXPIRES_IN = 1
local MAX_EXPIRES_IN = 600

-- Abuse policy. Each client address may mint TOKENS_PER_MINUTE tokens a minute, in bursts
-- of up to TOKEN_BURST; past that it gets 429 with Retry-After. Pages on other origins may
-- ask for tokens only when listed here (the page's own origin always may; "*" allows all).
local TOKENS_PER_MINUTE = 10
local TOKEN_BURST = 5
local ALLOWED_ORIGINS = { "http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*" }

-- Operations. /metrics (Prometheus text) answers only these client addresses, connected
-- directly (a request that came through a proxy, with X-Forwarded-For, is refused).
local METRICS_CLIENTS = { ["127.0.0.1"] = true, ["::1"] = true }

-- Token pool. With POOL_SIZE > 0, tokend keeps that many tokens minted ahead (each valid
-- for 600 s, handed out while at least 30 s are left) and /token answers from them in
-- microseconds instead of one upstream round trip; every unused token still costs an
-- upstream call, and AssemblyAI rate-limits minting (see the README). 0: mint on demand.
local POOL_SIZE = 0

-- What a failed token request tells the client, by failure kind (see the README).
local STATUS_FOR_FAILURE = {
  no_key = 503,          -- ASSEMBLYAI_API_KEY is not set
  rate_limited = 503,    -- the upstream said 429; Retry-After is passed on
  timeout = 504,         -- the upstream did not answer in time
}                        -- anything else (refused key, 5xx, garbage, network): 502

-- With TOKEND_REDIS_URL set, every instance counts in Redis: the limit holds for the
-- client across all of them. Should Redis fail, each instance counts on its own until it
-- is back (on_store_error = "local"; "allow" or "deny" are the other choices).
local token_bucket = tokend.limiter{
  name = "token", rate = TOKENS_PER_MINUTE, per = 60, burst = TOKEN_BURST,
  store = tokend.config.redis and "redis" or "local", on_store_error = "local",
}
local origins = tokend.origins(ALLOWED_ORIGINS)
local pool = POOL_SIZE > 0 and tokend.pool{ name = "token", size = POOL_SIZE } or nil

local function expires_in(req)
  local asked = tonumber(req.query.expires_in_seconds)
  if not asked then return DEFAULT_EXPIRES_IN end
  asked = math.floor(asked)
  return math.max(MIN_EXPIRES_IN, math.min(MAX_EXPIRES_IN, asked))
end

-- Token answers are never cached; cross-origin answers carry their CORS headers.
local function no_store(cors, extra)
  local headers = { ["Cache-Control"] = "no-store" }
  if cors then for name, value in pairs(cors) do headers[name] = value end end
  if extra then for name, value in pairs(extra) do headers[name] = value end end
  return headers
end

tokend.route("OPTIONS", "/token", function(req)
  return origins:preflight(req, "GET")
end)

tokend.route("GET", "/token", function(req)
  local cors, refused = origins:check(req)
  if not cors then return 403, { error = refused }, no_store() end
  local allowed, retry_after = token_bucket:take(req.client)
  if not allowed then
    return 429, { error = "too many token requests; retry later" }, no_store(cors, { ["Retry-After"] = retry_after })
  end
  local token, info, _, failure
  if pool then
    token, info, _, failure = pool:take()
  else
    token, info, _, failure = tokend.generate_temp_token(expires_in(req))
  end
  if not token then
    local message = failure.kind == "no_key"
      and "no AssemblyAI API key is configured on the server (ASSEMBLYAI_API_KEY)"
      or "could not get a streaming token from AssemblyAI"
    return STATUS_FOR_FAILURE[failure.kind] or 502, { error = message },
      no_store(cors, { ["Retry-After"] = failure.retry_after })
  end
  return 200, {
    token = token,
    expires_in_seconds = info.expires_in_seconds,
    websocket_url = tokend.config.websocket_url,
  }, no_store(cors)
end)

-- Liveness for load balancers and systemd, and counters for Prometheus. Redis, when
-- configured, shows as "ok" or "down"; tokend serves either way (see on_store_error).
tokend.route("GET", "/healthz", function()
  return 200, {
    status = "ok", api_key_configured = tokend.config.api_key_configured, redis = tokend.redis.status(),
  }, no_store()
end)

tokend.route("GET", "/metrics", function(req)
  if not METRICS_CLIENTS[req.client] or req.headers["x-forwarded-for"] then return 404, { error = "not found" } end
  return 200, tokend.metrics(), no_store(nil, { ["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8" })
end)

-- Everything else comes from the public folder; "/" gives index.html.
tokend.static("/", tokend.config.public)
