#include "filters/auth/auth_filters.h"

#include "filters/arc/arc_verify.h"
#include "filters/auth/auth_results.h"
#include "filters/auth/authentication_results.h"
#include "filters/dkim/dkim_filter.h"
#include "filters/dmarc/dmarc.h"
#include "filters/spf/spf_filter.h"

namespace postern {

namespace {

// First in the chain: a client in [authenticity] trusted_networks skips the
// checks, and the transaction says so (AuthResults::skipped) for the checks
// themselves, Authentication-Results and the audit log.
class TrustedClientFilter final : public Filter {
 public:
  explicit TrustedClientFilter(TrustedNetworks trusted) : trusted_(std::move(trusted)) {}
  const std::string& name() const override { return name_; }
  bool wants(Stage stage) const override {
    return stage == Stage::kHelo || stage == Stage::kMail || stage == Stage::kEom;
  }
  asio::awaitable<Verdict> run(FilterContext& ctx) override {
    const std::string network = trusted_.match(ctx.session.client_ip);
    auth_results(ctx.transaction).skipped =
        network.empty() ? "" : "client " + ctx.session.client_ip + " in trusted_networks " + network;
    co_return Verdict::proceed();
  }

 private:
  std::string name_ = "trusted-networks";
  TrustedNetworks trusted_;
};

}  // namespace

std::vector<std::shared_ptr<Filter>> make_auth_filters(const AuthOptions& options, std::shared_ptr<Resolver> resolver) {
  auto pool = std::make_shared<asio::thread_pool>(options.worker_threads ? options.worker_threads : 1);
  AuthResultsOptions ar = options.authentication_results;
  if (ar.authserv_id.empty()) ar.authserv_id = options.hostname;
  std::vector<std::shared_ptr<Filter>> filters;
  if (!options.trusted.empty()) filters.push_back(std::make_shared<TrustedClientFilter>(options.trusted));
  if (options.spf.enabled) filters.push_back(std::make_shared<SpfFilter>(options.spf, options.hostname, resolver, pool));
  if (options.dkim.enabled) filters.push_back(std::make_shared<DkimFilter>(options.dkim, resolver, pool));
  if (options.arc.enabled) filters.push_back(std::make_shared<ArcFilter>(options.arc, resolver, pool));
  if (options.dmarc.enabled) filters.push_back(std::make_shared<DmarcFilter>(options.dmarc, ar, resolver));
  if (ar.enabled) filters.push_back(std::make_shared<AuthResultsFilter>(ar));
  return filters;
}

}  // namespace postern
