// ZIP archives (PKWARE APPNOTE 6.3.10): the names of the files in one, as
// Windows Explorer lists them, from the central directory at the archive's
// end. A file in it named as an archive, stored or deflated, is read as
// well: its data, found by walking the local headers as the archive goes by,
// goes to a reader opened for it, and counts only when its place and CRC-32
// are the ones the central directory gives (what Explorer and 7-Zip
// extract). Nothing else is decompressed. I/O-free, bounded, and bad input
// never throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "filters/lua/mime_nested.h"

namespace postern::mime {

// Octets at the archive's end kept to read the central directory and the
// end records from; a larger directory is a problem, for its names would go
// unread.
inline constexpr std::size_t kMaxZipDirectory = 1024 * 1024;

// Reads a ZIP archive fed in pieces split anywhere, keeping only its end.
class ZipReader {
 public:
  ZipReader();
  // `budget`: the octets decompression may still produce for the message,
  // spent here; `open`: opens a reader for a file named as an archive.
  ZipReader(std::size_t* budget, OpenNested open);
  ~ZipReader();
  ZipReader(const ZipReader&) = delete;
  ZipReader& operator=(const ZipReader&) = delete;

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
  // The files named as archives: read, or not opened (encrypted, another
  // method, their data not found where the directory says).
  const std::vector<InnerArchive>& inners() const { return inners_; }
  // Whether the decompression budget ran out here.
  bool over_budget() const;

  class Walker;  // mime_zip.cpp

 private:
  void read_directory(std::string_view directory, std::uint64_t entries, std::int64_t base);

  std::string tail_;        // the last octets fed (mime_zip.cpp's kTail, up to twice that)
  std::uint64_t fed_ = 0;   // octets fed
  std::unique_ptr<Walker> walker_;  // with an opener only
  std::vector<std::string> names_;
  std::vector<InnerArchive> inners_;
  std::string problem_;
};

}  // namespace postern::mime
