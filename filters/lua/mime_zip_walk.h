// A ZIP archive's local headers, walked as the archive streams by (PKWARE
// APPNOTE 6.3.10, 4.3.7): each header, the file's data, and the data
// descriptor after it when flag bit 3 says the sizes were not known when the
// header was written. The ZIP reader (mime_zip.h) holds what the walk found
// against the central directory: readers differ on which they list (7-Zip
// lists the local headers when the two disagree), so an archive whose two
// lists are not the same is a problem. A file named as an archive, stored
// or deflated, goes to a reader opened for it as it goes by. I/O-free,
// bounded, and bad input never throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "filters/lua/mime_nested.h"

namespace postern::mime {

// Octets of local header names a walk keeps (twice the central directory's limit).
inline constexpr std::size_t kMaxWalkedNames = 2 * 1024 * 1024;

// A local header and what followed it.
struct WalkedFile {
  std::uint64_t offset = 0;      // of its local header in the stream
  std::string name;              // as stored
  std::uint64_t compressed = 0;  // octets of its data
  bool ended = false;            // its data's end was found
  // A file named as an archive, stored or deflated, not encrypted: read by
  // `reader` (null when the opener declined), its data decompressed to
  // `size` octets of CRC-32 `crc`, whole when a deflate stream ended where
  // its data did.
  std::unique_ptr<NestedArchive> reader;
  std::uint64_t size = 0;
  std::uint32_t crc = 0;
  bool whole = false;
  bool listed = false;  // the central directory names it (ZipReader's)
};

class ZipWalker {
 public:
  // `budget`: the octets decompression may still produce for the message,
  // spent here; `open`: opens a reader for a file named as an archive.
  ZipWalker(std::size_t* budget, OpenNested open);
  ~ZipWalker();
  ZipWalker(const ZipWalker&) = delete;
  ZipWalker& operator=(const ZipWalker&) = delete;

  void feed(std::string_view data);
  void finish();  // a file cut short has not ended

  // The local header at `offset`, or null (none, or no longer kept).
  WalkedFile* at(std::uint64_t offset);
  // The local headers walked and kept, in stream order: the last
  // kMaxArchiveFiles + 1 of them, within kMaxWalkedNames octets of names
  // (an archive's own are within its directory's limit; a stream holding
  // several archives, a tar of ZIPs, keeps those of the last).
  const std::deque<WalkedFile>& files() const { return files_; }
  // Whether a header at `offset` or after it is no longer kept.
  bool dropped_from(std::uint64_t offset) const { return dropped_ && dropped_last_ >= offset; }
  // Whether the decompression budget ran out here.
  bool over_budget() const { return over_budget_; }

 private:
  enum class State { kSeek, kHeader, kSized, kUnsized };
  void run(std::string_view& in);
  void unsized(std::string_view& in);
  void start_file(std::string_view header);
  void data(std::string_view piece);
  void inflate_block(std::string_view block);
  void give(std::string_view out);
  void end_file(bool ended);
  void end_inflate();

  std::size_t* budget_;
  OpenNested open_;
  State state_ = State::kSeek;
  std::string hold_;        // octets not yet walked past, from hold_start_ on
  std::size_t hold_start_ = 0;
  std::uint64_t at_ = 0;    // stream offset of the next octet to walk
  std::uint64_t left_ = 0;  // kSized: octets of data still to come
  bool zip64_ = false;      // the local header had a Zip64 extra field (8-octet descriptor sizes)
  int method_ = 0;
  static constexpr std::size_t kNone = static_cast<std::size_t>(-1);
  std::size_t file_ = kNone;  // the index of the file whose data goes by, when kept
  bool reading_ = false;      // ... read by its reader
  bool bad_ = false;            // ... whose data did not inflate, or went on past its stream's end
  struct Inflater;
  std::unique_ptr<Inflater> inflater_;
  std::string pending_;  // deflated octets not yet a whole block
  void keep(std::uint64_t offset, std::string_view name);
  std::deque<WalkedFile> files_;
  std::size_t first_ = 0;         // the index (counting from the stream's first header) of files_.front()
  std::size_t name_octets_ = 0;   // of the names kept
  std::unordered_map<std::uint64_t, std::size_t> by_offset_;  // to that index
  bool dropped_ = false;
  std::uint64_t dropped_last_ = 0;  // the offset of the last header dropped
  bool over_budget_ = false;
};

}  // namespace postern::mime
