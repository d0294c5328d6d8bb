// The metrics HTTP endpoint: GET (or HEAD) /metrics and /healthz, HTTP/1.0,
// one request per connection, every read bounded in size and time, at most
// kMaxConnections at once (a scraper or a load balancer's health check,
// never a browser). Whatever else arrives gets a 4xx and the close.
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
constexpr std::size_t kMaxRequest = 8192;              // request line and header fields
constexpr std::chrono::seconds kRequestTimeout{5};     // the whole exchange, read and write
constexpr std::size_t kMaxConnections = 32;            // see ConnectionSlots
constexpr std::chrono::milliseconds kAcceptBackOff{100};  // after EMFILE and friends

using Slots = ConnectionSlots<asio::ip::tcp::socket>;

// The answers, by status (RFC 9110 §15); text/plain bodies.
struct Status {
  int code;
  std::string_view reason;
  std::string_view body;
};
constexpr Status kNotFound{404, "Not Found", "not found: GET /metrics or /healthz\n"};
constexpr Status kBadRequest{400, "Bad Request", "bad request: GET /metrics HTTP/1.0\n"};
constexpr Status kMethodNotAllowed{405, "Method Not Allowed", "method not allowed: GET or HEAD\n"};
constexpr Status kTooLarge{431, "Request Header Fields Too Large", "request too large\n"};

// The request line (RFC 9112 §3): method SP origin-form SP HTTP-version.
// kInvalid for anything else: HTTP/0.9's bare "GET /path", an absolute
// target, control octets (NUL, a CR inside the line), a missing version.
struct RequestLine {
  enum class Outcome { kGet, kHead, kOtherMethod, kInvalid } outcome = Outcome::kInvalid;
  std::string_view path;  // the target without its query
};

bool token_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

RequestLine parse_request_line(std::string_view line) {
  RequestLine r;
  std::size_t sp1 = line.find(' ');
  if (sp1 == std::string_view::npos || sp1 == 0) return r;
  std::size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos) return r;
  std::string_view method = line.substr(0, sp1), target = line.substr(sp1 + 1, sp2 - sp1 - 1),
                   version = line.substr(sp2 + 1);
  for (char c : method) {
    if (!token_char(c)) return r;
  }
  if (target.empty() || target[0] != '/') return r;
  for (char c : target) {
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) return r;
  }
  if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || version[5] != '1' || version[6] != '.' ||
      (version[7] != '0' && version[7] != '1')) {
    return r;
  }
  r.path = target.substr(0, target.find('?'));
  r.outcome = method == "GET"    ? RequestLine::Outcome::kGet
              : method == "HEAD" ? RequestLine::Outcome::kHead
                                 : RequestLine::Outcome::kOtherMethod;
  return r;
}

// True when the header section holds no octet but printable ASCII, HTAB,
// 8-bit and the CR LF line ends: a NUL or an escape is not a request.
bool clean_header_section(std::string_view head) {
  for (char c : head) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 && c != '\t' && c != '\r' && c != '\n') return false;
    if (u == 0x7f) return false;
  }
  return true;
}

std::string response(const Status& s, std::string_view type, std::string_view body, bool head) {
  std::string out = fmt::format("HTTP/1.0 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
                                s.code, s.reason, type, body.size(),
                                s.code == kMethodNotAllowed.code ? "Allow: GET, HEAD\r\n" : "");
  if (!head) out += body;
  return out;
}

std::string answer(std::string_view request) {
  constexpr std::string_view kPlain = "text/plain; charset=utf-8";
  std::size_t end = request.find("\r\n\r\n");
  if (end == std::string_view::npos) end = request.find("\n\n");
  std::string_view head = request.substr(0, end);
  std::size_t eol = head.find('\n');
  std::string_view line = head.substr(0, eol);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  RequestLine r = parse_request_line(line);
  if (r.outcome == RequestLine::Outcome::kInvalid || !clean_header_section(head)) {
    return response(kBadRequest, kPlain, kBadRequest.body, false);
  }
  if (r.outcome == RequestLine::Outcome::kOtherMethod) {
    return response(kMethodNotAllowed, kPlain, kMethodNotAllowed.body, false);
  }
  const bool is_head = r.outcome == RequestLine::Outcome::kHead;
  if (r.path == "/metrics") {
    return response({200, "OK", ""}, "text/plain; version=0.0.4; charset=utf-8", registry().render(), is_head);
  }
  if (r.path == "/healthz") {
    const bool up = registry().upstream_reachable.load();
    return up ? response({200, "OK", ""}, kPlain, "ok: the upstream answered the last probe\n", is_head)
              : response({503, "Service Unavailable", ""}, kPlain, "unavailable: the upstream failed the last probe\n",
                         is_head);
  }
  return response(kNotFound, kPlain, kNotFound.body, is_head);
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
  std::string reply;
  while (request.find("\r\n\r\n") == std::string::npos && request.find("\n\n") == std::string::npos) {
    if (request.size() > kMaxRequest) {
      reply = response(kTooLarge, "text/plain; charset=utf-8", kTooLarge.body, false);
      break;
    }
    auto [ec, n] = co_await socket.async_read_some(asio::buffer(buf), use_nothrow);
    if (ec) co_return;
    request.append(buf, n);
  }
  if (reply.empty()) reply = answer(request);
  co_await asio::async_write(socket, asio::buffer(reply), use_nothrow);
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
