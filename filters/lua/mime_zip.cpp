// ZIP file names; see mime_zip.h. The end of central directory record (and
// for Zip64 its locator and the Zip64 end record) gives the directory's size
// and entry count; the directory is taken to end where the end records
// start, as Info-ZIP does, so data put before the archive (a self-extractor's
// stub) does not move it.
#include "filters/lua/mime_zip.h"

#include "filters/lua/mime.h"
#include "filters/lua/mime_binary.h"

namespace postern::mime {
namespace {

// What is kept: the directory, the Zip64 end records and the end record
// with the longest comment.
constexpr std::size_t kTail = kMaxZipDirectory + 56 + 20 + 22 + 65535;

// The last `signature` that starts in [from, to] of `t` with `room` octets
// after its start, or npos.
std::size_t find_back(std::string_view t, std::string_view signature, std::size_t from, std::size_t to, std::size_t room) {
  if (t.size() < room) return std::string_view::npos;
  for (std::size_t i = std::min(to, t.size() - room) + 1; i-- > from;) {
    if (t.substr(i, signature.size()) == signature) return i;
  }
  return std::string_view::npos;
}

}  // namespace

void ZipReader::feed(std::string_view data) {
  if (data.size() >= kTail) {
    tail_.assign(data.substr(data.size() - kTail));
    return;
  }
  tail_.append(data);
  if (tail_.size() > 2 * kTail) tail_.erase(0, tail_.size() - kTail);
}

void ZipReader::finish() {
  // The last kTail octets, however the archive was fed.
  const std::string_view t = std::string_view(tail_).substr(tail_.size() - std::min(tail_.size(), kTail));
  const std::size_t eocd = find_back(t, "PK\x05\x06", t.size() > 22 + 65535 ? t.size() - 22 - 65535 : 0, t.size(), 22);
  if (eocd == std::string_view::npos) return;  // no ZIP archive: no reader opens it
  std::uint64_t entries = little_endian(t, eocd + 10, 2);
  std::uint64_t size = little_endian(t, eocd + 12, 4);
  std::size_t end = eocd;
  if (entries == 0xFFFF || size == 0xFFFFFFFF || little_endian(t, eocd + 16, 4) == 0xFFFFFFFF) {
    // Zip64: the locator right before the end record, the Zip64 end record before it.
    if (eocd < 20 || t.substr(eocd - 20, 4) != "PK\x06\x07") {
      problem_ = "a Zip64 archive without its end record locator";
      return;
    }
    const std::size_t from = eocd - 20 > 56 + 65536 ? eocd - 20 - 56 - 65536 : 0;
    const std::size_t z = eocd - 20 >= 56 ? find_back(t, "PK\x06\x06", from, eocd - 20 - 56, 56) : std::string_view::npos;
    if (z == std::string_view::npos) {
      problem_ = "a Zip64 archive without its end record";
      return;
    }
    entries = little_endian(t, z + 32, 8);
    size = little_endian(t, z + 40, 8);
    end = z;
  }
  if (size > kMaxZipDirectory) {
    problem_ = "a ZIP central directory of " + std::to_string(size) + " octets";
    return;
  }
  if (size > end) {
    problem_ = "a ZIP central directory larger than the archive";
    return;
  }
  if (entries > kMaxArchiveFiles) {
    problem_ = "a ZIP archive of more than " + std::to_string(kMaxArchiveFiles) + " files";
    return;
  }
  read_directory(t.substr(end - static_cast<std::size_t>(size), static_cast<std::size_t>(size)), entries);
}

// APPNOTE 4.3.12: each entry a fixed part, its name, extra field and comment.
void ZipReader::read_directory(std::string_view d, std::uint64_t entries) {
  for (std::uint64_t i = 0; i < entries; ++i) {
    if (d.size() < 46 || d.substr(0, 4) != "PK\x01\x02") {
      problem_ = "a ZIP central directory that does not parse";
      return;
    }
    const std::uint64_t flags = little_endian(d, 8, 2);
    const std::size_t name_length = static_cast<std::size_t>(little_endian(d, 28, 2));
    const std::size_t extra_length = static_cast<std::size_t>(little_endian(d, 30, 2));
    const std::size_t comment_length = static_cast<std::size_t>(little_endian(d, 32, 2));
    if (d.size() - 46 < name_length + extra_length + comment_length) {
      problem_ = "a ZIP central directory that does not parse";
      return;
    }
    const std::string_view raw = d.substr(46, name_length);
    std::string_view extra = d.substr(46 + name_length, extra_length);
    d.remove_prefix(46 + name_length + extra_length + comment_length);
    // Bit 11: the name is UTF-8; else it is in code page 437, as Explorer reads it.
    const std::string name = to_utf8((flags & 0x800) != 0 ? "UTF-8" : "CP437", raw);
    names_.push_back(name);
    // 4.6.9: the Info-ZIP Unicode Path extra field (0x7075): version, CRC, UTF-8 name.
    while (extra.size() >= 4) {
      const std::uint64_t id = little_endian(extra, 0, 2);
      const std::size_t length = std::min<std::size_t>(static_cast<std::size_t>(little_endian(extra, 2, 2)), extra.size() - 4);
      if (id == 0x7075 && length > 5) {
        std::string unicode = to_utf8("UTF-8", extra.substr(4 + 5, length - 5));
        if (unicode != name) names_.push_back(std::move(unicode));
      }
      extra.remove_prefix(4 + length);
    }
  }
}

}  // namespace postern::mime
