-- tokend.providers.speechmatics: Speechmatics temporary keys (POST
-- https://mp.speechmatics.com/v1/api_keys?type=rt, https://docs.speechmatics.com/get-started/authentication):
-- ttl 60..86400 seconds, and the user's reference as client_ref.
--
--   local sm = require("tokend.providers.speechmatics").new{ api_key = tokend.secret("SPEECHMATICS_API_KEY") }
--   local token, info = sm.mint{ user = "alice" }   -- info.websocket_url .. "?jwt=" .. token
local common = require "tokend.providers.common"

local M = { name = "speechmatics" }

local OPTIONS = {
  api_key = { type = "secret", required = true },
  type = { type = "string", default = "rt", one_of = { "rt", "batch", "flow" } },
  expires_in_seconds = { type = "integer", default = 60, min = 60, max = 86400 },
  base_url = { type = "url", default = "https://mp.speechmatics.com" },
  websocket_url = { type = "url", default = "wss://eu2.rt.speechmatics.com/v2" },
  timeout_ms = { type = "integer", default = 10000, min = 1, max = 600000 },
}
local MINT = {
  user = { type = "string", max_length = 256 },
  expires_in_seconds = { type = "integer", min = 60, max = 86400 },
}

-- The request a mint sends (pure: tests read it).
function M.request(cfg, args)
  return {
    url = cfg.base_url .. "/v1/api_keys", query = { type = cfg.type },
    headers = { Authorization = { "Bearer ", cfg.api_key } },
    json = { ttl = args.expires_in_seconds or cfg.expires_in_seconds, client_ref = args.user },
  }
end

-- The token and info of a 2xx answer: { apikey_id, key_value }.
function M.parse(reply, cfg, args)
  if type(reply.key_value) ~= "string" then return nil, "the upstream answered without a key_value" end
  return reply.key_value, { expires_in_seconds = args.expires_in_seconds or cfg.expires_in_seconds,
                            websocket_url = cfg.websocket_url }
end

function M.vendor_answer(token)
  return { apikey_id = require("cjson").null, key_value = token }
end

function M.new(options)
  local cfg = common.check("tokend.providers.speechmatics", options, OPTIONS, 2)
  return common.vendor_provider(M, cfg, MINT)
end

return M
