// The built-ins of the sandbox that would otherwise run unbounded inside C,
// where the instruction hook cannot reach them (issue 17, STYLE "Known
// traps"): string.rep and string.pack check the size of what they would
// build against the memory left before they build it; table.insert,
// table.remove, table.move, table.concat and table.sort, whose work a script
// chooses (a __len of 2^50, a range of 2^50), check the deadline as they go;
// setmetatable refuses __gc, because Lua runs finalizers with hooks off.
#include <chrono>
#include <climits>
#include <cstring>

#include "filters/lua/lua_internal.h"
#include "filters/lua/lua_pattern.h"

namespace postern {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kMemoryKilled = "memory limit exceeded (lua.memory_limit)";
constexpr unsigned kLoopCheckSteps = 4096;

// Octets the state's allocator can still hand out.
std::size_t memory_left(lua_State* L) {
  const Allocator& a = thread_tag(L)->rt->alloc;
  return a.used >= a.limit ? 0 : a.limit - a.used;
}

[[noreturn]] void refuse_memory(lua_State* L) {
  ThreadTag* tag = thread_tag(L);
  if (!tag->killed) tag->killed = kMemoryKilled;
  raise_here(L, tag->killed);
}

// A loop counter that checks the budget every kLoopCheckSteps iterations.
struct LoopBudget {
  lua_State* L;
  unsigned steps = 0;
  void step() {
    if (++steps >= kLoopCheckSteps) {
      steps = 0;
      check_rule_budget(L);
    }
  }
};

// string.rep(s, n [, sep]): Lua's loop copies n times even when s and sep
// are empty (string.rep("", 2^53) never returns).
int bounded_rep(lua_State* L) {
  std::size_t l, lsep;
  luaL_checklstring(L, 1, &l);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_optlstring(L, 3, "", &lsep);
  if (n <= 0 || l + lsep == 0) {
    lua_pushliteral(L, "");
    return 1;
  }
  // n * l + (n - 1) * lsep, without overflow: past what is left, refuse.
  std::size_t left = memory_left(L);
  auto count = static_cast<std::size_t>(n);
  if (l + lsep < l || count > left / (l + lsep) + 1 || count * (l + lsep) - lsep > left) refuse_memory(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

// string.pack(fmt, ...): a "cN" item pads to N octets one octet at a time.
int bounded_pack(lua_State* L) {
  std::size_t lf;
  const char* fmt = luaL_checklstring(L, 1, &lf);
  std::size_t total = 0, left = memory_left(L);
  for (std::size_t i = 0; i < lf; ++i) {
    if (fmt[i] != 'c') continue;
    std::size_t size = 0;
    while (i + 1 < lf && fmt[i + 1] >= '0' && fmt[i + 1] <= '9') {
      std::size_t digit = static_cast<std::size_t>(fmt[++i] - '0');
      if (size <= left) size = size * 10 + digit;  // past `left` it is refused anyway
    }
    total += size;
    if (total > left) refuse_memory(L);
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

// setmetatable(t, mt): no __gc. Lua marks a table for finalization when its
// metatable has the field at this moment, and runs finalizers with the
// count hook off, so a finalizer is user code without a budget.
int guarded_setmetatable(lua_State* L) {
  if (lua_type(L, 2) == LUA_TTABLE) {
    lua_pushliteral(L, "__gc");
    if (lua_rawget(L, 2) != LUA_TNIL) {
      return luaL_error(L, "__gc metamethods are not allowed in rules (finalizers would run outside the budget)");
    }
    lua_pop(L, 1);
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

// ltablib.c's checktab: a table, or a value whose metatable has what is used.
constexpr int kTabR = 1, kTabW = 2, kTabL = 4;
void checktab(lua_State* L, int arg, int what) {
  if (lua_type(L, arg) == LUA_TTABLE) return;
  int n = 1;
  auto has = [&](const char* key) {
    lua_pushstring(L, key);
    ++n;
    return lua_rawget(L, -(n)) != LUA_TNIL;
  };
  if (lua_getmetatable(L, arg) && (!(what & kTabR) || has("__index")) && (!(what & kTabW) || has("__newindex")) &&
      (!(what & kTabL) || has("__len"))) {
    lua_pop(L, n);
  } else {
    luaL_checktype(L, arg, LUA_TTABLE);
  }
}

lua_Integer aux_getn(lua_State* L, int arg, int what) {
  checktab(L, arg, what | kTabL);
  return luaL_len(L, arg);
}

// The table functions below are ltablib.c's (Lua 5.4.4), with a budget check
// in each loop.
int bounded_insert(lua_State* L) {
  LoopBudget budget{L};
  lua_Integer e = aux_getn(L, 1, kTabR | kTabW);
  e = static_cast<lua_Integer>(static_cast<lua_Unsigned>(e) + 1u);
  lua_Integer pos;
  switch (lua_gettop(L)) {
    case 2: pos = e; break;
    case 3:
      pos = luaL_checkinteger(L, 2);
      luaL_argcheck(L, static_cast<lua_Unsigned>(pos) - 1u < static_cast<lua_Unsigned>(e), 2, "position out of bounds");
      for (lua_Integer i = e; i > pos; i--) {
        budget.step();
        lua_geti(L, 1, i - 1);
        lua_seti(L, 1, i);
      }
      break;
    default: return luaL_error(L, "wrong number of arguments to 'insert'");
  }
  lua_seti(L, 1, pos);
  return 0;
}

int bounded_remove(lua_State* L) {
  LoopBudget budget{L};
  lua_Integer size = aux_getn(L, 1, kTabR | kTabW);
  lua_Integer pos = luaL_optinteger(L, 2, size);
  if (pos != size) {
    luaL_argcheck(L, static_cast<lua_Unsigned>(pos) - 1u <= static_cast<lua_Unsigned>(size), 1,
                  "position out of bounds");
  }
  lua_geti(L, 1, pos);
  for (; pos < size; pos++) {
    budget.step();
    lua_geti(L, 1, pos + 1);
    lua_seti(L, 1, pos);
  }
  lua_pushnil(L);
  lua_seti(L, 1, pos);
  return 1;
}

int bounded_move(lua_State* L) {
  LoopBudget budget{L};
  lua_Integer f = luaL_checkinteger(L, 2);
  lua_Integer e = luaL_checkinteger(L, 3);
  lua_Integer t = luaL_checkinteger(L, 4);
  int tt = !lua_isnoneornil(L, 5) ? 5 : 1;
  checktab(L, 1, kTabR);
  checktab(L, tt, kTabW);
  if (e >= f) {
    luaL_argcheck(L, f > 0 || e < LUA_MAXINTEGER + f, 3, "too many elements to move");
    lua_Integer n = e - f + 1;
    luaL_argcheck(L, t <= LUA_MAXINTEGER - n + 1, 4, "destination wrap around");
    if (t > e || t <= f || (tt != 1 && !lua_compare(L, 1, tt, LUA_OPEQ))) {
      for (lua_Integer i = 0; i < n; i++) {
        budget.step();
        lua_geti(L, 1, f + i);
        lua_seti(L, tt, t + i);
      }
    } else {
      for (lua_Integer i = n - 1; i >= 0; i--) {
        budget.step();
        lua_geti(L, 1, f + i);
        lua_seti(L, tt, t + i);
      }
    }
  }
  lua_pushvalue(L, tt);
  return 1;
}

void addfield(lua_State* L, luaL_Buffer* b, lua_Integer i) {
  lua_geti(L, 1, i);
  if (!lua_isstring(L, -1)) {
    luaL_error(L, "invalid value (%s) at index %I in table for 'concat'", luaL_typename(L, -1),
               static_cast<LUAI_UACINT>(i));
  }
  luaL_addvalue(b);
}

int bounded_concat(lua_State* L) {
  LoopBudget budget{L};
  luaL_Buffer b;
  lua_Integer last = aux_getn(L, 1, kTabR);
  std::size_t lsep;
  const char* sep = luaL_optlstring(L, 2, "", &lsep);
  lua_Integer i = luaL_optinteger(L, 3, 1);
  last = luaL_optinteger(L, 4, last);
  luaL_buffinit(L, &b);
  for (; i < last; i++) {
    budget.step();
    addfield(L, &b, i);
    luaL_addlstring(&b, sep, lsep);
  }
  if (i == last) addfield(L, &b, i);
  luaL_pushresult(&b);
  return 1;
}

// table.sort: ltablib.c's quicksort, each comparison a step. Its work is
// n log n comparisons of a length a __len can make 2^31.
using IdxT = unsigned int;
constexpr IdxT kRanLimit = 100u;

void set2(lua_State* L, IdxT i, IdxT j) {
  lua_seti(L, 1, i);
  lua_seti(L, 1, j);
}

bool sort_comp(lua_State* L, LoopBudget& budget, int a, int b) {
  budget.step();
  if (lua_isnil(L, 2)) return lua_compare(L, a, b, LUA_OPLT);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, a - 1);
  lua_pushvalue(L, b - 2);
  lua_call(L, 2, 1);
  bool res = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return res;
}

IdxT partition(lua_State* L, LoopBudget& budget, IdxT lo, IdxT up) {
  IdxT i = lo;
  IdxT j = up - 1;
  for (;;) {
    while ((void)lua_geti(L, 1, ++i), sort_comp(L, budget, -1, -2)) {
      if (i == up - 1) luaL_error(L, "invalid order function for sorting");
      lua_pop(L, 1);
    }
    while ((void)lua_geti(L, 1, --j), sort_comp(L, budget, -3, -1)) {
      if (j < i) luaL_error(L, "invalid order function for sorting");
      lua_pop(L, 1);
    }
    if (j < i) {
      lua_pop(L, 1);
      set2(L, up - 1, i);
      return i;
    }
    set2(L, i, j);
  }
}

IdxT choose_pivot(IdxT lo, IdxT up, unsigned rnd) {
  IdxT r4 = (up - lo) / 4;
  return rnd % (r4 * 2) + (lo + r4);
}

void auxsort(lua_State* L, LoopBudget& budget, IdxT lo, IdxT up, unsigned rnd) {
  while (lo < up) {
    lua_geti(L, 1, lo);
    lua_geti(L, 1, up);
    if (sort_comp(L, budget, -1, -2)) set2(L, lo, up);
    else lua_pop(L, 2);
    if (up - lo == 1) return;
    IdxT p = (up - lo < kRanLimit || rnd == 0) ? (lo + up) / 2 : choose_pivot(lo, up, rnd);
    lua_geti(L, 1, p);
    lua_geti(L, 1, lo);
    if (sort_comp(L, budget, -2, -1)) {
      set2(L, p, lo);
    } else {
      lua_pop(L, 1);
      lua_geti(L, 1, up);
      if (sort_comp(L, budget, -1, -2)) set2(L, p, up);
      else lua_pop(L, 2);
    }
    if (up - lo == 2) return;
    lua_geti(L, 1, p);
    lua_pushvalue(L, -1);
    lua_geti(L, 1, up - 1);
    set2(L, p, up - 1);
    p = partition(L, budget, lo, up);
    IdxT n;
    if (p - lo < up - p) {
      auxsort(L, budget, lo, p - 1, rnd);
      n = p - lo;
      lo = p + 1;
    } else {
      auxsort(L, budget, p + 1, up, rnd);
      n = up - p;
      up = p - 1;
    }
    // Too imbalanced a partition: a new "random" pivot (Lua takes clock and time).
    if ((up - lo) / 128 > n) rnd = static_cast<unsigned>(Clock::now().time_since_epoch().count());
  }
}

int bounded_sort(lua_State* L) {
  LoopBudget budget{L};
  lua_Integer n = aux_getn(L, 1, kTabR | kTabW);
  if (n > 1) {
    luaL_argcheck(L, n < INT_MAX, 1, "array too big");
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    auxsort(L, budget, 1, static_cast<IdxT>(n), 0);
  }
  return 0;
}

void wrap(lua_State* L, const char* name, lua_CFunction fn) {
  lua_getfield(L, -1, name);
  lua_pushcclosure(L, fn, 1);
  lua_setfield(L, -2, name);
}

void set(lua_State* L, const char* name, lua_CFunction fn) {
  lua_pushcfunction(L, fn);
  lua_setfield(L, -2, name);
}

}  // namespace

void check_rule_budget(lua_State* L) {
  ThreadTag* tag = thread_tag(L);
  if (!tag->killed && Clock::now() > tag->deadline) tag->killed = "time limit exceeded";
  if (tag->killed) raise_here(L, tag->killed);
}

void install_bounded_builtins(lua_State* L) {
  // The globals table is on top of the stack.
  wrap(L, "setmetatable", guarded_setmetatable);
  lua_getfield(L, -1, "string");
  register_bounded_patterns(L, -1, check_rule_budget);
  wrap(L, "rep", bounded_rep);
  wrap(L, "pack", bounded_pack);
  lua_pop(L, 1);
  lua_getfield(L, -1, "table");
  set(L, "insert", bounded_insert);
  set(L, "remove", bounded_remove);
  set(L, "move", bounded_move);
  set(L, "concat", bounded_concat);
  set(L, "sort", bounded_sort);
  lua_pop(L, 1);
}

}  // namespace postern
