// postern's DNS resolver on libunbound: asynchronous queries (ub_resolve_async,
// ub_fd watched by Asio), a TTL-respecting cache with negative caching
// (RFC 2308) shared by every thread, per-query time-out and retry, and a
// blocking entry point for code that runs on a worker pool (libspf2).
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio/any_io_executor.hpp>

#include "filters/dns/resolver.h"

namespace postern {

struct DnsOptions {
  // "IP" or "IP@PORT" of forwarders; empty = /etc/resolv.conf (then root hints).
  std::vector<std::string> servers;
  std::chrono::milliseconds timeout{5000};  // per attempt
  unsigned retries = 1;                     // further attempts after a time-out or SERVFAIL
  std::size_t cache_entries = 100000;       // 0 = no postern cache (unbound still caches)
  std::uint32_t negative_ttl = 300;         // cap (and default) for NXDOMAIN / NODATA
  std::uint32_t max_ttl = 86400;
  // Look up the client's verified name at connect (filters/dns/client_name_filter.h).
  bool client_name = true;
  // Records answered by libunbound itself, in zone-file form ("example.com.
  // 300 IN TXT \"v=spf1 -all\""): `postern test` fixtures. With any, every
  // other name is NXDOMAIN and nothing is sent to a server.
  std::vector<std::string> local_data;
};

class UnboundResolver final : public Resolver, public std::enable_shared_from_this<UnboundResolver> {
 public:
  // Throws std::runtime_error when libunbound refuses the options.
  // `executor` watches libunbound's descriptor; ub_process() runs there and
  // never blocks.
  static std::shared_ptr<UnboundResolver> create(const DnsOptions& options, asio::any_io_executor executor);
  ~UnboundResolver() override;

  asio::awaitable<DnsAnswer> query(std::string name, DnsType type) override;
  std::optional<DnsAnswer> answer_now(const std::string& name, DnsType type) override;

  // Waits on libunbound's own thread, time-out and retries included.
  DnsAnswer query_blocking(const std::string& name, DnsType type) override;

  // Stops watching the descriptor and cancels every outstanding query.
  void shutdown();

  struct Stats {
    std::uint64_t queries = 0, cache_hits = 0, timeouts = 0;
  };
  Stats stats() const;

  struct Impl;

 private:
  explicit UnboundResolver(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// The factory the proxy uses. The resolver is thread-safe; query() may be
// awaited from any executor and completes on it.
std::shared_ptr<Resolver> make_resolver(const DnsOptions& options, asio::any_io_executor executor);

// Counts the queries of one message (or one check) and refuses past a limit
// with kServFail; wraps the shared resolver. Not thread-safe: one per message.
class CountingResolver final : public Resolver {
 public:
  CountingResolver(std::shared_ptr<Resolver> inner, std::size_t limit) : inner_(std::move(inner)), limit_(limit) {}
  asio::awaitable<DnsAnswer> query(std::string name, DnsType type) override;
  std::optional<DnsAnswer> answer_now(const std::string& name, DnsType type) override;
  DnsAnswer query_blocking(const std::string& name, DnsType type) override;
  std::size_t count() const { return count_; }

 private:
  std::shared_ptr<Resolver> inner_;
  std::size_t limit_;
  std::size_t count_ = 0;
};

}  // namespace postern
