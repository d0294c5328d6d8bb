// Read-only views of the tables every script of a state shares: the
// libraries (string, table, math, utf8, os), the postern API and
// postern.settings. One rule run must not change what other scripts and
// later messages see: `string.lower = f`, `postern.reject = nil` or
// `rawset(postern, "reject", f)` in one careless rule would otherwise bend
// every rule's verdict until the next reload.
//
// A view is an empty table whose metatable reads through to the real table
// (__index, __len, __pairs) and refuses writes (__newindex); the metatable is
// hidden (__metatable), and postern's rawset refuses views. No function hands
// a script a real table: they are reachable only through views (and strings'
// hidden metatable).
#include "filters/lua/lua_internal.h"

namespace postern {
namespace {

constexpr const char* kViewsKey = "postern.views";      // view -> true (weak keys)
constexpr const char* kViewOfKey = "postern.view_of";   // real table -> its view
constexpr int kMaxDepth = 64;                           // postern.settings nests at most 32

int view_newindex(lua_State* L) {
  return luaL_error(L, "the libraries, postern and postern.settings are read-only (a change would reach every "
                       "script and later messages); copy what you need into a local table");
}

// The real table behind the view at `idx`, pushed.
void push_real(lua_State* L, int idx) {
  lua_getmetatable(L, idx);  // the C API sees through __metatable
  lua_getfield(L, -1, "__index");
  lua_remove(L, -2);
}

int view_len(lua_State* L) {
  push_real(L, 1);
  lua_pushinteger(L, static_cast<lua_Integer>(lua_rawlen(L, -1)));
  return 1;
}

bool is_view(lua_State* L, int idx);

// The iterator of pairs(view): next over the real table, which is never
// handed to the script (pairs' usual second result would be it). The script
// holds this function and may call it with anything: only a view is read.
int view_next(lua_State* L) {
  lua_settop(L, 2);
  luaL_argexpected(L, is_view(L, 1), 1, "a read-only library table");
  push_real(L, 1);
  lua_insert(L, 2);  // real, key
  if (lua_next(L, 2)) return 2;
  lua_pushnil(L);
  return 1;
}

int view_pairs(lua_State* L) {
  lua_pushcfunction(L, view_next);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  return 3;
}

bool is_view(lua_State* L, int idx) {
  if (lua_type(L, idx) != LUA_TTABLE) return false;
  lua_getfield(L, LUA_REGISTRYINDEX, kViewsKey);
  lua_pushvalue(L, idx);
  const bool view = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 2);
  return view;
}

// rawset(t, k, v) that refuses views: rawset on a view would store past its
// __newindex, and every script would then read the stored value.
int guarded_rawset(lua_State* L) {
  if (is_view(L, 1)) return view_newindex(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

// A weak-keyed table in the registry under `key`.
void new_weak_table(lua_State* L, const char* key) {
  lua_newtable(L);
  lua_newtable(L);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, key);
}

// Replaces the table at `idx` by its view, on the stack; its tables first.
void make_view(lua_State* L, int idx, int depth) {
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 8, "read-only views");
  lua_getfield(L, LUA_REGISTRYINDEX, kViewOfKey);
  lua_pushvalue(L, idx);
  if (lua_rawget(L, -2) != LUA_TNIL) {  // shared twice: one view
    lua_remove(L, -2);
    lua_replace(L, idx);
    return;
  }
  lua_pop(L, 2);
  if (depth < kMaxDepth) {
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      if (lua_type(L, -1) == LUA_TTABLE && !is_view(L, -1)) {
        make_view(L, -1, depth + 1);
        lua_pushvalue(L, -2);  // key
        lua_pushvalue(L, -2);  // its view
        lua_rawset(L, idx);    // an existing key: allowed while traversing
      }
      lua_pop(L, 1);
    }
  }
  lua_newtable(L);  // the view
  lua_newtable(L);  // its metatable
  lua_pushvalue(L, idx);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, view_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_pushcfunction(L, view_len);
  lua_setfield(L, -2, "__len");
  lua_pushcfunction(L, view_pairs);
  lua_setfield(L, -2, "__pairs");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, -2);
  lua_getfield(L, LUA_REGISTRYINDEX, kViewsKey);
  lua_pushvalue(L, -2);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, kViewOfKey);
  lua_pushvalue(L, idx);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  lua_replace(L, idx);
}

}  // namespace

void make_shared_tables_read_only(lua_State* L) {
  const int globals = lua_gettop(L);
  new_weak_table(L, kViewsKey);
  new_weak_table(L, kViewOfKey);
  lua_getfield(L, globals, "rawset");
  lua_pushcclosure(L, guarded_rawset, 1);
  lua_setfield(L, globals, "rawset");
  lua_pushnil(L);
  while (lua_next(L, globals)) {
    if (lua_type(L, -1) == LUA_TTABLE) {
      make_view(L, -1, 0);
      lua_pushvalue(L, -2);
      lua_pushvalue(L, -2);
      lua_rawset(L, globals);
    }
    lua_pop(L, 1);
  }
}

}  // namespace postern
