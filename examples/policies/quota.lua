-- examples/policies/quota.lua: each user gets DAILY_SECONDS of streaming a day (UTC).
-- Users are identified by a short-lived JWT your app signs with JWT_SECRET (HS256, "sub"
-- the user), sent as "Authorization: Bearer <JWT>". Each token reserves its session length
-- (max_session_duration_seconds) from what is left today, clamped to it; when less than a
-- minute is left, 429 with Retry-After until midnight UTC. Reservations live in memory all
-- workers share (tokend.shared; with Redis, all machines: store = "redis").
--
-- Settings: JWT_SECRET.
local tokend = require "tokend"
local answer = require "answer"

local EXPIRES_IN = 60
local DAILY_SECONDS = 3600                   -- of streaming per user per day
local SESSION_SECONDS = 600                  -- what one token asks for at most
local MIN_SESSION_SECONDS = 60               -- AssemblyAI's smallest max_session_duration_seconds
local VERIFY = { secret = assert(tokend.env("JWT_SECRET"), "set JWT_SECRET") }
local used = tokend.shared("quota", { capacity = 100000 })

-- Reserves up to SESSION_SECONDS of user's budget for today; returns the seconds granted
-- (0 when less than a minute is left) and the seconds until the day ends.
local function reserve(user)
  local now = tokend.now()
  local day = math.floor(now / 86400)
  local until_midnight = math.ceil((day + 1) * 86400 - now)
  local key = user .. ":" .. day
  local total = used:incr(key, SESSION_SECONDS, 0, until_midnight + 60)    -- atomic, all workers
  local grant = SESSION_SECONDS - math.max(0, total - DAILY_SECONDS)
  if grant < MIN_SESSION_SECONDS then
    used:incr(key, -SESSION_SECONDS)                                          -- give it all back
    return 0, until_midnight
  end
  if grant < SESSION_SECONDS then used:incr(key, grant - SESSION_SECONDS) end  -- keep only the grant
  return grant, until_midnight
end

tokend.route("GET", "/token", function(req)
  local bearer = (req.headers.authorization or ""):match("^Bearer%s+(%S+)$")
  local claims = bearer and tokend.jwt.verify(bearer, VERIFY)
  if not claims or type(claims.sub) ~= "string" then return answer.refuse(401, "sign in first") end
  req.log.user = claims.sub
  local seconds, until_midnight = reserve(claims.sub)
  if seconds == 0 then
    return answer.refuse(429, "today's transcription time is used up", { ["Retry-After"] = until_midnight })
  end
  local status, body, headers = answer.token(EXPIRES_IN, seconds)
  if status ~= 200 then used:incr(claims.sub .. ":" .. math.floor(tokend.now() / 86400), -seconds) end  -- given back
  return status, body, headers
end)

tokend.route("GET", "/healthz", function() return 200, { status = "ok" } end)
tokend.static("/", tokend.config.public)
