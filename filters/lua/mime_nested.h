// An archive inside an archive. A reader whose format lets it hand a file's
// data on as it goes by (ZIP, tar, a file compressed whole) hands each file
// named as an archive to a NestedArchive opened for it (mime_archive.h), so
// that the files of "invoice.zip" inside "mail.zip" are listed as well.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "filters/text/ascii.h"

namespace postern::mime {

// A file name Windows opens as an archive it lists: "*.zip" (Explorer),
// "*.cab" (Explorer), "*.rar", "*.7z", tar archives and files compressed
// whole (WinRAR, 7-Zip, and Explorer since Windows 11 23H2; compress,
// lzip, LZMA and LZ4 ones are a problem, for postern does not decompress
// them), trailing dots and spaces dropped as Windows drops them.
inline bool archive_name(std::string_view name) {
  name = name.substr(0, name.find('\0'));  // as the listing shows it, and bsdtar extracts it
  while (!name.empty() && (name.back() == '.' || ascii::is_space(name.back()))) name.remove_suffix(1);
  const std::string lower = ascii::to_lower(name);
  for (std::string_view suffix : {".zip", ".rar", ".7z", ".cab", ".tar", ".tgz", ".taz", ".gz", ".gzip", ".tbz", ".tbz2",
                                  ".bz2", ".bz", ".txz", ".xz", ".tzst", ".zst", ".zstd", ".z", ".lz", ".tlz", ".lzma",
                                  ".lz4"}) {
    if (lower.ends_with(suffix)) return true;
  }
  return false;
}

class NestedArchive {
 public:
  virtual ~NestedArchive() = default;
  virtual void feed(std::string_view data) = 0;
  virtual void finish() = 0;
};

// Opens a reader for the archive file `name`; nullptr when it is not to be
// read (nested as deep as allowed, or too many files: ArchiveReader says so).
using OpenNested = std::function<std::unique_ptr<NestedArchive>(const std::string& name)>;

// A file named as an archive in the archive a reader read: names()[index],
// read by `reader`, or not opened (null: encrypted, compressed with a method
// postern does not decompress, a tar link, or the opener declined).
struct InnerArchive {
  std::size_t index = 0;
  std::unique_ptr<NestedArchive> reader;
};

}  // namespace postern::mime
