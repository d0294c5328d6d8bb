// SPF (RFC 7208) with libspf2, its DNS fed by postern's resolver. libspf2's
// lookups are synchronous, so a check that needs DNS runs on a worker-pool
// thread and waits there on the asynchronous resolver, under a deadline; an
// I/O thread only tries check_cached(), which never waits.
//
// postern's DNS layer also closes libspf2's gaps: the 10-term limit counted
// across include: (libspf2 restarts its count in each include), the 2
// void-lookup limit (§4.6.4), IPv4-mapped IPv6 clients, names with labels
// over 63 octets (answered as non-existent, never sent), the obsolete SPF RR
// type (never queried), and libspf2's "invalid" and "none for a broken
// record" results.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "filters/auth/auth_results.h"
#include "filters/dns/unbound_resolver.h"

namespace postern {

struct SpfLimits {
  unsigned dns_terms = 10;    // §4.6.4: include, a, mx, ptr, exists, redirect
  unsigned void_lookups = 2;  // §4.6.4
};

struct SpfQuery {
  std::string client_ip;  // "192.0.2.1", "2001:db8::1" or "::ffff:192.0.2.1"
  std::string helo;
  std::string sender;     // "local@domain"; empty for the null reverse-path
  std::string receiver;   // our host name, for Received-SPF and %{r}
};

class SpfChecker {
 public:
  SpfChecker(std::shared_ptr<UnboundResolver> resolver, SpfLimits limits)
      : resolver_(std::move(resolver)), limits_(limits) {}

  // Blocking: call on a worker-pool thread only. Returns within `budget`
  // (plus one DNS time-out at most).
  SpfOutcome check(const SpfQuery& query, std::chrono::milliseconds budget) const;
  // Never blocks (any thread, an I/O thread included): the same outcome as
  // check() when every lookup it needs is in the resolver's cache, else
  // nullopt -- then check() on the pool (issue 8: no thread hand-off for a
  // sender whose records are cached).
  std::optional<SpfOutcome> check_cached(const SpfQuery& query) const;

 private:
  SpfOutcome run(const SpfQuery& query, std::chrono::milliseconds budget, bool cache_only, bool& missed) const;

  std::shared_ptr<UnboundResolver> resolver_;
  SpfLimits limits_;
};

// RFC 7208 §9.1 Received-SPF field value (without the field name).
std::string received_spf_value(const SpfOutcome& spf, const std::string& receiver);

// "::ffff:192.0.2.1" -> "192.0.2.1"; other addresses unchanged. Empty when
// `ip` is not an IP address.
std::string canonical_client_ip(const std::string& ip);

}  // namespace postern
