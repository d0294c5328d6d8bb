// MemoryStore: the embedded key-value store; see kv_store.h.
#include "filters/lua/kv_store.h"

#include <charconv>

namespace postern {
namespace {
using SteadyClock = std::chrono::steady_clock;

SteadyClock::time_point expiry(SteadyClock::time_point now, KeyValueStore::Ttl ttl) {
  if (ttl.count() <= 0) return SteadyClock::time_point::max();
  return now + ttl;
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
    changed(key, nullptr, now);
    map_.erase(it);
    return nullptr;
  }
  return &it->second;
}

void MemoryStore::make_room(Clock::time_point now) {
  if (map_.size() < max_entries_) return;
  for (auto it = map_.begin(); it != map_.end();) {
    if (it->second.expires <= now) {
      changed(it->first, nullptr, now);
      it = map_.erase(it);
    } else {
      ++it;
    }
  }
  while (map_.size() >= max_entries_ && !map_.empty()) {
    changed(map_.begin()->first, nullptr, now);
    map_.erase(map_.begin());
  }
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
  if (!find_live(key, now)) make_room(now);
  put(key, std::move(value), expiry(now, ttl), now);
}

bool MemoryStore::add_now(const std::string& key, std::string value, Ttl ttl) {
  if (key.size() > kMaxKey || value.size() > kMaxValue) return false;
  std::lock_guard lock(mutex_);
  auto now = Clock::now();
  if (find_live(key, now)) return false;
  make_room(now);
  put(key, std::move(value), expiry(now, ttl), now);
  return true;
}

std::int64_t MemoryStore::incr_now(const std::string& key, std::int64_t by, Ttl ttl) {
  if (key.size() > kMaxKey) return by;
  std::lock_guard lock(mutex_);
  auto now = Clock::now();
  Entry* e = find_live(key, now);
  if (!e) {
    make_room(now);
    e = &map_[key];
    e->expires = expiry(now, ttl);
  }
  std::int64_t current = 0;
  std::from_chars(e->value.data(), e->value.data() + e->value.size(), current);
  current += by;
  e->value = std::to_string(current);
  changed(key, e, now);
  return current;
}

void MemoryStore::del_now(const std::string& key) {
  std::lock_guard lock(mutex_);
  if (map_.erase(key)) changed(key, nullptr, Clock::now());
}

std::size_t MemoryStore::size() {
  std::lock_guard lock(mutex_);
  return map_.size();
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
  if (!find_live(key, now)) make_room(now);
  map_[key] = Entry{std::move(value), expires};
}

}  // namespace postern
