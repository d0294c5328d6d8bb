// Metrics registry and its HTTP endpoint; see metrics.h.
#include "proxy/metrics.h"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <fmt/format.h>

#include "proxy/watchdog.h"

namespace postern::metrics {
namespace {
constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);
constexpr std::size_t kMaxRequest = 8192;
constexpr std::chrono::seconds kRequestTimeout{5};

constexpr std::string_view kResultNames[] = {"relayed", "rejected", "tempfailed", "discarded", "quarantined"};
constexpr std::string_view kStageNames[] = {"connect", "helo", "mail", "rcpt", "data", "eom"};

void counter(std::string& out, std::string_view name, std::string_view help, std::uint64_t value) {
  fmt::format_to(std::back_inserter(out), "# HELP {0} {1}\n# TYPE {0} counter\n{0} {2}\n", name, help, value);
}
}  // namespace

void Histogram::observe(double seconds) {
  for (std::size_t i = 0; i < kBuckets.size(); ++i) {
    if (seconds <= kBuckets[i]) buckets_[i].fetch_add(1, std::memory_order_relaxed);
  }
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_micros_.fetch_add(static_cast<std::uint64_t>(seconds * 1e6), std::memory_order_relaxed);
}

void Histogram::render(std::string& out, std::string_view name, std::string_view labels) const {
  std::string sep = labels.empty() ? "" : ",";
  for (std::size_t i = 0; i < kBuckets.size(); ++i) {
    fmt::format_to(std::back_inserter(out), "{}_bucket{{{}{}le=\"{}\"}} {}\n", name, labels, sep, kBuckets[i],
                   buckets_[i].load(std::memory_order_relaxed));
  }
  std::uint64_t count = count_.load(std::memory_order_relaxed);
  fmt::format_to(std::back_inserter(out), "{}_bucket{{{}{}le=\"+Inf\"}} {}\n", name, labels, sep, count);
  std::string braces = labels.empty() ? "" : fmt::format("{{{}}}", labels);
  fmt::format_to(std::back_inserter(out), "{}_sum{} {:.6f}\n{}_count{} {}\n", name, braces,
                 static_cast<double>(sum_micros_.load(std::memory_order_relaxed)) / 1e6, name, braces, count);
}

Registry& registry() {
  static Registry r;
  return r;
}

std::string Registry::render() const {
  std::string out;
  out.reserve(8192);
  counter(out, "postern_sessions_total", "Client connections accepted.", sessions_total.load());
  fmt::format_to(std::back_inserter(out),
                 "# HELP postern_sessions_open Client connections open now.\n# TYPE postern_sessions_open gauge\n"
                 "postern_sessions_open {}\n", sessions_open.load());
  out += "# HELP postern_messages_total Messages by what became of them.\n# TYPE postern_messages_total counter\n";
  for (std::size_t i = 0; i < messages.size(); ++i) {
    fmt::format_to(std::back_inserter(out), "postern_messages_total{{result=\"{}\"}} {}\n", kResultNames[i],
                   messages[i].load());
  }
  out += "# HELP postern_replies_total Replies sent to clients, by class.\n# TYPE postern_replies_total counter\n";
  for (std::size_t k = 2; k < 6; ++k) {
    fmt::format_to(std::back_inserter(out), "postern_replies_total{{class=\"{}xx\"}} {}\n", k,
                   replies_by_class[k].load());
  }
  counter(out, "postern_received_bytes_total", "Message octets received from clients.", bytes_received.load());
  counter(out, "postern_upstream_errors_total", "Upstream connections that failed, timed out or were lost.",
          upstream_errors.load());
  counter(out, "postern_tls_sessions_total", "Client sessions that started TLS.", tls_sessions.load());
  counter(out, "postern_client_errors_total", "Bad commands from clients.", client_errors.load());
  counter(out, "postern_timeouts_total", "Client sessions ended by a time-out.", timeouts.load());
  fmt::format_to(std::back_inserter(out),
                 "# HELP postern_upstream_up Whether the last probe reached the MTA.\n"
                 "# TYPE postern_upstream_up gauge\npostern_upstream_up {}\n", upstream_reachable.load() ? 1 : 0);
  out += "# HELP postern_message_duration_seconds From MAIL to the final reply.\n"
         "# TYPE postern_message_duration_seconds histogram\n";
  message_duration.render(out, "postern_message_duration_seconds", "");
  out += "# HELP postern_filter_duration_seconds Time in the filter chain per stage.\n"
         "# TYPE postern_filter_duration_seconds histogram\n";
  for (std::size_t i = 0; i < filter_duration.size(); ++i) {
    filter_duration[i].render(out, "postern_filter_duration_seconds", fmt::format("stage=\"{}\"", kStageNames[i]));
  }
  return out;
}

namespace {
asio::awaitable<void> serve_one(asio::ip::tcp::socket socket) {
  Watchdog watchdog(socket.get_executor(), [&socket] {
    std::error_code ignored;
    socket.cancel(ignored);
  });
  std::string request;
  char buf[1024];
  watchdog.arm(kRequestTimeout);
  while (request.find("\r\n\r\n") == std::string::npos && request.find("\n\n") == std::string::npos) {
    auto [ec, n] = co_await socket.async_read_some(asio::buffer(buf), use_nothrow);
    if (ec) co_return;
    request.append(buf, n);
    if (request.size() > kMaxRequest) co_return;
  }
  std::string_view line(request);
  line = line.substr(0, line.find_first_of("\r\n"));
  int status = 200;
  std::string body;
  std::string type = "text/plain; version=0.0.4; charset=utf-8";
  if (line.rfind("GET /metrics ", 0) == 0 || line == "GET /metrics") {
    body = registry().render();
  } else if (line.rfind("GET /healthz ", 0) == 0 || line == "GET /healthz") {
    bool up = registry().upstream_reachable.load();
    status = up ? 200 : 503;
    body = up ? "ok\n" : "upstream unreachable\n";
    type = "text/plain; charset=utf-8";
  } else {
    status = 404;
    body = "not found: GET /metrics or /healthz\n";
    type = "text/plain; charset=utf-8";
  }
  std::string response = fmt::format("HTTP/1.0 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                     status, status == 200 ? "OK" : status == 503 ? "Service Unavailable" : "Not Found",
                                     type, body.size());
  response += body;
  co_await asio::async_write(socket, asio::buffer(response), use_nothrow);
  std::error_code ignored;
  socket.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
}
}  // namespace

asio::awaitable<void> serve_http(asio::ip::tcp::acceptor& acceptor) {
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(use_nothrow);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
      continue;
    }
    asio::co_spawn(acceptor.get_executor(), serve_one(std::move(socket)), asio::detached);
  }
}

}  // namespace postern::metrics
