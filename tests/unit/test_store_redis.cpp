// RedisStore against a real redis-server started on a free loopback port:
// the operations' contract, exact counting from two stores (two "instances")
// on two threads at once, and errors as values when Redis is not there.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>

#include "filters/store/redis_store.h"

using postern::RedisOptions;
using postern::RedisStore;
using postern::StoreResult;

namespace {

unsigned short free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

bool can_connect(unsigned short port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

// redis-server --port P, no persistence; stopped with the object.
class RedisProcess {
 public:
  RedisProcess() : port_(free_port()) {
    std::string port = std::to_string(port_);
    pid_ = ::fork();
    if (pid_ == 0) {
      int devnull = ::open("/dev/null", O_WRONLY);
      ::dup2(devnull, 1);
      ::dup2(devnull, 2);
      ::execl("/usr/bin/redis-server", "redis-server", "--port", port.c_str(), "--bind", "127.0.0.1", "--save", "",
              "--appendonly", "no", "--loglevel", "warning", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (int i = 0; i < 500 && !can_connect(port_); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (!can_connect(port_)) throw std::runtime_error("redis-server did not start (Debian package redis-server)");
  }
  ~RedisProcess() {
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
  }
  unsigned short port() const { return port_; }

 private:
  unsigned short port_;
  pid_t pid_ = -1;
};

RedisOptions options_for(unsigned short port) {
  RedisOptions o;
  o.port = port;
  o.timeout = std::chrono::milliseconds(2000);
  return o;
}

// Runs one store operation to completion on a fresh io_context (the
// connection's own loop would keep it running: stop it when done).
template <typename Op>
StoreResult run(Op op) {
  asio::io_context io;
  StoreResult out;
  asio::co_spawn(io, op(), [&](std::exception_ptr e, StoreResult r) {
    if (e) std::rethrow_exception(e);
    out = std::move(r);
    io.stop();
  });
  io.run_for(std::chrono::seconds(10));
  return out;
}

}  // namespace

TEST_CASE("redis store: get, set, add, incr and del keep the store's contract", "[store][redis]") {
  RedisProcess redis;
  RedisStore store(options_for(redis.port()), "t:");
  asio::io_context io;
  std::vector<std::string> seen;
  auto script = [&]() -> asio::awaitable<void> {
    auto r = co_await store.get("k");
    seen.push_back(r.ok() && !r.value ? "missing" : "?");
    r = co_await store.set("k", "v", std::chrono::seconds(60));
    seen.push_back(r.ok() ? "set" : r.error);
    r = co_await store.get("k");
    seen.push_back(r.value.value_or("?"));
    r = co_await store.add("k", "w", std::chrono::seconds(60));
    seen.push_back(r.ok() && !r.added ? "exists" : "?");
    r = co_await store.add("fresh", "w", std::chrono::seconds(0));
    seen.push_back(r.ok() && r.added ? "added" : "?");
    r = co_await store.incr("n", 5, std::chrono::seconds(60));
    seen.push_back(std::to_string(r.integer));
    r = co_await store.incr("n", -2, std::chrono::seconds(60));
    seen.push_back(std::to_string(r.integer));
    r = co_await store.del("k");
    seen.push_back(r.ok() ? "deleted" : r.error);
    r = co_await store.get("k");
    seen.push_back(r.ok() && !r.value ? "missing" : "?");
  };
  asio::co_spawn(io, script, [&](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
    io.stop();
  });
  io.run_for(std::chrono::seconds(20));
  CHECK(seen == std::vector<std::string>{"missing", "set", "v", "exists", "added", "5", "3", "deleted", "missing"});
}

TEST_CASE("redis store: two stores on two threads count one key exactly", "[store][redis]") {
  RedisProcess redis;
  constexpr int kPerStore = 300;
  RedisStore a(options_for(redis.port()), "t:");
  RedisStore b(options_for(redis.port()), "t:");
  std::atomic<int> failures{0}, max_seen{0};
  auto hammer = [&](RedisStore& store) {
    asio::io_context io;
    int done = 0;
    for (int i = 0; i < kPerStore; ++i) {
      auto one = [&]() -> asio::awaitable<void> {
        auto r = co_await store.incr("rate", 1, std::chrono::seconds(60));
        if (++done == kPerStore) io.stop();
        if (!r.ok()) ++failures;
        int seen = static_cast<int>(r.integer);
        for (int m = max_seen.load(); seen > m && !max_seen.compare_exchange_weak(m, seen);) {
        }
      };
      asio::co_spawn(io, one, asio::detached);
    }
    io.run_for(std::chrono::seconds(20));
  };
  std::thread ta([&] { hammer(a); });
  std::thread tb([&] { hammer(b); });
  ta.join();
  tb.join();
  CHECK(failures == 0);
  CHECK(max_seen == 2 * kPerStore);  // every increment counted once, none lost
  auto total = run([&]() { return a.get("rate"); });
  CHECK(total.value == std::to_string(2 * kPerStore));
}

TEST_CASE("redis store: no Redis listening is an error value, not an exception", "[store][redis]") {
  RedisOptions o = options_for(free_port());  // nothing listens there
  o.timeout = std::chrono::milliseconds(300);
  RedisStore store(o, "t:");
  auto r = run([&]() { return store.incr("k", 1, std::chrono::seconds(1)); });
  CHECK_FALSE(r.ok());
  CHECK_THAT(r.error, Catch::Matchers::Contains("redis"));
}
