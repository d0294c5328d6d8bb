// The sandbox of a rule state: the capped allocator, the instruction and
// deadline hook, pcall that cannot swallow a limit, the bounded built-ins
// (lua_bounded_lib.cpp),
// text-only script loading with a per-script _ENV, postern's require, and
// the table of globals scripts see (DESIGN "A rule cannot take the proxy down").
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "filters/filter_stats.h"
#include "filters/lua/lua_api_util.h"
#include "filters/lua/lua_internal.h"

namespace postern {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kMaxScriptSize = 1024 * 1024;
constexpr const char* kSandboxKey = "postern.G";
constexpr const char* kLoadedKey = "postern.loaded";

}  // namespace

void* capped_alloc(void* ud, void* ptr, std::size_t osize, std::size_t nsize) {
  auto* a = static_cast<Allocator*>(ud);
  std::size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    a->used -= old;
    std::free(ptr);
    return nullptr;
  }
  if (nsize > old && a->used - old + nsize > a->limit) return nullptr;  // Lua raises "not enough memory"
  void* p = std::realloc(ptr, nsize);
  if (!p) return nullptr;
  a->used = a->used - old + nsize;
  return p;
}

void count_hook(lua_State* L, lua_Debug*) {
  ThreadTag* tag = thread_tag(L);
  tag->instructions += kHookInterval;
  if (!tag->killed) {
    if (tag->instructions > tag->budget) tag->killed = "instruction budget exceeded";
    else if (Clock::now() > tag->deadline) tag->killed = "time limit exceeded";
  }
  if (tag->killed) raise_here(L, tag->killed);
}

// pcall/xpcall that cannot swallow a limit: once the budget or deadline is
// hit, the error passes through every protected call to the driver.
static int protected_continue(lua_State* L, int, lua_KContext) {
  ThreadTag* tag = thread_tag(L);
  // A memory error is final too: a script that catches it would only retry.
  if (!tag->killed && lua_gettop(L) >= 2 && lua_isboolean(L, 1) && !lua_toboolean(L, 1)) {
    const char* msg = lua_tostring(L, 2);
    if (msg && std::strcmp(msg, "not enough memory") == 0) tag->killed = "memory limit exceeded (lua.memory_limit)";
  }
  if (tag->killed) raise_here(L, tag->killed);
  return lua_gettop(L);
}

static int guarded_pcall(lua_State* L) {
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_callk(L, n, LUA_MULTRET, 0, protected_continue);
  return protected_continue(L, LUA_OK, 0);
}

// collectgarbage("count") only: scripts must not stop or tune the collector.
static int limited_collectgarbage(lua_State* L) {
  const char* opt = luaL_optstring(L, 1, "collect");
  if (std::strcmp(opt, "count") != 0) return luaL_error(L, "collectgarbage(\"%s\") is not allowed", opt);
  lua_pushnumber(L, static_cast<lua_Number>(lua_gc(L, LUA_GCCOUNT, 0)) + lua_gc(L, LUA_GCCOUNTB, 0) / 1024.0);
  return 1;
}

static int print_to_log(lua_State* L) {
  std::string line = "lua-print";
  int n = lua_gettop(L);
  for (int i = 1; i <= n; ++i) {
    line += i == 1 ? " " : "\t";
    line += luaL_tolstring(L, i, nullptr);
    lua_pop(L, 1);
    if (line.size() > 2048) break;
  }
  rule_log(L, LuaLogLevel::kInfo, line.substr(0, 2048));
  return 0;
}

void rule_log(lua_State* L, LuaLogLevel level, const std::string& line) {
  ThreadTag* tag = thread_tag(L);
  LuaRuntime& rt = *tag->rt;
  const std::string* rule = tag->inv ? &tag->inv->rule->info.name : &rt.loading_script;
  auto now = Clock::now();
  double burst = static_cast<double>(rt.options.log_burst);
  if (rt.log_refilled == Clock::time_point{}) rt.log_tokens = burst;
  else rt.log_tokens = std::min(burst, rt.log_tokens + std::chrono::duration<double>(now - rt.log_refilled).count() *
                                                            rt.options.log_rate);
  rt.log_refilled = now;
  if (rt.log_tokens < 1) {
    ++rt.log_dropped;
    filter_stats().lua_log_dropped(*rule);
    return;
  }
  rt.log_tokens -= 1;
  std::string_view session, id;
  if (tag->inv) {
    session = tag->inv->ctx->session.id;
    id = tag->inv->ctx->transaction.id;
  }
  auto emit = [&](LuaLogLevel lv, const std::string& text) {
    if (rt.options.rule_log) {
      rt.options.rule_log(lv, session, id, text);
    } else if (rt.options.log) {
      std::string ids;
      if (!session.empty()) ids += "session=" + std::string(session) + " ";
      if (!id.empty()) ids += "id=" + std::string(id) + " ";
      rt.options.log(lv, ids + text);
    }
  };
  if (rt.log_dropped) {
    emit(LuaLogLevel::kWarning, "lua-log-dropped lines=" + std::to_string(rt.log_dropped) +
                                    " (lua.log_rate=" + std::to_string(rt.options.log_rate) + ")");
    rt.log_dropped = 0;
  }
  emit(level, line);
}

static std::string read_script(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw LuaLoadError(path + ": cannot read the script");
  std::string text(kMaxScriptSize + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (text.size() > kMaxScriptSize) throw LuaLoadError(path + ": script larger than 1 MiB");
  return text;
}

// _ENV's __newindex: a global created while a rule runs (a forgotten
// `local`) would carry over to the next message and session, so it is
// refused there; the script's top level creates its globals.
static int new_global(lua_State* L) {
  if (thread_tag(L)->inv) {
    std::string name = lua_type(L, 2) == LUA_TSTRING ? clean_text(lua_tostring(L, 2), 64) : "?";
    return luaL_error(L, "assignment to undeclared global '%s' inside a rule: declare it local (a global would "
                         "carry over to the next message), or create it at the script's top level", name.c_str());
  }
  lua_rawset(L, 1);
  return 0;
}

// Pushes the chunk of `path`, compiled as text only, with a fresh _ENV whose
// missing keys fall back to the sandbox globals (read-only views of the
// shared tables). On failure pushes the message
// and returns false.
bool load_chunk(lua_State* L, const std::string& path) {
  std::string text;
  try {
    text = read_script(path);
  } catch (const LuaLoadError& e) {
    lua_pushstring(L, e.what());
    return false;
  }
  std::string chunkname = "@" + path;
  if (luaL_loadbufferx(L, text.data(), text.size(), chunkname.c_str(), "t") != LUA_OK) return false;
  lua_newtable(L);                 // _ENV
  lua_pushvalue(L, -1);
  lua_setfield(L, -2, "_G");       // the script's own globals, not the shared table
  lua_newtable(L);                 // its metatable, hidden: it leads to the shared globals
  lua_getfield(L, LUA_REGISTRYINDEX, kSandboxKey);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, new_global);
  lua_setfield(L, -2, "__newindex");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, -2);
  if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
  return true;
}

static bool valid_module_name(std::string_view name) {
  if (name.empty() || name.size() > 128 || name.front() == '.' || name.back() == '.') return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    unsigned char c = name[i];
    if (c == '.' && name[i + 1] == '.') return false;
    if (!(std::isalnum(c) || c == '_' || c == '-' || c == '.')) return false;
  }
  return true;
}

// postern's require: modules named like "lib.util" from lua.module_path, as
// text, in the sandbox, each loaded once per state.
static int sandbox_require(lua_State* L) {
  const char* name = luaL_checkstring(L, 1);
  if (!valid_module_name(name)) {
    return luaL_error(L, "require(\"%s\"): a module name is letters, digits, '_', '-' and '.', not a path", name);
  }
  lua_getfield(L, LUA_REGISTRYINDEX, kLoadedKey);
  lua_getfield(L, -1, name);
  if (!lua_isnil(L, -1)) return 1;
  lua_pop(L, 1);
  LuaRuntime* rt = thread_tag(L)->rt;
  std::string rel = name;
  std::replace(rel.begin(), rel.end(), '.', '/');
  std::string found;
  for (const std::string& dir : rt->options.module_path) {
    std::string candidate = dir + "/" + rel + ".lua";
    std::error_code ec;
    if (std::filesystem::is_regular_file(candidate, ec)) {
      found = candidate;
      break;
    }
  }
  if (found.empty()) return luaL_error(L, "module '%s' not found in lua.module_path", name);
  if (!load_chunk(L, found)) return lua_error(L);
  lua_pushstring(L, name);
  lua_call(L, 1, 1);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, name);
  return 1;
}

static void set_function(lua_State* L, const char* name, lua_CFunction fn, bool wrap_existing) {
  if (wrap_existing) {
    lua_getfield(L, -1, name);
    lua_pushcclosure(L, fn, 1);
  } else {
    lua_pushcfunction(L, fn);
  }
  lua_setfield(L, -2, name);
}

// Builds the sandbox globals table (registry kSandboxKey).
void build_sandbox(lua_State* L, LuaRuntime& rt) {
  luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
  lua_pop(L, 1);
  luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
  lua_pop(L, 1);
  luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
  lua_pop(L, 1);
  luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
  lua_pop(L, 1);
  luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 1);
  lua_pop(L, 1);
  luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0);  // kept out of _G; three functions are copied

  lua_pushglobaltable(L);
  for (const char* name : {"dofile", "loadfile", "load", "require", "warn", "collectgarbage", "print", "_G"}) {
    lua_pushnil(L);
    lua_setfield(L, -2, name);
  }
  set_function(L, "collectgarbage", limited_collectgarbage, false);
  set_function(L, "print", print_to_log, false);
  set_function(L, "require", sandbox_require, false);
  lua_getfield(L, -1, "pcall");
  lua_pushcclosure(L, guarded_pcall, 1);
  lua_setfield(L, -2, "pcall");
  lua_getfield(L, -1, "xpcall");
  lua_pushcclosure(L, guarded_pcall, 1);
  lua_setfield(L, -2, "xpcall");

  lua_newtable(L);  // os: time, clock, date only
  for (const char* name : {"time", "clock", "date", "difftime"}) {
    lua_getfield(L, -3, name);
    lua_setfield(L, -2, name);
  }
  lua_setfield(L, -2, "os");

  lua_getfield(L, -1, "string");
  lua_pushnil(L);
  lua_setfield(L, -2, "dump");
  lua_pop(L, 1);
  install_bounded_builtins(L);
  // Strings' metatable: hide it, so scripts cannot reach or replace it.
  lua_pushliteral(L, "");
  if (lua_getmetatable(L, -1)) {
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
  }
  lua_pop(L, 1);

  install_postern_api(L, rt);
  // Shared by every script: read-only, so that one rule run cannot change
  // what the others and later messages see. No "_G" here: each script's _G
  // is its own _ENV (load_chunk).
  make_shared_tables_read_only(L);
  lua_setfield(L, LUA_REGISTRYINDEX, kSandboxKey);
  lua_pop(L, 1);  // os library
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, kLoadedKey);
  // Nothing outside the sandbox table stays reachable by name.
  lua_newtable(L);
  lua_rawseti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
}

std::vector<std::string> expand_scripts(const std::vector<std::string>& entries) {
  std::vector<std::string> out;
  for (const std::string& entry : entries) {
    std::error_code ec;
    if (std::filesystem::is_directory(entry, ec)) {
      std::vector<std::string> files;
      for (const auto& de : std::filesystem::directory_iterator(entry, ec)) {
        if (de.path().extension() == ".lua" && de.is_regular_file(ec)) files.push_back(de.path().string());
      }
      std::sort(files.begin(), files.end());
      out.insert(out.end(), files.begin(), files.end());
    } else {
      out.push_back(entry);
    }
  }
  return out;
}


ThreadTag* thread_tag(lua_State* L) { return *static_cast<ThreadTag**>(lua_getextraspace(L)); }

void raise_here(lua_State* L, const char* what) {
  lua_Debug ar;
  for (int level = 0; lua_getstack(L, level, &ar); ++level) {
    lua_getinfo(L, "Sl", &ar);
    if (ar.currentline > 0) {
      lua_pushfstring(L, "%s:%d: %s", ar.short_src, ar.currentline, what);
      lua_error(L);
    }
  }
  lua_pushstring(L, what);
  lua_error(L);
  std::abort();  // not reached: lua_error does not return
}


}  // namespace postern
