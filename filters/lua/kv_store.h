// The key-value / counter store rules use for rate limits and greylisting
// (postern.store in Lua). One store per process, shared by every I/O thread.
// The interface is asynchronous so a networked backend (Redis) fits behind it;
// MemoryStore is the embedded default.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include <asio/awaitable.hpp>

namespace postern {

class KeyValueStore {
 public:
  using Ttl = std::chrono::seconds;  // 0 = no expiry
  virtual ~KeyValueStore() = default;
  virtual asio::awaitable<std::optional<std::string>> get(std::string key) = 0;
  virtual asio::awaitable<void> set(std::string key, std::string value, Ttl ttl) = 0;
  // Adds `by` to the integer at `key` (missing or not an integer = 0) and
  // returns the new value; `ttl` applies when the key is created.
  virtual asio::awaitable<std::int64_t> incr(std::string key, std::int64_t by, Ttl ttl) = 0;
  virtual asio::awaitable<void> del(std::string key) = 0;
};

// In-process store: a mutex-guarded hash map with lazy expiry. Bounded: past
// `max_entries` expired entries are swept, then the oldest-inserted bucket's
// entry is evicted.
class MemoryStore final : public KeyValueStore {
 public:
  static constexpr std::size_t kMaxKey = 1024;
  static constexpr std::size_t kMaxValue = 64 * 1024;

  explicit MemoryStore(std::size_t max_entries = 1'000'000) : max_entries_(max_entries) {}

  asio::awaitable<std::optional<std::string>> get(std::string key) override { co_return get_now(key); }
  asio::awaitable<void> set(std::string key, std::string value, Ttl ttl) override {
    set_now(key, std::move(value), ttl);
    co_return;
  }
  asio::awaitable<std::int64_t> incr(std::string key, std::int64_t by, Ttl ttl) override {
    co_return incr_now(key, by, ttl);
  }
  asio::awaitable<void> del(std::string key) override {
    del_now(key);
    co_return;
  }

  // The synchronous operations behind the awaitables (also for tests).
  std::optional<std::string> get_now(const std::string& key);
  void set_now(const std::string& key, std::string value, Ttl ttl);
  std::int64_t incr_now(const std::string& key, std::int64_t by, Ttl ttl);
  void del_now(const std::string& key);
  std::size_t size();

 private:
  using Clock = std::chrono::steady_clock;
  struct Entry {
    std::string value;
    Clock::time_point expires;  // max() = never
  };
  Entry* find_live(const std::string& key, Clock::time_point now);
  void make_room(Clock::time_point now);

  std::mutex mutex_;
  std::unordered_map<std::string, Entry> map_;
  std::size_t max_entries_;
};

}  // namespace postern
