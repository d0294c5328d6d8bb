// MemoryStore: the embedded key-value store; see kv_store.h.
#include "filters/lua/kv_store.h"

#include <charconv>

namespace postern {
namespace {
std::chrono::steady_clock::time_point expiry(std::chrono::steady_clock::time_point now, KeyValueStore::Ttl ttl) {
  if (ttl.count() <= 0) return std::chrono::steady_clock::time_point::max();
  return now + ttl;
}
}  // namespace

MemoryStore::Entry* MemoryStore::find_live(const std::string& key, Clock::time_point now) {
  auto it = map_.find(key);
  if (it == map_.end()) return nullptr;
  if (it->second.expires <= now) {
    map_.erase(it);
    return nullptr;
  }
  return &it->second;
}

void MemoryStore::make_room(Clock::time_point now) {
  if (map_.size() < max_entries_) return;
  for (auto it = map_.begin(); it != map_.end();) {
    if (it->second.expires <= now) it = map_.erase(it);
    else ++it;
  }
  while (map_.size() >= max_entries_ && !map_.empty()) map_.erase(map_.begin());
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
  map_[key] = Entry{std::move(value), expiry(now, ttl)};
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
  return current;
}

void MemoryStore::del_now(const std::string& key) {
  std::lock_guard lock(mutex_);
  map_.erase(key);
}

std::size_t MemoryStore::size() {
  std::lock_guard lock(mutex_);
  return map_.size();
}

}  // namespace postern
