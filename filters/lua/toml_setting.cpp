// TOML → LuaSetting (filters/lua/toml_setting.h).
#include "filters/lua/toml_setting.h"

#include <sstream>

namespace postern {
namespace {

LuaSetting convert(const toml::node& n, int depth) {
  LuaSetting s;
  if (auto b = n.as_boolean()) s.kind = LuaSetting::Kind::kBool, s.boolean = b->get();
  else if (auto i = n.as_integer()) s.kind = LuaSetting::Kind::kInteger, s.integer = i->get();
  else if (auto f = n.as_floating_point()) s.kind = LuaSetting::Kind::kNumber, s.number = f->get();
  else if (auto str = n.as_string()) s.kind = LuaSetting::Kind::kString, s.string = str->get();
  else if (auto arr = n.as_array()) {
    s.kind = LuaSetting::Kind::kList;
    if (depth < kMaxSettingDepth) {
      for (const toml::node& item : *arr) s.items.push_back(convert(item, depth + 1));
    }
  } else if (auto t = n.as_table()) {
    s.kind = LuaSetting::Kind::kTable;
    if (depth < kMaxSettingDepth) {
      for (auto&& [k, v] : *t) {
        s.keys.emplace_back(k.str());
        s.items.push_back(convert(v, depth + 1));
      }
    }
  } else {
    s.kind = LuaSetting::Kind::kString;  // dates and times, as written
    std::ostringstream text;
    text << toml::node_view<const toml::node>(n);
    s.string = text.str();
  }
  return s;
}

}  // namespace

LuaSetting lua_setting_from_toml(const toml::node& n) { return convert(n, 0); }

}  // namespace postern
