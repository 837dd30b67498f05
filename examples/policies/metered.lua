-- examples/policies/metered.lua: streaming through tokend (the relay), each user with
-- MINUTES_PER_DAY of it (UTC), counted from what the relay measured, not reserved ahead.
--
-- Users are identified by a JWT your app signs with JWT_SECRET (HS256, "sub" the user).
-- A page cannot set headers on a WebSocket, so it either
--   - asks POST /ticket (with "Authorization: Bearer <JWT>") for a ticket, valid
--     TICKET_SECONDS and once, and opens /v3/ws?ticket=<ticket>; or
--   - has the JWT in a cookie "session" of this site, which the browser sends itself.
-- A session is refused (429) when the day's minutes are spent or the user has
-- SESSIONS_PER_USER open; a running one is charged every CHARGE_EVERY_SECONDS and ends
-- (4002) when the minutes run out; at its end the upstream's own figure
-- (session_duration_seconds) settles the charge, and an audit line records it. Counts live
-- in memory all workers share, or in Redis for all instances (TOKEND_REDIS_URL).
--
-- Settings: JWT_SECRET; the names below (MINUTES_PER_DAY=30 in .env, ...).
local tokend = require "tokend"
local streaming = require "tokend.streaming"
local answer = require "answer"

local policy = require "tokend.settings" {
  MINUTES_PER_DAY = 60.0,             -- may be a fraction (0.5: 30 s)
  SESSIONS_PER_USER = 2,
  MAX_SESSION_SECONDS = 3600,
  CHARGE_EVERY_SECONDS = 10,
  TICKET_SECONDS = 30,
  ALLOWED_ORIGINS = { "http://localhost:*", "http://127.0.0.1:*" },
}
local SECRET = assert(tokend.env("JWT_SECRET"), "set JWT_SECRET")
local USERS = { secret = SECRET }
-- Tickets are signed with a key of their own: a ticket is no session, nor a session a ticket.
local TICKETS = { secret = tokend.crypto.hmac_sha256(SECRET, "tokend relay tickets"), audience = "relay" }
local BUDGET = policy.MINUTES_PER_DAY * 60
local store = tokend.config.redis and { store = "redis" } or nil
local used = tokend.shared("metered-seconds", store)       -- user:day -> seconds streamed
local open = tokend.shared("metered-open", store)          -- user -> sessions open
local spent_tickets = tokend.shared("metered-tickets", store)
local origins = tokend.origins(policy.ALLOWED_ORIGINS)
local options = streaming.options{}

local function today()
  local now = tokend.now()
  local day = math.floor(now / 86400)
  return day, math.ceil((day + 1) * 86400 - now)
end

-- Seconds the user has streamed today, and the seconds until the day ends.
local function usage(user)
  local day, left = today()
  return used:get(user .. ":" .. day) or 0, left
end

local function charge(user, seconds)
  if seconds <= 0 then return usage(user) end
  local day, left = today()
  return used:incr(user .. ":" .. day, seconds, 0, left + 3600)
end

-- The user a request speaks for: a valid, unused ticket, or the session cookie.
local function user_of(req)
  if req.query.ticket then
    local claims = tokend.jwt.verify(req.query.ticket, TICKETS)
    if not claims or type(claims.sub) ~= "string" or type(claims.jti) ~= "string" then return nil end
    if not spent_tickets:add(claims.jti, true, policy.TICKET_SECONDS + 60) then return nil end   -- once
    return claims.sub
  end
  local claims = req.cookies.session and tokend.jwt.verify(req.cookies.session, USERS)
  return claims and type(claims.sub) == "string" and claims.sub or nil
end

local function out_of_minutes(user)
  local seconds, until_midnight = usage(user)
  if seconds < BUDGET then return nil end
  return answer.refuse(429, "today's transcription minutes are used up", { ["Retry-After"] = until_midnight })
end

tokend.route("POST", "/ticket", function(req)
  local bearer = (req.headers.authorization or ""):match("^Bearer%s+(%S+)$")
  local claims = bearer and tokend.jwt.verify(bearer, USERS)
  if not claims or type(claims.sub) ~= "string" then return answer.refuse(401, "sign in first") end
  req.log.user = claims.sub
  local status, body, headers = out_of_minutes(claims.sub)
  if status then return status, body, headers end
  local ticket = tokend.jwt.sign({ sub = claims.sub, aud = "relay", exp = math.floor(tokend.now()) + policy.TICKET_SECONDS,
                                   jti = tokend.crypto.hex(tokend.crypto.random_bytes(16)) }, TICKETS)
  return 200, { ticket = ticket, expires_in_seconds = policy.TICKET_SECONDS }, answer.NO_STORE
end)

tokend.route("GET", "/v3/ws", function(req)
  local cors, refused = origins:check(req)
  if not cors then return answer.refuse(403, refused) end
  local user = user_of(req)
  if not user then return answer.refuse(401, "a ticket or a session is needed") end
  req.log.user = user
  local status, body, headers = out_of_minutes(user)
  if status then return status, body, headers end
  local query, parameter, why = options:query(req.query)
  if not query then return 400, { error = why, parameter = parameter } end
  if open:incr(user, 1, 0, policy.MAX_SESSION_SECONDS + 3600) > policy.SESSIONS_PER_USER then
    open:incr(user, -1)
    return answer.refuse(429, "too many sessions at once")
  end
  local charged = 0             -- of this session, so far
  local function settle(s, seconds)
    local total = charge(user, seconds - charged)
    charged = seconds
    if total and total >= BUDGET and s then s:close(4002, "today's transcription minutes are used up") end
  end
  local left = BUDGET - usage(user)
  return tokend.relay{
    query = query .. "&format_turns=true", user = user,
    -- A backstop in C: the session cannot outlive what was left when it began (the ticks
    -- below end it sooner when other sessions of the user spend the minutes too).
    max_seconds = math.max(1, math.min(policy.MAX_SESSION_SECONDS, math.ceil(left) + policy.CHARGE_EVERY_SECONDS)),
    tick_seconds = policy.CHARGE_EVERY_SECONDS,
    on_tick = function(s) settle(s, s:stats().seconds) end,
    on_end = function(s, f)
      -- The upstream's own figure when it sent one: what AssemblyAI bills.
      local seconds = f.termination and f.termination.session_duration_seconds or f.seconds
      settle(nil, seconds)
      open:incr(user, -1)
      local total = usage(user)
      tokend.log.info("relay session metered", {
        user = user, session = f.id, upstream_session = f.upstream_id, seconds = seconds, cause = f.cause,
        code = f.code, seconds_today = total, seconds_left = math.max(0, BUDGET - total),
      })
    end,
  }
end)

tokend.route("GET", "/healthz", function() return 200, { status = "ok" } end)
tokend.static("/", tokend.config.public)
