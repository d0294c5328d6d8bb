// The client's verified name at connect: the PTR names of the client address
// whose A/AAAA records lead back to that address (forward-confirmed reverse
// DNS, the "iprev" method of RFC 8601 §2.7.3; Postfix's verified client
// name). Fills SessionFacts::client_name, which rules (ctx.client.name), the
// audit log and the greylisting rule's skip_names read; an address without a
// confirmed name leaves it empty. Never decides anything: every outcome,
// a DNS time-out included, continues.
#pragma once

#include <memory>
#include <string>

#include "filters/dns/resolver.h"
#include "filters/filter.h"

namespace postern {

class ClientNameFilter final : public Filter {
 public:
  // PTR names tried (RFC 8601 §2.7.3 leaves the bound to the verifier;
  // Postfix and OpenDKIM's iprev use small ones).
  static constexpr std::size_t kMaxNames = 10;

  explicit ClientNameFilter(std::shared_ptr<Resolver> resolver) : resolver_(std::move(resolver)) {}
  const std::string& name() const override { return name_; }
  bool wants(Stage stage) const override { return stage == Stage::kConnect; }
  asio::awaitable<Verdict> run(FilterContext& ctx) override;

 private:
  std::string name_ = "client-name";
  std::shared_ptr<Resolver> resolver_;
};

}  // namespace postern
