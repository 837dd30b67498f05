-- tokend.streaming: AssemblyAI's Universal-Streaming (v3) options and limits, and the
-- streaming query a policy allows a client to ask for.
--
--   local streaming = require "tokend.streaming"
--   local options = streaming.options{ speech_models = { "universal-streaming-english" } }
--   local url, parameter, why = options:websocket_url(req.query)   -- or nil, "keyterms", "..."
--   return 200, options:offer()                                    -- what /config tells the page
--
-- The module needs no server: it runs in the stock lua5.4 with lua-cjson.
local cjson = require "cjson"

local streaming = {}

-- The API's own limits (https://www.assemblyai.com/docs/api-reference/streaming-api).
streaming.limits = {
  expires_in_seconds = { 1, 600 },                  -- the window to open the WebSocket
  max_session_duration_seconds = { 60, 10800 },     -- a session's length; 10800 by default
  keyterms = 100,                                   -- key terms in keyterms_prompt
  keyterm_length = 50,                              -- characters in one key term
  max_speakers = { 1, 10 },
  inactivity_timeout = { 5, 3600 },
  sample_rate = { 8000, 48000 },                    -- the audio's samples a second; 16000 by default
}

-- The speech models, those that detect the language, and the languages they know.
streaming.speech_models = { "universal-streaming-english", "universal-streaming-multilingual", "u3-rt-pro" }
streaming.language_detection_models = { "universal-streaming-multilingual" }
streaming.languages = { "en", "es", "fr", "de", "it", "pt" }

-- End-of-turn detection, as the API documents its presets (aggressive, balanced,
-- conservative), named for what a user feels.
streaming.turn_presets = {
  { name = "fast", end_of_turn_confidence_threshold = 0.4, min_turn_silence = 160, max_turn_silence = 400 },
  { name = "balanced", end_of_turn_confidence_threshold = 0.4, min_turn_silence = 400, max_turn_silence = 1280 },
  { name = "patient", end_of_turn_confidence_threshold = 0.7, min_turn_silence = 800, max_turn_silence = 3600 },
}

local TURN_PARAMETERS = { "end_of_turn_confidence_threshold", "min_turn_silence", "max_turn_silence" }

local function escape(s)
  return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local function listed(list, value)
  for _, v in ipairs(list) do if v == value then return v end end
end

local function by_name(presets, name)
  for _, p in ipairs(presets) do if p.name == name then return p end end
end

local function names(presets)
  local out = {}
  for i, p in ipairs(presets) do out[i] = p.name end
  return out
end

-- Checks that every value of list (a table of strings) is one of known; raises naming what.
local function check_subset(list, known, what)
  if type(list) ~= "table" then error("tokend.streaming.options: " .. what .. " must be a list", 3) end
  for _, v in ipairs(list) do
    if not listed(known, v) then
      error(("tokend.streaming.options: %s has %q; known: %s"):format(what, tostring(v), table.concat(known, ", ")), 3)
    end
  end
  return list
end

local Options = {}
Options.__index = Options

-- A yes/no query argument: true, false (also when absent), or nil and why.
local function flag(q, name, offered, why_not)
  local v = q[name]
  if v == nil or v == "false" then return false end
  if v ~= "true" then return nil, name .. " must be true or false" end
  if not offered then return nil, name .. (why_not or " is not offered by this server") end
  return true
end

-- The query string of the streaming parameters that q (a request's decoded query) asks
-- for, checked against the policy; or nil, the argument at fault and why.
function Options:query(q)
  q = q or {}
  local model = q.speech_model or self.default_speech_model
  if not listed(self.speech_models, model) then
    return nil, "speech_model", "speech_model must be one of " .. table.concat(self.speech_models, ", ")
  end
  local params = { "speech_model=" .. escape(model) }
  local speakers, why = flag(q, "speaker_labels", self.speaker_labels)
  if speakers == nil then return nil, "speaker_labels", why end
  if speakers then params[#params + 1] = "speaker_labels=true" end
  local detecting = self.language_detection and listed(self.language_detection_models, model)
  local detect
  detect, why = flag(q, "language_detection", detecting,
                     self.language_detection and " needs speech_model " .. table.concat(self.language_detection_models, " or "))
  if detect == nil then return nil, "language_detection", why end
  if detect then params[#params + 1] = "language_detection=true" end
  if q.keyterms and q.keyterms ~= "" then
    local terms = {}
    for term in q.keyterms:gmatch("[^,]+") do
      term = term:match("^%s*(.-)%s*$")
      if #term > streaming.limits.keyterm_length then
        return nil, "keyterms", ("each key term is at most %d characters"):format(streaming.limits.keyterm_length)
      end
      if term ~= "" then terms[#terms + 1] = term end
    end
    if #terms > self.max_keyterms then return nil, "keyterms", ("at most %d key terms"):format(self.max_keyterms) end
    if #terms > 0 then params[#params + 1] = "keyterms_prompt=" .. escape(cjson.encode(terms)) end
  end
  local turn = by_name(self.turn_presets, q.turn or self.default_turn_preset)
  if not turn then
    return nil, "turn", "turn must be " .. table.concat(names(self.turn_presets), ", "):gsub(", ([^,]*)$", " or %1")
  end
  for _, name in ipairs(TURN_PARAMETERS) do params[#params + 1] = name .. "=" .. turn[name] end
  return table.concat(params, "&")
end

-- The websocket_url a client streams to with what q asks for (the policy's defaults for
-- what it does not), on base (a data zone's socket; default: the policy's base_url); or
-- nil, the argument at fault and why.
function Options:websocket_url(q, base)
  if (base == nil or base == self.base_url) and (not q or (q.speech_model == nil and q.speaker_labels == nil
      and q.language_detection == nil and q.keyterms == nil and q.turn == nil)) then
    return self.default_url                  -- nothing chosen: the URL made once
  end
  q = q or {}
  local query, parameter, why = self:query(q)
  if not query then return nil, parameter, why end
  return (base or self.base_url) .. "?" .. query
end

-- The data zone q (a request's decoded query) asks for among the policy's regions: its
-- name, or false for the default host; or nil, "region" and why (naming the region).
function Options:region(q)
  local asked = q and q.region
  if asked == nil or asked == "" then return self.default_region or false end
  if listed(self.regions, asked) then return asked end
  if #self.regions == 0 then return nil, "region", ("region %q is not offered by this server"):format(asked) end
  return nil, "region", ("region %q is not offered (one of %s)"):format(asked, table.concat(self.regions, ", "))
end

-- The options of a relayed session (tokend.relay's query and sample_rate) for what q (a
-- request's decoded query) asks, checked against the policy; or nil, the argument at fault
-- and why. A relayed session streams to the server's own host: no region. The encoding is
-- the policy's, not the client's (tokend.relay's encoding option; pcm_s16le by default).
function Options:relay(q)
  q = q or {}
  if q.region ~= nil then return nil, "region", "a relayed session streams to this server's region" end
  local query, parameter, why = self:query(q)
  if not query then return nil, parameter, why end
  local low, high = streaming.limits.sample_rate[1], streaming.limits.sample_rate[2]
  local rate = math.tointeger(tonumber(q.sample_rate or "16000"))
  if not rate or rate < low or rate > high then
    return nil, "sample_rate", ("sample_rate must be an integer %d..%d"):format(low, high)
  end
  return { query = query, sample_rate = rate }
end

-- What a page may offer: the /config answer.
function Options:offer()
  return {
    speech_models = self.speech_models, default_speech_model = self.default_speech_model,
    language_detection = self.language_detection, language_detection_models = self.language_detection_models,
    speaker_labels = self.speaker_labels, max_keyterms = self.max_keyterms,
    keyterm_max_length = streaming.limits.keyterm_length,
    turn_presets = names(self.turn_presets), default_turn_preset = self.default_turn_preset,
    regions = #self.regions > 0 and self.regions or nil, default_region = self.default_region,
  }
end

-- The streaming URL of the server this runs in (tokend.config.websocket_url), if any.
local function server_websocket_url()
  local ok, tokend = pcall(require, "tokend")
  return ok and type(tokend) == "table" and tokend.config and tokend.config.websocket_url or nil
end

-- streaming.options{speech_models, default_speech_model, language_detection,
-- speaker_labels, max_keyterms, turn_presets, default_turn_preset, base_url, regions,
-- default_region}: the options a policy allows. Every field is optional (the API's full
-- range by default; no region: the default host); a value the API does not know raises.
function streaming.options(o)
  o = o or {}
  if type(o) ~= "table" then error("tokend.streaming.options: expected a table of options", 2) end
  local self = setmetatable({}, Options)
  self.speech_models = check_subset(o.speech_models or streaming.speech_models, streaming.speech_models, "speech_models")
  self.default_speech_model = o.default_speech_model or self.speech_models[1]
  if not listed(self.speech_models, self.default_speech_model) then
    error("tokend.streaming.options: default_speech_model must be one of speech_models", 2)
  end
  self.language_detection_models = streaming.language_detection_models
  self.language_detection = o.language_detection ~= false
  self.speaker_labels = o.speaker_labels ~= false
  self.max_keyterms = o.max_keyterms or streaming.limits.keyterms
  if math.type(self.max_keyterms) ~= "integer" or self.max_keyterms < 0 or self.max_keyterms > streaming.limits.keyterms then
    error(("tokend.streaming.options: max_keyterms must be an integer 0..%d"):format(streaming.limits.keyterms), 2)
  end
  self.turn_presets = o.turn_presets or streaming.turn_presets
  for _, p in ipairs(self.turn_presets) do
    for _, name in ipairs(TURN_PARAMETERS) do
      if type(p.name) ~= "string" or type(p[name]) ~= "number" then
        error("tokend.streaming.options: a turn preset needs a name and " .. table.concat(TURN_PARAMETERS, ", "), 2)
      end
    end
  end
  self.default_turn_preset = o.default_turn_preset or "balanced"
  if not by_name(self.turn_presets, self.default_turn_preset) then
    error("tokend.streaming.options: default_turn_preset must name one of turn_presets", 2)
  end
  self.regions = o.regions or {}
  if type(self.regions) ~= "table" then error("tokend.streaming.options: regions must be a list", 2) end
  for _, r in ipairs(self.regions) do
    if type(r) ~= "string" then error("tokend.streaming.options: regions must be a list of names", 2) end
  end
  self.default_region = o.default_region
  if self.default_region ~= nil and not listed(self.regions, self.default_region) then
    error("tokend.streaming.options: default_region must be one of regions", 2)
  end
  self.base_url = o.base_url or server_websocket_url()
  if type(self.base_url) ~= "string" then
    error("tokend.streaming.options: base_url is needed outside a tokend server", 2)
  end
  self.default_url = self.base_url .. "?" .. assert(self:query({}))
  return self
end

return streaming
