// Spool: memory first, then an unlinked 0600 temp file written in large blocks.
#include "filters/spool.h"
#include "filters/io/write_all.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <fcntl.h>
#include <unistd.h>

namespace postern {
namespace {
constexpr std::size_t kFileWriteBlock = 256 * 1024;  // bytes buffered before a write(2)

// Memory held by every spool (the capacity of its buffer: content, or a
// spilled spool's write buffer), and its bound. Relaxed: a soft limit.
std::atomic<std::size_t> g_in_memory{0};
std::atomic<std::size_t> g_high_water{0};

bool within_high_water(std::size_t more) {
  std::size_t limit = g_high_water.load(std::memory_order_relaxed);
  return limit == 0 || g_in_memory.load(std::memory_order_relaxed) + more <= limit;
}

int open_unlinked_temp(const std::string& dir) {
  int fd = -1;
#ifdef O_TMPFILE
  fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0) return fd;
#endif
  std::string path = dir + "/postern-spool-XXXXXX";
  fd = ::mkostemp(path.data(), O_CLOEXEC);
  if (fd >= 0) ::unlink(path.c_str());
  return fd;
}
}  // namespace

Spool::Spool(std::size_t memory_limit, std::string dir)
    : memory_limit_(memory_limit), dir_(std::move(dir)) {
  if (dir_.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    dir_ = tmp && *tmp ? tmp : "/tmp";
  }
}

Spool::~Spool() { clear(); }

bool Spool::append(std::string_view data) {
  for (const auto& tap : taps_) tap->on_append(data);
  size_ += data.size();
  if (fd_ >= 0) return append_spilled(data);
  const std::size_t need = memory_.size() + data.size();
  if (need <= memory_.capacity() && need <= memory_limit_) {
    memory_.append(data);
    return true;
  }
  if (need <= memory_limit_) {
    // Grown here, not by std::string, so that what is allocated is what is
    // counted: doubling, up to the spool's own limit.
    std::size_t grown = std::min(std::max(need, 2 * memory_.capacity()), memory_limit_);
    if (!within_high_water(grown - accounted_)) grown = need;  // no room to double: exactly what it needs
    if (within_high_water(grown - accounted_)) {
      // A new string: reserve() on the old one may round up to twice its
      // capacity (libstdc++), past what was counted.
      std::string larger;
      larger.reserve(grown);
      larger.append(memory_).append(data);
      memory_.swap(larger);
      account();
      return true;
    }
  }
  if (!spill()) return false;
  return append_spilled(data);
}

bool Spool::append_spilled(std::string_view data) {
  if (memory_.size() + data.size() <= memory_.capacity() && memory_.capacity() >= kFileWriteBlock) {
    memory_.append(data);
    return true;
  }
  bool ok = write_all(fd_, memory_);
  memory_.clear();
  if (memory_.capacity() >= kFileWriteBlock && data.size() < memory_.capacity()) {
    memory_.append(data);
    return ok;
  }
  return ok && write_all(fd_, data);  // no write buffer (over spool_memory_total), or a block larger than it
}

void Spool::set_memory_high_water(std::size_t bytes) { g_high_water.store(bytes, std::memory_order_relaxed); }

std::size_t Spool::memory_in_use() { return g_in_memory.load(std::memory_order_relaxed); }

void Spool::account() {
  // The few octets std::string keeps inside itself are no allocation.
  static const std::size_t kInline = std::string().capacity();
  const std::size_t now = memory_.capacity() > kInline ? memory_.capacity() : 0;
  if (now > accounted_) g_in_memory.fetch_add(now - accounted_, std::memory_order_relaxed);
  else g_in_memory.fetch_sub(accounted_ - now, std::memory_order_relaxed);
  accounted_ = now;
}

// Moves the content to an unlinked file; the memory goes back, and a write
// buffer is taken only where spool_memory_total has room for it.
bool Spool::spill() {
  fd_ = open_unlinked_temp(dir_);
  if (fd_ < 0) return false;
  bool ok = write_all(fd_, memory_);
  std::string().swap(memory_);
  account();
  if (within_high_water(kFileWriteBlock)) {
    memory_.reserve(kFileWriteBlock);
    account();
  }
  return ok;
}

bool Spool::finish() {
  if (fd_ < 0 || memory_.empty()) return true;
  bool ok = write_all(fd_, memory_);
  memory_.clear();
  return ok;
}

void Spool::clear() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  std::string().swap(memory_);
  account();
  size_ = 0;
  taps_.clear();
}

std::string_view Spool::head(std::size_t len, std::string& copy) const {
  len = std::min(len, size_);
  if (in_memory()) return memory().substr(0, len);
  copy.assign(len, '\0');
  std::size_t got = 0;
  while (got < len) {
    long n = read(got, copy.data() + got, len - got);
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  copy.resize(got);
  return copy;
}

long Spool::read(std::size_t offset, char* out, std::size_t len) const {
  if (fd_ < 0) {
    if (offset >= memory_.size()) return 0;
    std::size_t n = std::min(len, memory_.size() - offset);
    memory_.copy(out, n, offset);
    return static_cast<long>(n);
  }
  for (;;) {
    ssize_t n = ::pread(fd_, out, len, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    return static_cast<long>(n);
  }
}

}  // namespace postern
