// FilterChain: the first decisive verdict wins; an accept holds for the
// session (before MAIL) or the transaction, as a typed fact (accepted_by).
#include <catch2/catch.hpp>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/use_future.hpp>

#include "filters/filter_chain.h"

using namespace postern;

namespace {

// A filter that answers `action` at `stage` and counts its calls.
class ScriptedFilter final : public Filter {
 public:
  ScriptedFilter(std::string name, Stage stage, Verdict::Action action)
      : name_(std::move(name)), stage_(stage), action_(action) {}
  const std::string& name() const override { return name_; }
  bool wants(Stage) const override { return true; }
  asio::awaitable<Verdict> run(FilterContext& ctx) override {
    ++calls;
    Verdict v;
    if (ctx.stage == stage_) v.action = action_;
    co_return v;
  }
  int calls = 0;

 private:
  std::string name_;
  Stage stage_;
  Verdict::Action action_;
};

Verdict run(const FilterChain& chain, Stage stage, SessionFacts& s, TransactionFacts& t) {
  asio::io_context io;
  FilterContext ctx{stage, s, t};
  auto fut = asio::co_spawn(io, chain.run(ctx), asio::use_future);
  io.run();
  return fut.get();
}

}  // namespace

TEST_CASE("filter chain: an accept before MAIL holds for the session", "[filter_chain]") {
  auto welcome = std::make_shared<ScriptedFilter>("welcome", Stage::kConnect, Verdict::Action::kAccept);
  auto strict = std::make_shared<ScriptedFilter>("strict", Stage::kMail, Verdict::Action::kReject);
  FilterChain chain({welcome, strict}, {});
  SessionFacts s;
  TransactionFacts t;
  CHECK(run(chain, Stage::kConnect, s, t).action == Verdict::Action::kContinue);
  CHECK(s.accepted_by == "welcome");
  CHECK(s.notes.empty());
  CHECK(run(chain, Stage::kMail, s, t).action == Verdict::Action::kContinue);  // strict never asked
  CHECK(strict->calls == 0);
  TransactionFacts next;
  CHECK(run(chain, Stage::kMail, s, next).action == Verdict::Action::kContinue);
  CHECK(strict->calls == 0);
}

TEST_CASE("filter chain: an accept after MAIL holds for that transaction only", "[filter_chain]") {
  auto vip = std::make_shared<ScriptedFilter>("vip", Stage::kMail, Verdict::Action::kAccept);
  auto strict = std::make_shared<ScriptedFilter>("strict", Stage::kRcpt, Verdict::Action::kReject);
  FilterChain chain({vip, strict}, {});
  SessionFacts s;
  TransactionFacts t;
  run(chain, Stage::kMail, s, t);
  CHECK(t.accepted_by == "vip");
  CHECK(s.accepted_by.empty());
  CHECK(t.notes.empty());
  CHECK(run(chain, Stage::kRcpt, s, t).action == Verdict::Action::kContinue);
  TransactionFacts next;  // a new transaction: the filters decide again
  CHECK(run(chain, Stage::kRcpt, s, next).action == Verdict::Action::kReject);
}
