-- tokend.providers.deepgram: Deepgram's short-lived credentials, two kinds:
--   mode = "grant": a JWT from POST /v1/auth/grant (https://developers.deepgram.com/reference/auth/tokens/grant),
--     ttl_seconds 1..3600 (30 by default); clients send it as "Authorization: Bearer <jwt>" or the
--     WebSocket subprotocols { "bearer", jwt }. It carries no user reference.
--   mode = "key": a temporary project key from POST /v1/projects/{project_id}/keys
--     (https://developers.deepgram.com/reference/manage/keys/create) with scopes, tags (the user's
--     reference among them, so Deepgram's usage records carry it) and time_to_live_in_seconds;
--     clients send it as "Authorization: Token <key>" or the subprotocols { "token", key }.
--
--   local deepgram = require("tokend.providers.deepgram").new{ api_key = tokend.secret("DEEPGRAM_API_KEY") }
--   local token, info = deepgram.mint{ user = "alice" }
local common = require "tokend.providers.common"

local M = { name = "deepgram" }

local OPTIONS = {
  api_key = { type = "secret", required = true },
  mode = { type = "string", default = "grant", one_of = { "grant", "key" } },
  expires_in_seconds = { type = "integer", default = 30, min = 1, max = 3600 },
  project_id = { type = "string" },                       -- for keys
  scopes = { type = "list", default = { "usage:write" } },   -- for keys
  tags = { type = "list", default = {} },                 -- for keys, besides the user's
  comment = { type = "string", default = "tokend" },      -- for keys
  base_url = { type = "url", default = "https://api.deepgram.com" },
  websocket_url = { type = "url", default = "wss://api.deepgram.com/v1/listen" },
  timeout_ms = { type = "integer", default = 10000, min = 1, max = 600000 },
}
local MINT = {
  user = { type = "string", max_length = 256 },
  expires_in_seconds = { type = "integer", min = 1, max = 3600 },
}

-- The request a mint sends (pure: tests read it).
function M.request(cfg, args)
  local ttl = args.expires_in_seconds or cfg.expires_in_seconds
  local auth = { Authorization = { "Token ", cfg.api_key } }
  if cfg.mode == "grant" then
    return { url = cfg.base_url .. "/v1/auth/grant", headers = auth, json = { ttl_seconds = ttl } }
  end
  local tags = {}
  for i, tag in ipairs(cfg.tags) do tags[i] = tag end
  if args.user then tags[#tags + 1] = args.user end
  return {
    url = cfg.base_url .. "/v1/projects/" .. common.escape(cfg.project_id) .. "/keys", headers = auth,
    json = { comment = cfg.comment, scopes = cfg.scopes, tags = tags, time_to_live_in_seconds = ttl },
  }
end

-- The token and info of a 2xx answer: { access_token, expires_in } or { api_key_id, key, ... }.
function M.parse(reply, cfg, args)
  local ttl = args.expires_in_seconds or cfg.expires_in_seconds
  if cfg.mode == "grant" then
    if type(reply.access_token) ~= "string" then return nil, "the upstream answered without an access_token" end
    local expires = tonumber(reply.expires_in)
    return reply.access_token, {
      kind = "grant", expires_in_seconds = expires and math.floor(expires) or ttl, websocket_url = cfg.websocket_url,
      scheme = "Bearer",
    }
  end
  if type(reply.key) ~= "string" then return nil, "the upstream answered without a key" end
  return reply.key, {
    kind = "key", expires_in_seconds = ttl, api_key_id = reply.api_key_id, websocket_url = cfg.websocket_url,
    scheme = "Token",
  }
end

function M.vendor_answer(token, info)
  if info.kind == "key" then return { api_key_id = info.api_key_id, key = token } end
  return { access_token = token, expires_in = info.expires_in_seconds }
end

function M.new(options)
  local cfg = common.check("tokend.providers.deepgram", options, OPTIONS, 2)
  if cfg.mode == "key" and not cfg.project_id then error("tokend.providers.deepgram: mode \"key\" needs project_id", 2) end
  return common.vendor_provider(M, cfg, MINT)
end

return M
