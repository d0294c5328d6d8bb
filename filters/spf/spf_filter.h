// The spf filter: checks the HELO identity at stage helo (RFC 7208 §2.3,
// session notes "spf.helo.*") and the MAIL FROM identity at stage mail, on
// the worker pool, and records the result for the later stages, the Lua rules
// and Authentication-Results. For the null reverse-path the MAIL FROM
// identity is postmaster@HELO (§2.4): the HELO result is reused, not
// looked up again.
#pragma once

#include <memory>
#include <string>

#include <asio/thread_pool.hpp>

#include "filters/auth/auth_options.h"
#include "filters/filter.h"

namespace postern {

class SpfFilter final : public Filter {
 public:
  SpfFilter(SpfOptions options, std::string receiver, std::shared_ptr<Resolver> resolver,
            std::shared_ptr<asio::thread_pool> pool);
  const std::string& name() const override { return name_; }
  bool wants(Stage stage) const override {
    return stage == Stage::kMail || (stage == Stage::kHelo && options_.check_helo);
  }
  // Fails open: a time-out is a temperror result, a verdict only when
  // tempfail_temperror is set.
  asio::awaitable<Verdict> run(FilterContext& ctx) override;

 private:
  asio::awaitable<void> check_helo(FilterContext& ctx);

  std::string name_ = "spf";
  SpfOptions options_;
  std::string receiver_;
  std::shared_ptr<SpfChecker> checker_;
  std::shared_ptr<asio::thread_pool> pool_;
};

}  // namespace postern
