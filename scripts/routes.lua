-- scripts/routes.lua: tokend's default behaviour. Edit it and restart: no recompiling.
local tokend = require "tokend"
local streaming = require "tokend.streaming"

-- The policy. Each value may also be set without editing this file, by a variable of the
-- same name in the environment or .env (TOKENS_PER_MINUTE=30; lists comma-separated).
local policy = require "tokend.settings" {
  -- Expiry. A token is valid for opening one streaming session within this many seconds
  -- (AssemblyAI accepts 1..600). Clients may ask ?expires_in_seconds=N, clamped to MIN..MAX.
  DEFAULT_EXPIRES_IN = 60,
  MIN_EXPIRES_IN = 1,
  MAX_EXPIRES_IN = 600,

  -- Abuse. Each client address may mint TOKENS_PER_MINUTE tokens a minute, in bursts of up
  -- to TOKEN_BURST; past that it gets 429 with Retry-After. Pages on other origins may ask
  -- for tokens only when listed here (the page's own origin always may; "*" allows all).
  TOKENS_PER_MINUTE = 10,
  TOKEN_BURST = 5,
  ALLOWED_ORIGINS = { "http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*" },

  -- Operations. /metrics answers only these client addresses, connected directly (not
  -- through a proxy, which would send X-Forwarded-For).
  METRICS_CLIENTS = { "127.0.0.1", "::1" },

  -- AssemblyAI counts new sessions a minute for the whole account (every key, every user),
  -- and closes those past its limit (3009) after the browser opened them. With
  -- SESSIONS_PER_MINUTE > 0 (your plan's limit), past it /token answers 503 with Retry-After
  -- first; counted in Redis across instances when TOKEND_REDIS_URL is set. 0: off.
  SESSIONS_PER_MINUTE = 0,

  -- Token pool. With POOL_SIZE > 0, that many tokens are minted ahead (each valid 600 s,
  -- handed out while 30 s are left) and /token answers in microseconds instead of one
  -- upstream round trip; every unused token still costs an upstream call (see the README).
  POOL_SIZE = 0,

  -- What the page may ask for (the streaming options of tokend.streaming): /token checks
  -- a client's choices and answers a websocket_url that carries them; /config tells the
  -- page what to offer. A token does not bind them: this guides honest clients.
  SPEECH_MODELS = streaming.speech_models,
  ALLOW_LANGUAGE_DETECTION = true,
  ALLOW_SPEAKER_LABELS = true,
  MAX_KEYTERMS = 100,
  DEFAULT_TURN_PRESET = "balanced",   -- fast, balanced or patient end-of-turn detection
  -- Data zones the page may choose (/token?region=eu mints there and streams there), by the
  -- names of ASSEMBLYAI_REGION_URLS (us, eu). Empty: the default host only.
  REGIONS = {},

  -- Your app. API_BACKEND forwards /api and the paths below it to your own server
  -- ("http://127.0.0.1:3000"; empty: none); SPA_FALLBACK answers a page of a single-page
  -- app that is no file (/users/42, asked for by a browser) with index.html.
  API_BACKEND = "",
  SPA_FALLBACK = false,

  -- The session relay. With RELAY = true the page streams through this server
  -- (ws://<server>/v3/ws) instead of to AssemblyAI with a token: the options above are then
  -- enforced, not only offered, sessions are measured, and no token leaves the server. It
  -- costs the server every session's traffic (about 32 kB/s of audio each). A client may
  -- hold RELAY_SESSIONS_PER_CLIENT sessions at once, each at most RELAY_MAX_SECONDS long;
  -- new sessions take from the same bucket as tokens.
  RELAY = false,
  RELAY_SESSIONS_PER_CLIENT = 4,
  RELAY_MAX_SECONDS = 3600,
}

-- What a failed token request tells the client, by failure kind (see the README);
-- anything else (a refused key, 5xx, garbage, network) is 502.
local STATUS_FOR_FAILURE = { no_key = 503, rate_limited = 503, timeout = 504 }

-- With TOKEND_REDIS_URL, every instance counts in Redis; should Redis fail, each counts on
-- its own until it is back (on_store_error = "local"; or "allow", "deny").
local token_bucket = tokend.limiter{
  name = "token", rate = policy.TOKENS_PER_MINUTE, per = 60, burst = policy.TOKEN_BURST,
  store = tokend.config.redis and "redis" or "local", on_store_error = "local",
}
local account = policy.SESSIONS_PER_MINUTE > 0 and tokend.limiter{
  name = "account", rate = policy.SESSIONS_PER_MINUTE, per = 60, burst = policy.SESSIONS_PER_MINUTE,
  store = tokend.config.redis and "redis" or "local", on_store_error = "local",
} or nil
local origins = tokend.origins(policy.ALLOWED_ORIGINS)
local region_sockets = tokend.regions()
for _, name in ipairs(policy.REGIONS) do
  assert(region_sockets[name], "REGIONS names " .. name .. ", which ASSEMBLYAI_REGION_URLS does not")
end
local pool = policy.POOL_SIZE > 0 and tokend.pool{ name = "token", size = policy.POOL_SIZE } or nil
local options = streaming.options{
  speech_models = policy.SPEECH_MODELS, language_detection = policy.ALLOW_LANGUAGE_DETECTION,
  speaker_labels = policy.ALLOW_SPEAKER_LABELS, max_keyterms = policy.MAX_KEYTERMS,
  default_turn_preset = policy.DEFAULT_TURN_PRESET, regions = policy.REGIONS,
}
local metrics_clients = {}
for _, address in ipairs(policy.METRICS_CLIENTS) do metrics_clients[address] = true end

local DEFAULT_EXPIRES_IN, MIN_EXPIRES_IN, MAX_EXPIRES_IN =
  policy.DEFAULT_EXPIRES_IN, policy.MIN_EXPIRES_IN, policy.MAX_EXPIRES_IN

local function expires_in(req)
  local asked = tonumber(req.query.expires_in_seconds)
  if not asked then return DEFAULT_EXPIRES_IN end
  return math.max(MIN_EXPIRES_IN, math.min(MAX_EXPIRES_IN, math.floor(asked)))
end

-- Token answers are never cached; cross-origin answers carry their CORS headers.
local function no_store(cors, extra)
  local headers = { ["Cache-Control"] = "no-store" }
  if cors then for name, value in pairs(cors) do headers[name] = value end end
  if extra then for name, value in pairs(extra) do headers[name] = value end end
  return headers
end

-- A new session (a token or a relayed one) takes from the client's bucket, then from the
-- account's: nil, or the refusal to answer (what: what the client asked for too often).
local function refused_session(req, cors, what)
  local allowed, retry_after = token_bucket:take(req.client)
  if not allowed then
    return 429, { error = "too many " .. what .. "; retry later" }, no_store(cors, { ["Retry-After"] = retry_after })
  end
  if not account then return nil end
  allowed, retry_after = account:take("account")
  if allowed then return nil end
  return 503, { error = ("this service may start %d streaming sessions a minute (AssemblyAI's account limit) "
    .. "and has started them all; retry in %d s"):format(policy.SESSIONS_PER_MINUTE, retry_after) },
    no_store(cors, { ["Retry-After"] = retry_after })
end

tokend.route("OPTIONS", "/token", function(req)
  return origins:preflight(req, "GET")
end)

tokend.route("GET", "/token", function(req)
  local cors, refused = origins:check(req)
  if not cors then return 403, { error = refused }, no_store() end
  local region, parameter, why = options:region(req.query)      -- false: the default host
  local ws_url
  if region ~= nil then ws_url, parameter, why = options:websocket_url(req.query, region_sockets[region]) end
  if not ws_url then return 400, { error = why, parameter = parameter }, no_store(cors) end
  local status, body, headers = refused_session(req, cors, "token requests")
  if status then return status, body, headers end
  local token, info, _, failure
  if pool and not region then
    token, info, _, failure = pool:take()
  else
    token, info, _, failure = tokend.generate_temp_token(expires_in(req), { region = region or nil })
  end
  if not token then
    local message = failure.kind == "no_key"
      and "no AssemblyAI API key is configured on the server (ASSEMBLYAI_API_KEY)"
      or "could not get a streaming token from AssemblyAI"
    return STATUS_FOR_FAILURE[failure.kind] or 502, { error = message },
      no_store(cors, { ["Retry-After"] = failure.retry_after })
  end
  return 200, { token = token, expires_in_seconds = info.expires_in_seconds, websocket_url = ws_url }, no_store(cors)
end, { audit = true })     -- every answer leaves an audit line: the mint's, or why it was refused

-- The relay: the same checks as /token, then the session, with the options the policy
-- allows (a client cannot ask the streaming service for others).
if policy.RELAY then
  local open_sessions = tokend.shared("relay-sessions", tokend.config.redis and { store = "redis" } or nil)
  tokend.route("GET", "/v3/ws", function(req)
    local cors, refused = origins:check(req)
    if not cors then return 403, { error = refused }, no_store() end
    local session, parameter, why = options:relay(req.query)
    if not session then return 400, { error = why, parameter = parameter }, no_store() end
    local status, body, headers = refused_session(req, nil, "sessions")
    if status then return status, body, headers end
    local held = open_sessions:incr(req.client, 1, 0, policy.RELAY_MAX_SECONDS + 60)
    if held and held > policy.RELAY_SESSIONS_PER_CLIENT then
      open_sessions:incr(req.client, -1)
      return 429, { error = "too many sessions at once from this address" }, no_store()
    end
    session.query = session.query .. "&format_turns=true"      -- the page shows formatted turns
    session.max_seconds = policy.RELAY_MAX_SECONDS
    session.on_end = function() open_sessions:incr(req.client, -1) end
    return tokend.relay(session)
  end)
end

-- What the page may offer, and whether it streams through this server.
tokend.route("GET", "/config", function()
  local offer = options:offer()
  offer.relay_url = policy.RELAY and "/v3/ws" or nil
  return 200, offer, { ["Cache-Control"] = "no-cache" }
end)

-- Liveness for load balancers and systemd (Redis, when configured: "ok" or "down"; tokend
-- serves either way), left out of the access log but for errors (log = 100 would keep one
-- in a hundred); and counters for Prometheus.
tokend.route("GET", "/healthz", function()
  return 200, {
    status = "ok", api_key_configured = tokend.config.api_key_configured, redis = tokend.redis.status(),
  }, no_store()
end, { log = false })

tokend.route("GET", "/metrics", function(req)
  if not metrics_clients[req.client] or req.headers["x-forwarded-for"] then return 404, { error = "not found" } end
  return 200, tokend.metrics(), no_store(nil, { ["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8" })
end)

if policy.API_BACKEND ~= "" then tokend.proxy("/api", policy.API_BACKEND) end

-- Everything else comes from the public folder; "/" gives index.html.
tokend.static("/", tokend.config.public, { fallback = policy.SPA_FALLBACK and "index.html" or nil })
