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
// record" results. Every SPF record libspf2 sees has passed postern's strict
// RFC 7208 parser first and is handed over in a form libspf2 evaluates right
// (spf_record.h); the explanation (exp=) is postern's alone.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "filters/auth/auth_results.h"
#include "filters/dns/resolver.h"

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

// Outcomes by their exact inputs (client address, HELO, sender, receiver),
// each kept for the shortest TTL among the DNS answers it used: within that
// time the same inputs meet the same records (the resolver caches them for as
// long) and libspf2 would only rebuild, recompile and re-evaluate them. At most
// `capacity` entries; thread-safe.
class SpfResultCache {
 public:
  explicit SpfResultCache(std::size_t capacity) : capacity_(capacity) {}
  std::optional<SpfOutcome> get(const std::string& key);
  void put(const std::string& key, const SpfOutcome& outcome, std::chrono::seconds ttl);
  std::uint64_t hits() const;

 private:
  struct Entry {
    SpfOutcome outcome;
    std::chrono::steady_clock::time_point expires;
  };
  std::size_t capacity_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, Entry> entries_;
  std::uint64_t hits_ = 0;
};

class SpfChecker {
 public:
  // `cache_entries` bounds the result cache (0: none).
  SpfChecker(std::shared_ptr<Resolver> resolver, SpfLimits limits, std::size_t cache_entries = 10000)
      : resolver_(std::move(resolver)), limits_(limits), results_(cache_entries) {}

  // Blocking: call on a worker-pool thread only. Returns within `budget`
  // (plus one DNS time-out at most).
  SpfOutcome check(const SpfQuery& query, std::chrono::milliseconds budget) const;
  // Never blocks (any thread, an I/O thread included): the same outcome as
  // check() when every lookup it needs is in the resolver's cache, else
  // nullopt -- then check() on the pool (no thread hand-off for a sender
  // whose records are cached: bench/README.md).
  std::optional<SpfOutcome> check_cached(const SpfQuery& query) const;
  // Checks answered from the result cache so far.
  std::uint64_t cache_hits() const { return results_.hits(); }

 private:
  SpfOutcome run(const SpfQuery& query, std::chrono::milliseconds budget, bool cache_only, bool& missed) const;

  std::shared_ptr<Resolver> resolver_;
  SpfLimits limits_;
  mutable SpfResultCache results_;
};

// RFC 7208 §9.1 Received-SPF field value (without the field name).
std::string received_spf_value(const SpfOutcome& spf, const std::string& receiver);

}  // namespace postern
