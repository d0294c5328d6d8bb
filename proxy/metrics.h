// Counters, gauges and histograms for Prometheus (text exposition format
// 0.0.4), and the tiny HTTP endpoint that serves /metrics and /healthz.
// Updates are relaxed atomics: any I/O thread bumps them without locks.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include <asio/awaitable.hpp>
#include <asio/ip/tcp.hpp>

namespace postern::metrics {

// Latency buckets in seconds, shared by every histogram.
inline constexpr std::array<double, 12> kBuckets{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                 0.05,   0.1,   0.25,   0.5,   1,     5};

class Histogram {
 public:
  void observe(double seconds);
  void render(std::string& out, std::string_view name, std::string_view labels) const;

 private:
  std::array<std::atomic<std::uint64_t>, kBuckets.size()> buckets_{};
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_micros_{0};
};

enum class MessageResult { kRelayed, kRejected, kTempfailed, kDiscarded, kQuarantined, kCount };
enum class Stage { kConnect, kHelo, kMail, kRcpt, kData, kEom, kCount };

struct Registry {
  std::atomic<std::uint64_t> sessions_total{0};
  std::atomic<std::int64_t> sessions_open{0};
  std::array<std::atomic<std::uint64_t>, static_cast<int>(MessageResult::kCount)> messages{};
  std::array<std::atomic<std::uint64_t>, 6> replies_by_class{};  // index = first digit
  std::atomic<std::uint64_t> bytes_received{0};
  std::atomic<std::uint64_t> upstream_errors{0};
  std::atomic<std::uint64_t> tls_sessions{0};
  std::atomic<std::uint64_t> client_errors{0};
  std::atomic<std::uint64_t> timeouts{0};
  std::atomic<bool> upstream_reachable{true};
  Histogram message_duration;  // MAIL to final reply
  std::array<Histogram, static_cast<int>(Stage::kCount)> filter_duration;

  std::string render() const;
};

Registry& registry();

inline void count_reply(int code) {
  int k = code / 100;
  if (k >= 0 && k < 6) registry().replies_by_class[static_cast<std::size_t>(k)].fetch_add(1, std::memory_order_relaxed);
}

// Serves GET /metrics and GET /healthz (200 when the last upstream probe
// reached the MTA, else 503) on `acceptor` until it is closed.
asio::awaitable<void> serve_http(asio::ip::tcp::acceptor& acceptor);

}  // namespace postern::metrics
