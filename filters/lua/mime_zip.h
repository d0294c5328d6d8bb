// ZIP archives (PKWARE APPNOTE 6.3.10): the names of the files in one, as
// Windows Explorer lists them, from the central directory at the archive's
// end. Nothing is decompressed (an archive inside an archive is one name).
// I/O-free, bounded, and bad input never throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace postern::mime {

// Octets at the archive's end kept to read the central directory and the
// end records from; a larger directory is a problem, for its names would go
// unread.
inline constexpr std::size_t kMaxZipDirectory = 1024 * 1024;

// Reads a ZIP archive fed in pieces split anywhere, keeping only its end.
class ZipReader {
 public:
  void feed(std::string_view data);
  void finish();

  // The names of the files and directories in it, converted to UTF-8 (code
  // page 437 unless flagged UTF-8; an Info-ZIP Unicode path as well when it
  // differs), in directory order.
  const std::vector<std::string>& names() const { return names_; }
  // Why a name may have gone unread (a directory too large, entries that do
  // not parse, too many); empty when read whole, and for data that is no
  // ZIP archive (no end record: no reader opens it).
  const std::string& problem() const { return problem_; }

 private:
  void read_directory(std::string_view directory, std::uint64_t entries);

  std::string tail_;        // the last octets fed (mime_zip.cpp's kTail, up to twice that)
  std::vector<std::string> names_;
  std::string problem_;
};

}  // namespace postern::mime
