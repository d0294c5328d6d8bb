// The key-value / counter store rules use for rate limits and greylisting
// (postern.store in Lua). One store per process, shared by every I/O thread.
// The interface is asynchronous so a networked backend (Redis,
// filters/store/redis_store.h) fits behind it; MemoryStore is the embedded
// default (persisted to disk by filters/store/persisted_store.h when asked).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <asio/awaitable.hpp>

namespace postern {

// What a store operation answers. A backend that cannot answer (Redis down,
// a time-out) says why in `error`; the Lua driver then applies
// [store] on_error. Expected failures are values, not exceptions.
struct StoreResult {
  std::string error;                 // empty = the operation was performed
  std::optional<std::string> value;  // get: the value; nullopt = no such key
  std::int64_t integer = 0;          // incr: the new value
  bool added = false;                // add: the key was created

  bool ok() const { return error.empty(); }
  static StoreResult failed(std::string why) {
    StoreResult r;
    r.error = std::move(why);
    return r;
  }
};

class MemoryStore;

class KeyValueStore {
 public:
  using Ttl = std::chrono::seconds;  // 0 = no expiry
  static constexpr std::size_t kMaxKey = 1024;
  static constexpr std::size_t kMaxValue = 64 * 1024;

  virtual ~KeyValueStore() = default;
  virtual asio::awaitable<StoreResult> get(std::string key) = 0;
  virtual asio::awaitable<StoreResult> set(std::string key, std::string value, Ttl ttl) = 0;
  // Creates `key` only when it does not exist (Redis SET NX); `added` says
  // whether it did. The atomic "first one wins" of greylisting.
  virtual asio::awaitable<StoreResult> add(std::string key, std::string value, Ttl ttl) = 0;
  // Adds `by` to the integer at `key` (missing = 0) and returns the new value;
  // `ttl` applies when the key is created. Atomic across every user of the
  // store (every thread; with Redis, every postern instance).
  virtual asio::awaitable<StoreResult> incr(std::string key, std::int64_t by, Ttl ttl) = 0;
  virtual asio::awaitable<StoreResult> del(std::string key) = 0;
  // "memory" or "redis", for logs.
  virtual std::string_view backend() const = 0;
  // The in-process map behind this store when its operations never wait (the
  // embedded store): callers may use its *_now operations directly instead of
  // suspending (a Lua rule does not yield for it: bench/README.md). Null otherwise.
  virtual MemoryStore* in_memory() { return nullptr; }
};

// In-process store: a mutex-guarded hash map with lazy expiry. Bounded: past
// `max_entries` entries or `max_bytes` octets (keys, values and
// kEntryOverhead each) expired entries are swept, then arbitrary entries are
// evicted (issue 17: 4,000 values of 64 KiB a message grew RSS by 250 MB). Never fails. With change tracking on (persistence), every change
// is remembered, newest state per key, until take_changes().
class MemoryStore final : public KeyValueStore {
 public:
  static constexpr std::size_t kMaxKey = KeyValueStore::kMaxKey;
  static constexpr std::size_t kMaxValue = KeyValueStore::kMaxValue;

  static constexpr std::size_t kDefaultMaxBytes = 64u * 1024 * 1024;
  static constexpr std::size_t kEntryOverhead = 64;  // the map node, the strings, the expiry

  explicit MemoryStore(std::size_t max_entries = 1'000'000, std::size_t max_bytes = kDefaultMaxBytes)
      : max_entries_(max_entries), max_bytes_(max_bytes) {}

  asio::awaitable<StoreResult> get(std::string key) override {
    StoreResult r;
    r.value = get_now(key);
    co_return r;
  }
  asio::awaitable<StoreResult> set(std::string key, std::string value, Ttl ttl) override {
    set_now(key, std::move(value), ttl);
    co_return StoreResult{};
  }
  asio::awaitable<StoreResult> add(std::string key, std::string value, Ttl ttl) override {
    StoreResult r;
    r.added = add_now(key, std::move(value), ttl);
    co_return r;
  }
  asio::awaitable<StoreResult> incr(std::string key, std::int64_t by, Ttl ttl) override {
    StoreResult r;
    r.integer = incr_now(key, by, ttl);
    co_return r;
  }
  asio::awaitable<StoreResult> del(std::string key) override {
    del_now(key);
    co_return StoreResult{};
  }
  std::string_view backend() const override { return "memory"; }
  MemoryStore* in_memory() override { return this; }

  // The synchronous operations behind the awaitables (also for tests).
  std::optional<std::string> get_now(const std::string& key);
  void set_now(const std::string& key, std::string value, Ttl ttl);
  bool add_now(const std::string& key, std::string value, Ttl ttl);
  std::int64_t incr_now(const std::string& key, std::int64_t by, Ttl ttl);
  void del_now(const std::string& key);
  std::size_t size();
  // Octets the entries take, as counted against max_bytes.
  std::size_t bytes();

  // ---- persistence support
  // One key's newest state: a value with its wall-clock expiry (Unix
  // milliseconds, 0 = never), or gone (deleted, evicted, expired).
  struct Change {
    std::string key;
    std::optional<std::string> value;
    std::int64_t expires_unix_ms = 0;
  };
  void track_changes(bool on);
  std::vector<Change> take_changes();
  // Puts back an entry read from disk; an already expired one is ignored.
  void restore(const std::string& key, std::string value, std::int64_t expires_unix_ms);

 private:
  using Clock = std::chrono::steady_clock;
  struct Entry {
    std::string value;
    Clock::time_point expires;  // max() = never
  };
  Entry* find_live(const std::string& key, Clock::time_point now);
  void make_room(Clock::time_point now, std::size_t incoming);
  void erase_entry(std::unordered_map<std::string, Entry>::iterator it, Clock::time_point now);
  void put(const std::string& key, std::string value, Clock::time_point expires, Clock::time_point now);
  void changed(const std::string& key, const Entry* e, Clock::time_point now);

  std::mutex mutex_;
  std::unordered_map<std::string, Entry> map_;
  std::size_t max_entries_;
  std::size_t max_bytes_;
  std::size_t bytes_ = 0;  // guarded by mutex_
  bool tracking_ = false;
  std::unordered_map<std::string, Change> changes_;  // guarded by mutex_
};

}  // namespace postern
