// A filter's ESMTP parameters (filters/esmtp_param.h): the RFC 5321 §4.1.2
// grammar, the bounds, and a milter's SMFIR_ADDRCPT_PAR / SMFIR_CHGFROM
// arguments as Changes (filters/milter/milter_actions.h).
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "filters/esmtp_param.h"
#include "filters/milter/milter_actions.h"

using namespace postern;

namespace {

std::string parsed(std::string_view text) {
  EsmtpParamsParse p = parse_filter_esmtp_params(text);
  return p.error.empty() ? esmtp_params_text(p.params) : "!" + p.error;
}

}  // namespace

TEST_CASE("filter ESMTP parameters: valid ones parse, keywords upper-cased", "[esmtp_param]") {
  CHECK(parsed("") == "");
  CHECK(parsed("NOTIFY=NEVER") == "NOTIFY=NEVER");
  CHECK(parsed("notify=SUCCESS,FAILURE orcpt=rfc822;a+2Bb@example.com") ==
        "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@example.com");
  CHECK(parsed("  RET=HDRS   ENVID=x ") == "RET=HDRS ENVID=x");  // repeated SP tolerated
  CHECK(parsed("SMTPUTF8") == "SMTPUTF8");                        // a keyword without value
  CHECK(parsed("X-VENDOR-1=v") == "X-VENDOR-1=v");                // unknown keywords parse; delivery drops them
  CHECK(parsed("ENVID=" + std::string(kMaxFilterEsmtpValue, 'v')).front() != '!');
}

TEST_CASE("filter ESMTP parameters: hostile ones are refused whole", "[esmtp_param]") {
  // Anything that could end the command line or start a second command.
  for (const std::string& bad : std::vector<std::string>{"NOTIFY=NEVER\r\nRCPT TO:<evil@example.com>", "NOTIFY=NEVER\r", "NOTIFY=NEVER\n",
                          "NOTIFY=NE\rVER", std::string("NOTIFY=NE\0VER", 13), "NOTIFY=NEVER\tRET=FULL",
                          "ENVID=a\x7f", "ENVID=caf\xc3\xa9", "NOTIFY\r\n=NEVER"}) {
    INFO(bad);
    CHECK(parsed(bad).front() == '!');
  }
  // Keyword grammar: ALPHA/DIGIT first, then ALPHA/DIGIT/"-".
  for (const std::string& bad : std::vector<std::string>{"-NOTIFY=NEVER", "NO_TIFY=NEVER", "NOT.IFY", "=NEVER", "NOTIFY!", "N\xc3\xb6TIFY=x",
                          std::string(kMaxFilterEsmtpKeyword + 1, 'K')}) {
    INFO(bad);
    CHECK(parsed(bad) == "!invalid parameter keyword");
  }
  // Value grammar: 1*(%d33-60 / %d62-126).
  CHECK(parsed("NOTIFY=") == "!invalid parameter value");
  CHECK(parsed("NOTIFY=a=b") == "!invalid parameter value");
  CHECK(parsed("ENVID=" + std::string(kMaxFilterEsmtpValue + 1, 'v')) == "!parameter value too long");
  // Bounds on count and length, and one of each keyword.
  std::string many;
  for (int i = 0; i < 100; ++i) many += "P" + std::to_string(i) + "=v ";
  CHECK(parsed(many) == "!too many parameters");
  std::string nine;
  for (int i = 0; i < 9; ++i) nine += "P" + std::to_string(i) + " ";
  CHECK(parsed(nine) == "!too many parameters");
  CHECK(parsed(std::string(kMaxFilterEsmtpText + 1, ' ')) == "!parameters too long");
  CHECK(parsed("NOTIFY=NEVER notify=SUCCESS") == "!duplicate parameter NOTIFY");
}

TEST_CASE("filter ESMTP parameters: the extension each needs", "[esmtp_param]") {
  CHECK(esmtp_param_extension("NOTIFY") == "DSN");
  CHECK(esmtp_param_extension("ORCPT") == "DSN");
  CHECK(esmtp_param_extension("RET") == "DSN");
  CHECK(esmtp_param_extension("ENVID") == "DSN");
  CHECK(esmtp_param_extension("BODY") == "8BITMIME");
  CHECK(esmtp_param_extension("SIZE") == "SIZE");
  CHECK(esmtp_param_extension("SMTPUTF8") == "SMTPUTF8");
  CHECK(esmtp_param_extension("AUTH").empty());
  CHECK(esmtp_param_extension("X-VENDOR").empty());
  CHECK(esmtp_rcpt_param("NOTIFY"));
  CHECK_FALSE(esmtp_rcpt_param("RET"));
}

TEST_CASE("milter SMFIR_ADDRCPT_PAR and SMFIR_CHGFROM arguments become Changes", "[esmtp_param][milter]") {
  const std::uint32_t all = milter::action::kAll;
  auto reply = [](char command, std::string address, std::string args) {
    milter::Reply r;
    r.command = command;
    r.valid = true;
    r.address = std::move(address);
    r.args = std::move(args);
    return r;
  };
  SECTION("valid arguments are kept with their address") {
    MilterEom eom;
    CHECK(apply_milter_modification(reply(milter::reply::kAddRcptPar, "new@example.com", "NOTIFY=NEVER"), all, 1000,
                                    eom).empty());
    CHECK(apply_milter_modification(reply(milter::reply::kChgFrom, "bounces@example.org", "RET=HDRS ENVID=x"), all,
                                    1000, eom).empty());
    REQUIRE(eom.changes.add_recipients.size() == 1);
    CHECK(esmtp_params_text(eom.changes.params_of_added(eom.changes.add_recipients[0])) == "NOTIFY=NEVER");
    CHECK(esmtp_params_text(eom.changes.reverse_path_params) == "RET=HDRS ENVID=x");
    CHECK(eom.actions == std::vector<std::string>{"add_rcpt <new@example.com> NOTIFY=NEVER",
                                                  "change_from <bounces@example.org> RET=HDRS ENVID=x"});
    CHECK(eom.changes.dropped_params.empty());
  }
  SECTION("hostile arguments are dropped, the address applies, the drop is noted") {
    MilterEom eom;
    CHECK(apply_milter_modification(reply(milter::reply::kAddRcptPar, "new@example.com",
                                          "NOTIFY=NEVER\r\nRCPT TO:<evil@example.com>"), all, 1000, eom).empty());
    CHECK(apply_milter_modification(reply(milter::reply::kChgFrom, "b@example.org", "RET=HDRS ENVID==x"), all,
                                    1000, eom).empty());
    REQUIRE(eom.changes.add_recipients.size() == 1);
    CHECK(eom.changes.params_of_added(eom.changes.add_recipients[0]).empty());
    CHECK(eom.changes.add_recipient_params.empty());
    CHECK(eom.changes.reverse_path);
    CHECK(eom.changes.reverse_path_params.empty());
    REQUIRE(eom.changes.dropped_params.size() == 2);
    CHECK(eom.changes.dropped_params[0].starts_with("add_rcpt <new@example.com>: invalid parameter value: "));
    CHECK(eom.actions[0] == "add_rcpt <new@example.com> (arguments refused: invalid parameter value)");
    CHECK(eom.actions[1] == "change_from <b@example.org> (arguments refused: invalid parameter value)");
  }
}
