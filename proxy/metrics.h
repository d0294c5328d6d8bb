// Counters, gauges and histograms for Prometheus (text exposition format
// 0.0.4), and the tiny HTTP endpoint that serves /metrics and /healthz.
// Every update is a relaxed atomic: any I/O thread (or DNS worker) bumps them
// without a lock. Families with label values known only at run time
// (listener, rule, symbol) use LabelTable: lock-free, insert-only, bounded.
// docs/operations-metrics.md lists every metric.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include <asio/awaitable.hpp>
#include <asio/ip/tcp.hpp>

#include "filters/filter.h"
#include "filters/verdict.h"
#include "proxy/outcome.h"

namespace postern {
struct RedisStats;
}  // namespace postern

namespace postern::metrics {

// Latency bucket bounds in seconds, shared by every histogram: from half a
// millisecond (a cached DNS answer, a short rule) to a minute (an MTA's
// content scan at end of data).
inline constexpr std::array<double, 16> kBuckets{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                 0.25,   0.5,   1,      2.5,   5,    10,    30,    60};

class Counter {
 public:
  void inc(std::uint64_t n = 1) { v_.fetch_add(n, std::memory_order_relaxed); }
  std::uint64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> v_{0};
};

class Gauge {
 public:
  void add(std::int64_t n) { v_.fetch_add(n, std::memory_order_relaxed); }
  std::int64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::int64_t> v_{0};
};

class Histogram {
 public:
  struct Snapshot {
    std::array<std::uint64_t, kBuckets.size()> cumulative{};  // le = kBuckets[i]
    std::uint64_t count = 0;                                   // le = +Inf
    double sum = 0;
  };
  void observe(double seconds);
  // _count is the sum of the buckets, so +Inf always equals _count and the
  // buckets never decrease, even when read while others observe.
  Snapshot snapshot() const;

 private:
  std::array<std::atomic<std::uint64_t>, kBuckets.size() + 1> buckets_{};  // the last: above every bound
  std::atomic<std::uint64_t> sum_ns_{0};
};

// Label values are cut to this many octets, and octets outside printable
// ASCII become '?', so hostile or binary names cannot break the exposition.
inline constexpr std::size_t kMaxLabelValue = 128;
std::string clean_label_value(std::string_view v);
// The same without allocating when `v` is clean already; else in `scratch`.
std::string_view clean_label_value(std::string_view v, std::string& scratch);
// Escapes a label value for the text format: \ " and newline.
std::string escape_label_value(std::string_view v);
// Escapes HELP text: \ and newline.
std::string escape_help(std::string_view v);

// A family's values keyed by label values (several joined by kKeySep).
// Keys are inserted lock-free on first use and never removed; past N
// distinct keys everything lands on one entry whose every label value is
// kOverflowKey, so a script that invents names cannot grow memory.
inline constexpr char kKeySep = '\x1f';
inline constexpr std::string_view kOverflowKey = "_other_";

template <typename V, std::size_t N>
class LabelTable {
 public:
  LabelTable() = default;
  LabelTable(const LabelTable&) = delete;
  LabelTable& operator=(const LabelTable&) = delete;
  ~LabelTable() {
    for (Slot& s : slots_) delete s.key.load(std::memory_order_relaxed);
  }

  V& at(std::string_view key) {
    std::size_t h = std::hash<std::string_view>{}(key);
    for (std::size_t i = 0; i < N; ++i) {
      Slot& s = slots_[(h + i) % N];
      const std::string* k = s.key.load(std::memory_order_acquire);
      if (!k) {
        auto* mine = new std::string(key);
        if (s.key.compare_exchange_strong(k, mine, std::memory_order_acq_rel, std::memory_order_acquire)) {
          return s.value;
        }
        delete mine;  // another thread took the slot; `k` is its key
      }
      if (*k == key) return s.value;
    }
    overflow_used_.store(true, std::memory_order_relaxed);
    return overflow_;
  }

  // f(key, value) for every key in use, overflow last (as kOverflowKey).
  template <typename F>
  void for_each(F&& f) const {
    for (const Slot& s : slots_) {
      if (const std::string* k = s.key.load(std::memory_order_acquire)) f(std::string_view(*k), s.value);
    }
    if (overflow_used_.load(std::memory_order_relaxed)) f(kOverflowKey, overflow_);
  }

 private:
  struct Slot {
    std::atomic<const std::string*> key{nullptr};
    V value;
  };
  std::array<Slot, N> slots_{};
  V overflow_{};
  std::atomic<bool> overflow_used_{false};
};

// Why a connection was refused before its first SMTP exchange.
enum class Refusal { kLimit, kProxyProtocol, kTls, kFilter, kCount };
// How a connection to the MTA failed.
enum class UpstreamError { kConnectRefused, kConnectFailed, kResolve, kTimeout, kTls, kProtocol, kClosed, kCount };
// Why the MTA's octets were a protocol error (each is also a kProtocol error):
// a malformed reply; a reply of the wrong kind for its command; octets that no
// command owed a reply explains (proxy/reply_matcher.h); no 220 greeting; HELO refused.
enum class UpstreamProtocolError { kMalformed, kUnexpectedReply, kUnexplainedBytes, kGreeting, kHelo, kCount };
// Why an idle pooled connection to the MTA was closed instead of reused
// (proxy/upstream_pool.h): its idle time-out passed; the MTA closed it or
// said 421; it sent octets nobody asked for; RSET, XCLIENT or EHLO failed
// when it was handed to the next client; the configuration was reloaded;
// the pool was full.
enum class PoolDiscard { kExpired, kClosed, kUnexplained, kReidentify, kReload, kFull, kCount };
std::string_view pool_discard_name(PoolDiscard why);
// What an upstream reply answered.
enum class UpstreamCommand {
  kGreeting, kEhlo, kStarttls, kXclient, kXforward, kAuth, kMail, kRcpt, kData, kEom, kRset, kOther, kCount
};
std::string_view upstream_command_name(UpstreamCommand command);

template <typename E>
constexpr std::size_t n() { return static_cast<std::size_t>(E::kCount); }
template <typename E>
constexpr std::size_t idx(E e) { return static_cast<std::size_t>(e); }

struct ListenerStats {
  Counter total;
  Gauge open;
  std::array<Counter, n<Refusal>()> refused;
};

struct RuleStats {
  Histogram duration;
  Counter hits;
};

inline constexpr std::size_t kEnhancedSubjects = 8;   // X.0 .. X.7 (RFC 3463 §3)
inline constexpr std::size_t kEnhancedDetails = 40;   // X.Y.0 .. X.Y.39

struct Registry {
  Registry();

  // Client side.
  LabelTable<ListenerStats, 64> listeners;
  std::array<Counter, n<Outcome>()> messages;  // by Outcome
  std::array<Counter, 2> recipients;  // [0] accepted, [1] refused
  Counter message_received_bytes;     // content of messages that reached their end
  Counter message_relayed_bytes;      // as handed to the MTA, header changes included
  Counter bytes_received;             // every octet read from clients
  std::array<Counter, 6> replies_by_class;  // index = first digit
  // 4xx/5xx replies by enhanced status code: [class 4/5][subject][detail],
  // and those with a code outside that range or none at all.
  std::array<std::array<std::array<Counter, kEnhancedDetails>, kEnhancedSubjects>, 2> enhanced;
  std::array<Counter, 2> enhanced_other;
  std::array<Counter, 2> enhanced_none;
  Counter client_errors;
  Counter timeouts;
  Counter tls_handshakes;
  std::array<Counter, 2> tls_failures;  // [0] error, [1] timeout

  // Upstream.
  Counter upstream_connections;
  Counter upstream_connections_reused;  // pooled connections handed to a new client session
  Counter upstream_data_aborts;  // early DATA whose message was not relayed: connection closed
  std::array<Counter, n<PoolDiscard>()> upstream_pool_discards;
  std::array<Counter, n<UpstreamError>()> upstream_errors;
  std::array<Counter, n<UpstreamProtocolError>()> upstream_protocol_errors;
  std::array<Counter, 6> upstream_replies_by_class;
  std::array<Histogram, n<UpstreamCommand>()> upstream_reply_duration;
  std::atomic<bool> upstream_reachable{true};
  std::atomic<std::int64_t> upstream_probe_time{0};  // Unix seconds of the last probe, 0 = none yet

  // The Redis store's own counters (filters/store/redis_connection.h), read
  // when scraped; null with the in-process store.
  std::atomic<const RedisStats*> redis{nullptr};

  // Filters.
  std::array<Histogram, 6> filter_duration;  // Stage::kConnect .. Stage::kEom
  std::array<Counter, 5> dns_lookups;        // by DnsStatus
  Counter dns_cache_hits;
  Histogram dns_query_duration;
  std::array<Counter, 7> spf_results;        // by SpfResult
  std::array<Counter, 7> dkim_results;       // by DkimResult
  std::array<Counter, 5> dmarc_results;      // by DmarcResult
  LabelTable<Counter, 512> symbols;
  LabelTable<RuleStats, 256> rules;
  LabelTable<Counter, 256> rule_failures;    // rule, script, kind
  LabelTable<Counter, 256> lua_log_dropped;  // rule: lines past lua.log_rate
  LabelTable<Counter, 256> lua_thread_busy;  // rule: calls past lua.busy_threshold
  std::array<Counter, 2> mime_structure_reads;  // [0] on an I/O thread, [1] on a worker
  Counter mime_structure_late;                  // rules that gave up waiting for a worker (lua.structure_timeout)

  // Whole messages.
  Histogram message_duration;      // end of DATA to the final reply
  Histogram transaction_duration;  // MAIL to the final reply

  double start_time = 0;  // Unix seconds

  std::string render() const;
};

Registry& registry();

inline double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Counts one client session on `listener` (its configured address) while
// the object lives: postern_sessions_total and postern_sessions_open.
class SessionGauge {
 public:
  explicit SessionGauge(std::string_view listener);
  ~SessionGauge();
  SessionGauge(const SessionGauge&) = delete;
  SessionGauge& operator=(const SessionGauge&) = delete;

 private:
  std::string scratch_;  // before stats_: the constructor may clean into it
  ListenerStats& stats_;
};

// Makes a listener's series exist (at 0) before its first session.
void declare_listener(std::string_view listener);
void session_refused(std::string_view listener, Refusal why);
// Counts one reply to a client as it is queued (`text`: its lines joined by
// LF): by class, and 4xx/5xx by the enhanced status code of its last line.
void count_reply(int code, std::string_view text, Registry& r = registry());
void message_done(Outcome result, std::uint64_t size, double eod_seconds, double transaction_seconds);
// At the end of a transaction (however it ended): its symbols and the
// SPF/DKIM/DMARC results (TransactionFacts::auth).
void transaction_done(const TransactionFacts& t, Registry& r = registry());
void filter_time(Stage stage, double seconds);
void upstream_error(UpstreamError kind);
// Counts a protocol error by its reason, and as upstream_error(kProtocol).
void upstream_protocol_error(UpstreamProtocolError why);
std::string_view upstream_protocol_error_name(UpstreamProtocolError why);
void upstream_reply(UpstreamCommand command, int code, double seconds);
void tls_handshake(bool ok, bool timed_out);
// Installs the sink through which filters/ report (filters/filter_stats.h).
void install_filter_stats();

// Serves GET /metrics and GET /healthz (200 when the last upstream probe
// reached the MTA, else 503) on `acceptor` until it is closed.
asio::awaitable<void> serve_http(asio::ip::tcp::acceptor& acceptor);

}  // namespace postern::metrics
