// The one TOML -> LuaSetting converter (filters/lua/toml_setting.h), shared
// by [lua.settings] and a rule test's [settings]: every TOML kind, the depth
// cap, and the same result through both callers.
#include <catch2/catch.hpp>

#include <string>

#include <toml++/toml.h>

#include "filters/lua/toml_setting.h"

using postern::LuaSetting;
using postern::lua_setting_from_toml;
using K = LuaSetting::Kind;

namespace {

LuaSetting convert(const std::string& toml_text) {
  toml::table t = toml::parse(toml_text);
  return lua_setting_from_toml(t);
}

const LuaSetting& item(const LuaSetting& table, const std::string& key) {
  for (std::size_t i = 0; i < table.keys.size(); ++i) {
    if (table.keys[i] == key) return table.items[i];
  }
  FAIL("no key " << key);
  return table;
}

// A list nested `depth` levels deep around the integer 7.
std::string nested_lists(int depth) {
  return "v = " + std::string(depth, '[') + "7" + std::string(depth, ']') + "\n";
}

}  // namespace

TEST_CASE("every TOML kind becomes its LuaSetting", "[toml_setting]") {
  LuaSetting s = convert(
      "b = true\ni = -42\nf = 2.5\ns = \"text\"\nl = [1, \"two\"]\n"
      "d = 2026-12-06\nt = 07:45:00\ndt = 2026-12-06T07:45:00Z\n[sub]\nk = \"v\"\n");
  CHECK(s.kind == K::kTable);
  CHECK(item(s, "b").kind == K::kBool);
  CHECK(item(s, "b").boolean);
  CHECK(item(s, "i").kind == K::kInteger);
  CHECK(item(s, "i").integer == -42);
  CHECK(item(s, "f").kind == K::kNumber);
  CHECK(item(s, "f").number == 2.5);
  CHECK(item(s, "s").string == "text");
  REQUIRE(item(s, "l").kind == K::kList);
  REQUIRE(item(s, "l").items.size() == 2);
  CHECK(item(s, "l").items[1].string == "two");
  // Dates and times arrive as strings, as written (the copy in rule_test.cpp
  // made them empty tables before issue 22).
  CHECK(item(s, "d").kind == K::kString);
  CHECK(item(s, "d").string == "2026-12-06");
  CHECK(item(s, "t").kind == K::kString);
  CHECK(item(s, "t").string == "07:45:00");
  CHECK(item(s, "dt").kind == K::kString);
  CHECK(item(s, "dt").string.rfind("2026-12-06T07:45:00", 0) == 0);
  CHECK(item(s, "sub").kind == K::kTable);
  CHECK(item(item(s, "sub"), "k").string == "v");
}

TEST_CASE("nesting deeper than kMaxSettingDepth arrives empty", "[toml_setting]") {
  // The root table is depth 0, "v" depth 1, its lists 2.. : the innermost
  // list that still has its items sits at depth kMaxSettingDepth - 1.
  for (int depth : {1, postern::kMaxSettingDepth - 2, postern::kMaxSettingDepth - 1, postern::kMaxSettingDepth,
                    postern::kMaxSettingDepth + 5, 200}) {
    INFO("depth " << depth);
    LuaSetting s = convert(nested_lists(depth));
    const LuaSetting* at = &item(s, "v");
    int levels = 0;
    while (at->kind == K::kList && !at->items.empty()) at = &at->items[0], ++levels;
    if (depth <= postern::kMaxSettingDepth - 1) {
      CHECK(at->kind == K::kInteger);
      CHECK(levels == depth);
    } else {
      CHECK(at->kind == K::kList);  // cut: an empty list
      CHECK(levels == postern::kMaxSettingDepth - 1);
    }
  }
  // Tables are cut the same way.
  std::string deep = "[a";
  for (int i = 0; i < 40; ++i) deep += ".a";
  LuaSetting s = convert(deep + "]\nleaf = 1\n");
  const LuaSetting* at = &s;
  int levels = 0;
  while (at->kind == K::kTable && !at->items.empty()) at = &at->items[0], ++levels;
  CHECK(at->kind == K::kTable);
  CHECK(levels == postern::kMaxSettingDepth);
}
