-- check: the few assertions the stock-lua tests of src/lua use (no test framework needed).
local check = { failures = 0, count = 0 }

local function show(v, seen)
  if type(v) ~= "table" then return type(v) == "string" and ("%q"):format(v) or tostring(v) end
  seen = seen or {}
  if seen[v] then return "<cycle>" end
  seen[v] = true
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = tostring(k) .. "=" .. show(v[k], seen) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function fail(what)
  check.failures = check.failures + 1
  io.stderr:write("FAIL ", what, "\n")
end

function check.equal(got, want, what)
  check.count = check.count + 1
  if not same(got, want) then fail(("%s: got %s, want %s"):format(what, show(got), show(want))) end
end

function check.raises(fn, pattern)
  check.count = check.count + 1
  local ok, err = pcall(fn)
  if ok then return fail("expected an error matching " .. pattern) end
  if not tostring(err):find(pattern) then fail(("error %q does not match %s"):format(tostring(err), pattern)) end
end

function check.done()
  print(("%d checks, %d failed"):format(check.count, check.failures))
  os.exit(check.failures == 0 and 0 or 1)
end

return check
