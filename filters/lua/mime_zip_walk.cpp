// ZIP local headers; see mime_zip_walk.h. A file whose header leaves its
// sizes to a data descriptor ends at the first descriptor (signed, as every
// writer signs it) whose compressed size is that of the data before it.
// After anything that is no local header where one should be (the central
// directory, a stub, another format's data) the walk looks for the next
// "PK\3\4": the ZIP reader decides which headers belong to the archive its
// end records describe.
#include "filters/lua/mime_zip_walk.h"

#include <zlib.h>

#include <algorithm>

#include "filters/lua/mime.h"
#include "filters/lua/mime_binary.h"

namespace postern::mime {
namespace {

constexpr std::size_t kPiece = 64 * 1024;  // octets inflated at a time
constexpr std::size_t kInputBlock = 4096;  // deflated octets given to zlib at a time
constexpr std::size_t kDescriptor = 24;    // octets of the longest data descriptor (Zip64)

}  // namespace

struct ZipWalker::Inflater {
  Inflater() { ok = inflateInit2(&z, -MAX_WBITS) == Z_OK; }
  ~Inflater() {
    if (ok) inflateEnd(&z);
  }
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;
  z_stream z{};
  bool ok = false;
  bool ended = false;  // the deflate stream ended
  std::unique_ptr<char[]> out = std::make_unique<char[]>(kPiece);
};

ZipWalker::ZipWalker(std::size_t* budget, OpenNested open) : budget_(budget), open_(std::move(open)) {}

ZipWalker::~ZipWalker() = default;

// What is held is walked from hold_start_ on, so that a header arriving an
// octet at a time is not copied again for each octet.
void ZipWalker::feed(std::string_view data) {
  if (hold_start_ == hold_.size()) {
    hold_.clear();
    hold_start_ = 0;
    run(data);
    hold_.assign(data);
    return;
  }
  hold_.append(data);
  std::string_view in = std::string_view(hold_).substr(hold_start_);
  const std::size_t before = in.size();
  run(in);
  hold_start_ += before - in.size();
  if (hold_start_ > hold_.size() / 2) {
    hold_.erase(0, hold_start_);
    hold_start_ = 0;
  }
}

void ZipWalker::finish() {
  end_file(false);  // one cut short has not ended
  hold_.clear();
  hold_start_ = 0;
}

WalkedFile* ZipWalker::at(std::uint64_t offset) {
  const auto found = by_offset_.find(offset);
  return found == by_offset_.end() ? nullptr : &files_[found->second - first_];
}

// Keeps a new header, dropping the oldest past the limits (never the one
// whose data goes by: it is the newest).
void ZipWalker::keep(std::uint64_t offset, std::string_view name) {
  files_.emplace_back();
  files_.back().offset = offset;
  files_.back().name = std::string(name);
  name_octets_ += name.size();
  by_offset_[offset] = first_ + files_.size() - 1;
  while (files_.size() > 1 && (files_.size() > kMaxArchiveFiles + 1 || name_octets_ > kMaxWalkedNames)) {
    const WalkedFile& old = files_.front();
    dropped_ = true;
    dropped_last_ = std::max(dropped_last_, old.offset);
    name_octets_ -= old.name.size();
    const auto entry = by_offset_.find(old.offset);
    if (entry != by_offset_.end() && entry->second == first_) by_offset_.erase(entry);
    files_.pop_front();
    ++first_;
  }
}

// Walks `in` as far as it can; what is left must be held for more.
void ZipWalker::run(std::string_view& in) {
  while (!in.empty()) {
    switch (state_) {
      case State::kSeek: {
        const std::size_t p = in.find("PK\x03\x04");
        const std::size_t skip = p != std::string_view::npos ? p : in.size() - std::min<std::size_t>(in.size(), 3);
        at_ += skip;
        in.remove_prefix(skip);
        if (p == std::string_view::npos) return;
        state_ = State::kHeader;
        break;
      }
      case State::kHeader: {
        if (in.size() < 4) return;
        if (in.substr(0, 4) != "PK\x03\x04") {
          state_ = State::kSeek;  // the central directory, or a walk lost
          at_ += 1;
          in.remove_prefix(1);
          break;
        }
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
          end_file(true);
          state_ = State::kHeader;
        }
        break;
      }
      case State::kUnsized:
        unsized(in);
        if (state_ == State::kUnsized) return;
        break;
    }
  }
}

// Data of unknown size: up to a descriptor "PK\x07\x08", CRC-32, then the
// compressed and the uncompressed size in 4 octets each (8 with Zip64),
// whose compressed size is that of the data before it.
void ZipWalker::unsized(std::string_view& in) {
  std::size_t p = 0;
  while ((p = in.find("PK\x07\x08", p)) != std::string_view::npos && in.size() - p >= kDescriptor) {
    const std::uint64_t length = (file_ != kNone ? files_[file_ - first_].compressed : 0) + p;
    const std::size_t descriptor = !zip64_ && little_endian(in, p + 8, 4) == length  ? 16
                                   : zip64_ && little_endian(in, p + 8, 8) == length ? 24
                                                                                      : 0;
    if (descriptor != 0) {
      data(in.substr(0, p));
      in.remove_prefix(p + descriptor);
      at_ += p + descriptor;
      end_file(true);
      state_ = State::kHeader;
      return;
    }
    ++p;
  }
  // Data up to where a descriptor could start that is not all here yet.
  const std::size_t keep = std::min(in.size(), p != std::string_view::npos ? in.size() - p : kDescriptor - 1);
  data(in.substr(0, in.size() - keep));
  at_ += in.size() - keep;
  in.remove_prefix(in.size() - keep);
}

void ZipWalker::start_file(std::string_view h) {
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
  method_ = static_cast<int>(method);
  keep(at_, raw);
  file_ = first_ + files_.size() - 1;
  WalkedFile& f = files_.back();
  if ((flags & 1) == 0 && (method == 0 || method == 8) && archive_name(raw)) {
    f.reader = open_(to_utf8((flags & 0x800) != 0 ? "UTF-8" : "CP437", raw));
    reading_ = f.reader != nullptr;
    if (reading_ && method == 8) {
      inflater_ = std::make_unique<Inflater>();
      if (!inflater_->ok) bad_ = true;
    }
  }
  if (descriptor) {
    state_ = State::kUnsized;
  } else if (compressed > 0) {
    left_ = compressed;
    state_ = State::kSized;
  } else {
    end_file(true);
    state_ = State::kHeader;
  }
}

// The file's data (`at_` is moved past it by the caller). Deflated data
// goes to zlib in blocks of kInputBlock octets whatever pieces it comes in,
// so that what a broken stream inflates to before zlib stops does not depend
// on how the message was split (as in mime_compressed.cpp).
void ZipWalker::data(std::string_view piece) {
  if (file_ == kNone || piece.empty()) return;
  files_[file_ - first_].compressed += piece.size();
  if (!reading_ || bad_) return;
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

void ZipWalker::inflate_block(std::string_view block) {
  Inflater& f = *inflater_;
  if (f.ended) {
    bad_ = true;  // data past the deflate stream's end
    return;
  }
  f.z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(block.data()));
  f.z.avail_in = static_cast<uInt>(block.size());
  // On while input is left, or the last output filled the buffer (more may
  // be waiting inside zlib).
  for (bool full = false; (f.z.avail_in > 0 || full) && !bad_ && !f.ended;) {
    f.z.next_out = reinterpret_cast<Bytef*>(f.out.get());
    f.z.avail_out = static_cast<uInt>(kPiece);
    const int r = inflate(&f.z, Z_NO_FLUSH);
    const std::size_t n = kPiece - f.z.avail_out;
    if (n > 0) give(std::string_view(f.out.get(), n));
    if (r == Z_STREAM_END) f.ended = true;
    else if (r != Z_OK && r != Z_BUF_ERROR) bad_ = true;
    else if (n == 0 && r == Z_BUF_ERROR) break;
    full = n == kPiece;
  }
  if (f.z.avail_in > 0) bad_ = true;  // data past the deflate stream's end, or zlib stuck
}

// The file's octets, decompressed within the message's budget (stored ones
// are the message's own).
void ZipWalker::give(std::string_view out) {
  if (bad_) return;
  if (method_ != 0) {
    if (out.size() > *budget_) {
      *budget_ = 0;
      over_budget_ = true;
      bad_ = true;
      return;
    }
    *budget_ -= out.size();
  }
  WalkedFile& f = files_[file_ - first_];
  f.size += out.size();
  f.crc = static_cast<std::uint32_t>(crc32_z(f.crc, reinterpret_cast<const Bytef*>(out.data()), out.size()));
  f.reader->feed(out);
}

void ZipWalker::end_file(bool ended) {
  if (file_ != kNone) {
    WalkedFile& f = files_[file_ - first_];
    if (reading_) {
      if (!pending_.empty() && !bad_ && method_ == 8) inflate_block(pending_);
      f.whole = ended && !bad_ && (method_ == 0 || inflater_->ended);
      f.reader->finish();
    }
    f.ended = ended;
  }
  pending_.clear();
  inflater_.reset();
  file_ = kNone;
  reading_ = false;
  bad_ = false;
}

}  // namespace postern::mime
