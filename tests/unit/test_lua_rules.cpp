// `postern test` over every shipped rule: runs scripts/tests/*.toml through
// run_rule_tests and checks that every fixture passes; and the runner itself
// reports a failing expectation and a broken script.
#include <catch2/catch.hpp>

#include <filesystem>
#include <sstream>

#include "filters/lua/rule_test.h"
#include "test_util.h"

using postern::RuleTestOptions;
using postern::run_rule_tests;
using postern::test::source_root;


TEST_CASE("postern test: every shipped rule's fixtures pass", "[lua]") {
  std::ostringstream out;
  RuleTestOptions options;
  int rc = run_rule_tests({source_root() + "/scripts/tests"}, options, out);
  INFO(out.str());
  CHECK(rc == 0);
  CHECK(out.str().find("FAIL") == std::string::npos);
}

TEST_CASE("postern test: a wrong expectation fails, a broken script errors", "[lua]") {
  postern::test::TempDir dir;
  dir.write("rule.lua", "postern.rule{name='X', stage='mail', fn=function() return postern.reject('no') end}\n");
  dir.write("broken.lua", "postern.rule{name='Y', stage='mail' fn=nil}\n");
  dir.write("a.toml", "scripts = ['rule.lua']\n[expect]\nverdict = 'accept'\n");
  dir.write("b.toml", "scripts = ['broken.lua']\n[expect]\nverdict = 'accept'\n");
  std::ostringstream out;
  RuleTestOptions options;
  CHECK(run_rule_tests({dir.path() + "/a.toml"}, options, out) == 1);
  CHECK(out.str().find("expected verdict accept, got reject") != std::string::npos);
  std::ostringstream out2;
  CHECK(run_rule_tests({dir.path() + "/b.toml"}, options, out2) == 2);
  CHECK(out2.str().find("broken.lua:1:") != std::string::npos);
}
