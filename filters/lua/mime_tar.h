// tar archives (POSIX ustar and pax, GNU tar, old V7): the names of the
// files in one, as libarchive (Windows 11's File Explorer, bsdtar) and 7-Zip
// list them, from the 512-octet header before each file's data; a pax
// "path" record and a GNU long name name the file after them, a pax "size"
// sizes its data. Sparse files (whose data libarchive finds by a map) and
// hard links with data are a problem rather than a guess. I/O-free,
// bounded, and bad input never throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "filters/lua/mime_nested.h"

namespace postern::mime {

// The octets of a pax extended header or a GNU long name read at most; a
// larger one is a problem, for the name it holds would go unread.
inline constexpr std::size_t kMaxTarExtension = 1024 * 1024;

// Reads a tar archive fed in pieces split anywhere, skipping file data but
// that of a file named as an archive, which goes to a reader `open` opens.
class TarReader {
 public:
  TarReader() = default;
  explicit TarReader(OpenNested open) : open_(std::move(open)) {}

  void feed(std::string_view data);
  void finish();

  // The names of the files, directories and links in it, in archive order,
  // as stored (a pax name is UTF-8; an old one is taken as UTF-8, or as
  // Latin-1 where it is not, as libarchive does).
  const std::vector<std::string>& names() const { return names_; }
  // Why a name may have gone unread (a header whose checksum does not match
  // after the first, the archive cut short inside a header or its data, an
  // extension over kMaxTarExtension, more than kMaxArchiveFiles names);
  // empty when read whole, and for data that is no tar archive (its first
  // header is none: no reader opens it).
  const std::string& problem() const { return problem_; }
  // Whether the data began with a tar header.
  bool is_tar() const { return headers_ > 0; }
  // Whether nothing fed from now on can add a name (the archive ended, or
  // is none, or a problem stopped it).
  bool ended() const { return state_ == State::kDone; }
  // The files named as archives that were opened (or failed to be).
  const std::vector<InnerArchive>& inners() const { return inners_; }

 private:
  enum class State { kHeader, kData, kDone };
  void header();
  void extension_done();
  void end_nested();
  void fail(std::string why);

  State state_ = State::kHeader;
  std::string block_;        // the header being read
  std::uint64_t size_ = 0;   // octets of the entry's data
  std::uint64_t data_ = 0;   // octets of data (with the padding to 512) still to go by
  char kind_ = 0;            // the type of the entry whose data goes by
  std::string extension_;    // a pax header's or a GNU long name's data, kept
  std::string next_name_;    // the name a pax header or a long name gave the next entry
  std::uint64_t next_size_ = 0;  // the size a pax header gave it
  bool has_next_size_ = false;
  std::size_t headers_ = 0;  // headers read
  std::vector<std::string> names_;
  std::string problem_;
  OpenNested open_;
  std::unique_ptr<NestedArchive> nested_;  // reads the data going by
  std::uint64_t nested_left_ = 0;          // octets of it still to come (without the padding)
  std::vector<InnerArchive> inners_;
};

}  // namespace postern::mime
