-- tokend.providers.openai: OpenAI Realtime client secrets (POST /v1/realtime/client_secrets,
-- https://developers.openai.com/api/reference/resources/realtime/subresources/client_secrets/methods/create):
-- the policy sets the session (its type, "realtime" or "transcription", and model); the
-- user reference goes in the OpenAI-Safety-Identifier header OpenAI's Realtime guide names.
--
--   local openai = require("tokend.providers.openai").new{
--     api_key = tokend.secret("OPENAI_API_KEY"),
--     session = { type = "realtime", model = "gpt-realtime" },
--   }
--   local token, info = openai.mint{ user = user_hash }   -- info.url: POST the SDP offer there (WebRTC)
local common = require "tokend.providers.common"

local M = { name = "openai" }

local OPTIONS = {
  api_key = { type = "secret", required = true },
  session = { type = "table", required = true },          -- the session object, as OpenAI's reference writes it
  expires_in_seconds = { type = "integer", default = 600, min = 10, max = 7200 },   -- expires_after.seconds
  base_url = { type = "url", default = "https://api.openai.com" },
  connect_url = { type = "url", default = "https://api.openai.com/v1/realtime/calls" },
  timeout_ms = { type = "integer", default = 10000, min = 1, max = 600000 },
}
local MINT = {
  user = { type = "string", max_length = 512 },
  expires_in_seconds = { type = "integer", min = 10, max = 7200 },
}

local function check_session(session, level)
  if session.type ~= "realtime" and session.type ~= "transcription" then
    error("tokend.providers.openai: session.type must be realtime or transcription", level)
  end
  if session.type == "realtime" and type(session.model) ~= "string" then
    error("tokend.providers.openai: session.model is required for a realtime session", level)
  end
end

-- The request a mint sends (pure: tests read it).
function M.request(cfg, args)
  return {
    url = cfg.base_url .. "/v1/realtime/client_secrets",
    headers = { Authorization = { "Bearer ", cfg.api_key }, ["OpenAI-Safety-Identifier"] = args.user },
    json = {
      expires_after = { anchor = "created_at", seconds = args.expires_in_seconds or cfg.expires_in_seconds },
      session = cfg.session,
    },
  }
end

-- The token and info of a 2xx answer: { value = "ek_...", expires_at = <epoch>, session = {...} }.
function M.parse(reply, cfg, args, now)
  if type(reply.value) ~= "string" then return nil, "the upstream answered without a client secret value" end
  local asked = args.expires_in_seconds or cfg.expires_in_seconds
  local at = math.type(reply.expires_at) and reply.expires_at or nil
  local session = type(reply.session) == "table" and reply.session or cfg.session
  return reply.value, {
    expires_in_seconds = at and math.max(0, math.floor(at - now)) or asked, expires_at = at,
    url = cfg.connect_url, session_type = session.type or cfg.session.type, model = session.model or cfg.session.model,
  }
end

-- What OpenAI's own endpoint answers, for a route a client written against it calls.
function M.vendor_answer(token, info)
  return { value = token, expires_at = info.expires_at }
end

function M.new(options)
  local cfg = common.check("tokend.providers.openai", options, OPTIONS, 2)
  check_session(cfg.session, 3)
  return common.vendor_provider(M, cfg, MINT)
end

return M
