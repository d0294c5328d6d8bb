// RedisConnection: see redis_connection.h.
#include "filters/store/redis_connection.h"

#include <hiredis/hiredis.h>

#include <algorithm>

#include <asio/co_spawn.hpp>
#include <asio/connect.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

namespace postern {
namespace {

using namespace asio::experimental::awaitable_operators;
constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);

// A reply that does not complete within this many buffered octets is a
// protocol error (our replies are at most a 64 KiB value).
constexpr std::size_t kMaxReplyBuffer = 1024 * 1024;
// Commands waiting to be written past this fail at once (Redis is not keeping up).
constexpr std::size_t kMaxBacklog = 4 * 1024 * 1024;

redisReader* reader_of(void* p) { return static_cast<redisReader*>(p); }

RedisReply convert(const redisReply* r) {
  RedisReply out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::kString;
      out.text.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::Type::kStatus;
      out.text.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::kInteger;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_NIL: out.type = RedisReply::Type::kNil; break;
    case REDIS_REPLY_ARRAY: out.type = RedisReply::Type::kArray; break;
    case REDIS_REPLY_ERROR:
      out.error.assign(r->str, std::min<std::size_t>(r->len, 200));
      if (out.error.empty()) out.error = "error reply";
      break;
    default: out.error = "unknown reply type"; break;
  }
  return out;
}

RedisReply failure(std::string why) {
  RedisReply r;
  r.error = std::move(why);
  return r;
}

bool cancelled(asio::cancellation_state state) { return state.cancelled() != asio::cancellation_type::none; }

}  // namespace

struct RedisConnection::Pending {
  explicit Pending(const asio::any_io_executor& ex) : wake(ex) {}
  asio::steady_timer wake;  // cancelled when the reply (or a failure) is in
  RedisReply reply;
  bool done = false;
  bool internal = false;  // AUTH / SELECT: nobody waits
};

std::string redis_command(const std::vector<std::string>& args) {
  std::string out = "*" + std::to_string(args.size()) + "\r\n";
  for (const std::string& a : args) {
    out += "$" + std::to_string(a.size()) + "\r\n";
    out += a;
    out += "\r\n";
  }
  return out;
}

RedisConnection::RedisConnection(asio::any_io_executor executor, RedisOptions options,
                                 std::shared_ptr<RedisStats> stats, StoreLogFn log)
    : executor_(executor),
      options_(std::move(options)),
      stats_(std::move(stats)),
      log_(std::move(log)),
      socket_(executor),
      write_wake_(executor) {}

RedisConnection::~RedisConnection() {
  if (reader_) redisReaderFree(reader_of(reader_));
}

void RedisConnection::start() {
  auto self = shared_from_this();
  auto loop = [self]() -> asio::awaitable<void> { co_await self->run(); };
  asio::co_spawn(executor_, std::move(loop), asio::detached);
}

void RedisConnection::stop() {
  state_ = State::kStopped;
  std::error_code ignored;
  socket_.close(ignored);
  write_wake_.cancel();
}

void RedisConnection::fail_all(const std::string& why) {
  auto pending = std::move(in_flight_);
  in_flight_.clear();
  out_.clear();
  for (auto& p : pending) {
    if (p->done) continue;
    p->reply = failure(why);
    p->done = true;
    p->wake.cancel();
  }
}

void RedisConnection::reset(const std::string& why) {
  last_error_ = why;
  std::error_code ignored;
  socket_.close(ignored);
  write_wake_.cancel();
}

asio::awaitable<RedisReply> RedisConnection::call(std::string command) {
  stats_->calls.fetch_add(1, std::memory_order_relaxed);
  if (state_ == State::kBackoff || state_ == State::kStopped || out_.size() > kMaxBacklog) {
    stats_->errors.fetch_add(1, std::memory_order_relaxed);
    co_return failure(state_ == State::kBackoff ? "redis unavailable (" + last_error_ + "), reconnecting"
                      : state_ == State::kStopped ? "redis connection stopped"
                                                  : "too many commands waiting for redis");
  }
  auto pending = std::make_shared<Pending>(executor_);
  pending->wake.expires_after(options_.timeout);
  in_flight_.push_back(pending);
  out_ += command;
  if (state_ == State::kConnected) write_wake_.cancel();
  auto [ec] = co_await pending->wake.async_wait(use_nothrow);
  if (pending->done) {
    if (!pending->reply.ok()) stats_->errors.fetch_add(1, std::memory_order_relaxed);
    co_return std::move(pending->reply);
  }
  stats_->errors.fetch_add(1, std::memory_order_relaxed);
  if (ec) co_return failure("cancelled");  // the caller's own deadline came first
  stats_->timeouts.fetch_add(1, std::memory_order_relaxed);
  std::string why = "time-out after " + std::to_string(options_.timeout.count()) + " ms";
  // Replies come in order: this one may still arrive and answer a later call.
  reset(why);
  co_return failure(why);
}

asio::awaitable<std::string> RedisConnection::connect() {
  asio::steady_timer deadline(executor_, options_.timeout);
  std::error_code ec;
  asio::ip::address address = asio::ip::make_address(options_.host, ec);
  std::vector<asio::ip::tcp::endpoint> endpoints;
  if (!ec) {
    endpoints.emplace_back(address, options_.port);
  } else {
    asio::ip::tcp::resolver resolver(executor_);
    std::string port = std::to_string(options_.port);
    auto resolved = co_await (resolver.async_resolve(options_.host, port, use_nothrow) || deadline.async_wait(use_nothrow));
    if (resolved.index() == 1) co_return "resolving " + options_.host + ": time-out";
    auto& [rec, results] = std::get<0>(resolved);
    if (rec) co_return "resolving " + options_.host + ": " + rec.message();
    for (const auto& entry : results) endpoints.push_back(entry.endpoint());
  }
  socket_ = asio::ip::tcp::socket(executor_);
  auto connected = co_await (asio::async_connect(socket_, endpoints, use_nothrow) || deadline.async_wait(use_nothrow));
  if (connected.index() == 1) {
    reset("connect time-out");
    co_return "connect time-out";
  }
  auto& [cec, endpoint] = std::get<0>(connected);
  if (cec) co_return cec.message();
  (void)endpoint;
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
  if (reader_) redisReaderFree(reader_of(reader_));
  reader_ = redisReaderCreate();
  if (!reader_) co_return "out of memory";
  // AUTH and SELECT go before anything queued while connecting.
  std::string setup;
  std::vector<std::shared_ptr<Pending>> internal;
  if (!options_.password.empty()) {
    std::vector<std::string> auth{"AUTH", options_.password};
    setup += redis_command(auth);
    internal.push_back(std::make_shared<Pending>(executor_));
  }
  if (options_.database != 0) {
    std::vector<std::string> select{"SELECT", std::to_string(options_.database)};
    setup += redis_command(select);
    internal.push_back(std::make_shared<Pending>(executor_));
  }
  for (auto it = internal.rbegin(); it != internal.rend(); ++it) {
    (*it)->internal = true;
    in_flight_.push_front(*it);
  }
  out_.insert(0, setup);
  co_return "";
}

asio::awaitable<std::string> RedisConnection::read_loop() {
  std::vector<char> buffer(16 * 1024);
  for (;;) {
    auto [ec, n] = co_await socket_.async_read_some(asio::buffer(buffer), use_nothrow);
    if (ec) co_return ec == asio::error::eof ? std::string("closed by redis") : ec.message();
    redisReader* reader = reader_of(reader_);
    if (redisReaderFeed(reader, buffer.data(), n) != REDIS_OK) co_return "protocol error";
    for (;;) {
      void* raw = nullptr;
      if (redisReaderGetReply(reader, &raw) != REDIS_OK) co_return std::string("protocol error: ") + reader->errstr;
      if (!raw) break;
      RedisReply reply = convert(static_cast<redisReply*>(raw));
      freeReplyObject(raw);
      if (in_flight_.empty()) co_return "a reply to no command";
      auto pending = in_flight_.front();
      in_flight_.pop_front();
      if (pending->internal && !reply.ok()) co_return "connection setup refused: " + reply.error;
      pending->reply = std::move(reply);
      pending->done = true;
      pending->wake.cancel();
    }
    if (reader->len > kMaxReplyBuffer) co_return "reply too long";
  }
}

asio::awaitable<std::string> RedisConnection::write_loop() {
  for (;;) {
    if (out_.empty()) {
      write_wake_.expires_at(asio::steady_timer::time_point::max());
      co_await write_wake_.async_wait(use_nothrow);
      if (cancelled(co_await asio::this_coro::cancellation_state)) co_return "";
      if (!socket_.is_open()) co_return last_error_.empty() ? std::string("closed") : last_error_;
      continue;
    }
    std::string chunk;
    chunk.swap(out_);
    auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(chunk), use_nothrow);
    if (ec) co_return ec.message();
    if (cancelled(co_await asio::this_coro::cancellation_state)) co_return "";
  }
}

asio::awaitable<void> RedisConnection::run() {
  auto backoff = options_.reconnect_min;
  asio::steady_timer pause(executor_);
  const std::string address = options_.host + ":" + std::to_string(options_.port);
  while (state_ != State::kStopped) {
    state_ = State::kConnecting;
    std::string error = co_await connect();
    if (state_ == State::kStopped) break;
    if (error.empty()) {
      state_ = State::kConnected;
      stats_->connections.fetch_add(1, std::memory_order_relaxed);
      if (was_up_) stats_->reconnects.fetch_add(1, std::memory_order_relaxed);
      if (log_) log_(StoreLogLevel::kInfo, "store-redis-connected", {{"address", address}});
      was_up_ = true;
      last_error_.clear();
      down_logged_ = false;
      backoff = options_.reconnect_min;
      auto result = co_await (read_loop() || write_loop());
      error = result.index() == 0 ? std::get<0>(result) : std::get<1>(result);
      if (!last_error_.empty() && error == "Operation canceled") error = last_error_;
      stats_->connections.fetch_sub(1, std::memory_order_relaxed);
      if (state_ == State::kStopped) break;
      if (log_) {
        log_(StoreLogLevel::kWarning, "store-redis-disconnected",
             {{"address", address}, {"error", error}, {"action", "reconnecting"}});
      }
      down_logged_ = true;
    } else if (!down_logged_) {
      if (log_) {
        log_(StoreLogLevel::kWarning, "store-redis-unreachable",
             {{"address", address}, {"error", error}, {"action", "retrying with backoff"}});
      }
      down_logged_ = true;
    }
    std::error_code ignored;
    socket_.close(ignored);
    last_error_ = error;
    state_ = State::kBackoff;
    fail_all("redis " + error);
    pause.expires_after(backoff);
    co_await pause.async_wait(use_nothrow);
    backoff = std::min(backoff * 2, options_.reconnect_max);
  }
  fail_all("redis connection stopped");
}

}  // namespace postern
