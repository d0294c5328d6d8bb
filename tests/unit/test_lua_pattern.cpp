// postern's counting pattern matcher (filters/lua/lua_pattern.cpp) against
// Lua 5.4's own string library: the same results, captures and errors on a
// corpus of patterns and on random patterns, and a budget check that fires.
#include <catch2/catch.hpp>

#include <stdexcept>
#include <string>

#include <lua.hpp>

#include "filters/lua/lua_pattern.h"

namespace {

int g_checks = 0;
bool g_fail_budget = false;

void counting_check(lua_State* L) {
  ++g_checks;
  if (g_fail_budget) luaL_error(L, "budget");
}

// A plain Lua state with the real string library as `string` and the
// counting matcher as `bounded`.
struct PlainLua {
  lua_State* L = luaL_newstate();
  PlainLua() {
    luaL_openlibs(L);
    lua_newtable(L);
    postern::register_bounded_patterns(L, -1, counting_check);
    lua_setglobal(L, "bounded");
  }
  ~PlainLua() { lua_close(L); }
  std::string run(const std::string& code) {
    if (luaL_loadstring(L, code.c_str()) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
      std::string err = lua_tostring(L, -1);
      lua_pop(L, 1);
      return "error: " + err;
    }
    std::string out = lua_isstring(L, -1) ? lua_tostring(L, -1) : "";
    lua_pop(L, 1);
    return out;
  }
};

// Runs every case through both implementations and returns the first
// difference (or "" when none), with the number of cases compared.
const char* kCompare = R"LUA(
local function pack(...) return {n = select('#', ...), ...} end
local function show(ok, r)
  if not ok then return 'error: ' .. tostring(r) end
  local out = {}
  for i = 1, r.n do out[#out + 1] = type(r[i]) .. ':' .. tostring(r[i]) end
  return table.concat(out, '|')
end
local function call(f, ...)
  local args = pack(...)
  local ok, r = pcall(function() return pack(f(table.unpack(args, 1, args.n))) end)
  return show(ok, r)
end
local function iter(f, s, p, init)
  local ok, r = pcall(function()
    local all = {}
    for a, b, c in f(s, p, init) do
      all[#all + 1] = tostring(a) .. ',' .. tostring(b) .. ',' .. tostring(c)
      if #all > 500 then break end
    end
    return pack(table.concat(all, ';'))
  end)
  return show(ok, r)
end
local compared = 0
local function compare(s, p, init)
  local repls = {'<%0>', '%1%1', '%%', 'x', '%2', '%9', '%', 12,
                 function(a, b) return b end, {a = 'A', ab = false, [1] = 'one'}}
  local checks = {
    {'find', call(string.find, s, p, init), call(bounded.find, s, p, init)},
    {'find plain', call(string.find, s, p, init, true), call(bounded.find, s, p, init, true)},
    {'match', call(string.match, s, p, init), call(bounded.match, s, p, init)},
    {'gmatch', iter(string.gmatch, s, p, init), iter(bounded.gmatch, s, p, init)},
  }
  for _, r in ipairs(repls) do
    checks[#checks + 1] = {'gsub ' .. tostring(r), call(string.gsub, s, p, r), call(bounded.gsub, s, p, r)}
    checks[#checks + 1] = {'gsub 2 ' .. tostring(r), call(string.gsub, s, p, r, 2), call(bounded.gsub, s, p, r, 2)}
  end
  for _, c in ipairs(checks) do
    compared = compared + 1
    if c[2] ~= c[3] then
      return string.format('%s(%q, %q, %s): lua %s, postern %s', c[1], s, p, tostring(init), c[2], c[3])
    end
  end
end
local subjects = {'', 'a', 'hello world', '  trim me  ', 'aaab', 'THE (quick) [brown] fox', 'key=value; k2=v2',
  'x' .. (' '):rep(50) .. 'y', 'f(a(b)c)d', 'The-THE the', '2024-01-02 10:20:30', 'a.b.c', 'a\0b\0c',
  'caf\195\169', '%d%%', '$100 ^up^', 'abcabcabc', 'mixed CASE words', '\t\n\r\v\f end'}
local patterns = {'', 'a', '^a', 'a$', '^$', '.', '.-', '.*', 'a*', 'a+', 'a-', 'a?', '^%s*(.-)%s*$', '(%w+)=(%w+)',
  '%a+', '%A+', '%d+', '%D', '%l+', '%u+', '%p', '%P+', '%s+', '%S+', '%w*', '%W', '%x+', '%c', '%g+', '%z',
  '[abc]', '[^abc]+', '[a-c]+', '[%a_][%w_]*', '[%]]', '[]]', '[^]]', '[a-]', '[-a]', '%b()', '%b[]', '%bxy',
  '%f[%w]%w+', '%f[%W]', '%f[%a]', '()a()', '()', '(a)(b)(c)', '((a)(b))', '(a*(.)%w(%s*))', '(.)%1', '(h)(e)%2',
  '%1', '(()', '())', '(', ')', '%', '[a', '[^', '%f', '%fa', '%b', '%ba', 'a**', '$a', 'a$b', '%$', '%^', '^^',
  '%.', 'the', 'THE', '[Tt]he', '(%d+)-(%d+)-(%d+)', '(%d%d):(%d%d)', '\0', '[\0]', '%z+', 'x%s-y', 'x%s*y',
  '.-b', '.-$', '%d%%', '%%', '^(%a+)', 'c?a?f?', '[%w%.]+', '[^%s]+', '(.-)%s', '()(.)()'}
for _, s in ipairs(subjects) do
  for _, p in ipairs(patterns) do
    for _, init in ipairs({1, 3, -2, 0, 100}) do
      local diff = compare(s, p, init)
      if diff then return diff end
    end
  end
end
-- Random patterns over the pattern alphabet, on random subjects.
math.randomseed(17)
local atoms = {'a', 'b', '.', '%a', '%d', '%s', '%w', '[ab]', '[^a]', '[a-c]', '(', ')', '()', '%b()', '%f[%w]',
  '*', '+', '-', '?', '^', '$', '%1', '%2', '%', '[', ']', ' ', '1'}
local chars = {'a', 'b', 'c', ' ', '(', ')', '1', '2', 'A', '.'}
for _ = 1, 3000 do
  local p, s = {}, {}
  for _ = 1, math.random(1, 7) do p[#p + 1] = atoms[math.random(#atoms)] end
  for _ = 1, math.random(0, 12) do s[#s + 1] = chars[math.random(#chars)] end
  local diff = compare(table.concat(s), table.concat(p), math.random(-3, 5))
  if diff then return diff end
end
return 'same ' .. compared
)LUA";

}  // namespace

TEST_CASE("lua pattern: the counting matcher gives Lua 5.4's results and errors", "[lua][pattern]") {
  PlainLua lua;
  g_fail_budget = false;
  std::string out = lua.run(kCompare);
  INFO(out);
  REQUIRE(out.rfind("same ", 0) == 0);
  CHECK(std::stoi(out.substr(5)) > 100000);
}

TEST_CASE("lua pattern: the budget is checked while one match runs", "[lua][pattern]") {
  PlainLua lua;
  g_fail_budget = false;
  g_checks = 0;
  // Small work: no check at all.
  CHECK(lua.run("return tostring(bounded.find('hello', 'l+'))") == "3");
  CHECK(g_checks == 0);
  // One pathological call: the check runs from inside it, and a failing
  // check ends it.
  CHECK(lua.run("return tostring(bounded.find(('a'):rep(300), 'a*a*a*b'))") == "nil");
  CHECK(g_checks > 100);
  g_fail_budget = true;
  for (const char* call : {"bounded.find(('a'):rep(60000), 'a*a*a*b')", "bounded.match(('a'):rep(60000), '(a*)*b')",
                           "bounded.gsub(('a'):rep(60000), 'a*a*b', '')",
                           "bounded.gmatch(('a'):rep(60000), 'a*a*b')()",
                           "bounded.match('x' .. (' '):rep(60000) .. 'y', '^%s*(.-)%s*$')",
                           "bounded.find(('('):rep(60000), '%b()')"}) {
    INFO(call);
    CHECK(lua.run(std::string("return ") + call).find("budget") != std::string::npos);
  }
  g_fail_budget = false;
}
