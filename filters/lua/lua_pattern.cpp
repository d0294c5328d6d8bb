// Lua 5.4 patterns with a step counter (see lua_pattern.h). The matcher
// follows lstrlib.c of Lua 5.4.4 (MIT licence, Copyright (C) 1994-2022
// Lua.org, PUC-Rio) construct for construct, so that results, captures and
// error messages are Lua's own; tests/unit/test_lua_pattern.cpp compares the
// two on a corpus. What differs: each step is counted and the budget is
// checked every kPatternCheckSteps steps.
#include "filters/lua/lua_pattern.h"

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace postern {
namespace {

constexpr int kMaxCaptures = 32;    // LUA_MAXCAPTURES
constexpr int kMaxCalls = 200;      // MAXCCALLS: recursion depth of match()
constexpr char kEsc = '%';
constexpr const char* kSpecials = "^$*+?.([%-";
constexpr std::ptrdiff_t kCapUnfinished = -1;
constexpr std::ptrdiff_t kCapPosition = -2;

inline unsigned char uc(char c) { return static_cast<unsigned char>(c); }

struct MatchState {
  const char* src_init;
  const char* src_end;
  const char* p_end;
  lua_State* L;
  PatternBudgetCheck check;
  unsigned steps;
  int matchdepth;
  unsigned char level;
  struct {
    const char* init;
    std::ptrdiff_t len;
  } capture[kMaxCaptures];
};

// `n` steps of work; every kPatternCheckSteps steps, the budget.
inline void step(MatchState* ms, unsigned n = 1) {
  ms->steps += n;
  if (ms->steps >= kPatternCheckSteps) [[unlikely]] {
    ms->steps = 0;
    ms->check(ms->L);
  }
}

const char* match(MatchState* ms, const char* s, const char* p);

int check_capture(MatchState* ms, int l) {
  l -= '1';
  if (l < 0 || l >= ms->level || ms->capture[l].len == kCapUnfinished)
    return luaL_error(ms->L, "invalid capture index %%%d", l + 1);
  return l;
}

int capture_to_close(MatchState* ms) {
  int level = ms->level;
  for (level--; level >= 0; level--)
    if (ms->capture[level].len == kCapUnfinished) return level;
  return luaL_error(ms->L, "invalid pattern capture");
}

const char* classend(MatchState* ms, const char* p) {
  switch (*p++) {
    case kEsc:
      if (p == ms->p_end) luaL_error(ms->L, "malformed pattern (ends with '%%')");
      return p + 1;
    case '[':
      if (*p == '^') p++;
      do {  // look for a ']'
        if (p == ms->p_end) luaL_error(ms->L, "malformed pattern (missing ']')");
        if (*(p++) == kEsc && p < ms->p_end) p++;  // skip escapes (e.g. '%]')
      } while (*p != ']');
      return p + 1;
    default: return p;
  }
}

// The <ctype.h> classes of every octet, taken once: in C++ isalpha() and
// the rest are calls, not the table lookups they are in Lua's C (a third of
// the matcher's time). postern never calls setlocale(): the "C" locale.
enum : std::uint16_t {
  kAlpha = 1, kCntrl = 2, kDigit = 4, kGraph = 8, kLower = 16, kPunct = 32, kSpace = 64, kUpper = 128,
  kAlnum = 256, kXdigit = 512,
};
struct CharClasses {
  std::uint16_t bits[256];
  unsigned char lower[256];
  CharClasses() {
    for (int c = 0; c < 256; ++c) {
      bits[c] = static_cast<std::uint16_t>(
          (std::isalpha(c) ? kAlpha : 0) | (std::iscntrl(c) ? kCntrl : 0) | (std::isdigit(c) ? kDigit : 0) |
          (std::isgraph(c) ? kGraph : 0) | (std::islower(c) ? kLower : 0) | (std::ispunct(c) ? kPunct : 0) |
          (std::isspace(c) ? kSpace : 0) | (std::isupper(c) ? kUpper : 0) | (std::isalnum(c) ? kAlnum : 0) |
          (std::isxdigit(c) ? kXdigit : 0));
      lower[c] = static_cast<unsigned char>(std::tolower(c));
    }
  }
};
const CharClasses kClasses;

int match_class(int c, int cl) {
  std::uint16_t mask;
  switch (kClasses.lower[cl]) {
    case 'a': mask = kAlpha; break;
    case 'c': mask = kCntrl; break;
    case 'd': mask = kDigit; break;
    case 'g': mask = kGraph; break;
    case 'l': mask = kLower; break;
    case 'p': mask = kPunct; break;
    case 's': mask = kSpace; break;
    case 'u': mask = kUpper; break;
    case 'w': mask = kAlnum; break;
    case 'x': mask = kXdigit; break;
    case 'z': return (kClasses.bits[cl] & kLower) ? c == 0 : c != 0;  // deprecated option
    default: return cl == c;
  }
  bool res = (kClasses.bits[c] & mask) != 0;
  return (kClasses.bits[cl] & kLower) ? res : !res;
}

int matchbracketclass(int c, const char* p, const char* ec) {
  int sig = 1;
  if (*(p + 1) == '^') {
    sig = 0;
    p++;
  }
  while (++p < ec) {
    if (*p == kEsc) {
      p++;
      if (match_class(c, uc(*p))) return sig;
    } else if (*(p + 1) == '-' && p + 2 < ec) {
      p += 2;
      if (uc(*(p - 2)) <= c && c <= uc(*p)) return sig;
    } else if (uc(*p) == c) {
      return sig;
    }
  }
  return !sig;
}

int singlematch(MatchState* ms, const char* s, const char* p, const char* ep) {
  if (s >= ms->src_end) return 0;
  int c = uc(*s);
  switch (*p) {
    case '.': return 1;
    case kEsc: return match_class(c, uc(*(p + 1)));
    case '[': return matchbracketclass(c, p, ep - 1);
    default: return uc(*p) == c;
  }
}

const char* matchbalance(MatchState* ms, const char* s, const char* p) {
  if (p >= ms->p_end - 1) luaL_error(ms->L, "malformed pattern (missing arguments to '%%b')");
  if (*s != *p) return nullptr;
  int b = *p;
  int e = *(p + 1);
  int cont = 1;
  while (++s < ms->src_end) {
    step(ms);
    if (*s == e) {
      if (--cont == 0) return s + 1;
    } else if (*s == b) {
      cont++;
    }
  }
  return nullptr;
}

const char* max_expand(MatchState* ms, const char* s, const char* p, const char* ep) {
  std::ptrdiff_t i = 0;
  while (singlematch(ms, s + i, p, ep)) i++;
  // Counted after the scan: it is linear and ends at the subject's end.
  step(ms, static_cast<unsigned>(std::min<std::ptrdiff_t>(i, kPatternCheckSteps)));
  while (i >= 0) {  // try with the maximum repetitions, then one fewer
    const char* res = match(ms, s + i, ep + 1);
    if (res) return res;
    i--;
  }
  return nullptr;
}

const char* min_expand(MatchState* ms, const char* s, const char* p, const char* ep) {
  for (;;) {
    const char* res = match(ms, s, ep + 1);
    if (res != nullptr) return res;
    if (singlematch(ms, s, p, ep)) s++;
    else return nullptr;
  }
}

const char* start_capture(MatchState* ms, const char* s, const char* p, std::ptrdiff_t what) {
  int level = ms->level;
  if (level >= kMaxCaptures) luaL_error(ms->L, "too many captures");
  ms->capture[level].init = s;
  ms->capture[level].len = what;
  ms->level = static_cast<unsigned char>(level + 1);
  const char* res = match(ms, s, p);
  if (res == nullptr) ms->level--;  // undo capture
  return res;
}

const char* end_capture(MatchState* ms, const char* s, const char* p) {
  int l = capture_to_close(ms);
  ms->capture[l].len = s - ms->capture[l].init;
  const char* res = match(ms, s, p);
  if (res == nullptr) ms->capture[l].len = kCapUnfinished;
  return res;
}

const char* match_capture(MatchState* ms, const char* s, int l) {
  l = check_capture(ms, l);
  std::size_t len = static_cast<std::size_t>(ms->capture[l].len);
  if (static_cast<std::size_t>(ms->src_end - s) >= len && std::memcmp(ms->capture[l].init, s, len) == 0)
    return s + len;
  return nullptr;
}

const char* match(MatchState* ms, const char* s, const char* p) {
  if (ms->matchdepth-- == 0) luaL_error(ms->L, "pattern too complex");
init:  // tail calls are jumps, as in Lua
  step(ms);
  if (p != ms->p_end) {
    switch (*p) {
      case '(':
        if (*(p + 1) == ')') s = start_capture(ms, s, p + 2, kCapPosition);
        else s = start_capture(ms, s, p + 1, kCapUnfinished);
        break;
      case ')': s = end_capture(ms, s, p + 1); break;
      case '$':
        if (p + 1 != ms->p_end) goto dflt;  // '$' not last: an ordinary character
        s = (s == ms->src_end) ? s : nullptr;
        break;
      case kEsc:
        switch (*(p + 1)) {
          case 'b':
            s = matchbalance(ms, s, p + 2);
            if (s != nullptr) {
              p += 4;
              goto init;
            }
            break;
          case 'f': {
            p += 2;
            if (*p != '[') luaL_error(ms->L, "missing '[' after '%%f' in pattern");
            const char* ep = classend(ms, p);
            char previous = (s == ms->src_init) ? '\0' : *(s - 1);
            if (!matchbracketclass(uc(previous), p, ep - 1) && matchbracketclass(uc(*s), p, ep - 1)) {
              p = ep;
              goto init;
            }
            s = nullptr;
            break;
          }
          case '0': case '1': case '2': case '3': case '4':
          case '5': case '6': case '7': case '8': case '9':
            s = match_capture(ms, s, uc(*(p + 1)));
            if (s != nullptr) {
              p += 2;
              goto init;
            }
            break;
          default: goto dflt;
        }
        break;
      default:
      dflt: {
        const char* ep = classend(ms, p);  // the optional suffix
        if (!singlematch(ms, s, p, ep)) {
          if (*ep == '*' || *ep == '?' || *ep == '-') {  // accepts empty
            p = ep + 1;
            goto init;
          }
          s = nullptr;  // '+' or no suffix
        } else {
          switch (*ep) {
            case '?': {
              const char* res = match(ms, s + 1, ep + 1);
              if (res != nullptr) {
                s = res;
              } else {
                p = ep + 1;
                goto init;
              }
              break;
            }
            case '+': s = max_expand(ms, s + 1, p, ep); break;
            case '*': s = max_expand(ms, s, p, ep); break;
            case '-': s = min_expand(ms, s, p, ep); break;
            default:
              s++;
              p = ep;
              goto init;
          }
        }
        break;
      }
    }
  }
  ms->matchdepth++;
  return s;
}

const char* lmemfind(const char* s1, std::size_t l1, const char* s2, std::size_t l2) {
  if (l2 == 0) return s1;
  if (l2 > l1) return nullptr;
  const char* init;
  l2--;  // the first character is found by memchr
  l1 = l1 - l2;
  while (l1 > 0 && (init = static_cast<const char*>(std::memchr(s1, *s2, l1))) != nullptr) {
    init++;
    if (std::memcmp(init, s2 + 1, l2) == 0) return init - 1;
    l1 -= init - s1;
    s1 = init;
  }
  return nullptr;
}

// The i-th capture (the whole match s..e when there are none and i == 0):
// its length and address, or kCapPosition with the position pushed.
std::ptrdiff_t get_onecapture(MatchState* ms, int i, const char* s, const char* e, const char** cap) {
  if (i >= ms->level) {
    if (i != 0) luaL_error(ms->L, "invalid capture index %%%d", i + 1);
    *cap = s;
    return e - s;
  }
  std::ptrdiff_t capl = ms->capture[i].len;
  *cap = ms->capture[i].init;
  if (capl == kCapUnfinished) luaL_error(ms->L, "unfinished capture");
  else if (capl == kCapPosition) lua_pushinteger(ms->L, (ms->capture[i].init - ms->src_init) + 1);
  return capl;
}

void push_onecapture(MatchState* ms, int i, const char* s, const char* e) {
  const char* cap;
  std::ptrdiff_t l = get_onecapture(ms, i, s, e, &cap);
  if (l != kCapPosition) lua_pushlstring(ms->L, cap, static_cast<std::size_t>(l));
}

int push_captures(MatchState* ms, const char* s, const char* e) {
  int nlevels = (ms->level == 0 && s) ? 1 : ms->level;
  luaL_checkstack(ms->L, nlevels, "too many captures");
  for (int i = 0; i < nlevels; i++) push_onecapture(ms, i, s, e);
  return nlevels;
}

bool nospecials(const char* p, std::size_t l) {
  std::size_t upto = 0;
  do {
    if (std::strpbrk(p + upto, kSpecials)) return false;
    upto += std::strlen(p + upto) + 1;  // may have more after \0
  } while (upto <= l);
  return true;
}

std::size_t posrelat(lua_Integer pos, std::size_t len) {
  if (pos > 0) return static_cast<std::size_t>(pos);
  if (pos == 0) return 1;
  if (pos < -static_cast<lua_Integer>(len)) return 1;
  return len + static_cast<std::size_t>(pos) + 1;
}

PatternBudgetCheck budget_of(lua_State* L) {
  return reinterpret_cast<PatternBudgetCheck>(lua_touserdata(L, lua_upvalueindex(1)));
}

void prepstate(MatchState* ms, lua_State* L, PatternBudgetCheck check, const char* s, std::size_t ls,
               const char* p, std::size_t lp) {
  ms->L = L;
  ms->check = check;
  ms->steps = 0;
  ms->matchdepth = kMaxCalls;
  ms->src_init = s;
  ms->src_end = s + ls;
  ms->p_end = p + lp;
}

void reprepstate(MatchState* ms) { ms->level = 0; }

int find_aux(lua_State* L, bool find) {
  std::size_t ls, lp;
  const char* s = luaL_checklstring(L, 1, &ls);
  const char* p = luaL_checklstring(L, 2, &lp);
  std::size_t init = posrelat(luaL_optinteger(L, 3, 1), ls) - 1;
  if (init > ls) {
    luaL_pushfail(L);
    return 1;
  }
  if (find && (lua_toboolean(L, 4) || nospecials(p, lp))) {
    // A plain search: memchr and memcmp, linear in the subject.
    const char* s2 = lmemfind(s + init, ls - init, p, lp);
    if (s2) {
      lua_pushinteger(L, (s2 - s) + 1);
      lua_pushinteger(L, static_cast<lua_Integer>((s2 - s) + lp));
      return 2;
    }
  } else {
    MatchState ms;
    const char* s1 = s + init;
    bool anchor = (*p == '^');
    if (anchor) {
      p++;
      lp--;
    }
    prepstate(&ms, L, budget_of(L), s, ls, p, lp);
    do {
      reprepstate(&ms);
      const char* res = match(&ms, s1, p);
      if (res != nullptr) {
        if (find) {
          lua_pushinteger(L, (s1 - s) + 1);
          lua_pushinteger(L, res - s);
          return push_captures(&ms, nullptr, nullptr) + 2;
        }
        return push_captures(&ms, s1, res);
      }
    } while (s1++ < ms.src_end && !anchor);
  }
  luaL_pushfail(L);
  return 1;
}

int bounded_find(lua_State* L) { return find_aux(L, true); }
int bounded_match(lua_State* L) { return find_aux(L, false); }

struct GMatchState {
  const char* src;
  const char* p;
  const char* lastmatch;
  MatchState ms;
};

int gmatch_aux(lua_State* L) {
  auto* gm = static_cast<GMatchState*>(lua_touserdata(L, lua_upvalueindex(3)));
  gm->ms.L = L;  // the iterator may run on another coroutine than gmatch did
  for (const char* src = gm->src; src <= gm->ms.src_end; src++) {
    reprepstate(&gm->ms);
    const char* e = match(&gm->ms, src, gm->p);
    if (e != nullptr && e != gm->lastmatch) {
      gm->src = gm->lastmatch = e;
      return push_captures(&gm->ms, src, e);
    }
  }
  return 0;
}

int bounded_gmatch(lua_State* L) {
  std::size_t ls, lp;
  const char* s = luaL_checklstring(L, 1, &ls);
  const char* p = luaL_checklstring(L, 2, &lp);
  std::size_t init = posrelat(luaL_optinteger(L, 3, 1), ls) - 1;
  PatternBudgetCheck check = budget_of(L);
  lua_settop(L, 2);  // the strings stay upvalues of the iterator, alive
  auto* gm = static_cast<GMatchState*>(lua_newuserdatauv(L, sizeof(GMatchState), 0));
  if (init > ls) init = ls + 1;
  prepstate(&gm->ms, L, check, s, ls, p, lp);
  gm->src = s + init;
  gm->p = p;
  gm->lastmatch = nullptr;
  lua_pushcclosure(L, gmatch_aux, 3);
  return 1;
}

void add_s(MatchState* ms, luaL_Buffer* b, const char* s, const char* e) {
  std::size_t l;
  lua_State* L = ms->L;
  const char* news = lua_tolstring(L, 3, &l);
  const char* p;
  while ((p = static_cast<const char*>(std::memchr(news, kEsc, l))) != nullptr) {
    step(ms);
    luaL_addlstring(b, news, static_cast<std::size_t>(p - news));
    p++;
    if (*p == kEsc) {
      luaL_addchar(b, *p);
    } else if (*p == '0') {
      luaL_addlstring(b, s, static_cast<std::size_t>(e - s));
    } else if (std::isdigit(uc(*p))) {
      const char* cap;
      std::ptrdiff_t resl = get_onecapture(ms, *p - '1', s, e, &cap);
      if (resl == kCapPosition) luaL_addvalue(b);
      else luaL_addlstring(b, cap, static_cast<std::size_t>(resl));
    } else {
      luaL_error(L, "invalid use of '%c' in replacement string", kEsc);
    }
    l -= static_cast<std::size_t>(p + 1 - news);
    news = p + 1;
  }
  luaL_addlstring(b, news, l);
}

// Adds the replacement of one match; true when the subject changed.
bool add_value(MatchState* ms, luaL_Buffer* b, const char* s, const char* e, int tr) {
  lua_State* L = ms->L;
  switch (tr) {
    case LUA_TFUNCTION: {
      lua_pushvalue(L, 3);
      int n = push_captures(ms, s, e);
      lua_call(L, n, 1);
      break;
    }
    case LUA_TTABLE:
      push_onecapture(ms, 0, s, e);
      lua_gettable(L, 3);
      break;
    default:
      add_s(ms, b, s, e);
      return true;
  }
  if (!lua_toboolean(L, -1)) {  // nil or false: keep the original text
    lua_pop(L, 1);
    luaL_addlstring(b, s, static_cast<std::size_t>(e - s));
    return false;
  }
  if (!lua_isstring(L, -1)) return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
  luaL_addvalue(b);
  return true;
}

int bounded_gsub(lua_State* L) {
  std::size_t srcl, lp;
  const char* src = luaL_checklstring(L, 1, &srcl);
  const char* p = luaL_checklstring(L, 2, &lp);
  const char* lastmatch = nullptr;
  int tr = lua_type(L, 3);
  lua_Integer max_s = luaL_optinteger(L, 4, static_cast<lua_Integer>(srcl) + 1);
  bool anchor = (*p == '^');
  lua_Integer n = 0;
  bool changed = false;
  MatchState ms;
  luaL_Buffer b;
  luaL_argexpected(L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
                   "string/function/table");
  luaL_buffinit(L, &b);
  if (anchor) {
    p++;
    lp--;
  }
  prepstate(&ms, L, budget_of(L), src, srcl, p, lp);
  while (n < max_s) {
    reprepstate(&ms);
    const char* e = match(&ms, src, p);
    if (e != nullptr && e != lastmatch) {
      n++;
      changed = add_value(&ms, &b, src, e, tr) || changed;
      src = lastmatch = e;
    } else if (src < ms.src_end) {
      luaL_addchar(&b, *src++);
    } else {
      break;
    }
    if (anchor) break;
  }
  if (!changed) {
    lua_pushvalue(L, 1);
  } else {
    luaL_addlstring(&b, src, static_cast<std::size_t>(ms.src_end - src));
    luaL_pushresult(&b);
  }
  lua_pushinteger(L, n);
  return 2;
}

}  // namespace

void register_bounded_patterns(lua_State* L, int table_idx, PatternBudgetCheck check) {
  table_idx = lua_absindex(L, table_idx);
  const struct {
    const char* name;
    lua_CFunction fn;
  } fns[] = {{"find", bounded_find}, {"match", bounded_match}, {"gmatch", bounded_gmatch}, {"gsub", bounded_gsub}};
  for (const auto& f : fns) {
    lua_pushlightuserdata(L, reinterpret_cast<void*>(check));
    lua_pushcclosure(L, f.fn, 1);
    lua_setfield(L, table_idx, f.name);
  }
}

}  // namespace postern
