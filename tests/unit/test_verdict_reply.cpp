// verdict_reply(): a filter's own enhanced status code reaches the client when
// it is well-formed and of the reply's class (regression: every valid code was
// refused and replaced by the action's default, e.g. SPF's 4.7.24 by 4.7.1).
#include <catch2/catch.hpp>

#include "proxy/verdict_reply.h"

using postern::Stage;
using postern::Verdict;
using postern::verdict_reply;

namespace {

Verdict make(Verdict::Action action, int code, std::string enhanced) {
  Verdict v;
  v.action = action;
  v.code = code;
  v.enhanced = std::move(enhanced);
  v.text = "because";
  return v;
}

}  // namespace

TEST_CASE("verdict_reply: a filter's valid enhanced status code is kept", "[verdict]") {
  auto r = verdict_reply(make(Verdict::Action::kTempfail, 451, "4.7.24"), Stage::kMail);
  CHECK(r.code == 451);
  CHECK(r.text == "4.7.24 because");
  CHECK(verdict_reply(make(Verdict::Action::kReject, 550, "5.7.23"), Stage::kMail).text == "5.7.23 because");
  CHECK(verdict_reply(make(Verdict::Action::kReject, 554, "5.123.999"), Stage::kEom).text ==
        "5.123.999 because");
}

TEST_CASE("verdict_reply: malformed or wrong-class codes fall back to the default", "[verdict]") {
  for (const char* bad : {"4.7.1", "5.7", "5.7.1.1", "5..1", "5.7.", "5.1234.1", "x.7.1", "5.7.1 "}) {
    auto r = verdict_reply(make(Verdict::Action::kReject, 550, bad), Stage::kMail);
    CHECK(r.code == 550);
    CHECK(r.text == "5.7.1 because");
  }
}
