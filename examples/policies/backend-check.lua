-- examples/policies/backend-check.lua: your app's API decides who may transcribe.
-- Each /token request's credentials (its Authorization header, or else its cookies) go to
-- AUTH_URL, which answers {"allowed": true|false, "user": "..."}; answers are cached for
-- CACHE_SECONDS in memory all workers share, keyed by a hash of the credentials.
--
-- Settings: AUTH_URL (e.g. https://app.example.com/api/can-transcribe).
local tokend = require "tokend"
local answer = require "answer"
local crypto = tokend.crypto

local EXPIRES_IN = 60
local CACHE_SECONDS = 60
local AUTH_URL = assert(tokend.env("AUTH_URL"), "set AUTH_URL")
local decisions = tokend.shared("backend-check", { capacity = 100000 })

-- "allowed:<user>" or "denied", asking the backend when the cache has no answer; or nil, err.
local function decide(req)
  local credential = req.headers.authorization or req.headers.cookie
  if not credential then return "denied" end
  local key = crypto.hex(crypto.sha256(credential))
  local cached = decisions:get(key)
  if cached then return cached end
  local res, err = tokend.http.request(AUTH_URL, { headers = {
    Authorization = req.headers.authorization, Cookie = req.headers.cookie }, timeout_ms = 2000 })
  if not res then return nil, err end
  local reply = require("cjson.safe").decode(res.body)
  if res.status ~= 200 or type(reply) ~= "table" then return nil, "the backend answered " .. res.status end
  local decision = reply.allowed == true and ("allowed:" .. tostring(reply.user or "?")) or "denied"
  decisions:set(key, decision, CACHE_SECONDS)
  return decision
end

tokend.route("GET", "/token", function(req)
  local decision, err = decide(req)
  if not decision then
    tokend.log.warn("cannot ask the backend", { error = err })
    return answer.refuse(503, "try again later", { ["Retry-After"] = 5 })
  end
  if decision == "denied" then return answer.refuse(403, "not allowed to transcribe") end
  req.log.user = decision:sub(#"allowed:" + 1)
  return answer.token(EXPIRES_IN)
end)

tokend.route("GET", "/healthz", function() return 200, { status = "ok" } end)
tokend.static("/", tokend.config.public)
