-- examples/policies/session-cookie.lua: tokens for visitors with a session cookie.
-- POST /login {"password": ...} asks your backend (AUTH_URL/login) who this is and sets an
-- HMAC-signed cookie "tokend_session=<user>.<expiry>.<signature>"; /token requires it. Your
-- own app may set the same cookie instead: sign "<user>.<expiry>" with SESSION_SECRET.
--
-- Settings: SESSION_SECRET (32 random bytes or more, e.g. `openssl rand -hex 32`), AUTH_URL.
local tokend = require "tokend"
local answer = require "answer"
local crypto = tokend.crypto

local EXPIRES_IN = 60
local SESSION_HOURS = 12
local COOKIE = "tokend_session"
local SECURE_COOKIE = false                  -- true behind HTTPS (it should be in production)

local SECRET = assert(tokend.env("SESSION_SECRET"), "set SESSION_SECRET")
local AUTH_URL = assert(tokend.env("AUTH_URL"), "set AUTH_URL")

local function sign(data) return crypto.base64url_encode(crypto.hmac_sha256(SECRET, data)) end

-- The user of a valid, unexpired cookie, or nil.
local function session_user(req)
  local user, expiry, signature = (req.cookies[COOKIE] or ""):match("^([%w_.@-]+)%.(%d+)%.([%w_-]+)$")
  if not user or not crypto.equal(signature, sign(user .. "." .. expiry)) then return nil end
  if tonumber(expiry) < tokend.now() then return nil end
  return user
end

tokend.route("POST", "/login", function(req)
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
  local value = reply.user .. "." .. math.floor(tokend.now() + SESSION_HOURS * 3600)
  return 204, nil, { ["Cache-Control"] = "no-store", ["Set-Cookie"] = tokend.cookie(COOKIE, value .. "." .. sign(value),
    { max_age = SESSION_HOURS * 3600, secure = SECURE_COOKIE }) }
end)

tokend.route("POST", "/logout", function()
  return 204, nil, { ["Set-Cookie"] = tokend.cookie(COOKIE, "", { max_age = 0, secure = SECURE_COOKIE }) }
end)

tokend.route("GET", "/token", function(req)
  local user = session_user(req)
  if not user then return answer.refuse(401, "sign in first") end
  req.log.user = user
  return answer.token(EXPIRES_IN)
end)

tokend.route("GET", "/healthz", function() return 200, { status = "ok" } end)
tokend.static("/", tokend.config.public)
