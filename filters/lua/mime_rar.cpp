// RAR file names; see mime_rar.h. After the signature the archive is a
// sequence of blocks, each a header and then (when the header says so) data:
// a reader walks the headers and skips the data. RAR 4.x (technote of RAR
// 3.x-4.x, "Rar!\x1A\x07\x00"): CRC (2), type (1), flags (2), size (2) of the
// whole header, then a data size when flag 0x8000 (a file header always has
// one, with its high half past flag 0x100). RAR 5.0 ("Rar!\x1A\x07\x01\x00"):
// CRC32, the header's size as a vint, then its type, flags and (flags 1, 2)
// the extra area's and the data's sizes as vints.
#include "filters/lua/mime_rar.h"

#include <algorithm>

#include "filters/lua/mime.h"
#include "filters/lua/mime_binary.h"

namespace postern::mime {
namespace {

constexpr std::string_view kSignature4("Rar!\x1A\x07\x00", 7);
constexpr std::string_view kSignature5("Rar!\x1A\x07\x01\x00", 8);

// A RAR 5.0 vint (7 bits an octet, low first, high bit: more) at `at`,
// advancing it; false when it runs past `data` or past 64 bits.
bool vint(std::string_view data, std::size_t& at, std::uint64_t& value) {
  value = 0;
  for (int shift = 0; shift < 64 && at < data.size(); shift += 7) {
    const auto octet = static_cast<unsigned char>(data[at++]);
    value |= static_cast<std::uint64_t>(octet & 0x7F) << shift;
    if ((octet & 0x80) == 0) return true;
  }
  return false;
}

// A RAR 4.x Unicode name (file flag 0x200): the name field holds the name in
// the OEM code page, a NUL, and the UTF-16 name encoded against it -- a high
// octet, then pairs of flag bits choosing for each character: a low octet
// (high 0), a low octet with the high octet, a whole code unit, or a run
// copied from the OEM name (with a correction added). WinRAR shows the
// Unicode name.
std::string too_many() { return "a RAR archive of more than " + std::to_string(kMaxArchiveFiles) + " files"; }

std::string rar4_unicode_name(std::string_view oem, std::string_view enc) {
  std::vector<std::uint32_t> units;
  std::size_t at = 0;
  if (enc.empty()) return {};
  const std::uint32_t high = static_cast<unsigned char>(enc[at++]);
  unsigned flags = 0;
  int flag_bits = 0;
  auto octet = [&](std::uint32_t& v) {
    if (at >= enc.size()) return false;
    v = static_cast<unsigned char>(enc[at++]);
    return true;
  };
  const std::size_t max_units = kMaxFilename;
  while (at < enc.size() && units.size() < max_units) {
    if (flag_bits == 0) {
      std::uint32_t f;
      if (!octet(f)) break;
      flags = f;
      flag_bits = 8;
    }
    std::uint32_t a = 0, b = 0;
    switch (flags >> 6 & 3) {
      case 0:
        if (!octet(a)) break;
        units.push_back(a);
        break;
      case 1:
        if (!octet(a)) break;
        units.push_back(a | high << 8);
        break;
      case 2:
        if (!octet(a) || !octet(b)) break;
        units.push_back(a | b << 8);
        break;
      case 3: {
        if (!octet(a)) break;
        std::uint32_t correction = 0;
        if ((a & 0x80) != 0 && !octet(correction)) break;
        for (std::uint32_t n = (a & 0x7F) + 2; n > 0 && units.size() < max_units; --n) {
          const std::size_t i = units.size();
          const std::uint32_t c = i < oem.size() ? static_cast<unsigned char>(oem[i]) : 0;
          units.push_back((a & 0x80) != 0 ? ((c + correction) & 0xFF) | high << 8 : c);
        }
        break;
      }
    }
    flags = flags << 2 & 0xFF;
    flag_bits -= 2;
  }
  // The name ends at a NUL, as in WinRAR; iconv turns what is no UTF-16
  // (an unpaired surrogate) into U+FFFD.
  std::string utf16;
  for (std::uint32_t u : units) {
    if (u == 0) break;
    utf16 += static_cast<char>(u & 0xFF);
    utf16 += static_cast<char>(u >> 8 & 0xFF);
  }
  return to_utf8("UTF-16LE", utf16);
}

}  // namespace

void RarReader::fail(std::string why) {
  if (problem_.empty()) problem_ = std::move(why);
  state_ = State::kDone;
}

void RarReader::feed(std::string_view data) {
  while (!data.empty() && state_ != State::kDone) {
    switch (state_) {
      case State::kSignature:
        data = find_signature(data);
        break;
      case State::kSkip: {
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(skip_, data.size()));
        skip_ -= n;
        data.remove_prefix(n);
        if (skip_ == 0) state_ = State::kHeader;
        break;
      }
      case State::kHeader: {
        // Exactly the header's octets into buf_: what follows it is data or
        // the next header, read from `data` on the next turn.
        std::size_t want = header_size();
        while (want > buf_.size() && !data.empty()) {
          const std::size_t take = std::min(want - buf_.size(), data.size());
          buf_.append(data.substr(0, take));
          data.remove_prefix(take);
          want = header_size();
        }
        if (want == 0 || want < buf_.size()) {
          fail("a RAR header that does not parse");
        } else if (want == buf_.size()) {
          if (version_ == 4) header4();
          else header5();
        }
        break;
      }
      case State::kDone:
        break;
    }
  }
}

// Searches for the RAR 4.x or 5.0 signature (the last octets of the pieces
// before, `seen_`, may start it); returns what follows it, or nothing.
std::string_view RarReader::find_signature(std::string_view data) {
  // The signature's length when one starts at `at` of `s`, its version set.
  auto signature_at = [this](std::string_view s, std::size_t at) -> std::size_t {
    for (std::string_view signature : {kSignature5, kSignature4}) {
      if (s.substr(at, signature.size()) == signature) {
        version_ = signature == kSignature5 ? 5 : 4;
        return signature.size();
      }
    }
    return 0;
  };
  if (!seen_.empty()) {
    const std::string joined = seen_ + std::string(data.substr(0, kSignature5.size()));
    for (std::size_t i = 0; i < seen_.size(); ++i) {
      if (const std::size_t n = signature_at(joined, i)) {
        state_ = State::kHeader;
        return data.substr(i + n - std::min(i + n, seen_.size()));
      }
    }
  }
  for (std::size_t at = data.find(kSignature4.substr(0, 6)); at != std::string_view::npos && searched_ + at <= kMaxRarPrefix;
       at = data.find(kSignature4.substr(0, 6), at + 1)) {
    if (const std::size_t n = signature_at(data, at)) {
      state_ = State::kHeader;
      return data.substr(at + n);
    }
  }
  searched_ += data.size();
  if (searched_ > kMaxRarPrefix) {
    state_ = State::kDone;  // no RAR archive
    return {};
  }
  // A signature begun in the last 7 octets ends in the next piece.
  const std::string joined = seen_ + std::string(data.substr(data.size() - std::min<std::size_t>(data.size(), 7)));
  seen_ = joined.substr(joined.size() - std::min<std::size_t>(joined.size(), 7));
  return {};
}

// The size of the header buf_ starts: as far as its first octets tell (a
// lower bound while they are still coming), or 0 when it cannot parse.
std::size_t RarReader::header_size() const {
  if (version_ == 4) {
    if (buf_.size() < 7) return 7;
    const auto size = static_cast<std::size_t>(little_endian(buf_, 5, 2));
    return size < 7 ? 0 : size;
  }
  if (buf_.size() < 5) return 5;
  std::size_t at = 4;
  std::uint64_t size = 0;
  if (!vint(buf_, at, size)) return buf_.size() < 4 + 10 ? buf_.size() + 1 : 0;
  if (size == 0 || size > kMaxRarHeader) return 0;
  return at + static_cast<std::size_t>(size);
}

// The block header in buf_ is done with: what follows is `data` octets of
// data to skip (none: the next header), or nothing at the end block.
void RarReader::after_header(std::uint64_t data, bool end) {
  buf_.clear();
  if (end) {
    state_ = State::kDone;
  } else if (data > 0) {
    skip_ = data;
    state_ = State::kSkip;
  }
}

// One whole RAR 4.x block header in buf_.
void RarReader::header4() {
  const std::string_view h(buf_);
  const std::uint64_t type = little_endian(h, 2, 1);
  const std::uint64_t flags = little_endian(h, 3, 2);
  std::uint64_t data = 0;
  if (type == 0x74 || type == 0x7A) {  // a file, or a service block (comment, recovery record)
    const std::size_t name_at = (flags & 0x100) != 0 ? 40 : 32;  // large file: the sizes' high halves
    if (h.size() < name_at) return fail("a RAR file header that does not parse");
    data = little_endian(h, 7, 4);
    if ((flags & 0x100) != 0) data |= little_endian(h, 32, 4) << 32;
    const auto name_size = static_cast<std::size_t>(little_endian(h, 26, 2));
    if (name_size > h.size() - name_at) return fail("a RAR file header that does not parse");
    if (type == 0x74) {
      const std::string_view field = h.substr(name_at, name_size);
      const std::size_t nul = field.find('\0');
      // Flag 0x200 without a NUL: the field is UTF-8.
      std::string oem = to_utf8((flags & 0x200) != 0 && nul == std::string_view::npos ? "UTF-8" : "CP437",
                                field.substr(0, nul));
      std::string unicode;
      if ((flags & 0x200) != 0 && nul != std::string_view::npos) {
        unicode = rar4_unicode_name(field.substr(0, nul), field.substr(nul + 1));
      }
      // WinRAR shows the Unicode name, readers without Unicode the other.
      if (!unicode.empty()) names_.push_back(unicode);
      if (unicode != oem) names_.push_back(std::move(oem));
      if (names_.size() > kMaxArchiveFiles) return fail(too_many());
    }
  } else if ((flags & 0x8000) != 0) {
    if (h.size() < 11) return fail("a RAR header that does not parse");
    data = little_endian(h, 7, 4);
  }
  if (type == 0x73 && (flags & 0x0080) != 0) return fail("a RAR archive whose file names are encrypted");
  after_header(data, type == 0x7B);
}

// One whole RAR 5.0 header in buf_.
void RarReader::header5() {
  const std::string_view h(buf_);
  std::size_t at = 4;
  std::uint64_t size = 0, type = 0, flags = 0, extra = 0, data = 0;
  bool ok = vint(h, at, size) && vint(h, at, type) && vint(h, at, flags);
  if (ok && (flags & 0x1) != 0) ok = vint(h, at, extra);
  if (ok && (flags & 0x2) != 0) ok = vint(h, at, data);
  if (ok && type == 2) {  // a file
    std::uint64_t file_flags = 0, unpacked = 0, attributes = 0, compression = 0, host = 0, name_size = 0;
    ok = vint(h, at, file_flags) && vint(h, at, unpacked) && vint(h, at, attributes);
    if (ok && (file_flags & 0x2) != 0) at += 4;  // modification time
    if (ok && (file_flags & 0x4) != 0) at += 4;  // CRC32
    ok = ok && at <= h.size() && vint(h, at, compression) && vint(h, at, host) && vint(h, at, name_size) &&
         name_size <= h.size() - at;
    if (ok) names_.push_back(to_utf8("UTF-8", h.substr(at, static_cast<std::size_t>(name_size))));
    if (names_.size() > kMaxArchiveFiles) return fail(too_many());
  }
  if (!ok) return fail("a RAR header that does not parse");
  if (type == 4) return fail("a RAR archive whose file names are encrypted");
  after_header(data, type == 5);
}

void RarReader::finish() {
  if (state_ == State::kSignature || state_ == State::kDone) return;
  // Inside a header or inside data: the archive was cut short (a reader
  // lists what it read and reports the damage); at a header's start with
  // nothing pending, it ended without its end block, as old archives may.
  if (state_ == State::kSkip || !buf_.empty()) return fail("a RAR archive cut short");
  state_ = State::kDone;
}

}  // namespace postern::mime
