// RedisStore: see redis_store.h.
#include "filters/store/redis_store.h"

#include <atomic>
#include <map>
#include <mutex>

#include <asio/execution_context.hpp>
#include <asio/this_coro.hpp>

namespace postern {
namespace {

// INCRBY that sets the expiry only when it creates the key (the contract of
// KeyValueStore::incr), atomic because Redis runs a script as one command.
constexpr const char* kIncrScript =
    "local created = redis.call('EXISTS', KEYS[1]) == 0\n"
    "local n = redis.call('INCRBY', KEYS[1], ARGV[1])\n"
    "if created and tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end\n"
    "return n\n";

std::atomic<std::uint64_t> next_store_id{1};

// The connections of one io_context, one per RedisStore; shut down (and
// released) with the context, so no socket outlives its io_context.
class RedisConnections : public asio::execution_context::service {
 public:
  using key_type = RedisConnections;
  static inline asio::execution_context::id id;

  explicit RedisConnections(asio::execution_context& ctx) : asio::execution_context::service(ctx) {}

  std::shared_ptr<RedisConnection> find(std::uint64_t store) {
    std::lock_guard lock(mutex_);
    auto it = connections_.find(store);
    return it == connections_.end() ? nullptr : it->second;
  }
  void add(std::uint64_t store, std::shared_ptr<RedisConnection> c) {
    std::lock_guard lock(mutex_);
    connections_[store] = std::move(c);
  }

 private:
  void shutdown() override {
    std::map<std::uint64_t, std::shared_ptr<RedisConnection>> all;
    {
      std::lock_guard lock(mutex_);
      all.swap(connections_);
    }
    for (auto& [store, c] : all) c->stop();
  }

  std::mutex mutex_;
  std::map<std::uint64_t, std::shared_ptr<RedisConnection>> connections_;
};

std::string ttl_ms(KeyValueStore::Ttl ttl) { return std::to_string(ttl.count() * 1000); }

StoreResult unexpected(const RedisReply& r, const char* command) {
  if (!r.ok()) return StoreResult::failed("redis " + std::string(command) + ": " + r.error);
  return StoreResult::failed("redis " + std::string(command) + ": unexpected reply");
}

}  // namespace

RedisStore::RedisStore(RedisOptions options, std::string prefix, StoreLogFn log)
    : options_(std::move(options)), prefix_(std::move(prefix)), log_(std::move(log)), id_(next_store_id++) {}

asio::awaitable<RedisReply> RedisStore::call(std::vector<std::string> args) {
  auto executor = co_await asio::this_coro::executor;
  asio::execution_context& context = asio::query(executor, asio::execution::context);
  auto& connections = asio::use_service<RedisConnections>(context);
  std::shared_ptr<RedisConnection> connection = connections.find(id_);
  if (!connection) {
    connection = std::make_shared<RedisConnection>(executor, options_, stats_, log_);
    connections.add(id_, connection);
    connection->start();
  }
  std::string command = redis_command(args);
  co_return co_await connection->call(std::move(command));
}

asio::awaitable<StoreResult> RedisStore::get(std::string key) {
  std::vector<std::string> args{"GET", prefix_ + key};
  RedisReply r = co_await call(std::move(args));
  StoreResult out;
  if (r.ok() && r.type == RedisReply::Type::kString) out.value = std::move(r.text);
  else if (!(r.ok() && r.type == RedisReply::Type::kNil)) out = unexpected(r, "GET");
  co_return out;
}

asio::awaitable<StoreResult> RedisStore::set(std::string key, std::string value, Ttl ttl) {
  std::vector<std::string> args{"SET", prefix_ + key, std::move(value)};
  if (ttl.count() > 0) {
    args.push_back("PX");
    args.push_back(ttl_ms(ttl));
  }
  RedisReply r = co_await call(std::move(args));
  if (r.ok() && r.type == RedisReply::Type::kStatus) co_return StoreResult{};
  co_return unexpected(r, "SET");
}

asio::awaitable<StoreResult> RedisStore::add(std::string key, std::string value, Ttl ttl) {
  std::vector<std::string> args{"SET", prefix_ + key, std::move(value), "NX"};
  if (ttl.count() > 0) {
    args.push_back("PX");
    args.push_back(ttl_ms(ttl));
  }
  RedisReply r = co_await call(std::move(args));
  StoreResult out;
  if (r.ok() && r.type == RedisReply::Type::kStatus) out.added = true;
  else if (!(r.ok() && r.type == RedisReply::Type::kNil)) out = unexpected(r, "SET NX");
  co_return out;
}

asio::awaitable<StoreResult> RedisStore::incr(std::string key, std::int64_t by, Ttl ttl) {
  std::vector<std::string> args{"EVAL", kIncrScript, "1", prefix_ + key, std::to_string(by),
                                ttl.count() > 0 ? ttl_ms(ttl) : std::string("0")};
  RedisReply r = co_await call(std::move(args));
  StoreResult out;
  if (r.ok() && r.type == RedisReply::Type::kInteger) out.integer = r.integer;
  else out = unexpected(r, "INCRBY");
  co_return out;
}

asio::awaitable<StoreResult> RedisStore::del(std::string key) {
  std::vector<std::string> args{"DEL", prefix_ + key};
  RedisReply r = co_await call(std::move(args));
  if (r.ok() && r.type == RedisReply::Type::kInteger) co_return StoreResult{};
  co_return unexpected(r, "DEL");
}

}  // namespace postern
