#include "proxy/client_connection.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include <asio/experimental/as_tuple.hpp>
#include <asio/read.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include "proxy/limits.h"
#include "proxy/metrics.h"
#include "proxy/socket_read.h"
#include "proxy/tls.h"

namespace postern {
namespace {
constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);
}  // namespace

ClientConnection::ClientConnection(asio::ip::tcp::socket socket, bool no_delay_set)
    : socket_(std::move(socket)), watchdog_(socket_.get_executor(), [this] {
        std::error_code ignored;
        socket_.cancel(ignored);
      }) {
  std::error_code ec;
  if (!no_delay_set) socket_.set_option(asio::ip::tcp::no_delay(true), ec);
  socket_.non_blocking(true, ec);  // read_ready returns would_block, never waits
}

ClientConnection::~ClientConnection() { watchdog_.stop(); }

asio::awaitable<std::error_code> ClientConnection::read(std::string& input, Seconds timeout, bool content) {
  if (!tls_) co_return co_await read_plain(input, timeout);
  // TLS may hold decrypted octets the socket does not show: read into the
  // buffer itself; a small read between messages, so that an idle session
  // does not wait on a content-sized buffer.
  const std::size_t chunk = content ? limits::kTlsRecord : limits::kCommandReadChunk;
  if (input.empty() && !content && input.capacity() > limits::kIdleBuffer) std::string().swap(input);
  std::size_t old = input.size();
  input.resize(old + chunk);
  auto buffer = asio::buffer(input.data() + old, chunk);
  watchdog_.arm(timeout);
  reading_ = true;
  auto [ec, n] = co_await tls_->async_read_some(buffer, use_nothrow);
  reading_ = false;
  watchdog_.disarm();
  input.resize(old + n);
  metrics::registry().bytes_received.inc(n);
  co_return ec;
}

// Plain TCP (proxy/socket_read.h). An idle session gives its input buffer
// back while it waits (issue 8: 10,000 idle sessions <= 200 MB).
asio::awaitable<std::error_code> ClientConnection::read_plain(std::string& input, Seconds timeout) {
  std::size_t n = 0;
  std::error_code ec = read_ready(socket_, input, n);
  while (ec == asio::error::would_block) {
    if (input.empty()) std::string().swap(input);
    watchdog_.arm(timeout);
    reading_ = true;
    std::tie(ec) = co_await socket_.async_wait(asio::socket_base::wait_read, use_nothrow);
    reading_ = false;
    watchdog_.disarm();
    if (ec) co_return ec;
    ec = read_ready(socket_, input, n);
  }
  metrics::registry().bytes_received.inc(n);
  co_return ec;
}

asio::awaitable<std::error_code> ClientConnection::write(std::string_view output, Seconds timeout) {
  watchdog_.arm(timeout);
  std::error_code ec;
  if (tls_) {
    if (std::exchange(ticket_owed_, false)) tls_ticket_with_next_write(tls_->native_handle());
    std::tie(ec, std::ignore) = co_await asio::async_write(*tls_, asio::buffer(output), use_nothrow);
  } else {
    std::tie(ec, std::ignore) = co_await asio::async_write(socket_, asio::buffer(output), use_nothrow);
  }
  watchdog_.disarm();
  co_return ec;
}

asio::awaitable<std::error_code> ClientConnection::start_tls(asio::ssl::context& context, Seconds timeout) {
  tls_ = std::make_unique<asio::ssl::stream<asio::ip::tcp::socket&>>(socket_, context);
  watchdog_.arm(timeout);
  reading_ = true;  // it waits on the client as a read does: a shutdown ends it (Session::drain)
  auto [ec] = co_await tls_->async_handshake(asio::ssl::stream_base::server, use_nothrow);
  reading_ = false;
  watchdog_.disarm();
  if (ec) tls_.reset();
  // The ticket rides with the first reply (proxy/tls.cpp): one send and one
  // wake-up of the client fewer than a ticket of its own after the handshake.
  ticket_owed_ = !ec;
  co_return ec;
}

asio::awaitable<std::size_t> ClientConnection::early_octets(Seconds pause) {
  std::error_code ec;
  if (socket_.available(ec) == 0 && !ec) {
    watchdog_.arm(pause);
    reading_ = true;  // a shutdown ends the pause (Session::drain)
    std::tie(ec) = co_await socket_.async_wait(asio::ip::tcp::socket::wait_read, use_nothrow);
    reading_ = false;
    watchdog_.disarm();
    if (watchdog_.expired()) co_return 0;
  }
  std::size_t early = socket_.available(ec);
  co_return ec ? 0 : early;  // gone: the normal path finds out
}

asio::awaitable<ClientConnection::ProxyHeaderRead> ClientConnection::read_proxy_header(Seconds timeout) {
  std::string input;
  auto read_exact = [this, &input](std::size_t n) -> asio::awaitable<bool> {
    std::size_t old = input.size();
    input.resize(old + n);
    auto [ec, got] = co_await asio::async_read(socket_, asio::buffer(input.data() + old, n), use_nothrow);
    input.resize(old + got);
    co_return !ec;
  };
  watchdog_.arm(timeout);
  reading_ = true;  // waits on the client as a read does: a shutdown ends it (Session::drain)
  // Octet by octet (a v1 line is at most 107), so a client that is not a
  // proxy is told off at its first wrong octet; a v2 header's address block
  // is read at once once its length is known.
  bool ok = co_await read_exact(1);
  ProxyHeaderRead out{ProxyHeaderRead::Status::kOk, {}};
  while (ok) {
    out.header = parse_proxy_header(input);
    if (out.header.outcome != ProxyHeader::Outcome::kIncomplete) break;
    std::size_t need = 1;
    if (input.size() >= 16 && input[0] == '\r') {  // v2: the rest at once
      std::size_t len = (static_cast<unsigned char>(input[14]) << 8) | static_cast<unsigned char>(input[15]);
      need = std::max<std::size_t>(1, 16 + len - input.size());
    }
    ok = co_await read_exact(need);
  }
  reading_ = false;
  watchdog_.disarm();
  if (!ok) out.status = watchdog_.expired() ? ProxyHeaderRead::Status::kTimeout : ProxyHeaderRead::Status::kClosed;
  else if (out.header.outcome == ProxyHeader::Outcome::kInvalid) out.status = ProxyHeaderRead::Status::kInvalid;
  co_return out;
}

void ClientConnection::cancel() {
  std::error_code ignored;
  socket_.cancel(ignored);
}

void ClientConnection::close() {
  // SMTP ends with QUIT, not close_notify: the TLS session stays resumable
  // from the cache (TLS 1.2 session ids), as tickets are (issue 23).
  if (tls_) SSL_set_shutdown(tls_->native_handle(), SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
  watchdog_.stop();
  std::error_code ignored;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
}

}  // namespace postern
