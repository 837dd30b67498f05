-- tokend.providers.assemblyai: AssemblyAI's temporary tokens in the providers' one shape, on
-- tokend.generate_temp_token (the key stays in C): Universal-Streaming in the default host or
-- a data zone (region), or the Voice Agent API (product = "voice_agent"). AssemblyAI records
-- no user reference with a token; max_session_duration_seconds caps the session.
--
--   local aai = require("tokend.providers.assemblyai").new{ region = "eu" }
--   local token, info = aai.mint{}   -- info.websocket_url .. "?token=" .. token (and the streaming options)
local common = require "tokend.providers.common"

local M = { name = "assemblyai" }

local OPTIONS = {
  product = { type = "string", default = "streaming", one_of = { "streaming", "voice_agent" } },
  region = { type = "string" },
  expires_in_seconds = { type = "integer", default = 60, min = 1, max = 600 },
  max_session_duration_seconds = { type = "integer", min = 60, max = 10800 },
}
local MINT = {
  user = { type = "string" },                -- accepted for the one mint shape; AssemblyAI keeps none
  region = { type = "string" },
  expires_in_seconds = { type = "integer", min = 1, max = 600 },
  max_session_duration_seconds = { type = "integer", min = 60, max = 10800 },
}

function M.vendor_answer(token, info)
  return { token = token, expires_in_seconds = info.expires_in_seconds }
end

function M.new(options)
  local cfg = common.check("tokend.providers.assemblyai", options, OPTIONS, 2)
  local p = { name = M.name }
  function p.mint(a, b)
    local args = common.check("tokend.providers.assemblyai: mint", common.args(p, a, b), MINT, 2)
    local tokend = common.tokend()
    if not tokend then error("tokend.providers.assemblyai: minting needs a tokend server", 2) end
    local session = args.max_session_duration_seconds or cfg.max_session_duration_seconds
    local token, info, status, failure = tokend.generate_temp_token(args.expires_in_seconds or cfg.expires_in_seconds,
      { max_session_duration_seconds = session, region = args.region or cfg.region, product = cfg.product })
    if not token then return nil, "assemblyai: " .. info, status, failure end
    info.provider, info.max_session_duration_seconds = M.name, session
    return token, info                       -- generate_temp_token wrote the audit line
  end
  return p
end

return M
