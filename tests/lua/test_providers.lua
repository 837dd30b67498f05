-- The providers' pure parts in the stock lua5.4, without a server: options checked at load,
-- the requests each mint sends, what an answer becomes, times and failures.
local common = require "tokend.providers.common"
local check = require "check"

-- A stand-in for a tokend.secret handle (the stock interpreter has none).
local KEY = setmetatable({}, { __tostring = function() return "secret:TEST_KEY" end })
common.is_secret = function(v) return v == KEY end

local openai = require "tokend.providers.openai"
local gemini = require "tokend.providers.gemini"
local deepgram = require "tokend.providers.deepgram"
local soniox = require "tokend.providers.soniox"
local speechmatics = require "tokend.providers.speechmatics"
local livekit = require "tokend.providers.livekit"
local assemblyai = require "tokend.providers.assemblyai"

-- Options: unknown, missing, out of range, not a secret; each error names the provider.
local bad = {
  { function() soniox.new{ api_key = KEY, ttl = 5 } end, "tokend.providers.soniox: unknown option ttl %(known: api_key" },
  { function() soniox.new{} end, "tokend.providers.soniox: api_key is required" },
  { function() soniox.new{ api_key = "plain" } end, "api_key must be a secret" },
  { function() soniox.new{ api_key = KEY, expires_in_seconds = 0 } end, "expires_in_seconds must be between 1 and 3600" },
  { function() soniox.new{ api_key = KEY, usage_type = "batch" } end, "usage_type must be one of transcribe_websocket, tts_rt" },
  { function() openai.new{ api_key = KEY, session = { type = "realtime" } } end, "session.model is required" },
  { function() openai.new{ api_key = KEY, session = { type = "realtime", model = "m" }, base_url = "ftp://x" } end,
    "base_url must be an http%(s%)://" },
  { function() gemini.new{ api_key = KEY, model = "m", config = { model = "other" } } end, "the model is its own option" },
  { function() deepgram.new{ api_key = KEY, mode = "key" } end, "needs project_id" },
  { function() deepgram.new{ api_key = KEY, scopes = { 1 } } end, "scopes must be a list of strings" },
  { function() livekit.new{ api_key = "k", api_secret = KEY, server_url = "wss://x", client_may_set = { "hidden" } } end,
    "client_may_set names hidden" },
  { function() assemblyai.new{ product = "lemur" } end, "product must be one of streaming, voice_agent" },
  { function() assemblyai.new("x") end, "expected a table of options" },
}
for _, case in ipairs(bad) do check.raises(case[1], case[2]) end

-- The requests (pure builders): URL, the auth header as a template, the JSON body.
local cfg = common.check("t", { api_key = KEY, session = { type = "transcription" } }, {
  api_key = { type = "secret" }, session = { type = "table" }, expires_in_seconds = { type = "integer", default = 600 },
  base_url = { type = "url", default = "https://api.openai.com" }, connect_url = { type = "url", default = "https://c" },
})
local rq = openai.request(cfg, { user = "u1", expires_in_seconds = 30 })
check.equal(rq.url, "https://api.openai.com/v1/realtime/client_secrets", "openai url")
check.equal(rq.headers.Authorization[1], "Bearer ", "openai auth scheme")
check.equal(rq.headers.Authorization[2] == KEY, true, "openai auth key is the handle")
check.equal(rq.headers["OpenAI-Safety-Identifier"], "u1", "openai user reference")
check.equal(rq.json.expires_after, { anchor = "created_at", seconds = 30 }, "openai expiry")
local token, info = openai.parse({ value = "ek_1", expires_at = 1100, session = { type = "transcription" } }, cfg, {}, 1000)
check.equal({ token, info.expires_in_seconds, info.session_type }, { "ek_1", 100, "transcription" }, "openai answer")
check.equal(select(2, openai.parse({}, cfg, {}, 0)), "the upstream answered without a client secret value", "openai no value")

local g = { api_key = KEY, model = "gemini-x", config = { generationConfig = { temperature = 0.5 } }, uses = 1,
            expires_in_seconds = 60, session_seconds = 1800, base_url = "https://g", lock_additional_fields = { "temperature" } }
rq = gemini.request(g, {}, 1700000000)
check.equal(rq.headers["x-goog-api-key"] == KEY, true, "gemini key header")
check.equal(rq.json.bidiGenerateContentSetup, { model = "models/gemini-x", generationConfig = { temperature = 0.5 } },
            "gemini constraints")
check.equal({ rq.json.newSessionExpireTime, rq.json.expireTime, rq.json.fieldMask },
            { "2023-11-14T22:14:20Z", "2023-11-14T22:43:20Z", "temperature" }, "gemini times")

local d = { api_key = KEY, mode = "key", project_id = "a/b", scopes = { "usage:write" }, tags = { "app" }, comment = "c",
            expires_in_seconds = 60, base_url = "https://d", websocket_url = "wss://d" }
rq = deepgram.request(d, { user = "alice" })
check.equal(rq.url, "https://d/v1/projects/a%2Fb/keys", "deepgram key url escapes the project")
check.equal(rq.json, { comment = "c", scopes = { "usage:write" }, tags = { "app", "alice" }, time_to_live_in_seconds = 60 },
            "deepgram key body carries the user as a tag")
check.equal(d.tags, { "app" }, "the policy's tags are not changed")
d.mode = "grant"
check.equal(deepgram.request(d, { expires_in_seconds = 5 }).json, { ttl_seconds = 5 }, "deepgram grant body")
token, info = deepgram.parse({ access_token = "jwt", expires_in = 30.0 }, d, {})
check.equal({ token, info.expires_in_seconds, info.scheme }, { "jwt", 30, "Bearer" }, "deepgram grant answer")

local s = { api_key = KEY, usage_type = "transcribe_websocket", expires_in_seconds = 60, single_use = true, base_url = "https://s" }
check.equal(soniox.request(s, { user = "alice" }).json, { usage_type = "transcribe_websocket", expires_in_seconds = 60,
  single_use = true, client_reference_id = "alice" }, "soniox body")
token, info = soniox.parse({ api_key = "temp:X", expires_at = "2025-02-22T22:47:37.150Z" }, s, {},
                           common.parse_time("2025-02-22T22:46:37Z"))
check.equal({ token, info.expires_in_seconds }, { "temp:X", 60 }, "soniox answer")

rq = speechmatics.request({ api_key = KEY, type = "rt", expires_in_seconds = 60, base_url = "https://m" }, { user = "u" })
check.equal({ rq.url, rq.query, rq.json }, { "https://m/v1/api_keys", { type = "rt" }, { ttl = 60, client_ref = "u" } },
            "speechmatics request")

local claims = livekit.claims({ api_key = "APIk", room = "r", expires_in_seconds = 600, grants = { roomJoin = true } },
                              { user = "bob", name = "Bob" }, 1000.7)
check.equal(claims, { iss = "APIk", sub = "bob", nbf = 1000, exp = 1600, name = "Bob", video = { roomJoin = true, room = "r" } },
            "livekit claims")

-- Times, Retry-After, the vendors' words, failure kinds.
check.equal(common.parse_time("1970-01-01T00:00:00Z"), 0, "the epoch")
check.equal(common.parse_time("2000-03-01T01:00:00+01:00"), 951868800, "an offset")
check.equal(common.parse_time("yesterday"), nil, "not a time")
check.equal(common.format_time(951868800), "2000-03-01T00:00:00Z", "formatted")
check.equal(common.retry_after("120"), 120, "delta seconds")
check.equal(common.retry_after("0"), 1, "at least 1")
check.equal(common.retry_after("999999"), 3600, "at most 3600")
check.equal(common.retry_after("Wed, 21 Oct 2015 07:28:00 GMT", common.parse_time("2015-10-21T07:27:00Z")), 60, "a date")
check.equal(common.retry_after("soon"), nil, "not understood")
check.equal(common.vendor_message('{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials."}'), ": Invalid credentials.",
            "deepgram's words")
check.equal(common.vendor_message('{"error":{"message":"Incorrect API key"}}'), ": Incorrect API key", "openai's words")
check.equal(common.vendor_message("<html>"), "", "no words")
for status, kind in pairs({ [401] = "unauthorized", [403] = "unauthorized", [429] = "rate_limited", [400] = "bad_request",
                            [502] = "upstream_error", [404] = "bad_response" }) do
  check.equal(common.kind_of_status(status), kind, "status " .. status)
end

check.done()
