// [store]: which backend holds postern.store, and how (docs/configuration.md).
// Plain data: the proxy fills it, make_store() reads it.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "filters/store/kv_store.h"
#include "filters/store/redis_connection.h"
#include "filters/store/store_log.h"

namespace postern {

struct StoreOptions {
  enum class Backend { kMemory, kRedis } backend = Backend::kMemory;
  // What a store operation that gets no answer (Redis down, a time-out)
  // means for the rule that asked: the rule is skipped (continue) or the
  // command gets 451 4.3.0 (tempfail).
  enum class OnError { kContinue, kTempfail } on_error = OnError::kContinue;

  // kMemory: entries kept (the oldest are evicted past it).
  std::size_t max_entries = 1'000'000;
  // kMemory: octets all entries may take (keys, values, 64 each for the
  // rest); past it expired, then arbitrary entries are evicted.
  std::size_t max_bytes = MemoryStore::kDefaultMaxBytes;
  // Every backend: the longest value postern.store.set/add accept (Redis too).
  std::size_t max_value = KeyValueStore::kMaxValue;
  // kMemory: an LMDB file the store is saved to and loaded from; "" = none.
  std::string persist;
  std::chrono::milliseconds persist_interval{1000};
  std::size_t persist_map_size = 256u * 1024 * 1024;

  // kRedis.
  std::string redis_address = "127.0.0.1:6379";  // as written, for logs
  RedisOptions redis;
  std::string redis_prefix = "postern:";

  // Whether a running store can keep serving a configuration with `other`.
  bool same_backend(const StoreOptions& other) const;
};

// Builds the store; throws StoreError (persisted_store.h) when the LMDB file
// cannot be opened. Redis connects lazily, per I/O thread.
std::shared_ptr<KeyValueStore> make_store(const StoreOptions& options, StoreLogFn log);

}  // namespace postern
