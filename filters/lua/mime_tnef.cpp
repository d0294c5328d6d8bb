// TNEF file names; see mime_tnef.h. The layout is MS-OXTNEF's: a signature
// and a key, then attributes (level, id, length, data, checksum); an
// attachment's names are in attAttachTitle, attAttachTransportFilename and
// its MAPI properties (attAttachment), where an embedded message is a TNEF
// stream of its own.
#include "filters/lua/mime_tnef.h"

#include <algorithm>

#include "filters/lua/mime.h"
#include "filters/lua/mime_binary.h"

namespace postern::mime {
namespace {

constexpr std::uint32_t kSignature = 0x223E9F78;
constexpr std::uint32_t kAttachTitle = 0x00018010;              // the file name, 8-bit
constexpr std::uint32_t kAttachTransportFilename = 0x00069001;  // the long file name, 8-bit
constexpr std::uint32_t kAttachment = 0x00069005;               // the attachment's MAPI properties

// MAPI properties that name the file (MS-OXPROPS): PidTagAttachLongFilename,
// PidTagAttachFilename, PidTagDisplayName; and PidTagAttachDataObject, an
// embedded message.
constexpr std::uint16_t kLongFilename = 0x3707;
constexpr std::uint16_t kFilename = 0x3704;
constexpr std::uint16_t kDisplayName = 0x3001;
constexpr std::uint16_t kDataObject = 0x3701;

constexpr std::uint16_t kString8 = 0x001E;
constexpr std::uint16_t kUnicode = 0x001F;
constexpr std::uint16_t kBinary = 0x0102;
constexpr std::uint16_t kObject = 0x000D;
constexpr std::uint16_t kMultiValued = 0x1000;

// Octets of one value of a fixed-size type, 0 for a variable or unknown one
// (MS-OXTNEF 2.1.3.4: 16-bit values and booleans take 4).
std::size_t fixed_size(std::uint16_t type) {
  switch (type) {
    case 0x0002: case 0x0003: case 0x0004: case 0x000A: case 0x000B: return 4;
    case 0x0005: case 0x0006: case 0x0007: case 0x0014: case 0x0040: return 8;
    case 0x0048: return 16;
    default: return 0;
  }
}

std::string name_of(std::string_view text, bool unicode) {
  if (unicode) {
    std::string utf8 = to_utf8("UTF-16LE", text.substr(0, text.size() / 2 * 2));
    return utf8.substr(0, utf8.find('\0'));
  }
  return to_utf8("WINDOWS-1252", text.substr(0, text.find('\0')));
}

// Reads a complete attribute's data, every read bounds-checked.
class Cursor {
 public:
  explicit Cursor(std::string_view data) : data_(data) {}
  bool u32(std::uint32_t& out) {
    if (data_.size() < 4) return false;
    out = static_cast<std::uint32_t>(little_endian(data_, 0, 4));
    data_.remove_prefix(4);
    return true;
  }
  bool take(std::uint64_t n, std::string_view& out) {
    if (n > data_.size()) return false;
    out = data_.substr(0, static_cast<std::size_t>(n));
    data_.remove_prefix(static_cast<std::size_t>(n));
    return true;
  }
  bool skip(std::uint64_t n) {
    std::string_view ignored;
    return take(n, ignored);
  }
  static std::uint64_t padded(std::uint64_t n) { return (n + 3) / 4 * 4; }

 private:
  std::string_view data_;
};

// A MAPI property list (MS-OXTNEF 2.1.3.5): the names in it, and those of
// its embedded messages. False when it does not parse whole.
bool read_properties(std::string_view data, int depth, std::vector<std::string>& names, std::string& why) {
  Cursor c(data);
  std::uint32_t count = 0;
  if (!c.u32(count)) return false;
  for (std::uint32_t i = 0; i < count; ++i) {
    std::uint32_t tag = 0;
    if (!c.u32(tag)) return false;
    const std::uint16_t type = static_cast<std::uint16_t>(tag & 0xFFFF);
    const std::uint16_t id = static_cast<std::uint16_t>(tag >> 16);
    if (id >= 0x8000) {  // a named property: GUID, kind, then an id or a UTF-16 name
      std::uint32_t kind = 0;
      std::uint32_t length = 0;
      if (!c.skip(16) || !c.u32(kind)) return false;
      if (kind == 0 ? !c.skip(4) : !c.u32(length) || !c.skip(Cursor::padded(length))) return false;
    }
    const std::uint16_t base = type & static_cast<std::uint16_t>(~kMultiValued);
    const bool variable = base == kString8 || base == kUnicode || base == kBinary || base == kObject;
    std::uint32_t values = 1;
    if (((type & kMultiValued) != 0 || variable) && !c.u32(values)) return false;
    for (std::uint32_t v = 0; v < values; ++v) {
      if (!variable) {
        const std::size_t size = fixed_size(base);
        if (size == 0) {
          why = "a TNEF property of unknown type " + std::to_string(base);
          return false;
        }
        if (!c.skip(size)) return false;
        continue;
      }
      std::uint32_t size = 0;
      std::string_view value;
      if (!c.u32(size) || !c.take(size, value) || !c.skip(Cursor::padded(size) - size)) return false;
      if ((id == kLongFilename || id == kFilename || id == kDisplayName) && (base == kString8 || base == kUnicode)) {
        names.push_back(name_of(value, base == kUnicode));
      } else if (id == kDataObject && base == kObject && value.size() > 16) {
        if (depth + 1 > kMaxTnefDepth) {
          why = "TNEF messages embedded deeper than " + std::to_string(kMaxTnefDepth);
          return false;
        }
        TnefReader inner(depth + 1);  // after the interface's 16-octet id
        inner.feed(value.substr(16));
        inner.finish();
        names.insert(names.end(), inner.names().begin(), inner.names().end());
        if (!inner.problem().empty()) {
          why = inner.problem();
          return false;
        }
      }
    }
  }
  return true;
}

}  // namespace

TnefReader::TnefReader(int depth) : depth_(depth) {}
TnefReader::~TnefReader() = default;

void TnefReader::fail(std::string why) {
  if (problem_.empty()) problem_ = std::move(why);
  state_ = State::kDone;
}

void TnefReader::feed(std::string_view data) {
  while (!data.empty() && state_ != State::kDone) {
    if (state_ == State::kSkip) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(skip_, data.size()));
      data.remove_prefix(n);
      skip_ -= n;
      if (skip_ == 0) {
        state_ = State::kChecksum;
        need_ = 2;
      }
      continue;
    }
    const std::size_t n = std::min(need_ - buf_.size(), data.size());
    buf_.append(data.substr(0, n));
    data.remove_prefix(n);
    if (buf_.size() == need_) step();
  }
}

// buf_ holds the piece the state needs.
void TnefReader::step() {
  switch (state_) {
    case State::kSignature:
      // Not TNEF: nothing to list.
      state_ = little_endian(buf_, 0, 4) == kSignature ? State::kHeader : State::kDone;
      need_ = 9;
      break;
    case State::kHeader: {
      id_ = static_cast<std::uint32_t>(little_endian(buf_, 1, 4));
      const std::uint32_t length = static_cast<std::uint32_t>(little_endian(buf_, 5, 4));
      if (id_ == kAttachTitle || id_ == kAttachTransportFilename || id_ == kAttachment) {
        if (length > kMaxTnefAttribute) {
          buf_.clear();
          return fail("a TNEF attribute of " + std::to_string(length) + " octets holding file names");
        }
        state_ = State::kData;
        need_ = length;
      } else {
        state_ = State::kSkip;
        skip_ = length;
      }
      if (need_ == 0 || (state_ == State::kSkip && skip_ == 0)) {
        buf_.clear();
        if (state_ == State::kData) attribute();
        if (state_ != State::kDone) {
          state_ = State::kChecksum;
          need_ = 2;
        }
        return;
      }
      break;
    }
    case State::kData:
      attribute();
      if (state_ == State::kDone) return;
      state_ = State::kChecksum;
      need_ = 2;
      break;
    case State::kChecksum:  // not checked: a reader that ignores it shows the file all the same
      state_ = State::kHeader;
      need_ = 9;
      break;
    case State::kSkip:
    case State::kDone:
      break;
  }
  buf_.clear();
}

// A whole attribute that holds names, in buf_.
void TnefReader::attribute() {
  if (id_ == kAttachment) {
    std::string why;
    if (!read_properties(buf_, depth_, names_, why)) {
      fail(why.empty() ? "TNEF attachment properties that do not parse" : why);
    }
    return;
  }
  names_.push_back(name_of(buf_, false));
}

void TnefReader::finish() {
  if (state_ == State::kData) fail("a TNEF stream that ends inside an attribute holding file names");
  state_ = State::kDone;
}

}  // namespace postern::mime
