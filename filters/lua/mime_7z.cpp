// 7z file names; see mime_7z.h. The 32-octet start header after the
// signature gives the header's offset and size; the header is either the
// plain Header (kHeader) or an EncodedHeader (kEncodedHeader): streams info
// naming a packed stream (just before it, as 7-Zip writes it) and the folder
// that unpacks it into the Header. The Header's FilesInfo holds the names,
// UTF-16LE, each ending in a NUL. Numbers are 7z's variable-length UINT64:
// the first octet's leading one bits count the octets that follow.
#include "filters/lua/mime_7z.h"

#include <lzma.h>
#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <memory>

#include "filters/lua/mime.h"
#include "filters/lua/mime_binary.h"
#include "filters/lua/mime_compressed.h"

namespace postern::mime {
namespace {

constexpr std::string_view kSignature("7z\xBC\xAF\x27\x1C", 6);
// What is kept of the end: the header and the packed stream before it.
constexpr std::size_t kTail = 2 * kMaxSevenZipHeader;
// Pack streams an archive may have: a folder each at most (7-Zip's BCJ2
// folders have four) for each of at most kMaxArchiveFiles files.
constexpr std::uint64_t kMaxPackStreams = 4 * kMaxArchiveFiles;
constexpr std::uint64_t kMaxCoders = 64;  // coders and streams of one folder

// Property IDs (7zFormat.txt).
enum : std::uint64_t {
  kEnd = 0x00, kHeader = 0x01, kArchiveProperties = 0x02, kAdditionalStreamsInfo = 0x03,
  kMainStreamsInfo = 0x04, kFilesInfo = 0x05, kPackInfo = 0x06, kUnpackInfo = 0x07,
  kSubStreamsInfo = 0x08, kSize = 0x09, kCrc = 0x0A, kFolder = 0x0B, kCodersUnpackSize = 0x0C,
  kNumUnpackStream = 0x0D, kName = 0x11, kEncodedHeader = 0x17,
};

// A reading position in a header; every read checks the octets are there,
// and once one fails all do (`ok` false).
struct Cursor {
  std::string_view d;
  std::size_t at = 0;
  bool ok = true;

  std::size_t left() const { return d.size() - at; }
  bool octet(unsigned& v) {
    if (!ok || at >= d.size()) return ok = false;
    v = static_cast<unsigned char>(d[at++]);
    return true;
  }
  bool number(std::uint64_t& v) {
    unsigned first = 0;
    if (!octet(first)) return false;
    int extra = 0;
    while (extra < 8 && (first & (0x80u >> extra)) != 0) ++extra;
    if (left() < static_cast<std::size_t>(extra)) return ok = false;
    v = little_endian(d, at, extra);
    at += static_cast<std::size_t>(extra);
    if (extra < 8) v |= static_cast<std::uint64_t>(first & ((0x80u >> extra) - 1)) << (8 * extra);
    return true;
  }
  bool take(std::uint64_t n, std::string_view& out) {
    if (!ok || n > left()) return ok = false;
    out = d.substr(at, static_cast<std::size_t>(n));
    at += static_cast<std::size_t>(n);
    return true;
  }
  bool skip(std::uint64_t n) {
    std::string_view ignored;
    return take(n, ignored);
  }
  // A count of things each at least `each` octets long: no more than could
  // follow, so a hostile count cannot make a loop or an allocation large.
  bool count(std::uint64_t& n, std::size_t each) {
    if (!number(n)) return false;
    if (n > left() / each) return ok = false;
    return true;
  }
};

struct Coder {
  std::string_view id;
  std::string_view properties;
  std::uint64_t in = 1, out = 1;
};

struct Folder {
  std::vector<Coder> coders;
  std::vector<std::uint64_t> unpack_sizes;  // one an output stream
  bool crc = false;                         // its unpacked CRC given
};

struct StreamsInfo {
  std::uint64_t pack_pos = 0;
  std::vector<std::uint64_t> pack_sizes;
  std::vector<Folder> folders;
};

// Digests for `n` items: which are defined (all, or a bit vector), then a
// CRC32 each defined.
bool digests(Cursor& c, std::uint64_t n, std::vector<bool>* defined) {
  unsigned all = 0;
  if (!c.octet(all)) return false;
  std::uint64_t count = n;
  if (defined) defined->assign(static_cast<std::size_t>(n), all != 0);
  if (all == 0) {
    std::string_view bits;
    if (!c.take((n + 7) / 8, bits)) return false;
    count = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      const bool on = (static_cast<unsigned char>(bits[i / 8]) & (0x80u >> (i % 8))) != 0;
      count += on;
      if (defined) (*defined)[static_cast<std::size_t>(i)] = on;
    }
  }
  return count <= c.left() / 4 && c.skip(4 * count);
}

bool folder(Cursor& c, Folder& f) {
  std::uint64_t coders = 0, in = 0, out = 0;
  if (!c.count(coders, 2) || coders == 0 || coders > kMaxCoders) return c.ok = false;
  for (std::uint64_t i = 0; i < coders; ++i) {
    unsigned flags = 0;
    Coder coder;
    // Bit 7: alternative methods, which no 7-Zip writes or reads.
    if (!c.octet(flags) || (flags & 0x80) != 0 || !c.take(flags & 0x0F, coder.id)) return c.ok = false;
    if ((flags & 0x10) != 0 && (!c.number(coder.in) || !c.number(coder.out))) return false;
    if (coder.in > kMaxCoders || coder.out > kMaxCoders) return c.ok = false;
    std::uint64_t size = 0;
    if ((flags & 0x20) != 0 && (!c.number(size) || !c.take(size, coder.properties))) return false;
    in += coder.in;
    out += coder.out;
    f.coders.push_back(coder);
  }
  if (out == 0 || in + 1 < out) return c.ok = false;
  for (std::uint64_t i = 0; i + 1 < out; ++i) {  // bind pairs: in index, out index
    std::uint64_t a = 0, b = 0;
    if (!c.number(a) || !c.number(b)) return false;
  }
  const std::uint64_t packed = in - (out - 1);
  for (std::uint64_t i = 0; packed > 1 && i < packed; ++i) {
    std::uint64_t index = 0;
    if (!c.number(index)) return false;
  }
  f.unpack_sizes.resize(static_cast<std::size_t>(out));
  return true;
}

bool streams_info(Cursor& c, StreamsInfo& s) {
  std::uint64_t id = 0;
  if (!c.number(id)) return false;
  if (id == kPackInfo) {
    std::uint64_t n = 0;
    if (!c.number(s.pack_pos) || !c.count(n, 1) || n > kMaxPackStreams || !c.number(id)) return c.ok = false;
    if (id == kSize) {
      s.pack_sizes.resize(static_cast<std::size_t>(n));
      for (auto& size : s.pack_sizes) c.number(size);
      if (!c.number(id)) return false;
    }
    if (id == kCrc && (!digests(c, n, nullptr) || !c.number(id))) return false;
    if (id != kEnd || !c.number(id)) return c.ok = false;
  }
  if (id == kUnpackInfo) {
    std::uint64_t n = 0;
    unsigned external = 0;
    if (!c.number(id) || id != kFolder || !c.count(n, 2) || n > kMaxPackStreams || !c.octet(external) || external != 0) {
      return c.ok = false;
    }
    s.folders.resize(static_cast<std::size_t>(n));
    for (Folder& f : s.folders) {
      if (!folder(c, f)) return false;
    }
    if (!c.number(id) || id != kCodersUnpackSize) return c.ok = false;
    for (Folder& f : s.folders) {
      for (auto& size : f.unpack_sizes) c.number(size);
    }
    if (!c.number(id)) return false;
    if (id == kCrc) {
      std::vector<bool> defined;
      if (!digests(c, n, &defined) || !c.number(id)) return false;
      for (std::size_t i = 0; i < s.folders.size(); ++i) s.folders[i].crc = defined[i];
    }
    if (id != kEnd || !c.number(id)) return c.ok = false;
  }
  if (id == kSubStreamsInfo) {
    // As 7-Zip's ReadSubStreamsInfo reads it: the streams in each folder,
    // other properties skipped by their size, up to the sizes, the digests
    // or the end; then digests, other properties skipped, up to the end.
    std::vector<std::uint64_t> streams(s.folders.size(), 1);
    for (;;) {
      if (!c.number(id)) return false;
      if (id == kNumUnpackStream) {
        for (auto& n : streams) {
          if (!c.count(n, 1)) return false;
        }
        continue;
      }
      if (id == kCrc || id == kSize || id == kEnd) break;
      std::uint64_t size = 0;
      if (!c.number(size) || !c.skip(size)) return false;
    }
    if (id == kSize) {
      for (std::uint64_t n : streams) {
        for (std::uint64_t i = 1; i < n; ++i) {
          std::uint64_t size = 0;
          if (!c.number(size)) return false;
        }
      }
      if (!c.number(id)) return false;
    }
    // The digests of the streams whose CRC the folder's does not give.
    std::uint64_t unknown = 0;
    for (std::size_t i = 0; i < streams.size(); ++i) unknown += streams[i] == 1 && s.folders[i].crc ? 0 : streams[i];
    while (id != kEnd) {
      std::uint64_t size = 0;
      if (id == kCrc ? !digests(c, unknown, nullptr) : !c.number(size) || !c.skip(size)) return false;
      if (!c.number(id)) return false;
    }
    if (!c.number(id)) return false;
  }
  if (id != kEnd) return c.ok = false;
  return c.ok;
}

// Unpacks an LZMA or LZMA2 stream to exactly `size` octets; false when it
// does not (a stream cut short or corrupt). The dictionary is never larger
// than the output, whatever the properties ask for.
bool unpack_lzma(std::string_view packed, std::string_view properties, bool lzma2, std::uint64_t size, std::string& out) {
  lzma_filter filters[2] = {{lzma2 ? LZMA_FILTER_LZMA2 : LZMA_FILTER_LZMA1, nullptr}, {LZMA_VLI_UNKNOWN, nullptr}};
  if (lzma_properties_decode(&filters[0], nullptr, reinterpret_cast<const std::uint8_t*>(properties.data()),
                             properties.size()) != LZMA_OK) {
    return false;
  }
  std::unique_ptr<lzma_options_lzma, decltype(&std::free)> options(static_cast<lzma_options_lzma*>(filters[0].options),
                                                                   &std::free);
  options->dict_size = static_cast<std::uint32_t>(
      std::clamp<std::uint64_t>(size, LZMA_DICT_SIZE_MIN, std::max<std::uint64_t>(options->dict_size, LZMA_DICT_SIZE_MIN)));
  lzma_stream s = LZMA_STREAM_INIT;
  if (lzma_raw_decoder(&s, filters) != LZMA_OK) return false;
  out.resize(static_cast<std::size_t>(size));
  s.next_in = reinterpret_cast<const std::uint8_t*>(packed.data());
  s.avail_in = packed.size();
  s.next_out = reinterpret_cast<std::uint8_t*>(out.data());
  s.avail_out = out.size();
  lzma_ret r = LZMA_OK;
  while (r == LZMA_OK && s.avail_out > 0) {
    const std::size_t before = s.avail_in + s.avail_out;
    r = lzma_code(&s, LZMA_RUN);
    if (s.avail_in + s.avail_out == before) break;  // no progress: the input is spent
  }
  const bool whole = s.avail_out == 0 && (r == LZMA_OK || r == LZMA_STREAM_END);
  lzma_end(&s);
  return whole;
}

}  // namespace

void SevenZipReader::fail(std::string why) {
  if (problem_.empty()) problem_ = std::move(why);
}

void SevenZipReader::feed(std::string_view data) {
  if (data.empty()) return;
  if (start_header_.size() < 32) scan(data, fed_);
  fed_ += data.size();
  if (data.size() >= kTail) {
    tail_.assign(data.substr(data.size() - kTail));
  } else {
    tail_.append(data);
    if (tail_.size() > 2 * kTail) tail_.erase(0, tail_.size() - kTail);
  }
}

// Looks for the signature and its start header in `data`, the archive's
// octets from `at` on. A start header whose CRC does not match is none
// (7-Zip does not open it): the search goes on from the octet after the
// signature's first, so a false signature in a stub hides no archive behind.
void SevenZipReader::scan(std::string_view data, std::uint64_t at) {
  while (!data.empty()) {
    if (start_ == kNone) {
      if (at > kMaxSevenZipPrefix + kSignature.size()) return;
      // A signature that starts in the last octets before `data`, then one within it.
      std::string across = carry_;
      across.append(data.substr(0, kSignature.size() - 1));
      std::size_t pos = across.find(kSignature);
      if (pos != std::string::npos && pos < carry_.size()) {
        start_ = at - carry_.size() + pos;
        start_header_ = carry_.substr(pos);
      } else if ((pos = data.find(kSignature)) != std::string_view::npos) {
        start_ = at + pos;
        data.remove_prefix(pos);
        at += pos;
      } else {
        carry_.append(data.substr(data.size() - std::min(data.size(), kSignature.size() - 1)));
        carry_.erase(0, carry_.size() - std::min(carry_.size(), kSignature.size() - 1));
        return;
      }
      carry_.clear();
      if (start_ > kMaxSevenZipPrefix) {
        start_ = kNone;
        start_header_.clear();
        return;
      }
    }
    const std::size_t take = std::min(32 - start_header_.size(), data.size());
    start_header_.append(data.substr(0, take));
    data.remove_prefix(take);
    at += take;
    if (start_header_.size() < 32) return;
    const auto crc = static_cast<std::uint64_t>(
        crc32(0, reinterpret_cast<const Bytef*>(start_header_.data()) + 12, 20));
    if (crc == little_endian(start_header_, 8, 4)) return;
    // A start header left blank (an archive whose writing stopped): 7-Zip
    // looks for the header in the archive's last octets instead.
    if (std::all_of(start_header_.begin() + 8, start_header_.end(), [](char c) { return c == '\0'; }) &&
        (start_header_[6] != 0 || start_header_[7] != 0)) {
      blank_ = true;
      return;
    }
    const std::string again = start_header_.substr(1);
    const std::uint64_t again_at = start_ + 1;
    start_ = kNone;
    start_header_.clear();
    scan(again, again_at);  // 31 octets: it cannot complete a start header, so no deeper
  }
}

bool SevenZipReader::window(std::uint64_t at, std::uint64_t size, std::string_view& out) const {
  // The last kTail octets, however the archive was fed.
  const std::uint64_t kept_from = fed_ - std::min<std::uint64_t>(tail_.size(), kTail);
  if (at < kept_from || at > fed_ || size > fed_ - at) return false;
  out = std::string_view(tail_).substr(static_cast<std::size_t>(at - (fed_ - tail_.size())), static_cast<std::size_t>(size));
  return true;
}

void SevenZipReader::finish() {
  // No signature, or none followed by a start header: no reader opens it.
  if (start_ == kNone || start_header_.size() < 32) return;
  if (blank_) return fail("a 7z archive whose start header is blank");
  const std::string_view h = start_header_;
  if (h[6] != 0) return fail("a 7z archive of a format version postern does not read");
  const std::uint64_t offset = little_endian(h, 12, 8);
  const std::uint64_t size = little_endian(h, 20, 8);
  if (size == 0) return;  // an empty archive
  if (size > kMaxSevenZipHeader) return fail("a 7z archive whose header is larger than 1 MiB");
  const std::uint64_t base = start_ + 32;
  if (offset > fed_ || base + offset + size > fed_) return fail("a 7z archive cut short");
  std::string_view header;
  if (!window(base + offset, size, header)) return fail("a 7z archive whose header is not at its end");
  read_header(header, 0);
}

// The Header an EncodedHeader packs, into `plain`; false (a problem said)
// when it cannot be had.
bool SevenZipReader::unpack_header(std::string_view streams, std::string& plain) {
  Cursor c{streams};
  StreamsInfo s;
  if (!streams_info(c, s) || s.folders.empty() || s.pack_sizes.empty() || c.left() != 0) {
    fail("a 7z header that does not parse");
    return false;
  }
  const Folder& f = s.folders.front();
  const std::uint64_t packed_size = s.pack_sizes.front();
  const std::uint64_t size = f.unpack_sizes.back();
  // 7-Zip's -mhe=on: AES, then LZMA.
  if (std::any_of(f.coders.begin(), f.coders.end(),
                  [](const Coder& coder) { return coder.id == std::string_view("\x06\xF1\x07\x01", 4); })) {
    fail("a 7z archive whose file names are encrypted");
    return false;
  }
  if (f.coders.size() != 1 || f.coders[0].in != 1 || f.coders[0].out != 1) {
    fail("a 7z header packed with a method postern does not read");
    return false;
  }
  const Coder& coder = f.coders[0];
  std::string_view packed;
  if (packed_size > kMaxSevenZipHeader) {
    fail("a 7z archive whose header is larger than 1 MiB");
  } else if (size > kMaxSevenZipNames) {
    fail("a 7z archive whose header unpacks to more than 8 MiB");
  } else if (budget_ && size > *budget_) {
    over_budget_ = true;
    fail(decompression_budget_problem());
  } else if (s.pack_pos > fed_ || !window(start_ + 32 + s.pack_pos, packed_size, packed)) {
    fail("a 7z archive whose header is not at its end");
  } else if (coder.id == std::string_view("\x00", 1)) {
    if (packed_size == size) plain.assign(packed);
    else fail("a 7z header that does not parse");
  } else if (coder.id == std::string_view("\x03\x01\x01", 3) || coder.id == std::string_view("\x21", 1)) {
    if (budget_) *budget_ -= static_cast<std::size_t>(size);
    if (!unpack_lzma(packed, coder.properties, coder.id.size() == 1, size, plain)) fail("a 7z header that does not unpack");
  } else {
    fail("a 7z header packed with a method postern does not read");
  }
  return problem_.empty();
}

void SevenZipReader::read_header(std::string_view header, int depth) {
  Cursor c{header};
  std::uint64_t id = 0;
  c.number(id);
  if (id == kEncodedHeader) {
    // The Header, packed in the first folder's stream; 7-Zip reads no
    // further EncodedHeader in it.
    if (depth > 0) return fail("a 7z header packed twice");
    std::string plain;
    if (!unpack_header(header.substr(c.at), plain)) return;
    return read_header(plain, depth + 1);
  }
  if (id != kHeader) return fail("a 7z header that does not parse");
  c.number(id);
  if (id == kArchiveProperties) {
    std::uint64_t type = 0, size = 0;
    while (c.number(type) && type != kEnd && c.number(size) && c.skip(size)) {
    }
    c.number(id);
  }
  StreamsInfo ignored;
  if (id == kAdditionalStreamsInfo && streams_info(c, ignored)) c.number(id);
  if (id == kMainStreamsInfo && streams_info(c, ignored)) c.number(id);
  if (id == kFilesInfo) {
    std::uint64_t files = 0, type = 0;
    c.number(files);
    while (c.number(type) && type != kEnd) {
      std::uint64_t size = 0;
      std::string_view property;
      if (!c.number(size) || !c.take(size, property)) break;
      if (type != kName) continue;
      // Every name property is listed (7-Zip shows the last).
      if (files > kMaxArchiveFiles - std::min(kMaxArchiveFiles, names_.size())) {
        return fail("a 7z archive of more than " + std::to_string(kMaxArchiveFiles) + " files");
      }
      if (property.empty() || property[0] != 0) return fail("a 7z archive whose file names are stored elsewhere");
      property.remove_prefix(1);
      for (std::uint64_t i = 0; i < files; ++i) {
        std::size_t end = 0;
        while (end + 1 < property.size() && (property[end] != 0 || property[end + 1] != 0)) end += 2;
        if (end + 1 >= property.size()) return fail("a 7z header that does not parse");
        names_.push_back(to_utf8("UTF-16LE", property.substr(0, end)));
        property.remove_prefix(end + 2);
      }
    }
    c.number(id);
  }
  if (!c.ok || id != kEnd || c.left() != 0) {
    names_.clear();
    fail("a 7z header that does not parse");
  }
}

}  // namespace postern::mime
