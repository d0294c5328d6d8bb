// Small helpers of the Lua bindings: text cleaning, reply-code checks,
// verdict tables, IP reversal, address objects. Not for use outside
// filters/lua/.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <lua.hpp>

#include "filters/address.h"
#include "filters/dns/reverse_name.h"

namespace postern {

inline constexpr const char* kAddressMeta = "postern.address";

// Printable ASCII and tabs only (others become '?'), cut at `limit` octets:
// for reply text, log text and descriptions.
std::string clean_text(std::string_view text, std::size_t limit);
// clean_text between double quotes, with '"' and '\\' escaped: a value of a
// key=value log line that text from a rule cannot end early (a forged
// `rule=` or `policy=` after it).
std::string quoted_text(std::string_view text, std::size_t limit);
// "X.Y.Z" of RFC 3463 with X in 2, 4, 5.
bool is_enhanced_code(std::string_view code);
// 1-64 of letters, digits, '_', '-', '.'.
bool valid_symbol_name(std::string_view name);
void push_verdict(lua_State* L, const char* action, int code, const std::string& enhanced,
                  const std::string& text, const std::string& reason);

// Address objects: {local_part=, domain=, addr=} with __tostring.
void push_address(lua_State* L, const Mailbox& m);
// Reads an address string ("a@b", "<a@b>", "" for the null path when
// allow_null) or address object at `idx`; raises a Lua error when invalid.
Mailbox check_address(lua_State* L, int idx, bool allow_null);

int api_parse_address(lua_State* L);  // postern.util.address(text) -> address or nil, reason
int api_reverse_ip(lua_State* L);     // postern.util.reverse_ip(ip) -> string or nil

// lua_ctx.cpp: registers the metatables of ctx, headers, body and notes.
void install_ctx_types(lua_State* L);

}  // namespace postern
