// One connection to Redis, owned by one I/O thread: RESP commands are
// pipelined over an Asio socket and the replies parsed with hiredis's reader,
// so no call ever blocks the thread. The connection reconnects by itself
// with exponential backoff; a call made while Redis is down fails at once
// ("reconnecting"), a call in flight fails when the connection drops or its
// time-out passes. Redis answers in order (FIFO), so a time-out also resets
// the connection: a reply that comes late would answer the wrong call.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>

#include "filters/store/store_log.h"

namespace postern {

struct RedisOptions {
  std::string host = "127.0.0.1";
  unsigned short port = 6379;
  std::string password;  // AUTH after connecting; "" = none. Never logged.
  unsigned database = 0;  // SELECT after connecting
  std::chrono::milliseconds timeout{500};         // per call, and per connect attempt
  std::chrono::milliseconds reconnect_min{100};   // first backoff
  std::chrono::milliseconds reconnect_max{5000};  // backoff ceiling
};

// Counters a metrics endpoint can read (relaxed atomics; any thread).
struct RedisStats {
  std::atomic<std::uint64_t> calls{0};
  std::atomic<std::uint64_t> errors{0};      // calls that got no answer (down, dropped, protocol)
  std::atomic<std::uint64_t> timeouts{0};    // calls whose time-out passed
  std::atomic<std::uint64_t> reconnects{0};  // connections established after the first
  std::atomic<std::int64_t> connections{0};  // connections up now
};

// A reply as values; `error` is set for a Redis error reply or no reply.
struct RedisReply {
  enum class Type { kNil, kString, kInteger, kStatus, kArray, kNone } type = Type::kNone;
  std::string error;
  std::string text;  // kString, kStatus
  std::int64_t integer = 0;
  bool ok() const { return error.empty(); }
};

// "*N\r\n$len\r\narg\r\n..." (RESP array of bulk strings).
std::string redis_command(const std::vector<std::string>& args);

class RedisConnection : public std::enable_shared_from_this<RedisConnection> {
 public:
  RedisConnection(asio::any_io_executor executor, RedisOptions options, std::shared_ptr<RedisStats> stats,
                  StoreLogFn log);
  ~RedisConnection();
  // Starts the connect / read / reconnect loop on the executor.
  void start();
  // Closes the socket and ends the loop (on the executor's thread).
  void stop();
  // Sends a command made by redis_command() and waits for its reply, at most
  // options.timeout. Must be called on the executor's thread.
  asio::awaitable<RedisReply> call(std::string command);

 private:
  struct Pending;
  enum class State { kConnecting, kConnected, kBackoff, kStopped };

  asio::awaitable<void> run();
  asio::awaitable<std::string> connect();
  asio::awaitable<std::string> read_loop();
  asio::awaitable<std::string> write_loop();
  void fail_all(const std::string& why);
  void reset(const std::string& why);

  asio::any_io_executor executor_;
  RedisOptions options_;
  std::shared_ptr<RedisStats> stats_;
  StoreLogFn log_;
  asio::ip::tcp::socket socket_;
  asio::steady_timer write_wake_;
  State state_ = State::kConnecting;
  std::string last_error_;
  bool was_up_ = false;     // a connection was established before
  bool down_logged_ = false;  // the current outage was logged
  std::deque<std::shared_ptr<Pending>> in_flight_;  // written or queued, in order
  std::string out_;                                  // not yet written
  void* reader_ = nullptr;                           // redisReader*
};

}  // namespace postern
