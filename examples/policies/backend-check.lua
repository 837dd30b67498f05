-- examples/policies/backend-check.lua: your app's API decides who may transcribe.
-- Each /token request's credentials (its Authorization header and its cookies) go to
-- AUTH_URL, which answers {"allowed": true|false, "user": "..."}; answers are cached for
-- CACHE_SECONDS in memory all workers share, keyed by a hash of everything forwarded (a
-- decision made for one pair of credentials is never reused for another).
--
-- Settings: AUTH_URL (e.g. https://app.example.com/api/can-transcribe).
local tokend = require "tokend"
local answer = require "answer"
local crypto = tokend.crypto

local policy = require "tokend.settings" {
  EXPIRES_IN = 60,
  CACHE_SECONDS = 60,
  TOKENS_PER_MINUTE = 10,                   -- per user, all workers together
  TOKEN_BURST = 5,
}
local AUTH_URL = assert(tokend.env("AUTH_URL"), "set AUTH_URL")
local decisions = tokend.shared("backend-check", { capacity = 100000 })
local per_user = tokend.limiter{ name = "backend-user", rate = policy.TOKENS_PER_MINUTE, per = 60,
                                 burst = policy.TOKEN_BURST }

-- "allowed:<user>" or "denied", asking the backend when the cache has no answer; or nil, err.
local function decide(req)
  local authorization, cookie = req.headers.authorization, req.headers.cookie
  if not authorization and not cookie then return "denied" end
  local key = crypto.hex(crypto.sha256((authorization or "") .. "\0" .. (cookie or "")))
  local cached = decisions:get(key)
  if cached then return cached end
  local res, err = tokend.http.request(AUTH_URL, { headers = { Authorization = authorization, Cookie = cookie },
                                                    timeout_ms = 2000 })
  if not res then return nil, err end
  local reply = require("cjson.safe").decode(res.body)
  if res.status ~= 200 or type(reply) ~= "table" then return nil, "the backend answered " .. res.status end
  local decision = reply.allowed == true and ("allowed:" .. tostring(reply.user or "?")) or "denied"
  decisions:set(key, decision, policy.CACHE_SECONDS)
  return decision
end

tokend.route("GET", "/token", function(req)
  local decision, err = decide(req)
  if not decision then
    tokend.log.warn("cannot ask the backend", { error = err })
    return answer.refuse(503, "try again later", { ["Retry-After"] = 5 })
  end
  if decision == "denied" then return answer.refuse(403, "not allowed to transcribe") end
  local user = decision:sub(#"allowed:" + 1)
  req.log.user = user
  local allowed, retry_after = per_user:take(user)
  if not allowed then return answer.refuse(429, "too many sessions; retry later", { ["Retry-After"] = retry_after }) end
  return answer.token(policy.EXPIRES_IN)
end, { audit = true })

tokend.route("GET", "/healthz", function() return 200, { status = "ok" } end, { log = false })
tokend.static("/", tokend.config.public)
