-- examples/policies/quota.lua: each user gets DAILY_SECONDS of streaming a day (UTC).
-- Users are identified by a short-lived JWT your app signs with JWT_SECRET (HS256, "sub"
-- the user), sent as "Authorization: Bearer <JWT>". Each token reserves its session length
-- (max_session_duration_seconds) from what is left today, clamped to it. When less than a
-- minute is left: 429 with Retry-After until midnight UTC; but while some of today's
-- reservations are still pending (their token is being minted, and may fail and be given
-- back), 503 with a short Retry-After instead. Reservations live in memory all workers
-- share (tokend.shared; with Redis, all machines: store = "redis").
--
-- Settings: JWT_SECRET. A token only reserves: tokend cannot see how long the session
-- really lasted in this mode; the relay can (examples/policies/metered.lua).
local tokend = require "tokend"
local answer = require "answer"

local policy = require "tokend.settings" {
  EXPIRES_IN = 60,
  DAILY_SECONDS = 3600,                     -- of streaming per user per day
  SESSION_SECONDS = 600,                    -- what one token asks for at most
  PENDING_RETRY_SECONDS = 5,                -- Retry-After while reservations are pending
}
local MIN_SESSION_SECONDS = 60              -- AssemblyAI's smallest max_session_duration_seconds
local VERIFY = { secret = assert(tokend.env("JWT_SECRET"), "set JWT_SECRET") }
local used = tokend.shared("quota", { capacity = 100000 })        -- user:day -> seconds reserved
local pending = tokend.shared("quota-pending", { capacity = 100000 })  -- user:day -> seconds being minted

-- Reserves up to SESSION_SECONDS of user's budget for today; returns the seconds granted
-- (0 when less than a minute is left), the day's key and the seconds until the day ends.
local function reserve(user)
  local now = tokend.now()
  local day = math.floor(now / 86400)
  local until_midnight = math.ceil((day + 1) * 86400 - now)
  local key = user .. ":" .. day
  local session = policy.SESSION_SECONDS
  local total = used:incr(key, session, 0, until_midnight + 60)             -- atomic, all workers
  local grant = session - math.max(0, total - policy.DAILY_SECONDS)
  if grant < MIN_SESSION_SECONDS then
    used:incr(key, -session)                                                 -- give it all back
    return 0, key, until_midnight
  end
  if grant < session then used:incr(key, grant - session) end               -- keep only the grant
  return grant, key, until_midnight
end

tokend.route("GET", "/token", function(req)
  local bearer = (req.headers.authorization or ""):match("^Bearer%s+(%S+)$")
  local claims = bearer and tokend.jwt.verify(bearer, VERIFY)
  if not claims or type(claims.sub) ~= "string" then return answer.refuse(401, "sign in first") end
  req.log.user = claims.sub
  local seconds, key, until_midnight = reserve(claims.sub)
  if seconds == 0 then
    if (pending:get(key) or 0) > 0 then       -- a mint in flight may give its reservation back
      return answer.refuse(503, "a session is being set up; retry shortly",
                           { ["Retry-After"] = policy.PENDING_RETRY_SECONDS })
    end
    return answer.refuse(429, "today's transcription time is used up", { ["Retry-After"] = until_midnight })
  end
  pending:incr(key, seconds, 0, until_midnight + 60)
  local status, body, headers = answer.token(policy.EXPIRES_IN, seconds)
  pending:incr(key, -seconds)
  if status ~= 200 then used:incr(key, -seconds) end                        -- given back
  return status, body, headers
end, { audit = true })

tokend.route("GET", "/healthz", function() return 200, { status = "ok" } end, { log = false })
tokend.static("/", tokend.config.public)
