// Connection reuse towards the MTA (issue 23): one connection to the MTA and
// what it learned (UpstreamConnection), and the per-I/O-thread pool where a
// connection whose last transaction ended cleanly waits for the next client
// session instead of being closed with QUIT. A session lives on one thread,
// so each thread's pool is its own and needs no lock: it is a service of the
// thread's io_context, shut down (QUIT to every idle connection) before the
// io_context's sockets and timers are.
//
// What may enter the pool, and what a connection must pass on its way out,
// is decided in proxy/smtp_upstream.cpp (SmtpUpstream::release, reuse); the
// pool itself bounds how many wait and for how long, and on the way out
// checks without waiting that the MTA neither closed the connection nor sent
// anything meanwhile (DESIGN "Every byte from the MTA is explained").
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include <asio/any_io_executor.hpp>
#include <asio/execution_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/ssl.hpp>
#include <asio/steady_timer.hpp>

#include "proxy/config.h"
#include "proxy/metrics.h"
#include "proxy/reply_matcher.h"

namespace postern {

// One connection to the MTA: the socket, postern's own TLS over it, the
// replies it owes and what its last EHLO offered.
struct UpstreamConnection {
  explicit UpstreamConnection(const asio::any_io_executor& executor) : socket(executor) {}

  asio::ip::tcp::socket socket;
  std::shared_ptr<asio::ssl::context> tls_context;  // outlives `tls`
  std::unique_ptr<asio::ssl::stream<asio::ip::tcp::socket&>> tls;
  ReplyMatcher replies;
  std::vector<std::string> capabilities;     // EHLO keywords, upper case
  std::vector<std::string> capability_args;  // the rest of each EHLO line
  std::string ehlo_reply;  // the EHLO reply both were read from; empty when none
  // Never handed to another client: AUTH was relayed over it, or the MTA
  // refused something (any 4xx/5xx), whatever the session did next.
  bool tainted = false;
  bool xclient = false;       // the MTA took XCLIENT on it
  bool unnamed = false;       // XCLIENT taken, the EHLO with the client's name not sent yet
  // The last read (plain TCP) left nothing behind: it read less than it
  // could, or found nothing. A write that follows it at once may skip the
  // read before it (SmtpUpstream::send); any write clears it.
  bool drained = false;
  std::size_t messages = 0;   // end-of-data (or BDAT LAST) replies it carried
};

class UpstreamPool : public asio::execution_context::service {
 public:
  using key_type = UpstreamPool;
  static asio::execution_context::id id;
  explicit UpstreamPool(asio::execution_context& context) : asio::execution_context::service(context) {}

  // The pool of the io_context that runs `executor` (one per I/O thread).
  static UpstreamPool& of(const asio::any_io_executor& executor);

  // The most recently parked connection made with `config` still open and
  // quiet; null when none. Connections of an older configuration, past their
  // idle time-out, closed by the MTA or with octets waiting are closed.
  std::unique_ptr<UpstreamConnection> take(const std::shared_ptr<const Config>& config);
  // Parks `connection` (kReady, nothing owed, nothing buffered); when the
  // pool is full, the oldest waiting one is closed to make room.
  void put(std::unique_ptr<UpstreamConnection> connection, const std::shared_ptr<const Config>& config);
  // Idle connections waiting now (tests, metrics).
  std::size_t size() const { return idle_.size(); }

  // The io_context ends (shutdown): the MTA still hears QUIT.
  void shutdown() override;

 private:
  struct Idle {
    std::unique_ptr<UpstreamConnection> connection;
    std::shared_ptr<const Config> config;
    std::chrono::steady_clock::time_point since;
  };
  // Closes a connection that leaves the pool unused: QUIT is written without
  // waiting (the MTA logs a polite end), then the socket is closed.
  static void discard(Idle& idle, metrics::PoolDiscard why);
  // Closes what passed its idle time-out; wakes again for the next one.
  // arm() waits for the earliest deadline of all idle connections.
  void expire();
  void arm(const asio::any_io_executor& executor);

  std::deque<Idle> idle_;  // oldest first
  std::unique_ptr<asio::steady_timer> reaper_;
  bool reaper_waiting_ = false;
  std::uint64_t reaper_wait_ = 0;  // the wait whose handler may expire()
};

}  // namespace postern
