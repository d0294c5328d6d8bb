// tar file names; see mime_tar.h. Each entry is a 512-octet header (name
// 0-99, size 124-135 in octal or base-256, checksum 148-155, type 156,
// magic 257; POSIX ustar's prefix 345-499 goes before the name), then its
// data padded to 512. The archive ends at an all-zero block. As libarchive
// reads them: a pax extended header ('x') or a GNU long name ('L') names the
// entry after it, and a type it does not know is a file.
#include "filters/lua/mime_tar.h"

#include <algorithm>

#include "filters/lua/mime.h"
#include "filters/text/utf8.h"

namespace postern::mime {
namespace {

constexpr std::size_t kBlock = 512;

// A field up to its first NUL.
std::string_view field(std::string_view block, std::size_t at, std::size_t size) {
  std::string_view f = block.substr(at, size);
  return f.substr(0, f.find('\0'));
}

// A numeric field: octal digits after any spaces, up to the first other
// octet; or base-256 (GNU, star) when its first octet's high bit is set.
// False for a negative base-256 number or one past 2^63.
bool number(std::string_view f, std::uint64_t& value) {
  value = 0;
  if (!f.empty() && (static_cast<unsigned char>(f[0]) & 0x80) != 0) {
    if ((static_cast<unsigned char>(f[0]) & 0x40) != 0) return false;  // negative
    value = static_cast<unsigned char>(f[0]) & 0x3F;
    for (std::size_t i = 1; i < f.size(); ++i) {
      if (value >> 55 != 0) return false;
      value = value << 8 | static_cast<unsigned char>(f[i]);
    }
    return true;
  }
  std::size_t i = 0;
  while (i < f.size() && (f[i] == ' ' || f[i] == '\t')) ++i;
  for (; i < f.size() && f[i] >= '0' && f[i] <= '7'; ++i) {
    if (value >> 60 != 0) return false;
    value = value << 3 | static_cast<std::uint64_t>(f[i] - '0');
  }
  return true;
}

// The header's checksum: the octets' sum with the checksum field as spaces,
// unsigned (POSIX) or, as some old tars wrote it, signed.
bool checksum_matches(std::string_view b) {
  std::uint64_t stored = 0;
  if (!number(field(b, 148, 8), stored)) return false;
  long unsigned_sum = 0, signed_sum = 0;
  for (std::size_t i = 0; i < kBlock; ++i) {
    const char c = i >= 148 && i < 156 ? ' ' : b[i];
    unsigned_sum += static_cast<unsigned char>(c);
    signed_sum += static_cast<signed char>(c);
  }
  return static_cast<long>(stored) == unsigned_sum || static_cast<long>(stored) == signed_sum;
}

std::string as_utf8(std::string_view name) {
  return valid_utf8(name) ? std::string(name) : to_utf8("ISO-8859-1", name);
}

}  // namespace

void TarReader::fail(std::string why) {
  if (problem_.empty()) problem_ = std::move(why);
  state_ = State::kDone;
}

void TarReader::feed(std::string_view data) {
  while (!data.empty() && state_ != State::kDone) {
    if (state_ == State::kHeader) {
      const std::size_t take = std::min(kBlock - block_.size(), data.size());
      block_.append(data.substr(0, take));
      data.remove_prefix(take);
      if (block_.size() == kBlock) header();
      continue;
    }
    // Data: a pax header's or a long name's kept, an archive's read, a file's skipped.
    const auto take = static_cast<std::size_t>(std::min<std::uint64_t>(data_, data.size()));
    if ((kind_ == 'x' || kind_ == 'L') && extension_.size() < kMaxTarExtension) {
      extension_.append(data.substr(0, std::min(take, kMaxTarExtension - extension_.size())));
    }
    if (nested_ && nested_left_ > 0) {
      const auto part = static_cast<std::size_t>(std::min<std::uint64_t>(nested_left_, take));
      nested_->feed(data.substr(0, part));
      nested_left_ -= part;
    }
    data.remove_prefix(take);
    data_ -= take;
    if (data_ == 0) extension_done();
  }
}

void TarReader::finish() {
  // Cut inside a header or data: what follows the cut no reader shows
  // either; an archive cut short is read as far as it goes.
  end_nested();
}

void TarReader::end_nested() {
  if (!nested_) return;
  nested_->finish();
  inners_.push_back(InnerArchive{names_.size() - 1, std::move(nested_)});
  nested_.reset();
}

void TarReader::header() {
  const std::string_view b = block_;
  if (std::all_of(b.begin(), b.end(), [](char c) { return c == '\0'; })) {
    state_ = State::kDone;  // the end of the archive
    return;
  }
  if (!checksum_matches(b)) {
    if (headers_ == 0) state_ = State::kDone;  // no tar archive
    else fail("a tar header that does not parse");
    return;
  }
  ++headers_;
  std::uint64_t size = 0;
  if (!number(b.substr(124, 12), size) || size > (std::uint64_t{1} << 62)) {
    return fail("a tar header that does not parse");
  }
  kind_ = b[156] == 'X' ? 'x' : b[156];  // 'X': Solaris' pax header, read as one
  const bool entry = kind_ != 'x' && kind_ != 'g' && kind_ != 'L' && kind_ != 'K' && kind_ != 'V';
  if (entry && has_next_size_) size = next_size_;  // a pax "size" record
  if (entry) has_next_size_ = false;
  if (kind_ == 'S') return fail("a tar archive with a sparse file");  // its data is not where the size says
  // A link, device, directory or FIFO has no data; one whose size says
  // otherwise is read differently by different readers.
  if (kind_ >= '1' && kind_ <= '6' && size != 0) return fail("a tar " + std::string(1, kind_) + " entry with data");
  if ((kind_ == 'x' || kind_ == 'L') && size > kMaxTarExtension) {
    return fail(kind_ == 'x' ? "a tar pax header larger than 1 MiB" : "a tar long name larger than 1 MiB");
  }
  if (entry) {
    std::string name = std::move(next_name_);
    next_name_.clear();
    if (name.empty()) {
      name = std::string(field(b, 0, 100));
      // POSIX ustar ("ustar\0"; GNU's "ustar  " has no prefix there).
      const std::string_view prefix = field(b, 345, 155);
      if (b.substr(257, 6) == std::string_view("ustar\0", 6) && !prefix.empty()) {
        name = std::string(prefix) + "/" + name;
      }
      name = as_utf8(name);
    }
    if (names_.size() >= kMaxArchiveFiles) {
      return fail("a tar archive of more than " + std::to_string(kMaxArchiveFiles) + " files");
    }
    if (name.size() > kMaxArchiveName) return fail("a tar file name longer than 4096 octets");
    // A file (a type libarchive does not know is one) named as an archive
    // is read; a link named as one, which bsdtar and 7-Zip extract as a copy
    // of another entry, is not opened.
    const bool named = open_ && archive_name(name);
    names_.push_back(std::move(name));
    if (named && (kind_ == '1' || kind_ == '2')) {
      inners_.push_back(InnerArchive{names_.size() - 1, nullptr});
    } else if (named && size > 0 && !(kind_ >= '3' && kind_ <= '6')) {
      nested_ = open_(names_.back());
      nested_left_ = size;
      if (!nested_) inners_.push_back(InnerArchive{names_.size() - 1, nullptr});
    }
  }
  block_.clear();
  extension_.clear();
  size_ = size;
  data_ = (size + kBlock - 1) / kBlock * kBlock;
  state_ = State::kData;
  if (data_ == 0) extension_done();
}

// The end of an entry's data: a pax header's "path" record, or a long
// name, names the next entry.
void TarReader::extension_done() {
  state_ = State::kHeader;
  end_nested();
  if (extension_.size() > size_) extension_.resize(static_cast<std::size_t>(size_));  // without the padding
  if (kind_ == 'L') {
    next_name_ = as_utf8(field(extension_, 0, extension_.size()));
  } else if (kind_ == 'x') {
    // Records "<length> <key>=<value>\n", the length counting the whole record.
    std::string_view rest = extension_;
    while (!rest.empty()) {
      std::size_t length = 0, i = 0;
      while (i < rest.size() && rest[i] >= '0' && rest[i] <= '9' && length < kMaxTarExtension) {
        length = length * 10 + static_cast<std::size_t>(rest[i++] - '0');
      }
      if (i == 0 || i >= rest.size() || rest[i] != ' ' || length <= i + 1 || length > rest.size() ||
          rest[length - 1] != '\n') {
        return fail("a tar pax header that does not parse");
      }
      const std::string_view record = rest.substr(i + 1, length - i - 2);
      rest.remove_prefix(length);
      const std::size_t eq = record.find('=');
      if (eq == std::string_view::npos) return fail("a tar pax header that does not parse");
      const std::string_view key = record.substr(0, eq), value = record.substr(eq + 1);
      // GNU's sparse files name themselves apart, and their data is not
      // where the size says.
      if (key.starts_with("GNU.sparse.")) return fail("a tar archive with a sparse file");
      if (key == "path") next_name_ = as_utf8(value);
      if (key == "size") {
        if (value.empty() || value.size() > 18 || value.find_first_not_of("0123456789") != std::string_view::npos) {
          return fail("a tar pax header that does not parse");
        }
        next_size_ = std::stoull(std::string(value));
        has_next_size_ = true;
      }
    }
  }
  kind_ = 0;
  extension_.clear();
}

}  // namespace postern::mime
