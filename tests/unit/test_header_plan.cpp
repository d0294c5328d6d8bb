// The planned header edits (filters/header_plan.h): what each edit does to
// each field, and the property the plan exists for — the proxy's relayed
// header section (render_header_block) and the milter server's modifications
// (proxy/milter_changes.h), applied as an MTA applies them, give the same
// fields for every kind of edit.
#include <catch2/catch.hpp>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "filters/filter.h"
#include "filters/header_plan.h"
#include "filters/milter/milter_protocol.h"
#include "proxy/milter_changes.h"

using namespace postern;
namespace m = postern::milter;
using K = HeaderEdit::Kind;
using Fate = PlannedField::Fate;

namespace {

const char* kContent =
    "Received: from a\r\nSubject: hello\r\nX-Mailer: one\r\nx-mailer: two\r\nTo: b@example.net\r\n"
    "Authentication-Results: mx.example; spf=pass\r\nAuthentication-Results: mx.example; dkim=pass\r\n"
    "Subject: second\r\n\r\nbody\r\n";

struct Fixture {
  Spool spool{1 << 16, ""};
  std::unique_ptr<Message> message;
  TransactionFacts t;
  explicit Fixture(std::string content = kContent) {
    spool.append(content);
    spool.finish();
    message = std::make_unique<Message>(spool);
    t.recipients = {Mailbox{"b", "example.net"}};
  }
  HeaderPlan plan() const { return plan_header_edits(*message, t.changes); }
};

using Fields = std::vector<std::pair<std::string, std::string>>;  // name, unfolded value

bool iequals(const std::string& a, const std::string& b) { return header_name_equals(a, b); }

// The fields of a rendered header block.
Fields fields_of(const std::string& block) {
  Spool s{1 << 16, ""};
  s.append(block + "body\r\n");
  s.finish();
  Message msg(s);
  Fields out;
  for (const HeaderField& f : msg.headers()) out.emplace_back(f.name, f.value());
  return out;
}

// The message's fields after the milter modifications, applied one by one
// as Postfix's cleanup and libmilter's MTAs apply them.
Fields applied(const Message& message, const std::string& framed) {
  Fields fields;
  for (const HeaderField& f : message.headers()) fields.emplace_back(f.name, f.value());
  m::PacketReader reader;
  reader.feed(framed);
  m::Packet p;
  auto trim = [](const std::string& v) {  // unfolded as HeaderField::value() does: LF goes, WSP stays
    std::string unfolded;
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (v[i] == '\n') continue;
      unfolded += v[i];
    }
    std::size_t a = unfolded.find_first_not_of(" \t"), b = unfolded.find_last_not_of(" \t");
    return a == std::string::npos ? std::string{} : unfolded.substr(a, b - a + 1);
  };
  while (reader.next(p) == m::PacketReader::Status::kPacket) {
    m::Reply r = m::decode_reply(p);
    if (r.command == m::reply::kAddHeader) {
      fields.emplace_back(r.name, trim(r.value));
    } else if (r.command == m::reply::kInsHeader) {
      fields.insert(fields.begin() + std::min<std::size_t>(r.index, fields.size()), {r.name, trim(r.value)});
    } else if (r.command == m::reply::kChgHeader) {
      std::uint32_t seen = 0;
      for (auto it = fields.begin(); it != fields.end(); ++it) {
        if (!iequals(it->first, r.name) || ++seen != r.index) continue;
        if (r.value.empty()) fields.erase(it);
        else it->second = trim(r.value);
        break;
      }
    }
  }
  return fields;
}

void check_same(Fixture& f) {
  const std::string rendered = render_header_block(*f.message, f.t.changes, "");
  std::string error;
  bool none_left = false;
  const std::string mods = milter_modifications(*f.message, f.t, m::action::kAll, true, error, none_left);
  REQUIRE(error.empty());
  CHECK(applied(*f.message, mods) == fields_of(rendered));
}

}  // namespace

TEST_CASE("header plan: a removal wins, the last change applies, index 0 is every one", "[header_plan]") {
  Fixture f;
  f.t.changes.headers = {{K::kChange, "X-Mailer", "first", 2}, {K::kChange, "X-MAILER", "second", 2},
                         {K::kRemove, "x-mailer", "", 2},      {K::kChange, "x-mailer", "kept", 1},
                         {K::kRemove, "Authentication-Results", "", 0}};
  HeaderPlan plan = f.plan();
  REQUIRE(plan.fields.size() == 8);
  CHECK(plan.fields[0].fate == Fate::kKeep);
  CHECK((plan.fields[2].fate == Fate::kChange && plan.fields[2].value == "kept" && plan.fields[2].occurrence == 1));
  CHECK((plan.fields[3].fate == Fate::kRemove && plan.fields[3].occurrence == 2));  // "x-mailer" counts as X-Mailer
  CHECK((plan.fields[5].fate == Fate::kRemove && plan.fields[5].occurrence == 1));
  CHECK((plan.fields[6].fate == Fate::kRemove && plan.fields[6].occurrence == 2));
  CHECK(plan.fields[4].fate == Fate::kKeep);
  CHECK_FALSE(plan.add_subject);
  CHECK(plan.changes_fields());
  CHECK(removed_before(plan) == std::vector<std::size_t>{0, 0, 0, 0, 1, 1, 2, 3, 3});
}

TEST_CASE("header plan: the subject tag", "[header_plan]") {
  SECTION("on the first Subject only, in front of its value") {
    Fixture f;
    f.t.changes.subject_tag = "[SPAM]";
    HeaderPlan plan = f.plan();
    CHECK((plan.fields[1].fate == Fate::kTag && plan.fields[1].value == "[SPAM] hello"));
    CHECK(plan.fields[7].fate == Fate::kKeep);
    CHECK_FALSE(plan.add_subject);
  }
  SECTION("not twice") {
    Fixture f("Subject: [SPAM] hello\r\n\r\nbody\r\n");
    f.t.changes.subject_tag = "[SPAM]";
    CHECK(f.plan().fields[0].fate == Fate::kKeep);
    CHECK_FALSE(f.plan().changes_fields());
  }
  SECTION("on a changed Subject: the change, tagged") {
    Fixture f;
    f.t.changes.subject_tag = "[SPAM]";
    f.t.changes.headers = {{K::kChange, "Subject", "new", 1}};
    HeaderPlan plan = f.plan();
    CHECK((plan.fields[1].fate == Fate::kChange && plan.fields[1].value == "[SPAM] new"));
  }
  SECTION("the first Subject removed: the next one carries it") {
    Fixture f;
    f.t.changes.subject_tag = "[SPAM]";
    f.t.changes.headers = {{K::kRemove, "Subject", "", 1}};
    HeaderPlan plan = f.plan();
    CHECK(plan.fields[1].fate == Fate::kRemove);
    CHECK((plan.fields[7].fate == Fate::kTag && plan.fields[7].value == "[SPAM] second" &&
           plan.fields[7].occurrence == 2));
  }
  SECTION("every Subject removed, or none: one is added") {
    Fixture f;
    f.t.changes.subject_tag = "[SPAM]";
    f.t.changes.headers = {{K::kRemove, "Subject", "", 0}};
    CHECK(f.plan().add_subject);
    Fixture g("From: a@example.org\r\n\r\nbody\r\n");
    g.t.changes.subject_tag = "[SPAM]";
    CHECK(g.plan().add_subject);
    g.t.changes.subject_tag.clear();
    CHECK_FALSE(g.plan().add_subject);
  }
}

TEST_CASE("header plan: insertions by position, the later of two first, past the end after the last",
          "[header_plan]") {
  Fixture f;
  f.t.changes.headers = {{K::kInsert, "X-Two", "b", 2}, {K::kInsert, "X-Two-Later", "a", 2},
                         {K::kInsert, "X-Zero", "z", 0}, {K::kInsert, "X-End", "e", 99},
                         {K::kInsert, "X-End-Later", "e2", 8}};
  HeaderPlan plan = f.plan();
  std::vector<std::pair<std::size_t, std::string>> got;
  for (const PlannedInsert& i : plan.inserts) got.emplace_back(i.before, i.edit->name);
  CHECK(got == std::vector<std::pair<std::size_t, std::string>>{
                   {0, "X-Zero"}, {2, "X-Two-Later"}, {2, "X-Two"}, {8, "X-End-Later"}, {8, "X-End"}});
}

TEST_CASE("header plan: the relayed header and the milter server's modifications give the same fields",
          "[header_plan][milter_server]") {
  Fixture f;
  SECTION("changes, removals by index and all, the tag") {
    f.t.changes.subject_tag = "[SPAM]";
    f.t.changes.headers = {{K::kChange, "X-Mailer", "hidden", 2}, {K::kRemove, "Authentication-Results", "", 0},
                           {K::kChange, "To", "c@example.net", 1}};
  }
  SECTION("the tagged Subject removed, the second tagged") {
    f.t.changes.subject_tag = "[SPAM]";
    f.t.changes.headers = {{K::kRemove, "Subject", "", 1}};
  }
  SECTION("every Subject removed: one added with the tag") {
    f.t.changes.subject_tag = "[SPAM]";
    f.t.changes.headers = {{K::kRemove, "subject", "", 0}, {K::kAdd, "X-Spam", "yes"}};
  }
  SECTION("prepended, added and inserted fields with removals above them") {
    f.t.changes.headers = {{K::kPrepend, "Authentication-Results", "mx; spf=pass"},
                           {K::kRemove, "Received", "", 1},
                           {K::kInsert, "X-At-Two", "b", 2},
                           {K::kInsert, "X-At-Two-Later", "a", 2},
                           {K::kInsert, "X-At-Zero", "z", 0},
                           {K::kRemove, "X-Mailer", "", 0},
                           {K::kInsert, "X-At-Five", "f", 5},
                           {K::kInsert, "X-At-End", "e", 99},
                           {K::kAdd, "X-Added", "yes"},
                           {K::kPrepend, "Received-SPF", "pass"}};
  }
  SECTION("a long value folded") {
    f.t.changes.headers = {{K::kChange, "Subject", std::string(60, 'a') + " " + std::string(60, 'b'), 1},
                           {K::kAdd, "X-Long", std::string(70, 'c') + " " + std::string(70, 'd')}};
  }
  check_same(f);
}
