-- examples/policies/jwt.lua: only users signed in with your identity provider get tokens.
-- The page sends the user's ID token (or access token) as "Authorization: Bearer <JWT>";
-- tokend checks it against the provider's JWKS, limits each user, and lets the user's plan
-- decide how long a session may last.
--
-- Settings (environment or .env): JWKS_URL (https://idp.example.com/.well-known/jwks.json),
-- JWT_ISSUER (the iss your provider writes), JWT_AUDIENCE (your client id). All three are
-- required: tokend.jwt.verify checks iss and aud unless told `false`, and an unset setting
-- stops the script here rather than turning a check off. The values below may be set the
-- same way (TOKENS_PER_MINUTE=20).
local tokend = require "tokend"
local answer = require "answer"

local policy = require "tokend.settings" {
  EXPIRES_IN = 60,                                  -- seconds to open the WebSocket with the token
  TOKENS_PER_MINUTE = 10,                           -- per user, all workers (and machines, with Redis)
  TOKEN_BURST = 5,
  SESSION_SECONDS_BY_PLAN = { free = 300, pro = 3600 },   -- the "plan" claim; others: free
  ALLOWED_ORIGINS = { "http://localhost:*", "http://127.0.0.1:*" },
}
local VERIFY = {
  jwks_url = assert(tokend.env("JWKS_URL"), "set JWKS_URL"),
  issuer = assert(tokend.env("JWT_ISSUER"), "set JWT_ISSUER"),
  audience = assert(tokend.env("JWT_AUDIENCE"), "set JWT_AUDIENCE"),
}
local per_user = tokend.limiter{ name = "jwt-user", rate = policy.TOKENS_PER_MINUTE, per = 60,
                                 burst = policy.TOKEN_BURST }
local origins = tokend.origins(policy.ALLOWED_ORIGINS)

tokend.route("GET", "/token", function(req)
  if not origins:check(req) then return answer.refuse(403, "this origin may not request tokens") end
  local bearer = (req.headers.authorization or ""):match("^Bearer%s+(%S+)$")
  local claims, why, kind = nil, "no bearer token", "malformed"
  if bearer then claims, why, kind = tokend.jwt.verify(bearer, VERIFY) end
  if kind == "jwks_unavailable" then          -- the provider is down: not the user's fault
    tokend.log.warn("identity provider unavailable", { reason = why })
    return answer.refuse(503, "sign-in is unavailable; retry later", { ["Retry-After"] = 30 })
  end
  if not claims then                          -- expired, bad_signature, bad_audience, ...
    tokend.log.info("token refused", { kind = kind, reason = why })
    return answer.refuse(401, "sign in first", { ["WWW-Authenticate"] = 'Bearer realm="tokend"' })
  end
  req.log.user = claims.sub
  local allowed, retry_after = per_user:take(claims.sub)
  if not allowed then
    return answer.refuse(429, "too many sessions; retry later", { ["Retry-After"] = retry_after })
  end
  local plans = policy.SESSION_SECONDS_BY_PLAN
  return answer.token(policy.EXPIRES_IN, plans[claims.plan] or plans.free)
end, { audit = true })

tokend.route("GET", "/healthz", function() return 200, { status = "ok" } end, { log = false })
tokend.static("/", tokend.config.public)
