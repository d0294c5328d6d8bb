// MemoryStore: the embedded key-value store; see kv_store.h.
#include "filters/store/kv_store.h"

#include <charconv>

namespace postern {
namespace {
using SteadyClock = std::chrono::steady_clock;

SteadyClock::time_point expiry(SteadyClock::time_point now, KeyValueStore::Ttl ttl) {
  if (ttl.count() <= 0) return SteadyClock::time_point::max();
  return now + ttl;
}

std::size_t entry_bytes(const std::string& key, const std::string& value) {
  return key.size() + value.size() + MemoryStore::kEntryOverhead;
}

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}
}  // namespace

MemoryStore::Entry* MemoryStore::find_live(const std::string& key, Clock::time_point now) {
  auto it = map_.find(key);
  if (it == map_.end()) return nullptr;
  if (it->second.expires <= now) {
    erase_entry(it, now);
    return nullptr;
  }
  return &it->second;
}

void MemoryStore::erase_entry(std::unordered_map<std::string, Entry>::iterator it, Clock::time_point now) {
  changed(it->first, nullptr, now);
  bytes_ -= entry_bytes(it->first, it->second.value);
  map_.erase(it);
}

// Room for one more entry of `incoming` octets (caller holds mutex_).
void MemoryStore::make_room(Clock::time_point now, std::size_t incoming) {
  auto full = [&] { return map_.size() >= max_entries_ || bytes_ + incoming > max_bytes_; };
  if (!full()) return;
  for (auto it = map_.begin(); it != map_.end();) {
    auto next = std::next(it);
    if (it->second.expires <= now) erase_entry(it, now);
    it = next;
  }
  while (full() && !map_.empty()) erase_entry(map_.begin(), now);
}

// Records the newest state of `key` for the persistence layer (caller holds mutex_).
void MemoryStore::changed(const std::string& key, const Entry* e, Clock::time_point now) {
  if (!tracking_) return;
  Change& c = changes_[key];
  c.key = key;
  if (!e) {
    c.value.reset();
    c.expires_unix_ms = 0;
    return;
  }
  c.value = e->value;
  c.expires_unix_ms = e->expires == Clock::time_point::max()
                          ? 0
                          : unix_ms_now() + std::chrono::duration_cast<std::chrono::milliseconds>(e->expires - now).count();
}

void MemoryStore::put(const std::string& key, std::string value, Clock::time_point expires, Clock::time_point now) {
  // `key` is absent here: set_now and add_now removed or found no entry.
  bytes_ += entry_bytes(key, value);
  Entry& e = map_[key];
  e = Entry{std::move(value), expires};
  changed(key, &e, now);
}

std::optional<std::string> MemoryStore::get_now(const std::string& key) {
  std::lock_guard lock(mutex_);
  Entry* e = find_live(key, Clock::now());
  if (!e) return std::nullopt;
  return e->value;
}

void MemoryStore::set_now(const std::string& key, std::string value, Ttl ttl) {
  if (key.size() > kMaxKey || value.size() > kMaxValue) return;
  std::lock_guard lock(mutex_);
  auto now = Clock::now();
  if (auto it = map_.find(key); it != map_.end()) erase_entry(it, now);
  make_room(now, entry_bytes(key, value));
  put(key, std::move(value), expiry(now, ttl), now);
}

bool MemoryStore::add_now(const std::string& key, std::string value, Ttl ttl) {
  if (key.size() > kMaxKey || value.size() > kMaxValue) return false;
  std::lock_guard lock(mutex_);
  auto now = Clock::now();
  if (find_live(key, now)) return false;
  make_room(now, entry_bytes(key, value));
  put(key, std::move(value), expiry(now, ttl), now);
  return true;
}

std::int64_t MemoryStore::incr_now(const std::string& key, std::int64_t by, Ttl ttl) {
  if (key.size() > kMaxKey) return by;
  std::lock_guard lock(mutex_);
  auto now = Clock::now();
  Entry* e = find_live(key, now);
  if (!e) {
    make_room(now, entry_bytes(key, "-9223372036854775808"));
    e = &map_[key];
    e->expires = expiry(now, ttl);
    bytes_ += entry_bytes(key, e->value);
  }
  std::int64_t current = 0;
  std::from_chars(e->value.data(), e->value.data() + e->value.size(), current);
  current += by;
  bytes_ -= e->value.size();
  e->value = std::to_string(current);
  bytes_ += e->value.size();
  changed(key, e, now);
  return current;
}

void MemoryStore::del_now(const std::string& key) {
  std::lock_guard lock(mutex_);
  if (auto it = map_.find(key); it != map_.end()) erase_entry(it, Clock::now());
}

std::size_t MemoryStore::size() {
  std::lock_guard lock(mutex_);
  return map_.size();
}

std::size_t MemoryStore::bytes() {
  std::lock_guard lock(mutex_);
  return bytes_;
}

void MemoryStore::track_changes(bool on) {
  std::lock_guard lock(mutex_);
  tracking_ = on;
  if (!on) changes_.clear();
}

std::vector<MemoryStore::Change> MemoryStore::take_changes() {
  std::unordered_map<std::string, Change> taken;
  {
    std::lock_guard lock(mutex_);
    taken.swap(changes_);
  }
  std::vector<Change> out;
  out.reserve(taken.size());
  for (auto& [key, change] : taken) out.push_back(std::move(change));
  return out;
}

void MemoryStore::restore(const std::string& key, std::string value, std::int64_t expires_unix_ms) {
  if (key.size() > kMaxKey || value.size() > kMaxValue) return;
  std::lock_guard lock(mutex_);
  auto now = Clock::now();
  Clock::time_point expires = Clock::time_point::max();
  if (expires_unix_ms != 0) {
    std::int64_t left = expires_unix_ms - unix_ms_now();
    if (left <= 0) return;
    expires = now + std::chrono::milliseconds(left);
  }
  if (auto it = map_.find(key); it != map_.end()) erase_entry(it, now);
  make_room(now, entry_bytes(key, value));
  bytes_ += entry_bytes(key, value);
  map_[key] = Entry{std::move(value), expires};
}

}  // namespace postern
