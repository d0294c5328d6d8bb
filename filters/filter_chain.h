// Runs every filter that wants a stage, in order; the first decisive verdict
// wins (Postfix's DUNNO/OK/REJECT, Haraka's hooks). An accept ends the chain
// for the rest of the transaction. At end of message the score is mapped to
// an action by the configured thresholds.
#pragma once

#include <memory>
#include <vector>

#include "filters/filter.h"

namespace postern {

struct ScoreThresholds {
  // A threshold <= 0 is off.
  double add_header = 0;   // add the score header at or above this
  double quarantine = 0;
  double reject = 0;
  std::string header = "X-Spam-Status";  // name of the score header; empty = none
};

class FilterChain {
 public:
  FilterChain(std::vector<std::shared_ptr<Filter>> filters, ScoreThresholds thresholds)
      : filters_(std::move(filters)), thresholds_(std::move(thresholds)) {}

  bool empty() const { return filters_.empty(); }
  // Runs `ctx.stage`; at kEom applies the score thresholds when no filter decided.
  asio::awaitable<Verdict> run(FilterContext& ctx) const;
  // Adds every filter's content tap to `spool` as the content starts.
  void add_content_taps(const FilterContext& ctx, Spool& spool) const;

 private:
  std::vector<std::shared_ptr<Filter>> filters_;
  ScoreThresholds thresholds_;
};

}  // namespace postern
