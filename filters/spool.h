// Message content store: memory up to a threshold, then an unlinked temp
// file, so a 50 MB message never sits in memory whole (DESIGN "Content").
// Content is the unstuffed message with CRLF line ends.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace postern {

// Sees every octet appended to a spool, in order, as it is appended: a
// filter's view of the content while it streams in (DESIGN "Content": DKIM
// body hashing). Called on the spool's (I/O) thread: pure CPU, never blocks.
class SpoolTap {
 public:
  virtual ~SpoolTap() = default;
  virtual void on_append(std::string_view data) = 0;
};

class Spool {
 public:
  Spool(std::size_t memory_limit, std::string dir);
  ~Spool();
  Spool(const Spool&) = delete;
  Spool& operator=(const Spool&) = delete;

  // Appends content. Returns false when the spill file cannot be written
  // (disk full, no spool dir): the message must then be tempfailed.
  bool append(std::string_view data);
  // Makes everything appended readable (flushes the write buffer).
  bool finish();
  // Drops the content, any spill file and the taps, and gives the memory
  // back (an idle session holds no message-sized buffer); ready for the
  // next message.
  void clear();
  // Taps see what is appended after this call (add them before the content).
  void add_tap(std::shared_ptr<SpoolTap> tap) { taps_.push_back(std::move(tap)); }
  const std::vector<std::shared_ptr<SpoolTap>>& taps() const { return taps_; }

  std::size_t size() const { return size_; }
  bool in_memory() const { return fd_ < 0; }

  // Process-wide: the octets all spools may hold in memory together
  // ([data] spool_memory_total; 0 = no bound), counted as their buffers'
  // capacity (what is allocated, not what is filled), write buffers of
  // spilled spools included. A spool that would pass it goes to its file at
  // once, whatever its own memory limit, and a spilled one then writes
  // through without a buffer: many sessions with messages just under
  // spool_memory cannot exhaust the memory.
  static void set_memory_high_water(std::size_t bytes);
  static std::size_t memory_in_use();
  // The whole content when in_memory().
  std::string_view memory() const { return memory_; }
  // Copies up to `len` bytes from `offset` of a finished spool; returns the
  // count read (0 at the end), or -1 on an I/O error.
  long read(std::size_t offset, char* out, std::size_t len) const;
  // The first `len` octets (fewer when the spool is shorter or a read
  // fails): a view of the spool's memory when it is in memory, else of
  // `copy`, which they are read into. Valid while both live unchanged.
  std::string_view head(std::size_t len, std::string& copy) const;

 private:
  bool spill();
  bool append_spilled(std::string_view data);
  void account();  // brings g_in_memory in line with memory_'s capacity

  std::size_t memory_limit_;
  std::string dir_;
  std::string memory_;  // the content while small; the write buffer after spilling
  std::size_t accounted_ = 0;  // memory_'s capacity as counted in the process-wide total
  std::size_t size_ = 0;
  int fd_ = -1;
  std::vector<std::shared_ptr<SpoolTap>> taps_;
};

}  // namespace postern
