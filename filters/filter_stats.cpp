// The process-wide filter statistics sink; see filter_stats.h.
#include "filters/filter_stats.h"

#include <atomic>

namespace postern {
namespace {

class NoStats final : public FilterStats {
 public:
  void dns_answer(DnsStatus, bool, double) override {}
  void lua_rule_run(std::string_view, bool, double) override {}
  void lua_rule_failed(std::string_view, std::string_view, RuleFailure) override {}
};

NoStats no_stats;
std::atomic<FilterStats*> sink{nullptr};

}  // namespace

FilterStats& filter_stats() {
  FilterStats* s = sink.load(std::memory_order_acquire);
  return s ? *s : no_stats;
}

void set_filter_stats(FilterStats* s) { sink.store(s, std::memory_order_release); }

}  // namespace postern
