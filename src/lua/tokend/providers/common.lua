-- tokend.providers.common: what the provider modules share: their options checked when
-- the script loads, the vendor call with its failures as tokend's kinds, the audit line,
-- and the one shape every mint answers:
--
--   token, info = provider.mint{ user = "alice" }   -- info.provider, info.expires_in_seconds, where to connect
--   nil, err, status, failure                       -- failure.kind as generate_temp_token's, failure.retry_after
--
-- Pure parts run in the stock lua5.4 (tests/lua); calls need a tokend server.
local cjson = require "cjson.safe"

local common = {}

-- tokend's own module inside a server (or the Lua module), nil in plain Lua.
function common.tokend()
  local ok, tokend = pcall(require, "tokend")
  if ok and type(tokend) == "table" then return tokend end
  return nil
end

-- A secret handle of tokend.secret: its bytes stay in C.
function common.is_secret(v)
  return type(v) == "userdata" and tostring(v):find("^secret:") ~= nil
end

local function sorted_names(t)
  local names = {}
  for name in pairs(t) do names[#names + 1] = tostring(name) end
  table.sort(names)
  return table.concat(names, ", ")
end

local function is_list_of_strings(v)
  if type(v) ~= "table" then return false end
  local n = 0
  for k, x in pairs(v) do
    if math.type(k) ~= "integer" or type(x) ~= "string" then return false end
    n = n + 1
  end
  return n == #v
end

-- Checks one value against its rule; returns an error text or nil.
local function why_not(v, rule)
  local kind = rule.type
  if kind == "secret" then
    if not common.is_secret(v) then return "must be a secret: tokend.secret(\"NAME\") (a key never sits in Lua)" end
  elseif kind == "integer" then
    if math.type(v) ~= "integer" then return "must be an integer" end
    if (rule.min and v < rule.min) or (rule.max and v > rule.max) then
      return ("must be between %d and %d"):format(rule.min or math.mininteger, rule.max or math.maxinteger)
    end
  elseif kind == "list" then
    if not is_list_of_strings(v) then return "must be a list of strings" end
  elseif kind == "url" then
    if type(v) ~= "string" or not (v:match("^https?://%S+$") or v:match("^wss?://%S+$")) then
      return "must be an http(s):// or ws(s):// URL"
    end
  elseif type(v) ~= kind then
    return "must be a " .. kind
  end
  if rule.one_of then
    for _, x in ipairs(rule.one_of) do if x == v then return nil end end
    return "must be one of " .. table.concat(rule.one_of, ", ")
  end
  if rule.max_length and #v > rule.max_length then return ("is at most %d characters"):format(rule.max_length) end
  return nil
end

-- Returns the options given, checked against spec (name -> { type, default, required,
-- min, max, one_of, max_length }), defaults filled in; raises naming who for an unknown
-- option, a missing one or a bad value (level: as error's, from the caller of check).
function common.check(who, given, spec, level)
  level = (level or 1) + 1
  if given == nil then given = {} end
  if type(given) ~= "table" then error(who .. ": expected a table of options", level) end
  for name in pairs(given) do
    if spec[name] == nil then
      error(("%s: unknown option %s (known: %s)"):format(who, tostring(name), sorted_names(spec)), level)
    end
  end
  local out = {}
  for name, rule in pairs(spec) do
    local v = given[name]
    if v == nil then v = rule.default end
    if v == nil then
      if rule.required then error(("%s: %s is required"):format(who, name), level) end
    else
      local why = why_not(v, rule)
      if why then error(("%s: %s %s"):format(who, name, why), level) end
    end
    out[name] = v
  end
  return out
end

-- mint is called as provider.mint{...} or provider:mint{...}: the arguments table.
function common.args(self, a, b)
  if a == self then return b end
  return a
end

local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

-- Seconds since the epoch of an RFC 3339 time ("2025-02-22T22:47:37.150Z", "+02:00"), or nil.
function common.parse_time(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, sec, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)(.*)$")
  if not y then return nil end
  rest = rest:gsub("^%.%d+", "")
  local offset = 0
  if rest ~= "Z" and rest ~= "z" then
    local sign, oh, om = rest:match("^([+-])(%d%d):(%d%d)$")
    if not sign then return nil end
    offset = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "+" and 1 or -1)
  end
  local days = days_from_civil(tonumber(y), tonumber(mo), tonumber(d))
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec) - offset
end

-- An RFC 3339 time (UTC, whole seconds) for t seconds since the epoch.
function common.format_time(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

-- The time now, in seconds (tokend's clock when there is one).
function common.now()
  local tokend = common.tokend()
  return tokend and tokend.now and tokend.now() or os.time()
end

-- The seconds a Retry-After value asks for (delta-seconds or an HTTP date), 1..3600, or nil.
function common.retry_after(v, now)
  if type(v) ~= "string" then return nil end
  local s
  if v:match("^%d+$") then
    s = tonumber(v)
  else
    local months = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9, Oct = 10,
                     Nov = 11, Dec = 12 }
    local d, mon, y, h, mi, sec = v:match("^%a%a%a, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    if not d or not months[mon] then return nil end
    local at = days_from_civil(tonumber(y), months[mon], tonumber(d)) * 86400 + h * 3600 + mi * 60 + sec
    s = at - math.floor(now or common.now())
  end
  return math.max(1, math.min(3600, math.floor(s)))
end

-- The vendor's own words in an error body (already scrubbed of secrets by tokend.http),
-- cut to 200 bytes; "" when there are none.
function common.vendor_message(body)
  local reply = type(body) == "string" and cjson.decode(body) or nil
  if type(reply) ~= "table" then return "" end
  local said = reply.err_msg or reply.message or reply.detail or reply.error
  if type(said) == "table" then said = said.message or said.status end
  if type(said) ~= "string" or said == "" then return "" end
  if #said > 200 then said = said:sub(1, 200) .. "..." end
  return ": " .. said
end

-- The failure of an answer that is not a success: the kind tokend uses everywhere.
function common.kind_of_status(status)
  if status == 401 or status == 403 then return "unauthorized" end
  if status == 429 then return "rate_limited" end
  if status == 400 then return "bad_request" end
  if status >= 500 then return "upstream_error" end
  return "bad_response"
end

local DESCRIBE = {
  unauthorized = "the upstream refused the API key (HTTP %d)",
  rate_limited = "the upstream is rate limiting this key (HTTP %d)",
  bad_request = "the upstream rejected the request (HTTP %d)",
  upstream_error = "the upstream failed (HTTP %d)",
  bad_response = "unexpected upstream answer (HTTP %d)",
}

-- Ends a mint that failed: a warning and an audit line, then nil, err, status, failure.
function common.fail(p, err, status, failure)
  local tokend = common.tokend()
  err = p.name .. ": " .. err
  if tokend then
    tokend.log.warn("token request failed (" .. failure.kind .. "): " .. err, { provider = p.name })
    if tokend.audit then tokend.audit{ provider = p.name, outcome = failure.kind } end
  end
  return nil, err, status, failure
end

-- Ends a mint that succeeded: info completed, the audit line; returns token, info.
function common.done(p, token, info, session_seconds)
  info.provider = p.name
  local tokend = common.tokend()
  if tokend and tokend.audit then
    tokend.audit{ provider = p.name, token = token, expires_in_seconds = info.expires_in_seconds,
                  max_session_duration_seconds = session_seconds }
  end
  return token, info
end

-- Calls the vendor: rq = {url, method, headers, query, json}; parse(reply, status) turns
-- the decoded JSON of a 2xx answer into token, info or nil, why. Returns token, info or
-- nil, err, status, failure.
function common.call(p, rq, parse)
  local tokend = common.tokend()
  if not tokend then error(p.name .. ": minting needs a tokend server (require \"tokend\")", 3) end
  local res, err, kind = tokend.http.request(rq.url, {
    method = rq.method or "POST", headers = rq.headers, query = rq.query, json = rq.json,
    timeout_ms = p.timeout_ms, max_body_bytes = 65536,
  })
  if not res then
    if kind == "too_large" then return common.fail(p, "the upstream reply is larger than 64 KiB", nil, { kind = "bad_response" }) end
    return common.fail(p, err, nil, { kind = kind or "network" })
  end
  local status = res.status
  if status < 200 or status > 299 then
    local failure = { kind = common.kind_of_status(status), retry_after = common.retry_after(res.headers["retry-after"]) }
    return common.fail(p, DESCRIBE[failure.kind]:format(status) .. common.vendor_message(res.body), status, failure)
  end
  local reply = cjson.decode(res.body)
  if type(reply) ~= "table" then
    return common.fail(p, ("the upstream answered %d with a body that is not JSON"):format(status), status,
                       { kind = "bad_response" })
  end
  local token, info = parse(reply, status)
  if type(token) ~= "string" or token == "" then
    return common.fail(p, info or ("the upstream answered %d without a token"):format(status), status,
                       { kind = "bad_response" })
  end
  return token, info
end

-- The provider of a vendor whose token is one HTTPS call: its mint(args) checks args
-- against mint_spec, builds the call with M.request(cfg, args, now), reads a 2xx answer with
-- M.parse(reply, cfg, args, now), and audits the token; session(cfg, args), when given, is
-- the session length the token allows (for the audit line). The mint returns token, info,
-- or nil, err, status, failure.
function common.vendor_provider(M, cfg, mint_spec, session)
  local who = "tokend.providers." .. M.name .. ": mint"
  local p = { name = M.name, timeout_ms = cfg.timeout_ms }
  function p.mint(a, b)
    local args = common.check(who, common.args(p, a, b), mint_spec, 2)
    local now = common.now()
    local token, info, status, failure = common.call(p, M.request(cfg, args, now), function(reply)
      return M.parse(reply, cfg, args, now)
    end)
    if not token then return nil, info, status, failure end
    return common.done(p, token, info, session and session(cfg, args))
  end
  return p
end

-- Percent-encodes s for a URL's path or query.
function common.escape(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

return common
