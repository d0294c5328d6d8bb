// ZIP file names; see mime_zip.h. The end of central directory record (and
// for Zip64 its locator and the Zip64 end record) gives the directory's size
// and entry count; the directory is taken to end where the end records
// start, as Info-ZIP does, so data put before the archive (a self-extractor's
// stub) does not move it.
#include "filters/lua/mime_zip.h"

#include <algorithm>

#include "filters/lua/mime.h"
#include "filters/lua/mime_binary.h"
#include "filters/lua/mime_compressed.h"

namespace postern::mime {
namespace {

constexpr const char* kDisagree = "a ZIP archive whose local headers and central directory disagree";

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

ZipReader::ZipReader() = default;

ZipReader::ZipReader(std::size_t* budget, OpenNested open)
    : walker_(open ? std::make_unique<ZipWalker>(budget, std::move(open)) : nullptr) {}

ZipReader::~ZipReader() = default;

bool ZipReader::over_budget() const { return walker_ && walker_->over_budget(); }

void ZipReader::feed(std::string_view data) {
  fed_ += data.size();
  if (walker_) walker_->feed(data);
  if (data.size() >= kTail) {
    tail_.assign(data.substr(data.size() - kTail));
    return;
  }
  tail_.append(data);
  if (tail_.size() > 2 * kTail) tail_.erase(0, tail_.size() - kTail);
}

void ZipReader::finish() {
  if (walker_) {
    walker_->finish();
    // Whatever the end records say, for the budget is the message's: the
    // same problem however the message was split among the readers.
    if (walker_->over_budget()) {
      problem_ = decompression_budget_problem();
      return;
    }
  }
  // The last kTail octets, however the archive was fed.
  const std::string_view t = std::string_view(tail_).substr(tail_.size() - std::min(tail_.size(), kTail));
  const std::size_t eocd = find_back(t, "PK\x05\x06", t.size() > 22 + 65535 ? t.size() - 22 - 65535 : 0, t.size(), 22);
  if (eocd == std::string_view::npos) return;  // no ZIP archive: no reader opens it
  std::uint64_t entries = little_endian(t, eocd + 10, 2);
  std::uint64_t size = little_endian(t, eocd + 12, 4);
  std::size_t end = eocd;
  // Zip64: the locator right before the end record, the Zip64 end record
  // before it; needed when a field of the end record is all ones, and there
  // in an archive Info-ZIP wrote from a pipe whatever the sizes.
  const bool locator = eocd >= 20 && t.substr(eocd - 20, 4) == "PK\x06\x07";
  if (entries == 0xFFFF || size == 0xFFFFFFFF || little_endian(t, eocd + 16, 4) == 0xFFFFFFFF || locator) {
    if (!locator) {
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
  // Offsets in the directory count from the archive's start, which is
  // where the directory is less where it says it is (an Info-ZIP
  // self-extractor's stub moves it).
  const std::uint64_t stated = end == eocd ? little_endian(t, eocd + 16, 4) : little_endian(t, end + 48, 8);
  const std::uint64_t directory = fed_ - t.size() + (end - static_cast<std::size_t>(size));
  if (walker_ && stated > directory) {
    problem_ = "a ZIP archive whose central directory is not where its end record says";
    return;
  }
  read_directory(t.substr(end - static_cast<std::size_t>(size), static_cast<std::size_t>(size)), entries,
                 directory - stated, directory);
}

// APPNOTE 4.3.12: each entry a fixed part, its name, extra field and comment.
void ZipReader::read_directory(std::string_view d, std::uint64_t entries, std::uint64_t base, std::uint64_t directory) {
  for (std::uint64_t i = 0; i < entries; ++i) {
    if (d.size() < 46 || d.substr(0, 4) != "PK\x01\x02") {
      problem_ = "a ZIP central directory that does not parse";
      return;
    }
    const std::uint64_t flags = little_endian(d, 8, 2);
    const std::uint64_t method = little_endian(d, 10, 2);
    const auto crc = static_cast<std::uint32_t>(little_endian(d, 16, 4));
    std::uint64_t compressed = little_endian(d, 20, 4);
    std::uint64_t size = little_endian(d, 24, 4);
    std::uint64_t offset = little_endian(d, 42, 4);
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
    const std::size_t index = names_.size();
    names_.push_back(name);
    bool named = archive_name(name);
    // 4.6.9: the Info-ZIP Unicode Path extra field (0x7075): version, CRC, UTF-8 name.
    while (extra.size() >= 4) {
      const std::uint64_t id = little_endian(extra, 0, 2);
      const std::size_t length = std::min<std::size_t>(static_cast<std::size_t>(little_endian(extra, 2, 2)), extra.size() - 4);
      if (id == 0x7075 && length > 5) {
        std::string unicode = to_utf8("UTF-8", extra.substr(4 + 5, length - 5));
        named = named || archive_name(unicode);
        if (unicode != name) names_.push_back(std::move(unicode));
      }
      // 4.5.3: Zip64 extended information, the fields the entry left at all ones, in this order.
      if (id == 1) {
        std::size_t at = 4;
        for (std::uint64_t* field : {&size, &compressed, &offset}) {
          if (*field != 0xFFFFFFFF) continue;
          if (at + 8 > 4 + length) break;
          *field = little_endian(extra, at, 8);
          at += 8;
        }
      }
      extra.remove_prefix(4 + length);
    }
    if (!walker_) continue;
    // Its local header where the directory says, under the same name, with
    // as much data: 7-Zip lists the local headers when they disagree.
    WalkedFile* walked = walker_->at(base + offset);
    if (walked == nullptr || walked->listed || walked->name != raw || !walked->ended || walked->compressed != compressed) {
      problem_ = kDisagree;
      return;
    }
    walked->listed = true;
    if (!named || name.ends_with('/')) continue;
    // A file named as an archive: read when stored or deflated (by the local
    // header as by the directory) and it came to the size and CRC-32 the
    // directory gives; else not opened.
    if ((flags & 1) != 0 || (method != 0 && method != 8) || !walked->reader) {
      inners_.push_back(InnerArchive{index, nullptr});
      continue;
    }
    if (!walked->whole || walked->crc != crc || walked->size != size) {
      problem_ = "a ZIP archive whose file data does not match its central directory";
      return;
    }
    inners_.push_back(InnerArchive{index, std::move(walked->reader)});
  }
  if (!walker_) return;
  // No local header between the archive's start and its directory that
  // the directory leaves out (one no longer kept there could be).
  if (walker_->dropped_from(base)) {
    problem_ = kDisagree;
    return;
  }
  for (const WalkedFile& f : walker_->files()) {
    if (!f.listed && f.offset >= base && f.offset < directory) {
      problem_ = kDisagree;
      return;
    }
  }
}

}  // namespace postern::mime
