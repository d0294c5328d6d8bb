// The Lua rule engine as one Filter: a Lua 5.4 state holding the compiled
// rule scripts, run one coroutine per rule invocation so a rule waiting on
// DNS or the store yields and the I/O thread serves other sessions.
//
// Threading: a LuaFilter (and its state) belongs to the I/O thread that
// created it; every run() must happen on that thread's executor. Build one
// per I/O thread with make_lua_filter(); keep it alive (the FilterChain's
// shared_ptr does) until every run() it started has completed.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "filters/filter.h"
#include "filters/lua/lua_options.h"

namespace postern {

class Resolver;
struct LuaRuntime;

// A script failed to read or compile, or its top level failed (a bad
// postern.rule{} call, an error, the budget): "FILE:LINE: reason".
class LuaLoadError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct LuaRuleInfo {
  std::string name;
  std::string script;
  std::string description;
  std::vector<Stage> stages;
  double score = 0;
  LuaOptions::OnError on_error = LuaOptions::OnError::kTempfail;
};

class LuaFilter final : public Filter {
 public:
  // Compiles every configured script into a new state; throws LuaLoadError.
  // `dns` may be null (postern.dns.* then answers nil, "servfail") and must
  // outlive the filter.
  LuaFilter(const LuaOptions& options, Resolver* dns);
  ~LuaFilter() override;
  LuaFilter(const LuaFilter&) = delete;
  LuaFilter& operator=(const LuaFilter&) = delete;

  const std::string& name() const override { return name_; }
  bool wants(Stage stage) const override;
  // Runs every rule registered for ctx.stage in load order; the first
  // decisive verdict wins. A failing rule follows its on_error policy.
  asio::awaitable<Verdict> run(FilterContext& ctx) override;

  std::vector<LuaRuleInfo> rules() const;
  // Bytes the state holds now (for metrics and tests).
  std::size_t memory_used() const;
  // Finished rule coroutines kept for reuse (for tests).
  std::size_t idle_rule_threads() const;

 private:
  std::string name_ = "lua";
  std::unique_ptr<LuaRuntime> rt_;
};

// The factory the proxy calls once per I/O thread at start and again on
// reload; throws LuaLoadError, leaving whatever ran before untouched.
std::shared_ptr<Filter> make_lua_filter(const LuaOptions& options, Resolver* dns);

}  // namespace postern
