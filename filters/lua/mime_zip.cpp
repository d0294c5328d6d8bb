// ZIP file names; see mime_zip.h. The end of central directory record (and
// for Zip64 its locator and the Zip64 end record) gives the directory's size
// and entry count; the directory is taken to end where the end records
// start, as Info-ZIP does, so data put before the archive (a self-extractor's
// stub) does not move it.
#include "filters/lua/mime_zip.h"

#include <zlib.h>

#include <algorithm>

#include "filters/lua/mime.h"
#include "filters/lua/mime_binary.h"
#include "filters/lua/mime_compressed.h"

namespace postern::mime {
namespace {

// Octets before the first local header looked through (a self-extractor's
// stub), as for RAR and 7z.
constexpr std::uint64_t kStub = 2 * 1024 * 1024;
constexpr std::size_t kPiece = 64 * 1024;     // octets inflated at a time
constexpr std::size_t kInputBlock = 4096;     // deflated octets given to zlib at a time

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

// A file named as an archive, read from its local header on.
struct Walked {
  std::uint64_t offset = 0;      // of its local header in the stream
  std::uint64_t compressed = 0;  // octets of its data
  std::uint64_t size = 0;        // octets they came to
  std::uint32_t crc = 0;         // CRC-32 of those
  bool whole = false;            // its data read to its end, a deflate stream to its end and no further
  std::unique_ptr<NestedArchive> reader;
};

}  // namespace

// Walks the local headers as the archive goes by (APPNOTE 4.3.7): a header,
// the file's data, and a data descriptor after it when flag bit 3 says the
// sizes were not known when the header was written. Such a file's data ends
// at the first descriptor (signed, as every writer signs it) whose size is
// that of the data before it. A file named as an archive, stored or
// deflated, goes to a reader opened for it. The walk stops at anything that
// is not a local header where one should be (the central directory, or a
// file whose end it cannot find); the central directory decides what counts.
class ZipReader::Walker {
 public:
  Walker(std::size_t* budget, OpenNested open) : budget_(budget), open_(std::move(open)) {}
  ~Walker() { end_inflate(); }
  Walker(const Walker&) = delete;
  Walker& operator=(const Walker&) = delete;

  void feed(std::string_view data) {
    if (state_ == State::kStopped) return;
    if (hold_.empty()) {
      run(data);
      hold_.assign(data);
    } else {
      hold_.append(data);
      std::string_view in = hold_;
      run(in);
      hold_ = std::string(in);
    }
  }

  void finish() {
    end_file();  // one cut short is not whole
    hold_.clear();
    state_ = State::kStopped;
  }

  // The file named as an archive whose local header is at `offset`, or null.
  Walked* at(std::uint64_t offset) {
    for (auto& w : walked_) {
      if (w.offset == offset) return &w;
    }
    return nullptr;
  }

  bool over_budget() const { return over_budget_; }

 private:
  enum class State { kSeek, kHeader, kSized, kUnsized, kStopped };

  void stop() {
    state_ = State::kStopped;
    end_file();
  }

  // Walks `in` as far as it can; what is left must be held for more.
  void run(std::string_view& in) {
    while (!in.empty() && state_ != State::kStopped) {
      switch (state_) {
        case State::kSeek: {
          const std::size_t p = in.find("PK\x03\x04");
          const std::size_t skip = p != std::string_view::npos ? p : in.size() - std::min<std::size_t>(in.size(), 3);
          at_ += skip;
          in.remove_prefix(skip);
          if (at_ > kStub) return stop();
          if (p == std::string_view::npos) return;
          state_ = State::kHeader;
          break;
        }
        case State::kHeader: {
          if (in.size() < 4) return;
          if (in.substr(0, 4) != "PK\x03\x04") return stop();  // the central directory, or a walk lost
          if (in.size() < 30) return;
          const std::size_t length = 30 + static_cast<std::size_t>(little_endian(in, 26, 2) + little_endian(in, 28, 2));
          if (in.size() < length) return;
          start_file(in.substr(0, length));
          at_ += length;
          in.remove_prefix(length);
          break;
        }
        case State::kSized: {
          const auto take = static_cast<std::size_t>(std::min<std::uint64_t>(left_, in.size()));
          data(in.substr(0, take));
          in.remove_prefix(take);
          at_ += take;
          left_ -= take;
          if (left_ == 0) {
            end_file();
            state_ = State::kHeader;
          }
          break;
        }
        case State::kUnsized:
          unsized(in);
          if (state_ == State::kUnsized) return;
          break;
        case State::kStopped: return;
      }
    }
  }

  // Data of unknown size: up to a descriptor "PK\x07\x08", CRC-32, then the
  // compressed and the uncompressed size in 4 octets each (8 with Zip64),
  // whose compressed size is that of the data before it.
  void unsized(std::string_view& in) {
    constexpr std::size_t kLongest = 24;
    std::size_t p = 0;
    while ((p = in.find("PK\x07\x08", p)) != std::string_view::npos && in.size() - p >= kLongest) {
      const std::uint64_t length = seen_ + p;
      const std::size_t descriptor = !zip64_ && little_endian(in, p + 8, 4) == length ? 16
                                     : zip64_ && little_endian(in, p + 8, 8) == length ? 24 : 0;
      if (descriptor != 0) {
        data(in.substr(0, p));
        in.remove_prefix(p + descriptor);
        at_ += p + descriptor;
        end_file();
        state_ = State::kHeader;
        return;
      }
      ++p;
    }
    // Data up to where a descriptor could start that is not all here yet.
    const std::size_t keep = std::min(in.size(), p != std::string_view::npos ? in.size() - p : kLongest - 1);
    data(in.substr(0, in.size() - keep));
    at_ += in.size() - keep;
    in.remove_prefix(in.size() - keep);
  }

  void start_file(std::string_view h) {
    const std::uint64_t flags = little_endian(h, 6, 2);
    const std::uint64_t method = little_endian(h, 8, 2);
    std::uint64_t compressed = little_endian(h, 18, 4);
    const std::uint64_t size = little_endian(h, 22, 4);
    const std::size_t name_length = static_cast<std::size_t>(little_endian(h, 26, 2));
    const std::string_view raw = h.substr(30, name_length);
    std::string_view extra = h.substr(30 + name_length);
    // 4.5.3: the Zip64 extra field; in a local header it holds both sizes.
    zip64_ = false;
    while (extra.size() >= 4) {
      const std::uint64_t id = little_endian(extra, 0, 2);
      const std::size_t length = std::min<std::size_t>(static_cast<std::size_t>(little_endian(extra, 2, 2)), extra.size() - 4);
      if (id == 1 && length >= 16) {
        zip64_ = true;
        if (compressed == 0xFFFFFFFF || size == 0xFFFFFFFF) compressed = little_endian(extra, 12, 8);
      }
      extra.remove_prefix(4 + length);
    }
    const bool descriptor = (flags & 8) != 0;
    seen_ = 0;
    method_ = static_cast<int>(method);
    if ((flags & 1) == 0 && (method == 0 || method == 8) && (descriptor || compressed > 0) &&
        walked_.size() < kMaxArchiveFiles && archive_name(raw)) {
      auto reader = open_(to_utf8((flags & 0x800) != 0 ? "UTF-8" : "CP437", raw));
      if (reader) {
        file_ = std::make_unique<Walked>();
        file_->offset = at_;
        file_->reader = std::move(reader);
        if (method == 8) {
          inflating_ = inflateInit2(&z_, -MAX_WBITS) == Z_OK;
          if (!inflating_) bad_ = true;
          if (!out_) out_ = std::make_unique<char[]>(kPiece);
        }
      }
    }
    if (descriptor) {
      state_ = State::kUnsized;
    } else if (compressed > 0) {
      left_ = compressed;
      state_ = State::kSized;
    } else {
      end_file();
      state_ = State::kHeader;
    }
  }

  // The file's data (`at_` is moved past it by the caller). Deflated data
  // goes to zlib in blocks of kInputBlock octets whatever pieces it comes
  // in, so that what a broken stream inflates to before zlib stops does not
  // depend on how the message was split (as in mime_compressed.cpp).
  void data(std::string_view piece) {
    seen_ += piece.size();
    if (!file_ || bad_ || piece.empty()) return;
    file_->compressed += piece.size();
    if (method_ == 0) return give(piece);
    while (!piece.empty() && !bad_) {
      if (pending_.empty() && piece.size() >= kInputBlock) {
        inflate_block(piece.substr(0, kInputBlock));
        piece.remove_prefix(kInputBlock);
        continue;
      }
      const std::size_t take = std::min(kInputBlock - pending_.size(), piece.size());
      pending_.append(piece.substr(0, take));
      piece.remove_prefix(take);
      if (pending_.size() == kInputBlock) {
        inflate_block(pending_);
        pending_.clear();
      }
    }
  }

  void inflate_block(std::string_view block) {
    if (stream_end_) {
      bad_ = true;  // data past the deflate stream's end
      return;
    }
    z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(block.data()));
    z_.avail_in = static_cast<uInt>(block.size());
    // On while input is left, or the last output filled the buffer (more
    // may be waiting inside zlib).
    for (bool full = false; (z_.avail_in > 0 || full) && !bad_ && !stream_end_;) {
      z_.next_out = reinterpret_cast<Bytef*>(out_.get());
      z_.avail_out = static_cast<uInt>(kPiece);
      const int r = inflate(&z_, Z_NO_FLUSH);
      const std::size_t n = kPiece - z_.avail_out;
      if (n > 0) give(std::string_view(out_.get(), n));
      if (r == Z_STREAM_END) stream_end_ = true;
      else if (r != Z_OK && r != Z_BUF_ERROR) bad_ = true;
      else if (n == 0 && r == Z_BUF_ERROR) break;
      full = n == kPiece;
    }
    if (z_.avail_in > 0) bad_ = true;  // data past the deflate stream's end, or zlib stuck
  }

  // The file's octets, decompressed within the message's budget (stored
  // ones are the message's own).
  void give(std::string_view out) {
    if (bad_) return;
    if (method_ != 0 && out.size() > *budget_) {
      *budget_ = 0;
      over_budget_ = true;
      bad_ = true;
      return;
    }
    if (method_ != 0) *budget_ -= out.size();
    file_->size += out.size();
    file_->crc = static_cast<std::uint32_t>(crc32_z(file_->crc, reinterpret_cast<const Bytef*>(out.data()), out.size()));
    file_->reader->feed(out);
  }

  void end_file() {
    if (file_ && !pending_.empty() && !bad_ && method_ == 8) inflate_block(pending_);
    pending_.clear();
    if (file_) {
      file_->whole = !bad_ && (method_ == 0 || stream_end_);
      file_->reader->finish();
      walked_.push_back(std::move(*file_));
      file_.reset();
    }
    end_inflate();
    bad_ = false;
    stream_end_ = false;
  }

  void end_inflate() {
    if (inflating_) inflateEnd(&z_);
    inflating_ = false;
    z_ = z_stream{};
  }

  std::size_t* budget_;
  OpenNested open_;
  State state_ = State::kSeek;
  std::string hold_;        // octets not yet walked past: a header, where a descriptor may start
  std::uint64_t at_ = 0;    // stream offset of the next octet to walk (after what is held)
  std::uint64_t left_ = 0;  // kSized: octets of data still to come
  std::uint64_t seen_ = 0;  // octets of the file's data so far
  bool zip64_ = false;      // its local header had a Zip64 extra field
  int method_ = 0;
  std::unique_ptr<Walked> file_;  // the file named as an archive going by
  bool bad_ = false;              // ... whose data did not inflate, or past its end
  z_stream z_{};
  bool inflating_ = false;
  bool stream_end_ = false;
  std::string pending_;           // deflated octets not yet a whole block
  std::unique_ptr<char[]> out_;  // inflated octets, once a file is inflated
  std::vector<Walked> walked_;
  bool over_budget_ = false;
};

ZipReader::ZipReader() = default;

ZipReader::ZipReader(std::size_t* budget, OpenNested open)
    : walker_(open ? std::make_unique<Walker>(budget, std::move(open)) : nullptr) {}

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
  if (walker_) {
    walker_->finish();
    if (walker_->over_budget()) {
      problem_ = decompression_budget_problem();
      return;
    }
  }
  // Offsets in the directory count from the archive's start, which is
  // where the directory is less where it says it is (an Info-ZIP
  // self-extractor's stub moves it).
  const std::uint64_t stated = end == eocd ? little_endian(t, eocd + 16, 4) : little_endian(t, end + 48, 8);
  const std::uint64_t at = fed_ - t.size() + (end - static_cast<std::size_t>(size));
  const auto base = static_cast<std::int64_t>(at - stated);
  read_directory(t.substr(end - static_cast<std::size_t>(size), static_cast<std::size_t>(size)), entries, base);
}

// APPNOTE 4.3.12: each entry a fixed part, its name, extra field and comment.
void ZipReader::read_directory(std::string_view d, std::uint64_t entries, std::int64_t base) {
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
    // A file named as an archive (an empty one hides nothing): read when
    // the walk found its data where the directory says, with its CRC-32.
    if (!walker_ || !named || size == 0 || name.ends_with('/')) continue;
    Walked* walked = (flags & 1) == 0 && (method == 0 || method == 8)
                         ? walker_->at(static_cast<std::uint64_t>(base + static_cast<std::int64_t>(offset)))
                         : nullptr;
    if (walked != nullptr && (!walked->whole || walked->crc != crc || walked->compressed != compressed ||
                              walked->size != size)) {
      problem_ = "a ZIP archive whose file data does not match its central directory";
      return;
    }
    inners_.push_back(InnerArchive{index, walked != nullptr ? std::move(walked->reader) : nullptr});
  }
}

}  // namespace postern::mime
