-- tokend.providers.soniox: Soniox temporary API keys (POST /v1/auth/temporary-api-key,
-- https://soniox.com/docs/stt/api-reference/auth/create_temporary_api_key): expires_in_seconds
-- 1..3600, single_use, max_session_duration_seconds 1..18000, and the user's reference as
-- client_reference_id (at most 256 characters; Soniox's usage logs carry it).
--
--   local soniox = require("tokend.providers.soniox").new{ api_key = tokend.secret("SONIOX_API_KEY") }
--   local token, info = soniox.mint{ user = "alice" }   -- the client sends it as api_key in its first message
local common = require "tokend.providers.common"

local M = { name = "soniox" }

local OPTIONS = {
  api_key = { type = "secret", required = true },
  usage_type = { type = "string", default = "transcribe_websocket", one_of = { "transcribe_websocket", "tts_rt" } },
  expires_in_seconds = { type = "integer", default = 60, min = 1, max = 3600 },
  single_use = { type = "boolean", default = true },
  max_session_duration_seconds = { type = "integer", min = 1, max = 18000 },
  base_url = { type = "url", default = "https://api.soniox.com" },
  websocket_url = { type = "url", default = "wss://stt-rt.soniox.com/transcribe-websocket" },
  timeout_ms = { type = "integer", default = 10000, min = 1, max = 600000 },
}
local MINT = {
  user = { type = "string", max_length = 256 },
  expires_in_seconds = { type = "integer", min = 1, max = 3600 },
  max_session_duration_seconds = { type = "integer", min = 1, max = 18000 },
}

-- The request a mint sends (pure: tests read it).
function M.request(cfg, args)
  return {
    url = cfg.base_url .. "/v1/auth/temporary-api-key",
    headers = { Authorization = { "Bearer ", cfg.api_key } },
    json = {
      usage_type = cfg.usage_type, expires_in_seconds = args.expires_in_seconds or cfg.expires_in_seconds,
      single_use = cfg.single_use,
      max_session_duration_seconds = args.max_session_duration_seconds or cfg.max_session_duration_seconds,
      client_reference_id = args.user,
    },
  }
end

-- The token and info of a 2xx (201) answer: { api_key = "temp:...", expires_at = RFC 3339 }.
function M.parse(reply, cfg, args, now)
  if type(reply.api_key) ~= "string" then return nil, "the upstream answered without an api_key" end
  local at = common.parse_time(reply.expires_at)
  return reply.api_key, {
    expires_in_seconds = at and math.max(0, math.floor(at - now)) or (args.expires_in_seconds or cfg.expires_in_seconds),
    expires_at = reply.expires_at, single_use = cfg.single_use, websocket_url = cfg.websocket_url,
  }
end

function M.vendor_answer(token, info)
  return { api_key = token, expires_at = info.expires_at }
end

function M.new(options)
  local cfg = common.check("tokend.providers.soniox", options, OPTIONS, 2)
  return common.vendor_provider(M, cfg, MINT, function(c, args) return args.max_session_duration_seconds or c.max_session_duration_seconds end)
end

return M
