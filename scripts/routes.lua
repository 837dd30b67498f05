-- scripts/routes.lua: tokend's default behaviour. Edit it and restart: no recompiling.
local tokend = require "tokend"

-- Expiry policy. A token is valid for opening one streaming session within this many
-- seconds (AssemblyAI accepts 1..600). Clients may ask for another value with
-- ?expires_in_seconds=N; it is clamped into [MIN, MAX].
local DEFAULT_EXPIRES_IN = 60
local MIN_EXPIRES_IN = 1
local MAX_EXPIRES_IN = 600

-- What a failed token request tells the client, by failure kind (see the README).
local STATUS_FOR_FAILURE = {
  no_key = 503,          -- ASSEMBLYAI_API_KEY is not set
  rate_limited = 503,    -- the upstream said 429; Retry-After is passed on
  timeout = 504,         -- the upstream did not answer in time
}                        -- anything else (refused key, 5xx, garbage, network): 502

local function expires_in(req)
  local asked = tonumber(req.query.expires_in_seconds)
  if not asked then return DEFAULT_EXPIRES_IN end
  asked = math.floor(asked)
  return math.max(MIN_EXPIRES_IN, math.min(MAX_EXPIRES_IN, asked))
end

tokend.route("GET", "/token", function(req)
  local token, info, _, failure = tokend.generate_temp_token(expires_in(req))
  if not token then
    local headers = { ["Cache-Control"] = "no-store" }
    if failure.retry_after then headers["Retry-After"] = tostring(failure.retry_after) end
    local message = failure.kind == "no_key"
      and "no AssemblyAI API key is configured on the server (ASSEMBLYAI_API_KEY)"
      or "could not get a streaming token from AssemblyAI"
    return STATUS_FOR_FAILURE[failure.kind] or 502, { error = message }, headers
  end
  return 200, {
    token = token,
    expires_in_seconds = info.expires_in_seconds,
    websocket_url = tokend.config.websocket_url,
  }, { ["Cache-Control"] = "no-store" }
end)

-- Everything else comes from the public folder; "/" gives index.html.
tokend.static("/", tokend.config.public)
