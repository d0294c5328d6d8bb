// What the filters count for the operator's metrics (DNS answers, Lua rule
// runs and failures), reported through a sink the proxy installs once at
// start-up. filters/ never includes proxy/ (DESIGN "Layout"): this interface
// is the only way out. Until a sink is installed -- unit tests, `postern test`
// -- reports go nowhere. A sink is called from any thread, the DNS worker
// pool included, and must not block.
#pragma once

#include <string_view>

#include "filters/dns/resolver.h"

namespace postern {

class FilterStats {
 public:
  enum class RuleFailure { kError, kTimeout, kBudget, kMemory };

  virtual ~FilterStats() = default;
  // One lookup answered (retries included): by postern's own cache
  // (`from_cache`, `seconds` 0) or by libunbound after `seconds`.
  virtual void dns_answer(DnsStatus status, bool from_cache, double seconds) = 0;
  // One call of a Lua rule; `hit`: it added a symbol, returned true (its
  // symbol) or a verdict.
  virtual void lua_rule_run(std::string_view rule, bool hit, double seconds) = 0;
  // A Lua rule call failed; its on_error policy applied.
  virtual void lua_rule_failed(std::string_view rule, std::string_view script, RuleFailure why) = 0;
  // A line a rule logged (print, postern.log) was dropped past lua.log_rate.
  virtual void lua_log_dropped(std::string_view /*rule*/) {}
  // An I/O thread stayed in one rule call past lua.busy_threshold (watchdog,
  // filters/lua/busy_watch.h). Called from the monitor thread.
  virtual void lua_thread_busy(std::string_view /*rule*/) {}
  // A message's MIME structure was read for the rules (once per message):
  // on a worker thread (`on_worker`, a message over 1 MiB) or the I/O thread.
  virtual void mime_structure_read(bool /*on_worker*/) {}
  // A rule gave up waiting for a structure read on a worker (lua.structure_timeout).
  virtual void mime_structure_late() {}
};

// The installed sink, or one that drops everything. Never null.
FilterStats& filter_stats();
// Installs `sink` (null: none); it must outlive every filter. Call before the
// first filter runs.
void set_filter_stats(FilterStats* sink);

}  // namespace postern
