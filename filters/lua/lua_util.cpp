// Helpers of the Lua bindings; see lua_api_util.h.
#include <arpa/inet.h>

#include <cctype>
#include <cstdio>

#include "filters/lua/lua_api_util.h"
#include "filters/text/ascii.h"

namespace postern {

std::string clean_text(std::string_view text, std::size_t limit) {
  std::string out;
  for (unsigned char c : text.substr(0, limit)) out.push_back((c >= 32 && c < 127) || c == '\t' ? static_cast<char>(c) : '?');
  return out;
}

std::string quoted_text(std::string_view text, std::size_t limit) {
  std::string out = "\"";
  for (char c : clean_text(text, limit)) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

bool is_enhanced_code(std::string_view code) {
  if (code.size() < 5 || (code[0] != '2' && code[0] != '4' && code[0] != '5') || code[1] != '.') return false;
  std::size_t dot = code.find('.', 2);
  if (dot == std::string_view::npos || dot == 2 || dot > 5 || dot + 1 >= code.size() || code.size() - dot - 1 > 3) return false;
  for (std::size_t i = 2; i < code.size(); ++i) {
    if (i != dot && !std::isdigit(static_cast<unsigned char>(code[i]))) return false;
  }
  return true;
}

bool valid_symbol_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (unsigned char c : name) {
    if (!(std::isalnum(c) || c == '_' || c == '-' || c == '.')) return false;
  }
  return true;
}

void push_verdict(lua_State* L, const char* action, int code, const std::string& enhanced, const std::string& text,
                  const std::string& reason) {
  lua_createtable(L, 0, 5);
  lua_pushstring(L, action);
  lua_setfield(L, -2, "action");
  if (code) {
    lua_pushinteger(L, code);
    lua_setfield(L, -2, "code");
  }
  if (!enhanced.empty()) {
    lua_pushstring(L, enhanced.c_str());
    lua_setfield(L, -2, "enhanced");
  }
  if (!text.empty()) {
    lua_pushstring(L, text.c_str());
    lua_setfield(L, -2, "text");
  }
  if (!reason.empty()) {
    lua_pushstring(L, reason.c_str());
    lua_setfield(L, -2, "reason");
  }
  luaL_setmetatable(L, "postern.verdict");
}

namespace {
int address_tostring(lua_State* L) {
  lua_getfield(L, 1, "addr");
  return 1;
}

int address_eq(lua_State* L) {
  lua_getfield(L, 1, "addr");
  lua_getfield(L, 2, "addr");
  std::string a = luaL_optstring(L, -2, ""), b = luaL_optstring(L, -1, "");
  // The local part is case-sensitive in principle (RFC 5321 §2.4); the domain is not.
  auto at_a = a.rfind('@'), at_b = b.rfind('@');
  bool eq = at_a == at_b && a.compare(0, at_a, b, 0, at_b) == 0;
  if (eq && at_a != std::string::npos) eq = ascii::iequals(std::string_view(a).substr(at_a), std::string_view(b).substr(at_b));
  if (at_a == std::string::npos) eq = a == b;
  lua_pushboolean(L, eq);
  return 1;
}

void ensure_address_meta(lua_State* L) {
  if (luaL_newmetatable(L, kAddressMeta)) {
    lua_pushcfunction(L, address_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, address_eq);
    lua_setfield(L, -2, "__eq");
    // Shared by every address object of the state: hidden, so that a rule
    // cannot change how other rules compare and print addresses.
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
  }
}

std::optional<Mailbox> parse_text_address(std::string_view text, bool allow_null, std::string& why) {
  std::string path(text);
  if (path.size() > 512) {
    why = "address too long";
    return std::nullopt;
  }
  if (path.empty() || path.front() != '<') path = "<" + path + ">";
  PathParse p = parse_path(path, allow_null, false);
  if (p.error != PathError::kNone || p.end != path.size()) {
    why = "not an address: \"" + clean_text(text, 100) + "\"";
    return std::nullopt;
  }
  return p.mailbox;
}
}  // namespace

void push_address(lua_State* L, const Mailbox& m) {
  lua_createtable(L, 0, 3);
  lua_pushlstring(L, m.local_part.data(), m.local_part.size());
  lua_setfield(L, -2, "local_part");
  lua_pushlstring(L, m.domain.data(), m.domain.size());
  lua_setfield(L, -2, "domain");
  // addr = Mailbox::str(), built on the Lua stack (no heap string).
  if (m.empty()) {
    lua_pushliteral(L, "");
  } else if (m.domain.empty()) {
    lua_pushlstring(L, m.local_part.data(), m.local_part.size());
  } else {
    lua_pushlstring(L, m.local_part.data(), m.local_part.size());
    lua_pushliteral(L, "@");
    lua_pushlstring(L, m.domain.data(), m.domain.size());
    lua_concat(L, 3);
  }
  lua_setfield(L, -2, "addr");
  ensure_address_meta(L);
  lua_setmetatable(L, -2);
}

Mailbox check_address(lua_State* L, int idx, bool allow_null) {
  // All of the string's octets: a NUL inside makes it no address (parse_path),
  // not the end of a shorter one.
  std::string text;
  std::size_t len = 0;
  if (lua_istable(L, idx)) {
    lua_getfield(L, idx, "addr");
    const char* s = luaL_optlstring(L, -1, "", &len);
    text.assign(s, len);
    lua_pop(L, 1);
  } else {
    const char* s = luaL_checklstring(L, idx, &len);
    text.assign(s, len);
  }
  if (text.empty() || text == "<>") {
    if (allow_null) return Mailbox{};
    luaL_error(L, "an empty address is allowed only as the reverse-path");
  }
  std::string why;
  auto m = parse_text_address(text, allow_null, why);
  if (!m) luaL_error(L, "%s", why.c_str());
  return *m;
}

int api_parse_address(lua_State* L) {
  std::string why;
  std::size_t len = 0;
  const char* text = luaL_checklstring(L, 1, &len);
  auto m = parse_text_address(std::string_view(text, len), true, why);
  if (!m) {
    lua_pushnil(L);
    lua_pushstring(L, why.c_str());
    return 2;
  }
  push_address(L, *m);
  return 1;
}

int api_reverse_ip(lua_State* L) {
  std::string r = reverse_ip(luaL_checkstring(L, 1));
  if (r.empty()) lua_pushnil(L);
  else lua_pushstring(L, r.c_str());
  return 1;
}

}  // namespace postern
