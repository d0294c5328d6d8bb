// 7z archives (7-Zip's 7zFormat.txt): the names of the files in one, as
// 7-Zip and Windows 11's File Explorer list them, from the header at the
// archive's end. The header is read as 7-Zip writes it by default, packed
// with LZMA (or LZMA2, or stored); nothing else is decompressed (an archive
// in an archive is one name). I/O-free, bounded, and bad input never throws.
// Where 7-Zip would read what is not read here (a blank start header, a
// header that parses another way), the reader says so (problem()).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace postern::mime {

// Octets before the 7z signature searched for it: an archive behind a
// self-extractor's stub (or any other prefix) that long is still read.
inline constexpr std::size_t kMaxSevenZipPrefix = 2 * 1024 * 1024;
// The header as stored (and, packed, its packed stream) at most; a larger
// one is a problem, for its names would go unread. 7-Zip's packed header
// for 10,000 files is ~100 KiB.
inline constexpr std::size_t kMaxSevenZipHeader = 1024 * 1024;
// The header unpacked at most: what LZMA may expand it to.
inline constexpr std::size_t kMaxSevenZipNames = 8 * 1024 * 1024;

// Reads a 7z archive fed in pieces split anywhere, keeping its start header
// and its last octets.
class SevenZipReader {
 public:
  // `budget`, when given: the octets decompression may still produce for
  // the message (mime_compressed.h), which an LZMA-packed header spends.
  explicit SevenZipReader(std::size_t* budget = nullptr) : budget_(budget) {}

  void feed(std::string_view data);
  void finish();

  // The names of the files and directories in it, converted to UTF-8 from
  // UTF-16, in header order.
  const std::vector<std::string>& names() const { return names_; }
  // Why a name may have gone unread (file names encrypted, a header packed
  // with a method not read here, too large, cut short or not parsing, more
  // than kMaxArchiveFiles names); empty when read whole, and for data that
  // is no 7z archive (no signature: no reader opens it).
  const std::string& problem() const { return problem_; }
  // Whether the budget ran out here.
  bool over_budget() const { return over_budget_; }

 private:
  void scan(std::string_view data, std::uint64_t at);
  void read_header(std::string_view header, int depth);
  bool unpack_header(std::string_view streams_info, std::string& plain);
  // The archive's octets [at, at + size) when kept in tail_.
  bool window(std::uint64_t at, std::uint64_t size, std::string_view& out) const;
  void fail(std::string why);

  static constexpr std::uint64_t kNone = ~std::uint64_t{0};
  std::size_t* budget_ = nullptr;
  bool over_budget_ = false;
  bool blank_ = false;          // the start header is blank (7-Zip's recovery)
  std::uint64_t fed_ = 0;       // octets fed
  std::uint64_t start_ = kNone;  // where the signature starts
  std::string carry_;           // the last octets searched, for a signature split between pieces
  std::string start_header_;    // the 32 octets from the signature
  std::string tail_;            // the last octets fed (up to twice kTail of mime_7z.cpp)
  std::vector<std::string> names_;
  std::string problem_;
};

}  // namespace postern::mime
