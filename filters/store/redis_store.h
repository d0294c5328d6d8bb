// The store in Redis, shared by every postern instance that points at the
// same server: the way a rate limit or a greylisting triplet holds across
// several instances behind a load balancer (docs/scale-out.md).
//
// Each I/O thread gets its own RedisConnection, made on first use on that
// thread and owned by the thread's io_context (so it dies with it). Every
// operation is one atomic Redis command: GET, SET PX, SET NX PX, DEL, and an
// EVAL script for INCRBY with the expiry set when the key is created. Keys
// are prefixed (`prefix`) so postern can share a Redis with other users.
// A failure is a value (StoreResult::error); the Lua driver applies
// [store] on_error.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "filters/store/kv_store.h"
#include "filters/store/redis_connection.h"

namespace postern {

class RedisStore final : public KeyValueStore {
 public:
  RedisStore(RedisOptions options, std::string prefix, StoreLogFn log = {});

  asio::awaitable<StoreResult> get(std::string key) override;
  asio::awaitable<StoreResult> set(std::string key, std::string value, Ttl ttl) override;
  asio::awaitable<StoreResult> add(std::string key, std::string value, Ttl ttl) override;
  asio::awaitable<StoreResult> incr(std::string key, std::int64_t by, Ttl ttl) override;
  asio::awaitable<StoreResult> del(std::string key) override;
  std::string_view backend() const override { return "redis"; }

  // The counters proxy/metrics.cpp exports (postern_store_*).
  const RedisStats& stats() const { return *stats_; }

 private:
  // Runs one command on the calling thread's connection.
  asio::awaitable<RedisReply> call(std::vector<std::string> args);

  RedisOptions options_;
  std::string prefix_;
  StoreLogFn log_;
  std::shared_ptr<RedisStats> stats_ = std::make_shared<RedisStats>();
  std::uint64_t id_;  // names this store's connections in each io_context
};

}  // namespace postern
