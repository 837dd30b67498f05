-- tokend.streaming in the stock lua5.4, without a server: cases as data, a query in, the
-- URL or the refusal out.
local streaming = require "tokend.streaming"
local check = require "check"

local BASE = "wss://streaming.example/v3/ws"
local DEFAULT = "speech_model=universal-streaming-english&end_of_turn_confidence_threshold=0.4"
  .. "&min_turn_silence=400&max_turn_silence=1280"
local all = streaming.options{ base_url = BASE }
local english_only = streaming.options{
  base_url = BASE, speech_models = { "universal-streaming-english" }, speaker_labels = false, max_keyterms = 2,
}

local cases = {
  -- options, query, the URL's query (or false), the parameter at fault, the message
  { all, {}, DEFAULT },
  { all, { speech_model = "u3-rt-pro" }, "speech_model=u3-rt-pro&end_of_turn_confidence_threshold=0.4&min_turn_silence=400&max_turn_silence=1280" },
  { all, { speech_model = "whisper-rt" }, false, "speech_model",
    "speech_model must be one of universal-streaming-english, universal-streaming-multilingual, u3-rt-pro" },
  { all, { speaker_labels = "true" }, "speech_model=universal-streaming-english&speaker_labels=true&end_of_turn_confidence_threshold=0.4&min_turn_silence=400&max_turn_silence=1280" },
  { all, { speaker_labels = "yes" }, false, "speaker_labels", "speaker_labels must be true or false" },
  { english_only, { speaker_labels = "true" }, false, "speaker_labels", "speaker_labels is not offered by this server" },
  { all, { language_detection = "true" }, false, "language_detection",
    "language_detection needs speech_model universal-streaming-multilingual" },
  { all, { speech_model = "universal-streaming-multilingual", language_detection = "true" },
    "speech_model=universal-streaming-multilingual&language_detection=true&end_of_turn_confidence_threshold=0.4&min_turn_silence=400&max_turn_silence=1280" },
  { all, { keyterms = " tokend , AssemblyAI,," },
    "speech_model=universal-streaming-english&keyterms_prompt=%5B%22tokend%22%2C%22AssemblyAI%22%5D&end_of_turn_confidence_threshold=0.4&min_turn_silence=400&max_turn_silence=1280" },
  { all, { keyterms = ("x"):rep(51) }, false, "keyterms", "each key term is at most 50 characters" },
  { english_only, { keyterms = "a,b,c" }, false, "keyterms", "at most 2 key terms" },
  { all, { turn = "fast" }, "speech_model=universal-streaming-english&end_of_turn_confidence_threshold=0.4&min_turn_silence=160&max_turn_silence=400" },
  { all, { turn = "slow" }, false, "turn", "turn must be fast, balanced or patient" },
  { all, { speech_model = "u3-rt-pro&token=x" }, false, "speech_model",
    "speech_model must be one of universal-streaming-english, universal-streaming-multilingual, u3-rt-pro" },
}

for i, c in ipairs(cases) do
  local options, query, want, parameter, why = table.unpack(c)
  local url, got_parameter, got_why = options:websocket_url(query)
  if want then
    check.equal(url, BASE .. "?" .. want, "case " .. i)
  else
    check.equal({ url, got_parameter, got_why }, { nil, parameter, why }, "case " .. i)
  end
end

-- /config's answer follows the policy.
check.equal(english_only:offer(), {
  speech_models = { "universal-streaming-english" }, default_speech_model = "universal-streaming-english",
  language_detection = true, language_detection_models = { "universal-streaming-multilingual" },
  speaker_labels = false, max_keyterms = 2, keyterm_max_length = 50,
  turn_presets = { "fast", "balanced", "patient" }, default_turn_preset = "balanced",
}, "offer")

-- Data zones: the region a query asks for among the policy's, and the socket on its base.
local zones = streaming.options{ base_url = BASE, regions = { "us", "eu" } }
for i, c in ipairs {
  -- options, query, the region (false: the default host), the parameter at fault, why
  { zones, {}, false },
  { zones, { region = "" }, false },
  { zones, { region = "eu" }, "eu" },
  { zones, { region = "mars" }, nil, "region", 'region "mars" is not offered (one of us, eu)' },
  { all, { region = "eu" }, nil, "region", 'region "eu" is not offered by this server' },
  { streaming.options{ base_url = BASE, regions = { "eu" }, default_region = "eu" }, {}, "eu" },
} do
  local options, query, want, parameter, why = table.unpack(c)
  check.equal({ options:region(query) }, want == nil and { nil, parameter, why } or { want }, "region case " .. i)
end
check.equal(zones:websocket_url({}, "wss://eu.example/v3/ws"), "wss://eu.example/v3/ws?" .. DEFAULT, "a zone's socket")
check.equal(zones:websocket_url({ turn = "fast" }, "wss://eu.example/v3/ws"):match("^wss://eu%.example/v3/ws%?"),
            "wss://eu.example/v3/ws?", "a zone's socket with choices")
check.equal(zones:offer().regions, { "us", "eu" }, "the page is offered the zones")
check.equal(all:offer().regions, nil, "no zones, no choice")

-- A relayed session's options: the upstream's query, the audio's rate and encoding.
for i, c in ipairs {
  -- options, query, tokend.relay's options (or nil), the parameter at fault, why
  { all, {}, { query = DEFAULT, sample_rate = 16000 } },
  { all, { sample_rate = "8000", encoding = "pcm_mulaw" }, { query = DEFAULT, sample_rate = 8000 } },  -- the policy's encoding
  { all, { sample_rate = "48000.0" }, { query = DEFAULT, sample_rate = 48000 } },
  { all, { sample_rate = "7999" }, nil, "sample_rate", "sample_rate must be an integer 8000..48000" },
  { all, { sample_rate = "16000.5" }, nil, "sample_rate", "sample_rate must be an integer 8000..48000" },
  { all, { sample_rate = "fast" }, nil, "sample_rate", "sample_rate must be an integer 8000..48000" },
  { zones, { region = "eu" }, nil, "region", "a relayed session streams to this server's region" },
  { english_only, { speaker_labels = "true" }, nil, "speaker_labels", "speaker_labels is not offered by this server" },
} do
  local options, query, want, parameter, why = table.unpack(c)
  check.equal({ options:relay(query) }, want == nil and { nil, parameter, why } or { want }, "relay case " .. i)
end

-- A policy the API cannot serve is a programmer's error, raised at load.
for _, bad in ipairs {
  { base_url = BASE, speech_models = { "nope" } },
  { base_url = BASE, default_speech_model = "u3-rt-pro", speech_models = { "universal-streaming-english" } },
  { base_url = BASE, max_keyterms = 101 },
  { base_url = BASE, default_turn_preset = "sluggish" },
  { speech_models = { "u3-rt-pro" } },       -- no base URL outside a server
  { base_url = BASE, regions = "eu" },
  { base_url = BASE, regions = { "eu" }, default_region = "us" },
} do
  check.raises(function() streaming.options(bad) end, "test_streaming.lua:%d+: tokend%.streaming%.options: ")
end

-- The API's limits, in one place.
check.equal(streaming.limits.expires_in_seconds, { 1, 600 }, "expires range")
check.equal(streaming.limits.max_session_duration_seconds, { 60, 10800 }, "session range")
check.done()
