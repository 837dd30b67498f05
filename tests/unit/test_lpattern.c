/* test_lpattern.c: tokend's pattern functions against Lua's own on random patterns and
 * subjects (same results, same errors), and the budget stopping a pathological search. */
#include <stdlib.h>
#include <time.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "check.h"
#include "lpattern.h"
#include "lstate.h"

/* Runs in a plain state: `string` is Lua's, `mine` holds tokend's. Generates patterns from
 * pieces that exercise every feature, compares every function, and returns the number of
 * cases and the first difference. */
static const char differential[] =
        "local seed, rounds = ...\n"
        "math.randomseed(seed)\n"
        "local pieces = { 'a', 'b', '.', '%a', '%d', '%s', '%W', '[ab]', '[^a]', '[a-c]', '[%d)]', '[]]', '%b()',\n"
        "  '%f[%w]', '%f[%W]', '(', ')', '()', '%1', '%%', '^', '$', '%(', 'x', '[', '%',\n"
        "  '%c', '%g', '%l', '%p', '%u', '%x', '%w', '%A', '%C', '%D', '%G', '%L', '%P', '%S', '%U', '%X',\n"
        "  '[%u%p]', '[^%S]', '%@', '%\\200', '%z', '%Z', '[%z]', '[^%z]', '%f[%z]' }\n"
        "local quants = { '', '', '', '*', '+', '-', '?' }\n"
        "local alphabet = { 'a', 'b', 'c', '(', ')', '1', ' ', 'x', '%', ']', 'A', 'F', 'G', '\\t', '\\0', '@',\n"
        "  '\\200', '\\255', '`' }\n"
        "local function gen_pattern()\n"
        "  local t = {}\n"
        "  for _ = 1, math.random(0, 6) do t[#t + 1] = pieces[math.random(#pieces)] .. quants[math.random(#quants)] "
        "end\n"
        "  return table.concat(t)\n"
        "end\n"
        "local function gen_subject()\n"
        "  local t = {}\n"
        "  for _ = 1, math.random(0, 12) do t[#t + 1] = alphabet[math.random(#alphabet)] end\n"
        "  return table.concat(t)\n"
        "end\n"
        "local function pack(ok, ...) return { ok = ok, n = select('#', ...), ... } end\n"
        "local function same(a, b)\n"
        "  if a.ok ~= b.ok then return false end\n"
        "  if not a.ok then return true end\n"
        "  if a.n ~= b.n then return false end\n"
        "  for i = 1, a.n do if a[i] ~= b[i] then return false end end\n"
        "  return true\n"
        "end\n"
        "local function all(gm, s, p, init)\n"
        "  local out = {}\n"
        "  for a, b, c in gm(s, p, init) do out[#out + 1] = tostring(a) .. '|' .. tostring(b) .. '|' .. tostring(c)\n"
        "    if #out > 50 then break end end\n"
        "  return table.concat(out, ',')\n"
        "end\n"
        "local repls = { '<%0>', '%1-%1', '%%', 'z', { a = 'A', ab = false }, function(x) return x and #x end,\n"
        "  function() return nil end, '%9' }\n"
        "function string.search(s, p) return string.find(s, p) ~= nil end\n"
        "local cases = 0\n"
        "for _ = 1, rounds do\n"
        "  local s, p = gen_subject(), gen_pattern()\n"
        "  local init = math.random(-4, 14)\n"
        "  local repl = repls[math.random(#repls)]\n"
        "  local maxn = math.random(0, 3) == 0 and 1 or nil\n"
        "  local checks = {\n"
        "    { 'find', function(f) return f.find(s, p, init) end },\n"
        "    { 'find plain', function(f) return f.find(s, p, init, true) end },\n"
        "    { 'match', function(f) return f.match(s, p, init) end },\n"
        "    { 'gmatch', function(f) return all(f.gmatch, s, p, init) end },\n"
        "    { 'gsub', function(f) return f.gsub(s, p, repl, maxn) end },\n"
        "    { 'search from C', function(f) return f.search(s, p) end },\n"
        "  }\n"
        "  for _, c in ipairs(checks) do\n"
        "    cases = cases + 1\n"
        "    local a, b = pack(pcall(c[2], string)), pack(pcall(c[2], mine))\n"
        "    if not same(a, b) then\n"
        "      return cases, string.format('%s(%q, %q, %s): lua %s %s, tokend %s %s', c[1], s, p, init,\n"
        "        tostring(a.ok), tostring(a[1]), tostring(b.ok), tostring(b[1]))\n"
        "    end\n"
        "  end\n"
        "end\n"
        "return cases, nil\n";

/* mine.search(s, p): lpattern_search from C, true or false, or an error like Lua's. */
static int search_from_c(lua_State *L) {
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls), *p = luaL_checklstring(L, 2, &lp);
    int rc = lpattern_search(s, ls, p, lp, 1000000);
    if (rc < 0) return luaL_error(L, "malformed pattern");
    lua_pushboolean(L, rc);
    return 1;
}

static void test_same_as_lua(void) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_newtable(L);
    lpattern_open(L);
    lua_pushcfunction(L, search_from_c);
    lua_setfield(L, -2, "search");
    lua_setglobal(L, "mine");
    unsigned seed = (unsigned)time(NULL);
    CHECK(luaL_loadstring(L, differential) == LUA_OK, "%s", lua_tostring(L, -1));
    lua_pushinteger(L, seed);
    lua_pushinteger(L, 20000);
    int rc = lua_pcall(L, 2, 2, 0);
    CHECK(rc == LUA_OK, "differential run: %s", lua_tostring(L, -1));
    if (rc == LUA_OK) {
        CHECK(lua_tointeger(L, -2) >= 100000, "cases run: %lld", (long long)lua_tointeger(L, -2));
        CHECK(lua_isnil(L, -1), "seed %u: %s", seed, lua_tostring(L, -1));
    }
    lua_close(L);
}

/* Fixed cases with known answers, so that a bug shared by both cannot hide. */
static void test_known(void) {
    static const char *const cases[][2] = {
        { "return string.find('hello world', 'o w')", "5 7" },
        { "return string.find('hello', 'l+')", "3 4" },
        { "return string.match('key = value', '(%w+)%s*=%s*(%w+)')", "key value" },
        { "return string.match('f(a(b)c)d', '%b()')", "(a(b)c)" },
        { "return string.gsub('hello world', '%w+', '<%0>')", "<hello> <world> 2" },
        { "return string.gsub('abc', '', '-')", "-a-b-c- 4" },
        { "return string.match('  x  ', '^%s*(.-)%s*$')", "x" },
        { "return string.find('THE (quick) fox', '%f[%a]%a+%f[%A]', 5)", "6 10" },
        { "return string.match('hello', '()ll()')", "3 5" },
        { "return string.find('a\\0b', '%z')", "2 2" },
        { "return string.find('\\0\\0a', '%Z')", "3 3" },
        { "return string.gsub('a\\0b\\0', '[%z]', '.')", "a.b. 2" },
        { "local t = {} for k, v in string.gmatch('a=1, b=2', '(%w+)=(%w+)') do t[#t+1] = k..v end return "
          "table.concat(t, ',')",
          "a1,b2" },
    };
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_getglobal(L, "string");
    lpattern_open(L);
    lua_pop(L, 1);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lua_settop(L, 0);
        if (luaL_dostring(L, cases[i][0]) != LUA_OK) {
            CHECK(0, "%s: %s", cases[i][0], lua_tostring(L, -1));
            continue;
        }
        luaL_Buffer b;
        int n = lua_gettop(L);
        luaL_buffinit(L, &b);
        for (int k = 1; k <= n; k++) {
            if (k > 1) luaL_addchar(&b, ' ');
            luaL_tolstring(L, k, NULL);
            luaL_addvalue(&b);
        }
        luaL_pushresult(&b);
        CHECK_STR(lua_tostring(L, -1), cases[i][1], cases[i][0]);
    }
    lua_close(L);
}

/* A search that backtracks for ever stops at the budget, in well under a second. */
static void test_budget(void) {
    char err[200];
    lua_State *L = lstate_new((size_t)64 << 20, err, sizeof err);
    CHECK(L != NULL, "%s", err);
    lbudget budget = { .limit = 10000000 };
    lbudget *outer = lbudget_enter(&budget);
    clock_t started = clock();
    int rc = luaL_dostring(L, "return string.find(string.rep('a', 30000), '.-.-.-.-b')");
    double seconds = (double)(clock() - started) / CLOCKS_PER_SEC;
    CHECK(rc != LUA_OK && strstr(lua_tostring(L, -1), "instruction limit exceeded"), "got %s", lua_tostring(L, -1));
    CHECK(seconds < 2.0, "stopped after %.2f s", seconds);
    CHECK(budget.exhausted, "the budget is spent");
    /* pcall does not catch it: the budget stays spent and the error goes on. */
    lbudget_enter(outer);
    budget = (lbudget){ .limit = 10000000 };
    lbudget_enter(&budget);
    rc = luaL_dostring(
            L, "local n = 0 while true do pcall(string.find, string.rep('a', 30000), '.-.-.-.-b') n = n + 1 end");
    CHECK(rc != LUA_OK && strstr(lua_tostring(L, -1), "instruction limit exceeded"), "pcall loop: %s",
          lua_tostring(L, -1));
    lbudget_enter(outer);
    lstate_close(L);
}

int main(void) {
    test_known();
    test_same_as_lua();
    test_budget();
    return check_report("lpattern");
}
