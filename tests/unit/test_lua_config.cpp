// The [lua] and [scores] configuration sections: defaults, values, settings
// handed to scripts, and errors with file:line.
#include <catch2/catch.hpp>

#include <string>

#include "proxy/config.h"
#include "config_test_util.h"
#include "test_util.h"

using Catch::Matchers::Contains;
using postern::ConfigError;
using postern::ConfigSource;
using postern::LuaOptions;
using postern::LuaSetting;
using postern::load_config;
using postern::test::TempDir;

namespace {
}  // namespace

TEST_CASE("config [lua] and [scores]: defaults", "[lua][config]") {
  auto c = load_config(ConfigSource{});
  CHECK(c->lua.scripts.empty());
  CHECK(c->lua.on_error == LuaOptions::OnError::kTempfail);
  CHECK(c->scores.add_header == 5);
  CHECK(c->scores.reject == 15);
  CHECK(c->scores.quarantine == 0);
  CHECK(c->scores.header == "X-Spam-Status");
}

TEST_CASE("config [lua] and [scores]: values", "[lua][config]") {
  TempDir dir;
  dir.write("a.lua", "");
  std::filesystem::create_directory(dir.path() + "/lib");
  std::string path = dir.write("postern.toml",
                               "[lua]\n"
                               "scripts = [\"" + dir.path() + "/a.lua\", \"" + dir.path() + "\"]\n"
                               "module_path = \"" + dir.path() + "/lib\"\n"
                               "on_error = \"continue\"\n"
                               "timeout = 0.5\n"
                               "memory_limit = 33554432\n"
                               "[lua.settings]\n"
                               "dnsbl_zones = [\"zen.example\", \"bl.example\"]\n"
                               "greylist = { delay = 300, enabled = true }\n"
                               "[scores]\n"
                               "add_header = 4.5\n"
                               "quarantine = 8\n"
                               "reject = 12\n"
                               "header = \"X-Score\"\n");
  auto c = load_config(ConfigSource{path, {}, {}, {}});
  REQUIRE(c->lua.scripts.size() == 2);
  CHECK(c->lua.scripts[0] == dir.path() + "/a.lua");
  REQUIRE(c->lua.module_path.size() == 1);
  CHECK(c->lua.on_error == LuaOptions::OnError::kContinue);
  CHECK(c->lua.timeout == std::chrono::milliseconds(500));
  CHECK(c->lua.memory_limit == 33554432);
  const LuaSetting& s = c->lua.settings;
  REQUIRE(s.keys.size() == 2);
  CHECK(s.keys[0] == "dnsbl_zones");
  CHECK(s.items[0].kind == LuaSetting::Kind::kList);
  CHECK(s.items[0].items[1].string == "bl.example");
  CHECK(s.items[1].kind == LuaSetting::Kind::kTable);
  CHECK(c->scores.add_header == 4.5);
  CHECK(c->scores.quarantine == 8);
  CHECK(c->scores.reject == 12);
  CHECK(c->scores.header == "X-Score");
}

TEST_CASE("config [lua] and [scores]: errors name file and line", "[lua][config]") {
  TempDir dir;
  std::string path = dir.write("postern.toml",
                               "[lua]\n"
                               "scripts = \"/nonexistent/rules.lua\"\n"
                               "on_eror = \"continue\"\n"
                               "memory_limit = 5\n"
                               "[scores]\n"
                               "quarantine = 20\n"
                               "reject = 10\n"
                               "header = \"Bad Name\"\n");
  std::string e = postern::test::config_error_at(path);
  CHECK_THAT(e, Contains(path + ":2:") && Contains("no script file or directory"));
  CHECK_THAT(e, Contains(path + ":3:") && Contains("did you mean 'on_error'"));
  CHECK_THAT(e, Contains(path + ":4:") && Contains("lua.memory_limit"));
  CHECK_THAT(e, Contains(path + ":6:") && Contains("must be below scores.reject"));
  CHECK_THAT(e, Contains(path + ":8:") && Contains("scores.header"));
}
