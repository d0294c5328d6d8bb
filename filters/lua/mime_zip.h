// ZIP archives (PKWARE APPNOTE 6.3.10): the names of the files in one, as
// Windows Explorer lists them, from the central directory at the archive's
// end. With an opener, the local headers are walked as the archive goes by
// (mime_zip_walk.h) and must be the directory's, one for one, under the
// same names (7-Zip lists the local headers when the two disagree); and a
// file named as an archive, stored or deflated, is read as well, counted
// only when it comes to the size and CRC-32 the directory gives. Nothing
// else is decompressed. I/O-free, bounded, and bad input never throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "filters/lua/mime_nested.h"
#include "filters/lua/mime_zip_walk.h"

namespace postern::mime {

// Octets at the archive's end kept to read the central directory and the
// end records from; a larger directory is a problem, for its names would go
// unread.
inline constexpr std::size_t kMaxZipDirectory = 1024 * 1024;

// Reads a ZIP archive fed in pieces split anywhere, keeping only its end
// (and, with an opener, what the walk of its local headers found).
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
  // not parse, too many; with an opener, local headers that are not the
  // directory's, a file named as an archive whose data is not what the
  // directory says, the budget spent); empty when read whole, and for data
  // that is no ZIP archive (no end record: no reader opens it).
  const std::string& problem() const { return problem_; }
  // The files named as archives: read, or not opened (encrypted, another
  // method, or the opener declined).
  const std::vector<InnerArchive>& inners() const { return inners_; }
  // Whether the decompression budget ran out here.
  bool over_budget() const;

 private:
  // `base`: the stream offset the directory's offsets count from;
  // `directory`: the stream offset of the directory.
  void read_directory(std::string_view d, std::uint64_t entries, std::uint64_t base, std::uint64_t directory);

  std::string tail_;        // the last octets fed (mime_zip.cpp's kTail, up to twice that)
  std::uint64_t fed_ = 0;   // octets fed
  std::unique_ptr<ZipWalker> walker_;  // with an opener only
  std::vector<std::string> names_;
  std::vector<InnerArchive> inners_;
  std::string problem_;
};

}  // namespace postern::mime
