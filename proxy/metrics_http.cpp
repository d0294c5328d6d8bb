// The metrics HTTP endpoint: GET /metrics and GET /healthz, HTTP/1.0, one
// request per connection, every read bounded in size and time, at most
// kMaxConnections at once (a scraper or a load balancer's health check,
// never a browser).
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <fmt/format.h>

#include "proxy/connection_slots.h"
#include "proxy/metrics.h"
#include "proxy/watchdog.h"

namespace postern::metrics {
namespace {
constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);
constexpr std::size_t kMaxRequest = 8192;
constexpr std::chrono::seconds kRequestTimeout{5};     // the whole exchange, read and write
constexpr std::size_t kMaxConnections = 32;            // see ConnectionSlots
constexpr std::chrono::milliseconds kAcceptBackOff{100};  // after EMFILE and friends

using Slots = ConnectionSlots<asio::ip::tcp::socket>;

// The request target of "GET /path[?query] HTTP/1.x", or empty.
std::string_view get_path(std::string_view line) {
  if (line.rfind("GET ", 0) != 0) return {};
  line.remove_prefix(4);
  std::string_view target = line.substr(0, line.find(' '));
  return target.substr(0, target.find('?'));
}

asio::awaitable<void> serve_one(asio::ip::tcp::socket socket, std::shared_ptr<Slots> slots) {
  Slots::Slot slot = Slots::take(slots, socket);
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
  std::string_view path = get_path(std::string_view(request).substr(0, request.find_first_of("\r\n")));
  int status = 200;
  std::string body;
  std::string type = "text/plain; version=0.0.4; charset=utf-8";
  if (path == "/metrics") {
    body = registry().render();
  } else if (path == "/healthz") {
    bool up = registry().upstream_reachable.load();
    status = up ? 200 : 503;
    body = up ? "ok: the upstream answered the last probe\n" : "unavailable: the upstream failed the last probe\n";
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
  auto slots = std::make_shared<Slots>(kMaxConnections);
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(use_nothrow);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
      // Out of descriptors: the listening socket stays readable, so retrying
      // at once would spin worker 0, which serves SMTP sessions too.
      asio::steady_timer pause(acceptor.get_executor(), kAcceptBackOff);
      co_await pause.async_wait(use_nothrow);
      continue;
    }
    asio::co_spawn(acceptor.get_executor(), serve_one(std::move(socket), slots), asio::detached);
  }
}

}  // namespace postern::metrics
