-- examples/policies/answer.lua: what every example policy ends with: mint a token and
-- answer /token with it, or with the failure as a status, never cached. Keep it next to
-- the policy you copy (scripts may require modules that sit next to them).
local tokend = require "tokend"

local answer = { NO_STORE = { ["Cache-Control"] = "no-store" } }

-- A refusal: status, {error = message}, no-store (plus extra headers).
function answer.refuse(status, message, extra)
  local headers = { ["Cache-Control"] = "no-store" }
  for name, value in pairs(extra or {}) do headers[name] = value end
  return status, { error = message }, headers
end

-- Mints a token valid expires_in seconds for a session of at most session_seconds (nil:
-- AssemblyAI's default) and returns what /token answers: 200 with the token and where to
-- stream, or 502/504 when AssemblyAI could not give one.
function answer.token(expires_in, session_seconds)
  local token, info, _, failure = tokend.generate_temp_token(expires_in,
    session_seconds and { max_session_duration_seconds = session_seconds } or nil)
  if not token then
    return answer.refuse(failure.kind == "timeout" and 504 or 502, "no token, try again",
      { ["Retry-After"] = failure.retry_after })
  end
  return 200, { token = token, expires_in_seconds = info.expires_in_seconds,
                max_session_duration_seconds = session_seconds,
                websocket_url = tokend.config.websocket_url }, answer.NO_STORE
end

return answer
