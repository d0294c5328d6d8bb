// postern.regex: PCRE2 regular expressions for rules, beside Lua patterns
// (issue 17; rspamd offers the same). Compiled once per Lua state and cached
// (kCacheSize patterns), JIT-compiled where the platform allows, and run
// under PCRE2's match and depth limits (lua.regex_match_limit,
// lua.regex_depth_limit) and a heap limit, so that no expression can
// backtrack without bound: a match past a limit is a rule error (the rule's
// on_error applies). docs/lua-api.md "Regular expressions".
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>

#include "filters/lua/lua_internal.h"

namespace postern {
namespace {

constexpr const char* kRegexMeta = "postern.regex";
constexpr const char* kCacheKey = "postern.regex.cache";
constexpr std::size_t kMaxPattern = 8 * 1024;
constexpr std::size_t kCacheSize = 256;
constexpr std::uint32_t kHeapLimitKiB = 8 * 1024;

struct CodeFree {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct MatchDataFree {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};
struct ContextFree {
  void operator()(pcre2_match_context* m) const { pcre2_match_context_free(m); }
};

// The userdata behind a regex object: the compiled code (shared by every
// object of the same pattern and flags through the cache table).
struct Regex {
  pcre2_code* code;
  std::uint32_t captures;
};

int regex_gc(lua_State* L) {
  auto* re = static_cast<Regex*>(luaL_checkudata(L, 1, kRegexMeta));
  if (re->code) pcre2_code_free(re->code);
  re->code = nullptr;
  return 0;
}

std::uint32_t parse_flags(lua_State* L, const char* flags) {
  std::uint32_t options = 0;
  for (const char* f = flags; *f; ++f) {
    switch (*f) {
      case 'i': options |= PCRE2_CASELESS; break;
      case 'm': options |= PCRE2_MULTILINE; break;
      case 's': options |= PCRE2_DOTALL; break;
      case 'x': options |= PCRE2_EXTENDED; break;
      case 'u': options |= PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF; break;
      default: luaL_error(L, "postern.regex: unknown flag '%c' (flags are i, m, s, x, u)", *f);
    }
  }
  return options;
}

// postern.regex(pattern [, flags]) -> a regex object.
int api_regex(lua_State* L) {
  std::size_t plen = 0;
  const char* pattern = luaL_checklstring(L, 1, &plen);
  const char* flags = luaL_optstring(L, 2, "");
  if (plen > kMaxPattern) return luaL_error(L, "postern.regex: pattern longer than %d octets", int(kMaxPattern));
  std::uint32_t options = parse_flags(L, flags);
  // The cache: a table in the registry, key flags .. "/" .. pattern.
  lua_getfield(L, LUA_REGISTRYINDEX, kCacheKey);
  lua_pushstring(L, flags);
  lua_pushliteral(L, "/");
  lua_pushvalue(L, 1);
  lua_concat(L, 3);
  lua_pushvalue(L, -1);
  if (lua_rawget(L, -3) == LUA_TUSERDATA) return 1;
  lua_pop(L, 1);
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), plen, options, &error, &offset, nullptr);
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    return luaL_error(L, "postern.regex: %s at offset %d", reinterpret_cast<const char*>(message),
                      static_cast<int>(offset));
  }
  std::unique_ptr<pcre2_code, CodeFree> owned(code);
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // where JIT is unavailable, the interpreter runs
  std::uint32_t captures = 0;
  pcre2_pattern_info(code, PCRE2_INFO_CAPTURECOUNT, &captures);
  auto* re = static_cast<Regex*>(lua_newuserdatauv(L, sizeof(Regex), 0));
  re->code = owned.release();
  re->captures = captures;
  luaL_setmetatable(L, kRegexMeta);
  // Count the cache (a field "n"); past kCacheSize start a new table.
  lua_getfield(L, -3, "n");
  lua_Integer n = lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (n >= static_cast<lua_Integer>(kCacheSize)) {
    lua_newtable(L);
    lua_replace(L, -4);
    lua_pushvalue(L, -3);
    lua_setfield(L, LUA_REGISTRYINDEX, kCacheKey);
    n = 0;
  }
  lua_pushinteger(L, n + 1);
  lua_setfield(L, -4, "n");
  lua_pushvalue(L, -2);  // key
  lua_pushvalue(L, -2);  // regex
  lua_rawset(L, -5);
  return 1;
}

// Runs the regex on arg 2 from arg `init_arg` (1-based, negative from the
// end). Returns the match data or null when there is no match; raises on a
// limit.
std::unique_ptr<pcre2_match_data, MatchDataFree> run_match(lua_State* L, Regex& re, std::size_t& len,
                                                           const char*& subject, std::size_t start) {
  check_rule_budget(L);
  LuaRuntime& rt = *thread_tag(L)->rt;
  std::unique_ptr<pcre2_match_data, MatchDataFree> md(pcre2_match_data_create_from_pattern(re.code, nullptr));
  std::unique_ptr<pcre2_match_context, ContextFree> mc(pcre2_match_context_create(nullptr));
  if (!md || !mc) luaL_error(L, "not enough memory");
  pcre2_set_match_limit(mc.get(), rt.options.regex_match_limit);
  pcre2_set_depth_limit(mc.get(), rt.options.regex_depth_limit);
  pcre2_set_heap_limit(mc.get(), kHeapLimitKiB);
  int rc = pcre2_match(re.code, reinterpret_cast<PCRE2_SPTR>(subject), len, start, 0, md.get(), mc.get());
  if (rc == PCRE2_ERROR_NOMATCH || rc == PCRE2_ERROR_PARTIAL) return nullptr;
  if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT ||
      rc == PCRE2_ERROR_JIT_STACKLIMIT) {
    luaL_error(L, "postern.regex: match limit exceeded (lua.regex_match_limit, lua.regex_depth_limit)");
  }
  if (rc < 0) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(rc, message, sizeof message);
    luaL_error(L, "postern.regex: %s", reinterpret_cast<const char*>(message));
  }
  return md;
}

std::size_t start_offset(lua_State* L, int arg, std::size_t len) {
  lua_Integer init = luaL_optinteger(L, arg, 1);
  if (init > 0) return static_cast<std::size_t>(init - 1);
  if (init == 0 || -init > static_cast<lua_Integer>(len)) return 0;
  return len - static_cast<std::size_t>(-init);
}

// Pushes the captures (the whole match when there are none); an unset group is false.
int push_groups(lua_State* L, const Regex& re, pcre2_match_data* md, const char* subject, bool whole_if_none) {
  PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
  if (re.captures == 0) {
    if (!whole_if_none) return 0;
    lua_pushlstring(L, subject + ov[0], ov[1] - ov[0]);
    return 1;
  }
  luaL_checkstack(L, static_cast<int>(re.captures), "too many captures");
  for (std::uint32_t i = 1; i <= re.captures; ++i) {
    if (ov[2 * i] == PCRE2_UNSET) lua_pushboolean(L, 0);
    else lua_pushlstring(L, subject + ov[2 * i], ov[2 * i + 1] - ov[2 * i]);
  }
  return static_cast<int>(re.captures);
}

// What re:match and re:find share: the regex (arg 1) run on the subject
// (arg 2) from its init (arg 3); `md` is null when nothing matched.
struct Search {
  Regex& re;
  const char* subject;
  std::unique_ptr<pcre2_match_data, MatchDataFree> md;
};

Search search(lua_State* L) {
  auto& re = *static_cast<Regex*>(luaL_checkudata(L, 1, kRegexMeta));
  std::size_t len;
  const char* s = luaL_checklstring(L, 2, &len);
  std::size_t start = start_offset(L, 3, len);
  if (start > len) return Search{re, s, nullptr};
  auto md = run_match(L, re, len, s, start);
  return Search{re, s, std::move(md)};
}

// re:match(s [, init]) -> the captures, or the whole match; nil when none.
int regex_match(lua_State* L) {
  Search found = search(L);
  if (!found.md) return luaL_pushfail(L), 1;
  return push_groups(L, found.re, found.md.get(), found.subject, true);
}

// re:find(s [, init]) -> start, end (1-based, inclusive), captures...; nil when none.
int regex_find(lua_State* L) {
  Search found = search(L);
  if (!found.md) return luaL_pushfail(L), 1;
  PCRE2_SIZE* ov = pcre2_get_ovector_pointer(found.md.get());
  lua_pushinteger(L, static_cast<lua_Integer>(ov[0] + 1));
  lua_pushinteger(L, static_cast<lua_Integer>(ov[1]));
  return 2 + push_groups(L, found.re, found.md.get(), found.subject, false);
}

// re:test(s) -> true when it matches anywhere.
int regex_test(lua_State* L) {
  auto& re = *static_cast<Regex*>(luaL_checkudata(L, 1, kRegexMeta));
  std::size_t len;
  const char* s = luaL_checklstring(L, 2, &len);
  lua_pushboolean(L, run_match(L, re, len, s, 0) != nullptr);
  return 1;
}

// The iterator of re:gmatch(s): upvalues regex, subject, next offset.
int regex_gmatch_next(lua_State* L) {
  auto& re = *static_cast<Regex*>(lua_touserdata(L, lua_upvalueindex(1)));
  std::size_t len;
  const char* s = lua_tolstring(L, lua_upvalueindex(2), &len);
  auto start = static_cast<std::size_t>(lua_tointeger(L, lua_upvalueindex(3)));
  if (start > len) return 0;
  auto md = run_match(L, re, len, s, start);
  if (!md) {
    lua_pushinteger(L, static_cast<lua_Integer>(len + 1));
    lua_replace(L, lua_upvalueindex(3));
    return 0;
  }
  PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
  std::size_t next = ov[1] > ov[0] ? ov[1] : ov[1] + 1;  // an empty match moves on by one
  lua_pushinteger(L, static_cast<lua_Integer>(next));
  lua_replace(L, lua_upvalueindex(3));
  return push_groups(L, re, md.get(), s, true);
}

// re:gmatch(s) -> an iterator over the matches (their captures, or the whole match).
int regex_gmatch(lua_State* L) {
  luaL_checkudata(L, 1, kRegexMeta);
  luaL_checkstring(L, 2);
  lua_settop(L, 2);
  lua_pushinteger(L, 0);
  lua_pushcclosure(L, regex_gmatch_next, 3);
  return 1;
}

}  // namespace

void install_regex(lua_State* L) {
  // The postern table is on top of the stack.
  if (luaL_newmetatable(L, kRegexMeta)) {
    lua_pushcfunction(L, regex_gc);
    lua_setfield(L, -2, "__gc");
    lua_createtable(L, 0, 4);
    const luaL_Reg methods[] = {{"match", regex_match}, {"find", regex_find}, {"test", regex_test},
                                {"gmatch", regex_gmatch}, {nullptr, nullptr}};
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, kCacheKey);
  lua_pushcfunction(L, api_regex);
  lua_setfield(L, -2, "regex");
}

}  // namespace postern
