// make_store(): the [store] backends; see store_options.h.
#include "filters/store/persisted_store.h"
#include "filters/store/redis_store.h"
#include "filters/store/store_options.h"

namespace postern {

bool StoreOptions::same_backend(const StoreOptions& o) const {
  return backend == o.backend && max_entries == o.max_entries && max_bytes == o.max_bytes && persist == o.persist &&
         persist_interval == o.persist_interval && persist_map_size == o.persist_map_size &&
         redis_address == o.redis_address && redis.password == o.redis.password &&
         redis.database == o.redis.database && redis.timeout == o.redis.timeout &&
         redis.reconnect_max == o.redis.reconnect_max && redis_prefix == o.redis_prefix;
}

std::shared_ptr<KeyValueStore> make_store(const StoreOptions& options, StoreLogFn log) {
  if (options.backend == StoreOptions::Backend::kRedis) {
    if (log) log(StoreLogLevel::kInfo, "store", {{"backend", "redis"}, {"address", options.redis_address},
                                                   {"prefix", options.redis_prefix}});
    return std::make_shared<RedisStore>(options.redis, options.redis_prefix, std::move(log));
  }
  if (options.persist.empty()) return std::make_shared<MemoryStore>(options.max_entries, options.max_bytes);
  auto store = std::make_shared<PersistedStore>(options.persist, options.persist_map_size, options.max_entries,
                                                options.persist_interval, log, options.max_bytes);
  if (log) {
    log(StoreLogLevel::kInfo, "store", {{"backend", "memory"}, {"persist", options.persist},
                                         {"loaded", std::to_string(store->loaded())}});
  }
  return store;
}

}  // namespace postern
