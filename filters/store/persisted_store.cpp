// LmdbFile and PersistedStore; see persisted_store.h.
#include "filters/store/persisted_store.h"

#include <lmdb.h>
#include <sys/file.h>

#include <cstring>

namespace postern {
namespace {

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string mdb_text(const char* what, int rc) { return std::string(what) + ": " + mdb_strerror(rc); }

// Aborts a transaction unless it was committed.
struct Txn {
  MDB_txn* txn = nullptr;
  ~Txn() {
    if (txn) mdb_txn_abort(txn);
  }
  int commit() {
    int rc = mdb_txn_commit(txn);
    txn = nullptr;
    return rc;
  }
};

}  // namespace

LmdbFile::LmdbFile(const std::string& path, std::size_t map_size) {
  int rc = mdb_env_create(&env_);
  if (rc != 0) throw StoreError(mdb_text("mdb_env_create", rc));
  rc = mdb_env_set_mapsize(env_, map_size);
  // MDB_NOSUBDIR: `path` is the data file itself (plus "path-lock").
  // MDB_NOTLS: the loader and the flusher are different threads.
  if (rc == 0) rc = mdb_env_open(env_, path.c_str(), MDB_NOSUBDIR | MDB_NOTLS, 0600);
  if (rc != 0) {
    mdb_env_close(env_);
    env_ = nullptr;
    throw StoreError(mdb_text(("cannot open \"" + path + "\"").c_str(), rc));
  }
  // LMDB would let a second process open the file; two in-memory copies
  // saving into it would overwrite each other's changes, so refuse.
  int fd = -1;
  if (mdb_env_get_fd(env_, &fd) == 0 && flock(fd, LOCK_EX | LOCK_NB) != 0) {
    mdb_env_close(env_);
    env_ = nullptr;
    throw StoreError("\"" + path + "\" is in use by another postern process (one file per instance)");
  }
  Txn t;
  rc = mdb_txn_begin(env_, nullptr, 0, &t.txn);
  MDB_dbi dbi = 0;
  if (rc == 0) rc = mdb_dbi_open(t.txn, nullptr, 0, &dbi);
  if (rc == 0) rc = t.commit();
  if (rc != 0) {
    mdb_env_close(env_);
    env_ = nullptr;
    throw StoreError(mdb_text(("cannot open the database in \"" + path + "\"").c_str(), rc));
  }
  dbi_ = dbi;
}

LmdbFile::~LmdbFile() {
  if (env_) mdb_env_close(env_);
}

std::vector<LmdbFile::Record> LmdbFile::load(std::int64_t now_unix_ms) {
  std::vector<Record> out;
  Txn t;
  int rc = mdb_txn_begin(env_, nullptr, 0, &t.txn);
  if (rc != 0) throw StoreError(mdb_text("mdb_txn_begin", rc));
  MDB_cursor* cursor = nullptr;
  rc = mdb_cursor_open(t.txn, dbi_, &cursor);
  if (rc != 0) throw StoreError(mdb_text("mdb_cursor_open", rc));
  MDB_val key, data;
  for (rc = mdb_cursor_get(cursor, &key, &data, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cursor, &key, &data, MDB_NEXT)) {
    std::int64_t expires = 0;
    bool valid = data.mv_size >= sizeof expires && key.mv_size > 0 && key.mv_size <= KeyValueStore::kMaxKey &&
                 data.mv_size - sizeof expires <= KeyValueStore::kMaxValue;
    if (valid) std::memcpy(&expires, data.mv_data, sizeof expires);
    if (!valid || (expires != 0 && expires <= now_unix_ms)) {
      mdb_cursor_del(cursor, 0);  // expired (or not ours): compact on the way
      continue;
    }
    Record r;
    r.key.assign(static_cast<const char*>(key.mv_data), key.mv_size);
    r.value.assign(static_cast<const char*>(data.mv_data) + sizeof expires, data.mv_size - sizeof expires);
    r.expires_unix_ms = expires;
    out.push_back(std::move(r));
  }
  mdb_cursor_close(cursor);
  if (rc != MDB_NOTFOUND) throw StoreError(mdb_text("reading", rc));
  rc = t.commit();
  if (rc != 0) throw StoreError(mdb_text("mdb_txn_commit", rc));
  return out;
}

std::string LmdbFile::write(const std::vector<MemoryStore::Change>& batch) {
  if (batch.empty()) return "";
  Txn t;
  int rc = mdb_txn_begin(env_, nullptr, 0, &t.txn);
  if (rc != 0) return mdb_text("mdb_txn_begin", rc);
  std::string buffer;
  for (const MemoryStore::Change& c : batch) {
    MDB_val key{c.key.size(), const_cast<char*>(c.key.data())};
    if (!c.value) {
      rc = mdb_del(t.txn, dbi_, &key, nullptr);
      if (rc == MDB_NOTFOUND) rc = 0;
    } else {
      buffer.assign(sizeof c.expires_unix_ms, '\0');
      std::memcpy(buffer.data(), &c.expires_unix_ms, sizeof c.expires_unix_ms);
      buffer += *c.value;
      MDB_val data{buffer.size(), buffer.data()};
      rc = mdb_put(t.txn, dbi_, &key, &data, 0);
    }
    if (rc != 0) return mdb_text(c.value ? "mdb_put" : "mdb_del", rc);
  }
  rc = t.commit();
  return rc == 0 ? "" : mdb_text("mdb_txn_commit", rc);
}

PersistedStore::PersistedStore(const std::string& path, std::size_t map_size, std::size_t max_entries,
                               std::chrono::milliseconds interval, StoreLogFn log, std::size_t max_bytes)
    : memory_(max_entries, max_bytes), file_(path, map_size), interval_(interval), log_(std::move(log)) {
  for (LmdbFile::Record& r : file_.load(unix_ms_now())) {
    memory_.restore(r.key, std::move(r.value), r.expires_unix_ms);
    ++loaded_;
  }
  memory_.track_changes(true);
  thread_ = std::thread([this] { run(); });
}

PersistedStore::~PersistedStore() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
  flush();  // the last changes
}

void PersistedStore::flush() {
  std::lock_guard lock(flush_mutex_);
  std::vector<MemoryStore::Change> batch = memory_.take_changes();
  std::string error = file_.write(batch);
  if (!error.empty() && log_) {
    log_(StoreLogLevel::kError, "store-persist-failed", {{"changes", std::to_string(batch.size())}, {"error", error}});
  }
}

void PersistedStore::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    wake_.wait_for(lock, interval_, [this] { return stopping_; });
    if (stopping_) break;
    lock.unlock();
    flush();
    lock.lock();
  }
}

}  // namespace postern
