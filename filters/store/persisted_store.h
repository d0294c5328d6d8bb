// The embedded store made durable: a MemoryStore whose changes a background
// thread commits to an LMDB file in batches, and which reads that file back
// at start, so greylisting triplets and rate-limit windows survive a restart.
//
// Reads and writes are served from memory exactly as MemoryStore does; the
// I/O threads never touch LMDB. The flusher thread commits (fsync) every
// `interval`, and once more when the store is destroyed. A crash loses at
// most the last interval's changes. Expiry is kept as wall-clock time, so an
// entry that expired while postern was down is not loaded.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "filters/store/kv_store.h"
#include "filters/store/store_log.h"

struct MDB_env;

namespace postern {

class StoreError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One LMDB file (MDB_NOSUBDIR) holding key -> [8 octets expiry][value].
class LmdbFile {
 public:
  struct Record {
    std::string key;
    std::string value;
    std::int64_t expires_unix_ms = 0;  // 0 = never
  };
  // Opens or creates `path`; `map_size` caps the file. Throws StoreError.
  LmdbFile(const std::string& path, std::size_t map_size);
  ~LmdbFile();
  LmdbFile(const LmdbFile&) = delete;
  LmdbFile& operator=(const LmdbFile&) = delete;

  // Every record still live at `now_unix_ms`; expired records are deleted
  // from the file on the way. Throws StoreError.
  std::vector<Record> load(std::int64_t now_unix_ms);
  // Writes a batch in one transaction; "" or why it failed.
  std::string write(const std::vector<MemoryStore::Change>& batch);

 private:
  MDB_env* env_ = nullptr;
  unsigned dbi_ = 0;
};

class PersistedStore final : public KeyValueStore {
 public:
  // Opens `path` and loads it; throws StoreError (a file that cannot be
  // opened is a start-up error, not something to run without).
  PersistedStore(const std::string& path, std::size_t map_size, std::size_t max_entries,
                 std::chrono::milliseconds interval, StoreLogFn log = {},
                 std::size_t max_bytes = MemoryStore::kDefaultMaxBytes);
  ~PersistedStore() override;

  asio::awaitable<StoreResult> get(std::string key) override { return memory_.get(std::move(key)); }
  asio::awaitable<StoreResult> set(std::string key, std::string value, Ttl ttl) override {
    return memory_.set(std::move(key), std::move(value), ttl);
  }
  asio::awaitable<StoreResult> add(std::string key, std::string value, Ttl ttl) override {
    return memory_.add(std::move(key), std::move(value), ttl);
  }
  asio::awaitable<StoreResult> incr(std::string key, std::int64_t by, Ttl ttl) override {
    return memory_.incr(std::move(key), by, ttl);
  }
  asio::awaitable<StoreResult> del(std::string key) override { return memory_.del(std::move(key)); }
  std::string_view backend() const override { return "memory"; }
  MemoryStore* in_memory() override { return &memory_; }

  MemoryStore& memory() { return memory_; }
  // Commits what changed now (tests; the flusher calls it every interval).
  void flush();
  std::size_t loaded() const { return loaded_; }

 private:
  void run();

  MemoryStore memory_;
  LmdbFile file_;
  std::chrono::milliseconds interval_;
  StoreLogFn log_;
  std::size_t loaded_ = 0;
  std::mutex flush_mutex_;  // one commit at a time
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace postern
