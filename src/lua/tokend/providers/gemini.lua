-- tokend.providers.gemini: Gemini Live ephemeral tokens (POST /v1alpha/auth_tokens,
-- https://ai.google.dev/gemini-api/docs/ephemeral-tokens): the policy locks the model and
-- the session's configuration into the token (live_connect_constraints, sent as
-- bidiGenerateContentSetup), and how many sessions it opens (uses). Gemini records no user
-- reference with a token.
--
--   local gemini = require("tokend.providers.gemini").new{
--     api_key = tokend.secret("GEMINI_API_KEY"),
--     model = "gemini-live-2.5-flash-preview",
--     config = { generationConfig = { responseModalities = { "AUDIO" } } },   -- as the REST API spells it
--   }
--   local token, info = gemini.mint{}   -- info.websocket_url .. "?access_token=" .. token
local common = require "tokend.providers.common"

local M = { name = "gemini" }

local TWENTY_HOURS = 20 * 3600 - 1           -- "must be less than 20 hours in the future"
local OPTIONS = {
  api_key = { type = "secret", required = true },
  model = { type = "string", required = true },
  config = { type = "table" },               -- BidiGenerateContentSetup's other fields (generationConfig, ...)
  uses = { type = "integer", default = 1, min = 0, max = 1000000 },   -- 0: no limit
  expires_in_seconds = { type = "integer", default = 60, min = 1, max = TWENTY_HOURS },   -- newSessionExpireTime
  session_seconds = { type = "integer", default = 1800, min = 1, max = TWENTY_HOURS },   -- expireTime
  lock_additional_fields = { type = "list" },   -- fieldMask; absent: every field of the setup is locked
  base_url = { type = "url", default = "https://generativelanguage.googleapis.com" },
  websocket_url = {
    type = "url",
    default = "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained",
  },
  timeout_ms = { type = "integer", default = 10000, min = 1, max = 600000 },
}
local MINT = {
  user = { type = "string" },                -- accepted for the one mint shape; Gemini keeps none
  uses = { type = "integer", min = 0, max = 1000000 },
  expires_in_seconds = { type = "integer", min = 1, max = TWENTY_HOURS },
}

-- The request a mint sends (pure: tests read it).
function M.request(cfg, args, now)
  now = math.floor(now)
  local setup = {}
  for name, value in pairs(cfg.config or {}) do setup[name] = value end
  setup.model = cfg.model:find("^models/") and cfg.model or "models/" .. cfg.model
  local json = {
    uses = args.uses or cfg.uses,
    expireTime = common.format_time(now + cfg.session_seconds),
    newSessionExpireTime = common.format_time(now + (args.expires_in_seconds or cfg.expires_in_seconds)),
    bidiGenerateContentSetup = setup,
  }
  if cfg.lock_additional_fields then json.fieldMask = table.concat(cfg.lock_additional_fields, ",") end
  return { url = cfg.base_url .. "/v1alpha/auth_tokens", headers = { ["x-goog-api-key"] = cfg.api_key }, json = json }
end

-- The token and info of a 2xx answer: an AuthToken, { name = "auth_tokens/...", ... }.
function M.parse(reply, cfg, args)
  if type(reply.name) ~= "string" then return nil, "the upstream answered without a token name" end
  return reply.name, {
    expires_in_seconds = args.expires_in_seconds or cfg.expires_in_seconds, session_seconds = cfg.session_seconds,
    uses = args.uses or cfg.uses, model = cfg.model, websocket_url = cfg.websocket_url,
  }
end

function M.vendor_answer(token)
  return { name = token }
end

function M.new(options)
  local cfg = common.check("tokend.providers.gemini", options, OPTIONS, 2)
  if cfg.config and cfg.config.model ~= nil then error("tokend.providers.gemini: the model is its own option", 2) end
  return common.vendor_provider(M, cfg, MINT, function(c) return c.session_seconds end)
end

return M
