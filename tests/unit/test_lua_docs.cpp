// Every Lua example in docs/lua-api.md and docs/first-rule.md loads and runs
// through every stage without a rule error: the reference cannot drift from
// the engine.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "test_lua_util.h"

using postern::Mailbox;
using postern::Stage;
using postern::test::LuaHarness;
using postern::test::source_root;

namespace {


std::vector<std::string> lua_blocks(const std::string& file) {
  std::ifstream in(file);
  std::vector<std::string> blocks;
  std::string line, block;
  bool inside = false;
  while (std::getline(in, line)) {
    if (!inside && line == "```lua") {
      inside = true;
      block.clear();
    } else if (inside && line == "```") {
      inside = false;
      blocks.push_back(block);
    } else if (inside) {
      block += line + "\n";
    }
  }
  return blocks;
}

constexpr const char* kMessage =
    "From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: hello\r\n"
    "Reply-To: <x@gmail.com>\r\n\r\nyou have won\r\n";

}  // namespace

TEST_CASE("docs: every Lua example runs", "[lua][docs]") {
  for (const char* doc : {"/docs/lua-api.md", "/docs/first-rule.md"}) {
    auto blocks = lua_blocks(source_root() + doc);
    REQUIRE(!blocks.empty());
    for (const std::string& script : blocks) {
      LuaHarness h;
      h.dir.write("lists.lua", "return { freemail = { [\"gmail.com\"] = true } }\n");
      h.options.module_path = {h.dir.path()};
      INFO(doc << ":\n" << script);
      std::shared_ptr<postern::LuaFilter> f;
      REQUIRE_NOTHROW(f = h.load(script));
      h.txn.reverse_path = Mailbox{"alice", "example.org"};
      h.txn.recipients = {Mailbox{"bob", "example.com"}};
      for (Stage s : {Stage::kConnect, Stage::kHelo, Stage::kMail, Stage::kRcpt, Stage::kData, Stage::kEom, Stage::kClose}) {
        if (s == Stage::kRcpt) h.txn.current_rcpt = Mailbox{"bob", "example.com"};
        else h.txn.current_rcpt.reset();
        if (s == Stage::kData) h.set_message(kMessage);
        h.run(*f, s);
      }
      for (const auto& line : h.logs) {
        CHECK(line.find("lua-rule-error") == std::string::npos);
      }
    }
  }
}
