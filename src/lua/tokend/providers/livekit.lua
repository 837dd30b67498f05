-- tokend.providers.livekit: LiveKit access tokens, signed by tokend itself (no vendor call):
-- an HS256 JWT with the API key as iss, the user as sub (identity), nbf and exp, and the
-- video grant the policy sets (https://docs.livekit.io/frontends/authentication/tokens/),
-- the secret a handle (tokend.secret) so its bytes stay in C. :endpoint(req, ...) answers
-- LiveKit's standard token endpoint (POST {room_name, participant_identity, participant_name,
-- participant_metadata, participant_attributes, room_config} -> 201 {server_url,
-- participant_token}, https://docs.livekit.io/frontends/authentication/tokens/endpoint/),
-- so LiveKit's client SDKs (an endpoint TokenSource) work against tokend unchanged.
--
--   local livekit = require("tokend.providers.livekit").new{
--     api_key = "APIxxxx", api_secret = tokend.secret("LIVEKIT_API_SECRET"),
--     server_url = "wss://my-project.livekit.cloud", room = "support",
--   }
--   local token, info = livekit.mint{ user = "alice" }
local cjson = require "cjson.safe"
local common = require "tokend.providers.common"

local M = { name = "livekit" }

local FIELDS = { "room_name", "participant_identity", "participant_name", "participant_metadata",
                 "participant_attributes", "room_config" }
local OPTIONS = {
  api_key = { type = "string", required = true },         -- public: it is the token's iss
  api_secret = { type = "secret", required = true },
  server_url = { type = "url", required = true },
  room = { type = "string" },                             -- the room, unless each mint names one
  expires_in_seconds = { type = "integer", default = 600, min = 1, max = 86400 },
  grants = { type = "table", default = { roomJoin = true, canPublish = true, canSubscribe = true, canPublishData = true } },
  -- What the standard endpoint lets a client choose (the others: 400): room_name,
  -- participant_name, participant_metadata, participant_attributes, room_config. The identity
  -- is always the policy's user.
  client_may_set = { type = "list", default = { "participant_name" } },
}
local MINT = {
  user = { type = "string", required = true, max_length = 256 },   -- the identity (sub)
  name = { type = "string", max_length = 256 },
  room = { type = "string", max_length = 256 },
  metadata = { type = "string", max_length = 65536 },
  attributes = { type = "table" },
  room_config = { type = "table" },
  expires_in_seconds = { type = "integer", min = 1, max = 86400 },
}

-- The claims of a token (pure: tests read them).
function M.claims(cfg, args, now)
  local video = {}
  for name, value in pairs(cfg.grants) do video[name] = value end
  video.room = args.room or cfg.room
  now = math.floor(now)
  return {
    iss = cfg.api_key, sub = args.user, nbf = now, exp = now + (args.expires_in_seconds or cfg.expires_in_seconds),
    name = args.name, metadata = args.metadata, attributes = args.attributes, roomConfig = args.room_config,
    video = video,
  }
end

function M.vendor_answer(token, info)
  return { server_url = info.server_url, participant_token = token }
end

function M.new(options)
  local cfg = common.check("tokend.providers.livekit", options, OPTIONS, 2)
  for _, name in ipairs(cfg.client_may_set) do
    local known = false
    for _, f in ipairs(FIELDS) do known = known or f == name end
    if not known or name == "participant_identity" then
      error("tokend.providers.livekit: client_may_set names " .. name .. "; known: room_name, participant_name, "
            .. "participant_metadata, participant_attributes, room_config", 2)
    end
  end
  local p = { name = M.name }
  function p.mint(a, b)
    local args = common.check("tokend.providers.livekit: mint", common.args(p, a, b), MINT, 2)
    if not (args.room or cfg.room) then error("tokend.providers.livekit: mint needs a room (or the room option)", 2) end
    local tokend = common.tokend()
    if not tokend then error("tokend.providers.livekit: signing needs tokend", 2) end
    local claims = M.claims(cfg, args, common.now())
    local token = tokend.jwt.sign(claims, { secret = cfg.api_secret, alg = "HS256" })
    return common.done(p, token, { expires_in_seconds = claims.exp - claims.nbf, server_url = cfg.server_url,
                                   room = claims.video.room, identity = args.user })
  end

  -- Answers LiveKit's standard token endpoint for user (the policy's, e.g. a JWT's sub):
  -- returns status, body, headers for a route's handler. fixed = { room, name, metadata,
  -- attributes } set by the policy win over what the client may set.
  function p.endpoint(req, user, fixed)
    fixed = fixed or {}
    local body = {}
    if req.body and req.body:find("%S") then
      body = cjson.decode(req.body)
      if type(body) ~= "table" then return 400, { error = "the body must be a JSON object" }, { ["Cache-Control"] = "no-store" } end
    end
    local allowed = {}
    for _, name in ipairs(cfg.client_may_set) do allowed[name] = true end
    for name, value in pairs(body) do
      local known = false
      for _, f in ipairs(FIELDS) do known = known or f == name end
      if known and value ~= cjson.null and not allowed[name] and not (name == "participant_identity" and value == user) then
        return 400, { error = name .. " cannot be chosen by the client here" }, { ["Cache-Control"] = "no-store" }
      end
    end
    local function pick(field, fixed_value, kind)
      if fixed_value ~= nil then return fixed_value end
      local v = body[field]
      if v == cjson.null or type(v) ~= kind then return nil end
      return v
    end
    local ok, token, info = pcall(p.mint, {
      user = user, room = pick("room_name", fixed.room, "string"), name = pick("participant_name", fixed.name, "string"),
      metadata = pick("participant_metadata", fixed.metadata, "string"),
      attributes = pick("participant_attributes", fixed.attributes, "table"),
      room_config = pick("room_config", nil, "table"),
    })
    if not ok then return 400, { error = tostring(token):gsub("^.-tokend%.providers%.livekit: ", "") }, { ["Cache-Control"] = "no-store" } end
    return 201, M.vendor_answer(token, info), { ["Cache-Control"] = "no-store" }
  end
  return p
end

return M
