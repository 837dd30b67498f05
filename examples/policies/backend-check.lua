-- examples/policies/backend-check.lua: your app's API decides who may transcribe.
-- Each /token request's credentials (its Authorization header, or else its cookies) go to
-- AUTH_URL, which answers {"allowed": true|false, "user": "..."}; answers are cached for
-- CACHE_SECONDS in memory all workers share, keyed by a hash of the credentials.
--
-- Settings: AUTH_URL (e.g. https://app.example.com/api/can-transcribe).
local tokend = require "tokend"
local crypto = tokend.crypto

local EXPIRES_IN = 60
local CACHE_SECONDS = 60
local AUTH_URL = assert(tokend.env("AUTH_URL"), "set AUTH_URL")
local NO_STORE = { ["Cache-Control"] = "no-store" }
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
  local answer = require("cjson.safe").decode(res.body)
  if res.status ~= 200 or type(answer) ~= "table" then return nil, "the backend answered " .. res.status end
  local decision = answer.allowed == true and ("allowed:" .. tostring(answer.user or "?")) or "denied"
  decisions:set(key, decision, CACHE_SECONDS)
  return decision
end

tokend.route("GET", "/token", function(req)
  local decision, err = decide(req)
  if not decision then
    tokend.log.warn("cannot ask the backend", { error = err })
    return 503, { error = "try again later" }, { ["Retry-After"] = 5, ["Cache-Control"] = "no-store" }
  end
  if decision == "denied" then return 403, { error = "not allowed to transcribe" }, NO_STORE end
  req.log.user = decision:sub(#"allowed:" + 1)
  local token, info, _, failure = tokend.generate_temp_token(EXPIRES_IN)
  if not token then return failure.kind == "timeout" and 504 or 502, { error = "no token, try again" }, NO_STORE end
  return 200, { token = token, expires_in_seconds = info.expires_in_seconds,
                websocket_url = tokend.config.websocket_url }, NO_STORE
end)

tokend.route("GET", "/healthz", function() return 200, { status = "ok" } end)
tokend.static("/", tokend.config.public)
