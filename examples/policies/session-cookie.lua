-- examples/policies/session-cookie.lua: tokens for visitors with a session cookie.
-- POST /login {"password": ...} asks your backend (AUTH_URL/login) who this is and sets an
-- HMAC-signed cookie "tokend_session=<user>.<expiry>.<signature>"; /token requires it. Your
-- own app may set the same cookie instead: sign "<user>.<expiry>" with SESSION_SECRET.
--
-- The cookie is Secure by default (sent over HTTPS only, as in production); for a local
-- test over plain http set SECURE_COOKIE=false. /login and /token answer pages of
-- ALLOWED_ORIGINS only (a cookie rides along on cross-site requests). When a request
-- carries the cookie more than once (a sibling site set one for the parent domain, or one
-- for another path), the first one the browser sends counts: browsers send the one with
-- the longest path first, then the oldest; give yours a path of its own if that matters.
--
-- Settings: SESSION_SECRET (32 random bytes or more, e.g. `openssl rand -hex 32`), AUTH_URL.
local tokend = require "tokend"
local answer = require "answer"
local crypto = tokend.crypto

local policy = require "tokend.settings" {
  EXPIRES_IN = 60,
  SESSION_HOURS = 12,
  COOKIE = "tokend_session",
  SECURE_COOKIE = true,
  TOKENS_PER_MINUTE = 10,                   -- per user, all workers together
  TOKEN_BURST = 5,
  ALLOWED_ORIGINS = { "https://app.example.com" },
}
local SECRET = assert(tokend.env("SESSION_SECRET"), "set SESSION_SECRET")
local AUTH_URL = assert(tokend.env("AUTH_URL"), "set AUTH_URL")
local per_user = tokend.limiter{ name = "session-user", rate = policy.TOKENS_PER_MINUTE, per = 60,
                                 burst = policy.TOKEN_BURST }
local origins = tokend.origins(policy.ALLOWED_ORIGINS)

local function sign(data) return crypto.base64url_encode(crypto.hmac_sha256(SECRET, data)) end

-- The user of a valid, unexpired cookie, or nil.
local function session_user(req)
  local user, expiry, signature = (req.cookies[policy.COOKIE] or ""):match("^([%w_.@-]+)%.(%d+)%.([%w_-]+)$")
  if not user or not crypto.equal(signature, sign(user .. "." .. expiry)) then return nil end
  if tonumber(expiry) < tokend.now() then return nil end
  return user
end

local function cookie(value, max_age)
  return tokend.cookie(policy.COOKIE, value, { max_age = max_age, secure = policy.SECURE_COOKIE })
end

tokend.route("POST", "/login", function(req)
  if not origins:check(req) then return answer.refuse(403, "this origin may not sign in here") end
  local res, err = tokend.http.request(AUTH_URL .. "/login", {
    method = "POST", body = req.body, headers = { ["Content-Type"] = "application/json" }, timeout_ms = 3000 })
  if not res then
    tokend.log.warn("login backend unreachable", { error = err })
    return answer.refuse(503, "try again later")
  end
  local reply = require("cjson.safe").decode(res.body)
  if res.status ~= 200 or type(reply) ~= "table" or type(reply.user) ~= "string" then
    return answer.refuse(401, "wrong credentials")
  end
  local value = reply.user .. "." .. math.floor(tokend.now() + policy.SESSION_HOURS * 3600)
  return 204, nil, { ["Cache-Control"] = "no-store",
                     ["Set-Cookie"] = cookie(value .. "." .. sign(value), policy.SESSION_HOURS * 3600) }
end)

tokend.route("POST", "/logout", function()
  return 204, nil, { ["Set-Cookie"] = cookie("", 0) }
end)

tokend.route("GET", "/token", function(req)
  if not origins:check(req) then return answer.refuse(403, "this origin may not request tokens") end
  local user = session_user(req)
  if not user then return answer.refuse(401, "sign in first") end
  req.log.user = user
  local allowed, retry_after = per_user:take(user)
  if not allowed then return answer.refuse(429, "too many sessions; retry later", { ["Retry-After"] = retry_after }) end
  return answer.token(policy.EXPIRES_IN)
end, { audit = true })

tokend.route("GET", "/healthz", function() return 200, { status = "ok" } end, { log = false })
tokend.static("/", tokend.config.public)
