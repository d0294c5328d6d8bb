// A TOML value as the LuaSetting scripts read as postern.settings: the one
// converter for [lua.settings] in the configuration (proxy/config.cpp) and
// [settings] in a rule test fixture (filters/lua/rule_test.cpp).
#pragma once

#include <toml++/toml.h>

#include "filters/lua/lua_options.h"

namespace postern {

// Lists and tables nested deeper than this arrive empty: a bound on the
// recursion, far above what a rule's settings need.
inline constexpr int kMaxSettingDepth = 16;

// Dates and times arrive as strings, as written in the TOML.
LuaSetting lua_setting_from_toml(const toml::node& n);

}  // namespace postern
