// The postern table scripts see: rule registration, verdicts, logging, DNS,
// the key-value store, settings. Functions that wait (DNS, store, sleep)
// record a PendingOp and yield; the driver in lua_filter.cpp performs it.

#include <cctype>
#include <cstring>
#include <string>

#include "filters/store/kv_store.h"
#include "filters/lua/lua_api_util.h"
#include "filters/lua/lua_internal.h"

namespace postern {
namespace {

// ---- rule registration (load time only)

int api_rule(lua_State* L) {
  ThreadTag* tag = thread_tag(L);
  LuaRuntime& rt = *tag->rt;
  if (tag->inv || rt.loading_script.empty()) return luaL_error(L, "postern.rule{} is allowed only at a script's top level");
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    lua_pop(L, 1);
    const char* key = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
    static const char* const kKnown[] = {"name", "stage", "fn", "score", "description", "on_error"};
    bool known = false;
    for (const char* k : kKnown) known = known || std::strcmp(k, key) == 0;
    if (!known) return luaL_error(L, "postern.rule: unknown field '%s' (fields: name, stage, fn, score, description, on_error)", key);
  }
  Rule rule;
  rule.info.script = rt.loading_script;
  rule.info.on_error = rt.options.on_error;

  lua_getfield(L, 1, "name");
  const char* name = lua_tostring(L, -1);
  if (!name || !valid_symbol_name(name)) return luaL_error(L, "postern.rule: 'name' must be 1-64 letters, digits, '_', '-' or '.'");
  rule.info.name = name;
  for (const Rule& r : rt.rules) {
    if (r.info.name == rule.info.name) {
      return luaL_error(L, "postern.rule: a rule named '%s' is already registered by %s", name, r.info.script.c_str());
    }
  }
  lua_pop(L, 1);

  lua_getfield(L, 1, "stage");
  auto add_stage = [&](int idx) {
    const char* s = lua_tostring(L, idx);
    auto stage = s ? stage_from_name(s) : std::nullopt;
    if (!stage) {
      luaL_error(L, "postern.rule '%s': stage must be connect, helo, mail, rcpt, data, eom or close", name);
      return;
    }
    rule.info.stages.push_back(*stage);
    rule.stage_mask |= stage_bit(*stage);
  };
  if (lua_istable(L, -1)) {
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n && i <= 7; ++i) {
      lua_rawgeti(L, -1, i);
      add_stage(-1);
      lua_pop(L, 1);
    }
  } else {
    add_stage(-1);
  }
  if (rule.stage_mask == 0) return luaL_error(L, "postern.rule '%s': no stage", name);
  lua_pop(L, 1);

  lua_getfield(L, 1, "score");
  if (!lua_isnil(L, -1)) {
    if (!lua_isnumber(L, -1)) return luaL_error(L, "postern.rule '%s': score must be a number", name);
    rule.info.score = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "description");
  if (!lua_isnil(L, -1)) {
    if (!lua_isstring(L, -1)) return luaL_error(L, "postern.rule '%s': description must be a string", name);
    rule.info.description = clean_text(lua_tostring(L, -1), 200);
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "on_error");
  if (!lua_isnil(L, -1)) {
    const char* policy = lua_tostring(L, -1);
    if (policy && std::strcmp(policy, "tempfail") == 0) rule.info.on_error = LuaOptions::OnError::kTempfail;
    else if (policy && std::strcmp(policy, "continue") == 0) rule.info.on_error = LuaOptions::OnError::kContinue;
    else return luaL_error(L, "postern.rule '%s': on_error must be \"tempfail\" or \"continue\"", name);
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "fn");
  if (!lua_isfunction(L, -1)) return luaL_error(L, "postern.rule '%s': fn must be a function", name);
  rule.fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  rt.stage_mask |= rule.stage_mask;
  // Symbols added before MAIL reach the transaction at MAIL (carry_session_symbols).
  if (rule.stage_mask & (stage_bit(Stage::kConnect) | stage_bit(Stage::kHelo))) rt.stage_mask |= stage_bit(Stage::kMail);
  rt.rules.push_back(std::move(rule));
  return 0;
}

// ---- verdicts

// Reads [code,] [enhanced,] [text] for reject/tempfail; `cls` is 4 or 5.
int make_reply_verdict(lua_State* L, const char* action, int cls) {
  int code = 0;
  std::string enhanced, text;
  int arg = 1;
  if (lua_type(L, arg) == LUA_TNUMBER) {
    code = static_cast<int>(luaL_checkinteger(L, arg));
    if (code / 100 != cls) return luaL_error(L, "postern.%s: code %d is not %dxx", action, code, cls);
    ++arg;
  }
  if (lua_type(L, arg) == LUA_TSTRING && lua_type(L, arg + 1) == LUA_TSTRING) {
    enhanced = lua_tostring(L, arg);
    ++arg;
  } else if (lua_type(L, arg) == LUA_TSTRING && is_enhanced_code(lua_tostring(L, arg))) {
    enhanced = lua_tostring(L, arg);
    ++arg;
  }
  if (!enhanced.empty() && (!is_enhanced_code(enhanced) || enhanced[0] - '0' != cls)) {
    return luaL_error(L, "postern.%s: enhanced status code \"%s\" is not %d.X.Y", action, enhanced.c_str(), cls);
  }
  if (!lua_isnoneornil(L, arg)) text = clean_text(luaL_checkstring(L, arg), 400);
  push_verdict(L, action, code, enhanced, text, text);
  return 1;
}

int api_accept(lua_State* L) {
  push_verdict(L, "accept", 0, "", "", "");
  return 1;
}
int api_reject(lua_State* L) { return make_reply_verdict(L, "reject", 5); }
int api_tempfail(lua_State* L) { return make_reply_verdict(L, "tempfail", 4); }
int api_discard(lua_State* L) {
  std::string reason = clean_text(luaL_optstring(L, 1, ""), 400);
  push_verdict(L, "discard", 0, "", "", reason);
  return 1;
}
int api_quarantine(lua_State* L) {
  std::string reason = clean_text(luaL_optstring(L, 1, ""), 400);
  push_verdict(L, "quarantine", 0, "", "", reason);
  return 1;
}
int api_disconnect(lua_State* L) {
  std::string text = clean_text(luaL_optstring(L, 1, ""), 400);
  push_verdict(L, "disconnect", 0, "", text, text);
  return 1;
}

// ---- logging

int api_log(lua_State* L) {
  const char* level = luaL_checkstring(L, 1);
  LuaLogLevel lv;
  if (std::strcmp(level, "debug") == 0) lv = LuaLogLevel::kDebug;
  else if (std::strcmp(level, "info") == 0) lv = LuaLogLevel::kInfo;
  else if (std::strcmp(level, "warning") == 0) lv = LuaLogLevel::kWarning;
  else if (std::strcmp(level, "error") == 0) lv = LuaLogLevel::kError;
  else return luaL_error(L, "postern.log: level must be debug, info, warning or error");
  std::string msg = luaL_tolstring(L, 2, nullptr);
  ThreadTag* tag = thread_tag(L);
  std::string where = tag->inv ? "rule=" + tag->inv->rule->info.name : "script=" + tag->rt->loading_script;
  rule_log(L, lv, "lua-log " + where + " msg=" + quoted_text(msg, 1024));
  return 0;
}

// ---- waiting operations

Invocation& running(lua_State* L, const char* what) {
  ThreadTag* tag = thread_tag(L);
  if (!tag->inv) luaL_error(L, "%s can be called only while a rule runs", what);
  return *tag->inv;
}

int yield_for(lua_State* L, Invocation& inv, PendingOp op) {
  const int n = answer_now(L, *inv.tag.rt, op);
  if (n >= 0) return n;
  inv.pending = std::move(op);
  return lua_yield(L, 0);
}

std::string check_dns_name(lua_State* L, int idx) {
  std::size_t len = 0;
  const char* s = luaL_checklstring(L, idx, &len);
  std::string name(s, len);
  if (!name.empty() && name.back() == '.') name.pop_back();
  bool ok = !name.empty() && name.size() <= 253;
  for (unsigned char c : name) ok = ok && (std::isalnum(c) || c == '-' || c == '.' || c == '_');
  if (!ok) luaL_error(L, "not a DNS name: \"%s\"", clean_text(name, 100).c_str());
  return name;
}

int dns_query(lua_State* L, DnsType type, const char* what) {
  Invocation& inv = running(L, what);
  PendingOp op;
  op.kind = PendingOp::Kind::kDns;
  op.type = type;
  if (type == DnsType::kPtr) {
    op.name = reverse_name(luaL_checkstring(L, 1));
    if (op.name.empty()) op.name = check_dns_name(L, 1);
  } else {
    op.name = check_dns_name(L, 1);
  }
  return yield_for(L, inv, std::move(op));
}

int api_dns_a(lua_State* L) { return dns_query(L, DnsType::kA, "postern.dns.a"); }
int api_dns_aaaa(lua_State* L) { return dns_query(L, DnsType::kAaaa, "postern.dns.aaaa"); }
int api_dns_mx(lua_State* L) { return dns_query(L, DnsType::kMx, "postern.dns.mx"); }
int api_dns_txt(lua_State* L) { return dns_query(L, DnsType::kTxt, "postern.dns.txt"); }
int api_dns_ptr(lua_State* L) { return dns_query(L, DnsType::kPtr, "postern.dns.ptr"); }

int api_dnsbl(lua_State* L) {
  Invocation& inv = running(L, "postern.dns.dnsbl");
  std::string zone = check_dns_name(L, 1);
  const char* ip = luaL_checkstring(L, 2);
  std::string reversed = reverse_ip(ip);
  if (reversed.empty()) return luaL_error(L, "postern.dns.dnsbl: \"%s\" is not an IP address", clean_text(ip, 64).c_str());
  PendingOp op;
  op.kind = PendingOp::Kind::kDnsbl;
  op.type = DnsType::kA;
  op.name = reversed + "." + zone;
  if (op.name.size() > 253) return luaL_error(L, "postern.dns.dnsbl: zone too long");
  return yield_for(L, inv, std::move(op));
}

int api_sleep(lua_State* L) {
  Invocation& inv = running(L, "postern.sleep");
  double seconds = luaL_checknumber(L, 1);
  if (!(seconds >= 0 && seconds <= 3600)) return luaL_error(L, "postern.sleep: seconds must be from 0 to 3600");
  PendingOp op;
  op.kind = PendingOp::Kind::kSleep;
  op.seconds = seconds;
  return yield_for(L, inv, std::move(op));
}

std::string check_store_key(lua_State* L) {
  std::size_t len = 0;
  const char* key = luaL_checklstring(L, 1, &len);
  if (len == 0 || len > MemoryStore::kMaxKey) luaL_error(L, "postern.store: a key is 1 to %d octets", static_cast<int>(MemoryStore::kMaxKey));
  return std::string(key, len);
}

std::int64_t check_ttl(lua_State* L, int idx) {
  lua_Integer ttl = luaL_optinteger(L, idx, 0);
  if (ttl < 0 || ttl > 10 * 365 * 86400) luaL_error(L, "postern.store: ttl must be 0 (none) to ten years of seconds");
  return ttl;
}

int api_store_get(lua_State* L) {
  Invocation& inv = running(L, "postern.store.get");
  PendingOp op;
  op.kind = PendingOp::Kind::kStoreGet;
  op.name = check_store_key(L);
  return yield_for(L, inv, std::move(op));
}

// postern.store.set and postern.store.add (`what`): key, value (at most
// store.max_value octets), optional ttl.
int store_write(lua_State* L, PendingOp::Kind kind, const char* what) {
  Invocation& inv = running(L, what);
  PendingOp op;
  op.kind = kind;
  op.name = check_store_key(L);
  std::size_t len = 0;
  if (!lua_isstring(L, 2)) return luaL_error(L, "%s: the value must be a string or a number", what);
  const char* value = lua_tolstring(L, 2, &len);
  std::size_t max_value = thread_tag(L)->rt->options.store_max_value;
  if (len > max_value) {
    return luaL_error(L, "%s: value longer than %d octets (store.max_value)", what, static_cast<int>(max_value));
  }
  op.value.assign(value, len);
  op.ttl = check_ttl(L, 3);
  return yield_for(L, inv, std::move(op));
}

int api_store_set(lua_State* L) { return store_write(L, PendingOp::Kind::kStoreSet, "postern.store.set"); }
int api_store_add(lua_State* L) { return store_write(L, PendingOp::Kind::kStoreAdd, "postern.store.add"); }

int api_store_incr(lua_State* L) {
  Invocation& inv = running(L, "postern.store.incr");
  PendingOp op;
  op.kind = PendingOp::Kind::kStoreIncr;
  op.name = check_store_key(L);
  op.by = luaL_optinteger(L, 2, 1);
  op.ttl = check_ttl(L, 3);
  return yield_for(L, inv, std::move(op));
}

int api_store_del(lua_State* L) {
  Invocation& inv = running(L, "postern.store.del");
  PendingOp op;
  op.kind = PendingOp::Kind::kStoreDel;
  op.name = check_store_key(L);
  return yield_for(L, inv, std::move(op));
}

void push_setting(lua_State* L, const LuaSetting& s, int depth) {
  luaL_checkstack(L, 4, "settings too deep");
  switch (s.kind) {
    case LuaSetting::Kind::kBool: lua_pushboolean(L, s.boolean); return;
    case LuaSetting::Kind::kInteger: lua_pushinteger(L, static_cast<lua_Integer>(s.integer)); return;
    case LuaSetting::Kind::kNumber: lua_pushnumber(L, s.number); return;
    case LuaSetting::Kind::kString: lua_pushlstring(L, s.string.data(), s.string.size()); return;
    case LuaSetting::Kind::kList:
    case LuaSetting::Kind::kTable:
      lua_createtable(L, 0, 0);
      if (depth > 32) return;
      for (std::size_t i = 0; i < s.items.size(); ++i) {
        push_setting(L, s.items[i], depth + 1);
        if (s.kind == LuaSetting::Kind::kList || i >= s.keys.size()) lua_rawseti(L, -2, static_cast<lua_Integer>(i + 1));
        else lua_setfield(L, -2, s.keys[i].c_str());
      }
      return;
  }
}

void set_functions(lua_State* L, std::initializer_list<std::pair<const char*, lua_CFunction>> fns) {
  for (auto& [name, fn] : fns) {
    lua_pushcfunction(L, fn);
    lua_setfield(L, -2, name);
  }
}

}  // namespace

void install_postern_api(lua_State* L, LuaRuntime& rt) {
  // The verdict field names stay interned, so reading a verdict after the
  // call (outside any protected call) never allocates.
  lua_newtable(L);
  for (const char* name : {"action", "code", "enhanced", "text", "reason"}) {
    lua_pushstring(L, name);
    lua_rawseti(L, -2, static_cast<lua_Integer>(luaL_len(L, -2) + 1));
  }
  lua_setfield(L, LUA_REGISTRYINDEX, "postern.verdict_fields");
  luaL_newmetatable(L, kVerdictMeta);
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
  install_ctx_types(L);

  lua_newtable(L);  // postern
  set_functions(L, {{"rule", api_rule}, {"accept", api_accept}, {"reject", api_reject}, {"tempfail", api_tempfail},
                    {"discard", api_discard}, {"quarantine", api_quarantine}, {"disconnect", api_disconnect},
                    {"log", api_log}, {"sleep", api_sleep}});
  lua_newtable(L);
  set_functions(L, {{"a", api_dns_a}, {"aaaa", api_dns_aaaa}, {"mx", api_dns_mx}, {"txt", api_dns_txt},
                    {"ptr", api_dns_ptr}, {"dnsbl", api_dnsbl}});
  lua_setfield(L, -2, "dns");
  lua_newtable(L);
  set_functions(L, {{"get", api_store_get}, {"set", api_store_set}, {"add", api_store_add}, {"incr", api_store_incr},
                    {"del", api_store_del}});
  lua_setfield(L, -2, "store");
  lua_newtable(L);
  set_functions(L, {{"address", api_parse_address}, {"reverse_ip", api_reverse_ip}});
  lua_setfield(L, -2, "util");
  push_setting(L, rt.options.settings, 0);
  lua_setfield(L, -2, "settings");
  lua_pushliteral(L, "1");
  lua_setfield(L, -2, "api_version");
  install_regex(L);
  lua_setfield(L, -2, "postern");
}

std::optional<Verdict> to_verdict(lua_State* L, int idx) {
  if (!lua_istable(L, idx) || !lua_getmetatable(L, idx)) return std::nullopt;
  luaL_getmetatable(L, kVerdictMeta);
  bool is_verdict = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  if (!is_verdict) return std::nullopt;
  Verdict v;
  auto field = [&](const char* name) {
    lua_getfield(L, idx, name);
    std::string s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
    lua_pop(L, 1);
    return s;
  };
  std::string action = field("action");
  static const std::pair<const char*, Verdict::Action> kActions[] = {
      {"accept", Verdict::Action::kAccept},         {"reject", Verdict::Action::kReject},
      {"tempfail", Verdict::Action::kTempfail},     {"discard", Verdict::Action::kDiscard},
      {"quarantine", Verdict::Action::kQuarantine}, {"disconnect", Verdict::Action::kDisconnect}};
  bool found = false;
  for (auto& [name, a] : kActions) {
    if (action == name) v.action = a, found = true;
  }
  if (!found) return std::nullopt;
  lua_getfield(L, idx, "code");
  v.code = static_cast<int>(lua_tointeger(L, -1));
  lua_pop(L, 1);
  v.enhanced = field("enhanced");
  v.text = field("text");
  v.reason = field("reason");
  return v;
}

}  // namespace postern
