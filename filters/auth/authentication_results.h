// Authentication-Results (RFC 8601): one field with postern's authserv-id
// carrying spf, dkim (header.d, header.s, header.b) and dmarc; any such field
// that arrives claiming postern's authserv-id is a forgery and is removed
// first (§5).
#pragma once

#include <optional>
#include <string>

#include "filters/auth/auth_options.h"
#include "filters/auth/auth_results.h"
#include "filters/filter.h"

namespace postern {

// The field value: "authserv-id; spf=pass smtp.mailfrom=...; dkim=...; dmarc=...".
std::string authentication_results_value(const std::string& authserv_id, const AuthResults& auth);

// The authserv-id of a received field value (comments skipped), lower case.
std::optional<std::string> authserv_id_of(const std::string& value);

// Adds the field and the removals of forged ones to the transaction's
// changes, once per transaction (idempotent).
void add_authentication_results(FilterContext& ctx, const AuthResultsOptions& options);

class AuthResultsFilter final : public Filter {
 public:
  explicit AuthResultsFilter(AuthResultsOptions options) : options_(std::move(options)) {}
  const std::string& name() const override { return name_; }
  bool wants(Stage stage) const override { return stage == Stage::kEom; }
  asio::awaitable<Verdict> run(FilterContext& ctx) override;

 private:
  std::string name_ = "authentication-results";
  AuthResultsOptions options_;
};

}  // namespace postern
