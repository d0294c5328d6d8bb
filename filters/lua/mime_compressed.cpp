// Compressed files; see mime_compressed.h. Each format's library decodes a
// piece of input into 64 KiB pieces of output, handed on until no more is
// needed; concatenated members (gzip, bzip2) and streams (xz, zstd frames)
// are read as one file, as gzip -d, bzip2 -d, xz -d and zstd -d read them.
#include "filters/lua/mime_compressed.h"

#include <bzlib.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <functional>

#include "filters/lua/mime.h"
#include "filters/lua/mime_nested.h"
#include "filters/text/ascii.h"
#include "filters/text/utf8.h"

namespace postern::mime {
namespace {

constexpr std::size_t kPiece = 64 * 1024;
constexpr std::size_t kInputBlock = 4096;  // compressed octets a decoder is given at once
// Memory the xz and zstd decoders may take: xz -9 needs 65 MiB; zstd's window
// up to 2^26 (its levels up to 19 use at most 2^23).
constexpr std::uint64_t kXzMemory = 80 * 1024 * 1024;
constexpr int kZstdWindowLog = 26;

enum class Format { kNone, kGzip, kBzip2, kXz, kZstd };

// Formats 7-Zip or libarchive open that postern does not decompress: a file
// in one could be anything.
const char* unread_format(std::string_view magic) {
  if (magic.starts_with("\x1F\x9D")) return "compress (.Z)";
  if (magic.starts_with("LZIP")) return "lzip";
  if (magic.starts_with("\x04\x22\x4D\x18")) return "LZ4";
  if (magic.starts_with(std::string_view("\x5D\x00\x00", 3))) return "LZMA";
  return nullptr;
}

Format format_of(std::string_view magic) {
  if (magic.starts_with("\x1F\x8B")) return Format::kGzip;
  if (magic.size() >= 4 && magic.starts_with("BZh") && magic[3] >= '1' && magic[3] <= '9') return Format::kBzip2;
  if (magic.starts_with(std::string_view("\xFD" "7zXZ\x00", 6))) return Format::kXz;
  if (magic.starts_with("\x28\xB5\x2F\xFD")) return Format::kZstd;
  return Format::kNone;
}

// The compressed file's name without its suffix, as 7-Zip names what it
// holds: "report.pdf.gz" -> "report.pdf", "x.tgz" -> "x.tar".
std::string inner_name(std::string_view name) {
  while (!name.empty() && (name.back() == '.' || ascii::is_space(name.back()))) name.remove_suffix(1);
  const std::string lower = ascii::to_lower(name);
  for (std::string_view suffix : {".gz", ".gzip", ".z", ".bz2", ".bz", ".xz", ".zst", ".zstd"}) {
    if (lower.ends_with(suffix) && lower.size() > suffix.size()) return std::string(name.substr(0, name.size() - suffix.size()));
  }
  for (std::string_view suffix : {".tgz", ".taz", ".tbz", ".tbz2", ".txz", ".tzst"}) {
    if (lower.ends_with(suffix) && lower.size() > suffix.size()) {
      return std::string(name.substr(0, name.size() - suffix.size())) + ".tar";
    }
  }
  return std::string(name);
}

}  // namespace

std::size_t decompression_budget(std::size_t message_size) {
  const std::size_t scaled = message_size > kMaxDecompressed / kDecompressedFactor ? kMaxDecompressed
                                                                                   : message_size * kDecompressedFactor;
  return std::clamp(scaled, kMinDecompressed, kMaxDecompressed);
}

std::string decompression_budget_problem() {
  return "compressed files that expand past what the message may (" + std::to_string(kDecompressedFactor) +
         " times its size, at least " + std::to_string(kMinDecompressed >> 20) + " MiB, at most " +
         std::to_string(kMaxDecompressed >> 20) + " MiB)";
}

// One format's decoder. feed() decodes all of `in`, handing output on in
// pieces to `sink` until it says no more is needed; false when the input
// does not decode (or the decoder cannot start).
class CompressedReader::Decoder {
 public:
  using Sink = std::function<bool(std::string_view)>;
  virtual ~Decoder() = default;
  virtual bool feed(std::string_view in, const Sink& sink) = 0;
  // The file name the stream stores (gzip's), into `name`, empty when none;
  // false when it is longer than kMaxArchiveName, for it was not read whole.
  virtual bool file_name(std::string& name) const {
    name.clear();
    return true;
  }

 protected:
  std::array<char, kPiece> out_{};
};

namespace {

class GzipDecoder final : public CompressedReader::Decoder {
 public:
  GzipDecoder() {
    ok_ = inflateInit2(&z_, 16 + MAX_WBITS) == Z_OK;
    head_.name = reinterpret_cast<Bytef*>(name_.data());
    head_.name_max = static_cast<uInt>(name_.size() - 1);
    if (ok_) inflateGetHeader(&z_, &head_);
  }
  ~GzipDecoder() override {
    if (ok_) inflateEnd(&z_);
  }
  bool feed(std::string_view in, const Sink& sink) override {
    if (!ok_) return false;
    z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
    z_.avail_in = static_cast<uInt>(in.size());
    // On while input is left, or the last piece of output filled the buffer
    // (more may be waiting inside the decoder).
    for (bool full = false; (z_.avail_in > 0 || full) && !ended_;) {
      if (member_ended_) {
        if (z_.avail_in == 0) break;
        // Another member, or trailing octets gzip -d ignores.
        if (z_.next_in[0] != 0x1F) return ended_ = true;
        inflateReset(&z_);
        member_ended_ = false;
      }
      z_.next_out = reinterpret_cast<Bytef*>(out_.data());
      z_.avail_out = static_cast<uInt>(out_.size());
      const int r = inflate(&z_, Z_NO_FLUSH);
      // What came out before an error is handed on first, however the input was split.
      const std::size_t n = out_.size() - z_.avail_out;
      if (n > 0 && !sink(std::string_view(out_.data(), n))) return true;
      if (r != Z_OK && r != Z_STREAM_END && r != Z_BUF_ERROR) return false;
      full = n == out_.size();
      if (r == Z_STREAM_END) member_ended_ = true;
      else if (n == 0 && r == Z_BUF_ERROR) break;
    }
    return true;
  }
  bool file_name(std::string& name) const override {
    name.clear();
    if (head_.done != 1) return true;
    const std::string_view n(name_.data());
    if (n.size() >= kMaxArchiveName) return false;
    name = valid_utf8(n) ? std::string(n) : to_utf8("ISO-8859-1", n);  // RFC 1952: Latin-1
    return true;
  }

 private:
  z_stream z_{};
  gz_header head_{};
  std::array<char, kMaxArchiveName + 1> name_{};
  bool ok_ = false;
  bool member_ended_ = false;
  bool ended_ = false;
};

class Bzip2Decoder final : public CompressedReader::Decoder {
 public:
  Bzip2Decoder() { ok_ = BZ2_bzDecompressInit(&s_, 0, 0) == BZ_OK; }
  ~Bzip2Decoder() override {
    if (ok_) BZ2_bzDecompressEnd(&s_);
  }
  bool feed(std::string_view in, const Sink& sink) override {
    if (!ok_) return false;
    s_.next_in = const_cast<char*>(in.data());
    s_.avail_in = static_cast<unsigned>(in.size());
    for (bool full = false; (s_.avail_in > 0 || full) && !ended_;) {
      if (stream_ended_) {
        if (s_.avail_in == 0) break;
        if (s_.next_in[0] != 'B') return ended_ = true;  // trailing octets
        BZ2_bzDecompressEnd(&s_);
        char* next = s_.next_in;
        const unsigned avail = s_.avail_in;
        s_ = bz_stream{};
        ok_ = BZ2_bzDecompressInit(&s_, 0, 0) == BZ_OK;
        if (!ok_) return false;
        s_.next_in = next;
        s_.avail_in = avail;
        stream_ended_ = false;
      }
      s_.next_out = out_.data();
      s_.avail_out = static_cast<unsigned>(out_.size());
      const unsigned before = s_.avail_in;
      const int r = BZ2_bzDecompress(&s_);
      const std::size_t n = out_.size() - s_.avail_out;
      if (n > 0 && !sink(std::string_view(out_.data(), n))) return true;
      if (r != BZ_OK && r != BZ_STREAM_END) return false;
      full = n == out_.size();
      if (r == BZ_STREAM_END) stream_ended_ = true;
      else if (n == 0 && s_.avail_in == before) break;  // no progress: input spent
    }
    return true;
  }

 private:
  bz_stream s_{};
  bool ok_ = false;
  bool stream_ended_ = false;
  bool ended_ = false;
};

class XzDecoder final : public CompressedReader::Decoder {
 public:
  XzDecoder() { ok_ = lzma_stream_decoder(&s_, kXzMemory, LZMA_CONCATENATED) == LZMA_OK; }
  ~XzDecoder() override { lzma_end(&s_); }
  bool feed(std::string_view in, const Sink& sink) override {
    if (!ok_) return false;
    s_.next_in = reinterpret_cast<const std::uint8_t*>(in.data());
    s_.avail_in = in.size();
    for (bool full = false; s_.avail_in > 0 || full;) {
      s_.next_out = reinterpret_cast<std::uint8_t*>(out_.data());
      s_.avail_out = out_.size();
      const std::size_t before = s_.avail_in;
      const lzma_ret r = lzma_code(&s_, LZMA_RUN);
      const std::size_t n = out_.size() - s_.avail_out;
      if (n > 0 && !sink(std::string_view(out_.data(), n))) return true;
      if (r != LZMA_OK && r != LZMA_STREAM_END && r != LZMA_BUF_ERROR) return false;
      full = n == out_.size();
      if (r != LZMA_OK || (n == 0 && s_.avail_in == before)) break;
    }
    return true;
  }

 private:
  lzma_stream s_ = LZMA_STREAM_INIT;
  bool ok_ = false;
};

class ZstdDecoder final : public CompressedReader::Decoder {
 public:
  ZstdDecoder() : d_(ZSTD_createDStream()) {
    if (d_) ZSTD_DCtx_setParameter(d_, ZSTD_d_windowLogMax, kZstdWindowLog);
  }
  ~ZstdDecoder() override { ZSTD_freeDStream(d_); }
  bool feed(std::string_view in, const Sink& sink) override {
    if (!d_) return false;
    ZSTD_inBuffer input{in.data(), in.size(), 0};
    for (bool full = false; input.pos < input.size || full;) {
      ZSTD_outBuffer output{out_.data(), out_.size(), 0};
      const std::size_t before = input.pos;
      const std::size_t r = ZSTD_decompressStream(d_, &output, &input);
      if (output.pos > 0 && !sink(std::string_view(out_.data(), output.pos))) return true;
      if (ZSTD_isError(r)) return false;
      full = output.pos == out_.size();
      if (output.pos == 0 && input.pos == before) break;
    }
    return true;
  }

 private:
  ZSTD_DStream* d_;
};

const char* format_name(Format f) {
  switch (f) {
    case Format::kGzip: return "gzip";
    case Format::kBzip2: return "bzip2";
    case Format::kXz: return "xz";
    case Format::kZstd: return "zstd";
    case Format::kNone: break;
  }
  return "";
}

}  // namespace

CompressedReader::CompressedReader(std::string name, std::size_t* budget, OpenNested open)
    : name_(std::move(name)), budget_(budget), open_(std::move(open)), tar_(open_) {}

CompressedReader::~CompressedReader() = default;

void CompressedReader::fail(std::string why) {
  if (problem_.empty()) problem_ = std::move(why);
  done_ = true;
}

const char* CompressedReader::encoding() const {
  if (tar_.is_tar()) return "x-tar";
  switch (format_of(magic_)) {
    case Format::kGzip: return "x-gzip";
    case Format::kBzip2: return "x-bzip2";
    case Format::kXz: return "x-xz";
    case Format::kZstd: return "x-zstd";
    case Format::kNone: break;
  }
  return "";
}

void CompressedReader::start(std::string_view magic) {
  known_ = true;
  switch (format_of(magic)) {
    case Format::kGzip: decoder_ = std::make_unique<GzipDecoder>(); break;
    case Format::kBzip2: decoder_ = std::make_unique<Bzip2Decoder>(); break;
    case Format::kXz: decoder_ = std::make_unique<XzDecoder>(); break;
    case Format::kZstd: decoder_ = std::make_unique<ZstdDecoder>(); break;
    case Format::kNone:
      if (const char* unread = unread_format(magic)) fail(std::string("a ") + unread + " file, which postern does not decompress");
      done_ = true;  // not compressed: nothing opens it as such
      break;
  }
}

// The input goes to the decoder in blocks of kInputBlock octets, whatever
// pieces it comes in: a decoder may find a broken stream at a different
// octet depending on how much input it has at once, and the names read must
// not depend on how the message was split.
void CompressedReader::feed(std::string_view data) {
  if (done_ || data.empty()) return;
  if (!known_) {
    // The magic numbers are at most 6 octets.
    const std::size_t take = std::min<std::size_t>(6 - magic_.size(), data.size());
    magic_.append(data.substr(0, take));
    data.remove_prefix(take);
    if (magic_.size() < 6) return;
    start(magic_);
    if (done_) return;
    pending_ = magic_;
  }
  while (!done_ && pending_.size() + data.size() >= kInputBlock) {
    if (pending_.empty()) {
      decode(data.substr(0, kInputBlock));
      data.remove_prefix(kInputBlock);
      continue;
    }
    const std::size_t take = kInputBlock - pending_.size();
    pending_.append(data.substr(0, take));
    data.remove_prefix(take);
    decode(pending_);
    pending_.clear();
  }
  if (!done_) pending_.append(data);
}

void CompressedReader::decode(std::string_view block) {
  if (!decoder_->feed(block, [this](std::string_view out) { return decompressed(out); }) && !done_) {
    fail(std::string("a ") + format_name(format_of(magic_)) + " file that does not decompress");
  }
}

// Decompressed octets: to the tar reader, while they could be a tar archive
// that has not ended.
bool CompressedReader::decompressed(std::string_view out) {
  if (done_) return false;
  if (out.size() > *budget_) {
    // The octets within the budget are read, so the cut falls at the same
    // octet however the output came in pieces.
    if (!nested_) tar_.feed(out.substr(0, *budget_));
    *budget_ = 0;
    over_budget_ = true;
    fail(decompression_budget_problem());
    return false;
  }
  *budget_ -= out.size();
  out_ += out.size();
  if (nested_) {
    nested_->feed(out);
    return true;
  }
  tar_.feed(out);
  if (open_ && !decided_) head_.append(out);
  // 512 octets tell a tar archive; one that ended needs no more. Anything
  // else needs no more either, unless it is named as an archive: then it
  // is read on to its end.
  if (!tar_.problem().empty() || (tar_.is_tar() && tar_.ended())) {
    done_ = true;
    return false;
  }
  if (!tar_.is_tar() && (out_ >= 512 || tar_.ended()) && !decide()) {
    done_ = true;
    return false;
  }
  return true;
}

// Once the decompressed file is known to be no tar archive: it is read by a
// nested reader from here on when its name, stored or derived, is an
// archive's (given what was decompressed so far). False when it is not.
bool CompressedReader::decide() {
  if (decided_) return nested_ != nullptr;
  decided_ = true;
  if (!open_) return false;
  std::string stored;
  if (decoder_->file_name(stored) && archive_name(stored)) nested_name_ = stored;
  else if (const std::string derived = inner_name(name_); archive_name(derived)) nested_name_ = derived;
  if (!nested_name_.empty()) nested_ = open_(nested_name_);
  if (nested_) nested_->feed(head_);
  head_.clear();
  head_.shrink_to_fit();
  return nested_ != nullptr;
}

void CompressedReader::finish() {
  if (!known_ && !magic_.empty()) {
    start(magic_);
    pending_ = magic_;
  }
  if (decoder_ && !done_ && !pending_.empty()) decode(pending_);
  pending_.clear();
  if (!decoder_) return;
  tar_.finish();
  if (!tar_.problem().empty()) return fail(tar_.problem());
  if (!problem_.empty()) return;
  if (tar_.is_tar()) {
    names_ = tar_.names();
    return;
  }
  // Less than 512 octets, ended: no tar archive, perhaps a small archive.
  if (!decided_) decide();
  std::string stored;
  if (!decoder_->file_name(stored)) return fail("a gzip file whose stored name is longer than 4096 octets");
  const std::string derived = inner_name(name_);
  if (!stored.empty()) names_.push_back(stored);
  if (!derived.empty() && derived != stored) names_.push_back(derived);
  if (!nested_name_.empty()) {
    if (nested_) nested_->finish();
    const auto named = std::find(names_.begin(), names_.end(), nested_name_);
    inners_.push_back(InnerArchive{static_cast<std::size_t>(named - names_.begin()), std::move(nested_)});
  }
}

}  // namespace postern::mime
