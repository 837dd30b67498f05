-- examples/policies/providers.lua: one policy for every realtime speech vendor. Users signed
-- in with a JWT your app signs (HS256 with JWT_SECRET, "sub" the user) get a short-lived
-- credential of the vendor they ask for at /token/<provider>: one limit per user for all
-- vendors, one audit line per credential (who, which vendor, the outcome), the user's
-- reference passed to each vendor that records one. Every key is a secret: tokend reads it
-- once, keeps it in C memory, and no script line can log it or answer it.
--
-- Settings: JWT_SECRET, and the keys of the vendors in PROVIDERS: OPENAI_API_KEY,
-- GEMINI_API_KEY, DEEPGRAM_API_KEY, SONIOX_API_KEY, LIVEKIT_API_KEY with LIVEKIT_API_SECRET
-- and LIVEKIT_URL (AssemblyAI's is ASSEMBLYAI_API_KEY, as always).
local tokend = require "tokend"

local policy = require "tokend.settings" {
  PROVIDERS = { "assemblyai", "openai", "gemini", "deepgram", "soniox", "livekit" },   -- the vendors offered
  TOKENS_PER_MINUTE = 10,                     -- per user, all vendors together
  TOKEN_BURST = 5,
  ALLOWED_ORIGINS = { "http://localhost:*", "http://127.0.0.1:*" },
  OPENAI_MODEL = "gpt-realtime",
  GEMINI_MODEL = "gemini-live-2.5-flash-preview",
  LIVEKIT_ROOM_PREFIX = "support-",           -- each user gets a room of their own
  VENDOR_BASE_URL = "",                       -- one proxy (or test fake) for every vendor's API; "": their own
}

local function base(default) return policy.VENDOR_BASE_URL ~= "" and policy.VENDOR_BASE_URL or default end
local function provider(name) return require("tokend.providers." .. name) end

-- Each vendor is set up only when PROVIDERS names it: its secrets must then be set, or the
-- script stops here naming the one missing.
local MAKE = {
  assemblyai = function() return provider("assemblyai").new{ max_session_duration_seconds = 1800 } end,
  openai = function()
    return provider("openai").new{ api_key = tokend.secret("OPENAI_API_KEY"), base_url = base("https://api.openai.com"),
                                   session = { type = "realtime", model = policy.OPENAI_MODEL } }
  end,
  gemini = function()
    return provider("gemini").new{ api_key = tokend.secret("GEMINI_API_KEY"), model = policy.GEMINI_MODEL,
                                   base_url = base("https://generativelanguage.googleapis.com"),
                                   config = { generationConfig = { responseModalities = { "AUDIO" } } } }
  end,
  deepgram = function()           -- a temporary project key: its tags carry the user into Deepgram's usage
    return provider("deepgram").new{ api_key = tokend.secret("DEEPGRAM_API_KEY"), mode = "key",
                                     project_id = assert(tokend.env("DEEPGRAM_PROJECT_ID"), "set DEEPGRAM_PROJECT_ID"),
                                     expires_in_seconds = 60, base_url = base("https://api.deepgram.com") }
  end,
  soniox = function()
    return provider("soniox").new{ api_key = tokend.secret("SONIOX_API_KEY"), max_session_duration_seconds = 1800,
                                   base_url = base("https://api.soniox.com") }
  end,
  livekit = function()
    return provider("livekit").new{ api_key = assert(tokend.env("LIVEKIT_API_KEY"), "set LIVEKIT_API_KEY"),
                                    api_secret = tokend.secret("LIVEKIT_API_SECRET"),
                                    server_url = assert(tokend.env("LIVEKIT_URL"), "set LIVEKIT_URL") }
  end,
}
local providers = {}
for _, name in ipairs(policy.PROVIDERS) do
  providers[name] = assert(MAKE[name], "PROVIDERS names " .. name .. ", which this policy does not know")()
end

local users = { secret = tokend.secret("JWT_SECRET"), algorithms = { "HS256" } }
local per_user = tokend.limiter{ name = "user", rate = policy.TOKENS_PER_MINUTE, per = 60, burst = policy.TOKEN_BURST,
                                 store = tokend.config.redis and "redis" or "local" }
local origins = tokend.origins(policy.ALLOWED_ORIGINS)
local STATUS_FOR_FAILURE = { rate_limited = 503, timeout = 504, no_key = 503 }

local function answer(status, body, extra)
  local headers = { ["Cache-Control"] = "no-store" }
  for name, value in pairs(extra or {}) do headers[name] = value end
  return status, body, headers
end

-- The signed-in user of req, or nil and the refusal to answer with.
local function signed_in(req)
  if not origins:check(req) then return nil, { answer(403, { error = "this origin may not request tokens" }) } end
  local bearer = (req.headers.authorization or ""):match("^Bearer%s+(%S+)$")
  local claims = bearer and tokend.jwt.verify(bearer, users)
  if not claims or type(claims.sub) ~= "string" then
    return nil, { answer(401, { error = "sign in first" }, { ["WWW-Authenticate"] = 'Bearer realm="tokend"' }) }
  end
  req.log.user = claims.sub
  local allowed, retry_after = per_user:take(claims.sub)
  if not allowed then return nil, { answer(429, { error = "too many sessions; retry later" }, { ["Retry-After"] = retry_after }) } end
  return claims.sub
end

tokend.route("OPTIONS", "/token/:provider", function(req) return origins:preflight(req, "GET") end)

-- GET /token/<provider> -> 200 {provider, token, expires_in_seconds, and where to connect}
tokend.route("GET", "/token/:provider", function(req)
  local p = providers[req.params.provider]
  if not p then return answer(404, { error = "no such provider here", providers = policy.PROVIDERS }) end
  local user, refusal = signed_in(req)
  if not user then return table.unpack(refusal) end
  local mint = { user = user }
  if req.params.provider == "livekit" then mint.room = policy.LIVEKIT_ROOM_PREFIX .. user end
  local token, info, _, failure = p.mint(mint)
  if not token then
    return answer(STATUS_FOR_FAILURE[failure.kind] or 502, { error = "no " .. req.params.provider .. " token, try again" },
                  { ["Retry-After"] = failure.retry_after })
  end
  info.token = token
  return answer(200, info)
end, { audit = true })

-- LiveKit's standard token endpoint: the client SDKs' endpoint TokenSource, pointed here
-- with the user's bearer token in its headers, works unchanged.
tokend.route("POST", "/livekit/token", function(req)
  if not providers.livekit then return answer(404, { error = "no such provider here" }) end
  local user, refusal = signed_in(req)
  if not user then return table.unpack(refusal) end
  return providers.livekit.endpoint(req, user, { room = policy.LIVEKIT_ROOM_PREFIX .. user })
end, { audit = true })

tokend.route("GET", "/healthz", function() return 200, { status = "ok" } end)
tokend.static("/", tokend.config.public)
