// postern's changes as milter modifications (proxy/milter_changes.h), read
// back with the milter client's own decoder: each kind of change, the order
// the MTA must apply them in, and a change the MTA does not allow.
#include <catch2/catch.hpp>

#include "filters/milter/milter_protocol.h"
#include "proxy/milter_changes.h"

using namespace postern;
namespace m = postern::milter;

namespace {

std::vector<m::Reply> replies(const std::string& framed) {
  m::PacketReader r;
  r.feed(framed);
  std::vector<m::Reply> out;
  m::Packet p;
  while (r.next(p) == m::PacketReader::Status::kPacket) out.push_back(m::decode_reply(p));
  return out;
}

struct Fixture {
  Spool spool{1 << 16, ""};
  std::unique_ptr<Message> message;
  TransactionFacts t;
  explicit Fixture(std::string content) {
    spool.append(content);
    spool.finish();
    message = std::make_unique<Message>(spool);
    t.recipients = {Mailbox{"b", "example.net"}, Mailbox{"c", "example.net"}};
  }
  std::vector<m::Reply> run(std::uint32_t actions = m::action::kAll, bool leading_space = true) {
    std::string error;
    bool none_left = false;
    auto out = replies(milter_modifications(*message, t, actions, leading_space, error, none_left));
    this->error = error;
    this->none_left = none_left;
    return out;
  }
  std::string error;
  bool none_left = false;
};

const char* kContent =
    "Received: from a\r\nSubject: hello\r\nX-Mailer: one\r\nX-Mailer: two\r\n"
    "Authentication-Results: mx.example; spf=pass\r\nAuthentication-Results: mx.example; dkim=pass\r\n\r\nbody\r\n";

}  // namespace

TEST_CASE("milter modifications: header edits, last occurrence first", "[milter_server]") {
  Fixture f(kContent);
  using K = HeaderEdit::Kind;
  f.t.changes.headers = {{K::kPrepend, "Received-SPF", "pass"}, {K::kRemove, "Authentication-Results", "", 0},
                         {K::kPrepend, "Authentication-Results", "mx.example; spf=pass"},
                         {K::kChange, "X-Mailer", "hidden", 2}, {K::kAdd, "X-Spam-Status", "No"}};
  f.t.changes.subject_tag = "[SPAM]";
  auto r = f.run();
  REQUIRE(r.size() == 7);
  // deletions and changes in reverse field order: indexes stay valid
  CHECK((r[0].command == 'm' && r[0].name == "Authentication-Results" && r[0].index == 2 && r[0].value.empty()));
  CHECK((r[1].command == 'm' && r[1].name == "Authentication-Results" && r[1].index == 1 && r[1].value.empty()));
  CHECK((r[2].command == 'm' && r[2].name == "X-Mailer" && r[2].index == 2 && r[2].value == " hidden"));
  CHECK((r[3].command == 'm' && r[3].name == "Subject" && r[3].index == 1 && r[3].value == " [SPAM] hello"));
  CHECK((r[4].command == 'h' && r[4].name == "X-Spam-Status"));
  // insertions at the top, the last prepended first: they read in order
  CHECK((r[5].command == 'i' && r[5].index == 0 && r[5].name == "Authentication-Results"));
  CHECK((r[6].command == 'i' && r[6].index == 0 && r[6].name == "Received-SPF"));
  CHECK(f.error.empty());
}

TEST_CASE("milter modifications: leading space and folds as the MTA wants them", "[milter_server]") {
  Fixture f(kContent);
  std::string long_value(60, 'a');
  long_value += " " + std::string(60, 'b');
  f.t.changes.headers = {{HeaderEdit::Kind::kAdd, "X-Long", long_value}};
  auto with = f.run(m::action::kAll, true);
  auto without = f.run(m::action::kAll, false);
  REQUIRE((with.size() == 1 && without.size() == 1));
  CHECK(with[0].value == " " + std::string(60, 'a') + "\n " + std::string(60, 'b'));
  CHECK(without[0].value == std::string(60, 'a') + "\n " + std::string(60, 'b'));
  CHECK(with[0].value.find('\r') == std::string::npos);
}

TEST_CASE("milter modifications: subject tag on a message without Subject adds one", "[milter_server]") {
  Fixture f("From: a@example.org\r\n\r\nbody\r\n");
  f.t.changes.subject_tag = "[SPAM]";
  auto r = f.run();
  REQUIRE(r.size() == 1);
  CHECK((r[0].command == 'h' && r[0].name == "Subject" && r[0].value == " [SPAM]"));
}

TEST_CASE("milter modifications: envelope changes and redirect", "[milter_server]") {
  Fixture f(kContent);
  f.t.changes.reverse_path = Mailbox{"bounces", "example.com"};
  f.t.changes.add_recipients = {Mailbox{"copy", "example.net"}};
  f.t.changes.remove_recipients = {Mailbox{"c", "example.net"}};
  auto r = f.run();
  REQUIRE(r.size() == 3);
  CHECK((r[0].command == 'e' && r[0].address == "bounces@example.com"));
  CHECK((r[1].command == '-' && r[1].address == "c@example.net"));
  CHECK((r[2].command == '+' && r[2].address == "copy@example.net"));
  CHECK_FALSE(f.none_left);

  Fixture g(kContent);
  g.t.changes.redirect = std::vector<Mailbox>{Mailbox{"desk", "example.net"}};
  auto rr = g.run();
  REQUIRE(rr.size() == 3);
  CHECK((rr[0].command == '-' && rr[0].address == "b@example.net"));
  CHECK((rr[1].command == '-' && rr[1].address == "c@example.net"));
  CHECK((rr[2].command == '+' && rr[2].address == "desk@example.net"));

  Fixture h(kContent);
  h.t.changes.remove_recipients = h.t.recipients;
  h.run();
  CHECK(h.none_left);  // the caller discards, as a proxied session does
}

TEST_CASE("milter modifications: a new body in chunks, a change the MTA forbids is an error", "[milter_server]") {
  Fixture f(kContent);
  f.t.changes.body = std::string(m::kBodyChunk + 10, 'x');
  auto r = f.run();
  REQUIRE(r.size() == 2);
  CHECK((r[0].command == 'b' && r[0].body.size() == m::kBodyChunk && r[1].body.size() == 10));

  Fixture g(kContent);
  g.t.changes.redirect = std::vector<Mailbox>{Mailbox{"desk", "example.net"}};
  g.run(m::action::kAll & ~m::action::kAddRcpt);
  CHECK(g.error == "the MTA does not allow the milter to add recipients");
  Fixture h(kContent);
  h.t.changes.headers = {{HeaderEdit::Kind::kPrepend, "Authentication-Results", "x"}};
  h.run(m::action::kAll & ~m::action::kAddHdrs);
  CHECK_FALSE(h.error.empty());
}

TEST_CASE("milter modifications: a [[milter]]'s recipient and sender arguments", "[milter_server][esmtp_param]") {
  Fixture f(kContent);
  f.t.changes.reverse_path = Mailbox{"bounces", "example.com"};
  f.t.changes.reverse_path_params = {{"RET", "HDRS", true}, {"ENVID", "x", true}};
  f.t.changes.add_recipients = {Mailbox{"copy", "example.net"}, Mailbox{"plain", "example.net"}};
  f.t.changes.add_recipient_params = {{"copy@example.net", {{"NOTIFY", "NEVER", true}}}};
  auto r = f.run();
  REQUIRE(r.size() == 3);
  CHECK((r[0].command == m::reply::kChgFrom && r[0].address == "bounces@example.com" && r[0].args == "RET=HDRS ENVID=x"));
  CHECK((r[1].command == m::reply::kAddRcptPar && r[1].address == "copy@example.net" && r[1].args == "NOTIFY=NEVER"));
  CHECK((r[2].command == m::reply::kAddRcpt && r[2].address == "plain@example.net"));
  // An MTA that did not allow SMFIF_ADDRCPT_PAR gets the address alone.
  auto without = f.run(m::action::kAll & ~m::action::kAddRcptPar);
  REQUIRE(without.size() == 3);
  CHECK((without[1].command == m::reply::kAddRcpt && without[1].address == "copy@example.net"));
  CHECK(f.error.empty());
}
