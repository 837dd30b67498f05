-- tokend.settings: a script's named values, each of which a variable of the same name in
-- the environment or .env overrides without editing the script.
--
--   local policy = require "tokend.settings" {
--     TOKENS_PER_MINUTE = 10,                          -- TOKENS_PER_MINUTE=30 in .env
--     ALLOWED_ORIGINS = { "http://localhost:*" },      -- a comma-separated list, or JSON
--   }
--   print(policy.TOKENS_PER_MINUTE)
--
-- A variable is read as its default's type: a number (an integer where the default is
-- one), true/false, a string, or a list (comma-separated strings, or a JSON array; any
-- other table as JSON). A value that does not read as that type raises at load, naming
-- the variable. Reading a name the table does not have raises too (a typo in the script).
local cjson = require "cjson.safe"

local function env(name)
  local ok, tokend = pcall(require, "tokend")
  if ok and type(tokend) == "table" and tokend.env then return tokend.env(name) end
  return os.getenv(name)
end

local function is_list_of_strings(t)
  for i, v in pairs(t) do
    if math.type(i) ~= "integer" or type(v) ~= "string" then return false end
  end
  return true
end

-- The text of variable name read as the type of default; raises when it does not fit.
local function convert(name, text, default)
  local kind = type(default)
  local function bad(what) error(("%s=%q: expected %s"):format(name, text, what), 4) end
  if kind == "number" then
    local n = tonumber(text)
    if not n or n ~= n or n == math.huge or n == -math.huge then bad("a number") end
    if math.type(default) == "integer" then
      n = math.tointeger(n) or bad("an integer")
    end
    return n
  elseif kind == "boolean" then
    if text == "true" or text == "1" then return true end
    if text == "false" or text == "0" then return false end
    bad("true or false")
  elseif kind == "string" then
    return text
  elseif kind == "table" then
    if text:match("^%s*[%[{]") then
      local v = cjson.decode(text)
      if type(v) ~= "table" then bad("JSON") end
      return v
    end
    if not is_list_of_strings(default) then bad("JSON") end
    local list = {}
    for item in text:gmatch("[^,]+") do
      item = item:match("^%s*(.-)%s*$")
      if item ~= "" then list[#list + 1] = item end
    end
    return list
  end
  bad("no override: a " .. kind .. " cannot be set from the environment")
end

return function(defaults)
  if type(defaults) ~= "table" then error("tokend.settings: expected a table of named values", 2) end
  local values = {}
  for name, default in pairs(defaults) do
    if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") then
      error("tokend.settings: names are identifiers (got " .. tostring(name) .. ")", 2)
    end
    local text = env(name)
    if text ~= nil then values[name] = convert(name, text, default) else values[name] = default end
  end
  return setmetatable(values, {
    __index = function(_, name) error("tokend.settings: no value named " .. tostring(name), 2) end,
  })
end
