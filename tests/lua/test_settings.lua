-- tokend.settings in the stock lua5.4: the environment overrides a script's named values,
-- read as each default's type. tokend.env is a stand-in here, reading ENV.
local ENV = {
  T_NUMBER = "30", T_FLOAT = "0.25", T_BOOL = "false", T_STRING = "from the environment",
  T_LIST = " http://a, http://b:*,", T_JSON = '[{"name":"q","n":1}]',
  T_BAD_NUMBER = "x", T_BAD_INTEGER = "1.5", T_BAD_BOOL = "yes", T_BAD_JSON = "[1,", T_NAN = "nan",
}
package.preload.tokend = function() return { env = function(name) return ENV[name] end } end
local settings = require "tokend.settings"
local check = require "check"

local values = settings {
  T_NUMBER = 10, T_FLOAT = 0.5, T_BOOL = true, T_STRING = "a", T_LIST = { "x" }, T_JSON = { { name = "p" } },
  T_UNSET = 7, T_FALSE = false,
}
check.equal(values.T_NUMBER, 30, "an integer")
check.equal(math.type(values.T_NUMBER), "integer", "stays an integer")
check.equal(values.T_FLOAT, 0.25, "a float")
check.equal(values.T_BOOL, false, "a boolean")
check.equal(values.T_STRING, "from the environment", "a string")
check.equal(values.T_LIST, { "http://a", "http://b:*" }, "a comma-separated list")
check.equal(values.T_JSON, { { name = "q", n = 1 } }, "JSON for other tables")
check.equal(values.T_UNSET, 7, "the default when unset")
check.equal(values.T_FALSE, false, "a false default")
check.raises(function() return values.T_TYPO end, "no value named T_TYPO")

-- A value that does not read as its default's type raises at load, naming it.
for name, default in pairs { T_BAD_NUMBER = 1, T_BAD_INTEGER = 1, T_BAD_BOOL = true, T_BAD_JSON = { { a = 1 } },
                             T_NAN = 1.5 } do
  check.raises(function() settings { [name] = default } end, "test_settings.lua:%d+: " .. name .. "=")
end
check.raises(function() settings { ["not a name"] = 1 } end, "names are identifiers")
check.raises(function() settings "x" end, "expected a table")
check.done()
