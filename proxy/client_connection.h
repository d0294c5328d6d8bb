// The client's side of the wire: the TCP socket, TLS once it is up, and the
// PROXY header a load balancer sends before either. Reads append to the
// session's input buffer; every wait has the watchdog's deadline (the whole
// PROXY header one, not each read). No SMTP here: the session reads lines
// and decides what a failure means.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>

#include <asio/awaitable.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/ssl.hpp>

#include "proxy/config.h"
#include "proxy/proxy_protocol.h"
#include "proxy/watchdog.h"

namespace postern {

class ClientConnection {
 public:
  // `no_delay_set`: the socket has TCP_NODELAY already (inherited from its
  // listening socket), so no setsockopt is spent on it.
  explicit ClientConnection(asio::ip::tcp::socket socket, bool no_delay_set = false);
  ~ClientConnection();
  ClientConnection(const ClientConnection&) = delete;
  ClientConnection& operator=(const ClientConnection&) = delete;

  asio::any_io_executor executor() { return socket_.get_executor(); }
  asio::ip::tcp::socket& socket() { return socket_; }
  bool tls() const { return tls_ != nullptr; }
  SSL* tls_handle() { return tls_ ? tls_->native_handle() : nullptr; }
  // A read, a TLS handshake, the PROXY header or greet_pause is waiting for
  // the client (a drain may cancel it).
  bool reading() const { return reading_; }
  // The last wait ended because its deadline passed.
  bool timed_out() const { return watchdog_.expired(); }

  // Appends what the client sends next to `input` within `timeout`. Under
  // TLS a `content`-sized read (decrypted octets may wait in the engine); on
  // plain TCP exactly what arrived, and an idle wait holds no buffer (issue 8).
  asio::awaitable<std::error_code> read(std::string& input, Seconds timeout, bool content);
  // Writes all of `output` within `timeout`.
  asio::awaitable<std::error_code> write(std::string_view output, Seconds timeout);
  // The TLS handshake as server on the plain socket (RFC 3207, RFC 8314);
  // on failure the connection stays plain.
  asio::awaitable<std::error_code> start_tls(asio::ssl::context& context, Seconds timeout);
  // Octets the client sent within `pause` without being asked (RFC 5321
  // §4.3.1: it must wait for the greeting); 0 when none or gone.
  asio::awaitable<std::size_t> early_octets(Seconds pause);

  struct ProxyHeaderRead {
    enum class Status { kOk, kClosed, kTimeout, kInvalid } status;
    ProxyHeader header;  // kOk, kInvalid (its error)
  };
  // Reads exactly the PROXY header's octets (v1 or v2), never more: what
  // follows may be a TLS ClientHello that the TLS engine must read itself.
  asio::awaitable<ProxyHeaderRead> read_proxy_header(Seconds timeout);

  void cancel();
  void close();  // shutdown and close; the watchdog stops

 private:
  asio::awaitable<std::error_code> read_plain(std::string& input, Seconds timeout);

  asio::ip::tcp::socket socket_;
  Watchdog watchdog_;
  std::unique_ptr<asio::ssl::stream<asio::ip::tcp::socket&>> tls_;  // set once TLS is up
  bool reading_ = false;
  bool ticket_owed_ = false;  // the TLS 1.3 ticket goes out with the next write
};

}  // namespace postern
