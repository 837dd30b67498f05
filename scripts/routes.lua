-- scripts/routes.lua: tokend's default behaviour. Edit it and restart: no recompiling.
local tokend = require "tokend"
local cjson = require "cjson"

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

-- Streaming options the page may ask for. /token checks a client's choices against these
-- and answers a websocket_url that carries them; /config tells the page what to offer. A
-- token does not bind them: this guides honest clients, it enforces nothing.
local SPEECH_MODELS = { "universal-streaming-english", "universal-streaming-multilingual", "u3-rt-pro" }
local DEFAULT_SPEECH_MODEL = "universal-streaming-english"
local LANGUAGE_DETECTION_MODELS = { "universal-streaming-multilingual" }
local ALLOW_LANGUAGE_DETECTION = true
local ALLOW_SPEAKER_LABELS = true
local MAX_KEYTERMS = 100            -- the API takes at most 100 key terms of 50 characters
local TURN_PRESETS = {              -- end-of-turn detection, as the API documents its presets
  { name = "fast", end_of_turn_confidence_threshold = 0.4, min_turn_silence = 160, max_turn_silence = 400 },
  { name = "balanced", end_of_turn_confidence_threshold = 0.4, min_turn_silence = 400, max_turn_silence = 1280 },
  { name = "patient", end_of_turn_confidence_threshold = 0.7, min_turn_silence = 800, max_turn_silence = 3600 },
}
local DEFAULT_TURN_PRESET = "balanced"

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

local function escape(s)
  return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local function listed(list, value)
  for _, v in ipairs(list) do if v == value then return v end end
end

local function preset(name)
  for _, p in ipairs(TURN_PRESETS) do if p.name == name then return p end end
end

-- A yes/no query argument: true, false (also when absent), or nil and why.
local function flag(q, name, offered, why_not)
  local v = q[name]
  if v == nil or v == "false" then return false end
  if v ~= "true" then return nil, name .. " must be true or false" end
  if not offered then return nil, name .. (why_not or " is not offered by this server") end
  return true
end

-- The streaming parameters a request asks for, checked against the options above: the
-- query of its websocket_url, or nil, the argument at fault and why.
local function streaming_query(q)
  local model = q.speech_model or DEFAULT_SPEECH_MODEL
  if not listed(SPEECH_MODELS, model) then
    return nil, "speech_model", "speech_model must be one of " .. table.concat(SPEECH_MODELS, ", ")
  end
  local params = { "speech_model=" .. escape(model) }
  local speakers, why = flag(q, "speaker_labels", ALLOW_SPEAKER_LABELS)
  if speakers == nil then return nil, "speaker_labels", why end
  if speakers then params[#params + 1] = "speaker_labels=true" end
  local detect
  detect, why = flag(q, "language_detection", ALLOW_LANGUAGE_DETECTION and listed(LANGUAGE_DETECTION_MODELS, model),
                     ALLOW_LANGUAGE_DETECTION and " needs speech_model " .. table.concat(LANGUAGE_DETECTION_MODELS, " or "))
  if detect == nil then return nil, "language_detection", why end
  if detect then params[#params + 1] = "language_detection=true" end
  if q.keyterms and q.keyterms ~= "" then
    local terms = {}
    for term in q.keyterms:gmatch("[^,]+") do
      term = term:match("^%s*(.-)%s*$")
      if #term > 50 then return nil, "keyterms", "each key term is at most 50 characters" end
      if term ~= "" then terms[#terms + 1] = term end
    end
    if #terms > MAX_KEYTERMS then return nil, "keyterms", ("at most %d key terms"):format(MAX_KEYTERMS) end
    if #terms > 0 then params[#params + 1] = "keyterms_prompt=" .. escape(cjson.encode(terms)) end
  end
  local turn = preset(q.turn or DEFAULT_TURN_PRESET)
  if not turn then return nil, "turn", "turn must be fast, balanced or patient" end
  for _, name in ipairs { "end_of_turn_confidence_threshold", "min_turn_silence", "max_turn_silence" } do
    params[#params + 1] = name .. "=" .. turn[name]
  end
  return table.concat(params, "&")
end

-- The websocket_url of a request that chose nothing, made once.
local DEFAULT_WEBSOCKET_URL = tokend.config.websocket_url .. "?" .. assert(streaming_query({}))

local function websocket_url(q)
  if not (q.speech_model or q.speaker_labels or q.language_detection or q.keyterms or q.turn) then
    return DEFAULT_WEBSOCKET_URL
  end
  local query, parameter, why = streaming_query(q)
  if not query then return nil, parameter, why end
  return tokend.config.websocket_url .. "?" .. query
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
  local ws_url, parameter, why = websocket_url(req.query)
  if not ws_url then return 400, { error = why, parameter = parameter }, no_store(cors) end
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
    websocket_url = ws_url,
  }, no_store(cors)
end)

-- What the page may offer: the streaming options above.
tokend.route("GET", "/config", function()
  local presets = {}
  for i, p in ipairs(TURN_PRESETS) do presets[i] = p.name end
  return 200, {
    speech_models = SPEECH_MODELS, default_speech_model = DEFAULT_SPEECH_MODEL,
    language_detection = ALLOW_LANGUAGE_DETECTION, language_detection_models = LANGUAGE_DETECTION_MODELS,
    speaker_labels = ALLOW_SPEAKER_LABELS, max_keyterms = MAX_KEYTERMS, keyterm_max_length = 50,
    turn_presets = presets, default_turn_preset = DEFAULT_TURN_PRESET,
  }, { ["Cache-Control"] = "no-cache" }
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
