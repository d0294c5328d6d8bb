#include "filters/auth/auth_filters.h"

#include <stdexcept>

#include "filters/auth/authentication_results.h"
#include "filters/auth/dkim_filter.h"
#include "filters/auth/dmarc.h"
#include "filters/auth/spf_filter.h"

namespace postern {

std::vector<std::shared_ptr<Filter>> make_auth_filters(const AuthOptions& options, std::shared_ptr<Resolver> resolver) {
  auto unbound = std::dynamic_pointer_cast<UnboundResolver>(resolver);
  if (!unbound) throw std::invalid_argument("make_auth_filters: the resolver must come from make_resolver()");
  auto pool = std::make_shared<asio::thread_pool>(options.worker_threads ? options.worker_threads : 1);
  AuthResultsOptions ar = options.authentication_results;
  if (ar.authserv_id.empty()) ar.authserv_id = options.hostname;
  std::vector<std::shared_ptr<Filter>> filters;
  if (options.spf.enabled) filters.push_back(std::make_shared<SpfFilter>(options.spf, options.hostname, unbound, pool));
  if (options.dkim.enabled) filters.push_back(std::make_shared<DkimFilter>(options.dkim, unbound, pool));
  if (options.dmarc.enabled) filters.push_back(std::make_shared<DmarcFilter>(options.dmarc, ar, resolver));
  if (ar.enabled) filters.push_back(std::make_shared<AuthResultsFilter>(ar));
  return filters;
}

}  // namespace postern
