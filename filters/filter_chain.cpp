// FilterChain: first decisive verdict wins; score thresholds at end of message.
#include "filters/filter_chain.h"

#include <charconv>
#include <cstdio>

namespace postern {

void FilterChain::add_content_taps(const FilterContext& ctx, Spool& spool) const {
  for (const auto& filter : filters_) {
    if (auto tap = filter->content_tap(ctx)) spool.add_tap(std::move(tap));
  }
}

asio::awaitable<Verdict> FilterChain::run(FilterContext& ctx) const {
  TransactionFacts& txn = ctx.transaction;
  // An accept before MAIL holds for the session, after it for the transaction.
  std::string& accepted_by = ctx.stage <= Stage::kHelo ? ctx.session.accepted_by : txn.accepted_by;
  bool accepted = !ctx.session.accepted_by.empty() || !txn.accepted_by.empty();
  for (const auto& filter : filters_) {
    if (accepted) break;
    if (!filter->wants(ctx.stage)) continue;
    Verdict v = co_await filter->run(ctx);
    if (!v.decisive()) continue;
    if (v.rule.empty()) v.rule = filter->name();
    if (v.action == Verdict::Action::kAccept) {
      accepted_by = filter->name();
      accepted = true;
      break;
    }
    co_return v;
  }
  if (ctx.stage != Stage::kEom) co_return Verdict::proceed();

  const ScoreThresholds& t = thresholds_;
  if (!t.header.empty() && !txn.symbols.empty()) {
    std::string value;
    char score[32];
    // to_chars, not snprintf: no locale (and bench/README.md).
    const auto written = std::to_chars(score, score + sizeof score - 1, txn.score, std::chars_format::fixed, 2);
    *written.ptr = '\0';
    bool spam = t.add_header > 0 && txn.score >= t.add_header;
    value.append(spam ? "Yes" : "No").append(", score=").append(score).append(" symbols=");
    for (std::size_t i = 0; i < txn.symbols.size(); ++i) {
      if (i) value.push_back(',');
      value.append(txn.symbols[i].name);
    }
    txn.changes.headers.push_back(HeaderEdit{HeaderEdit::Kind::kAdd, t.header, value});
  }
  if (accepted) co_return Verdict::proceed();
  if (t.reject > 0 && txn.score >= t.reject) {
    co_return Verdict{Verdict::Action::kReject, 554, "5.7.1", "Message rejected as spam", "score", "score"};
  }
  if (t.quarantine > 0 && txn.score >= t.quarantine) {
    co_return Verdict{Verdict::Action::kQuarantine, 0, "", "", "score", "score"};
  }
  co_return Verdict::proceed();
}

}  // namespace postern
