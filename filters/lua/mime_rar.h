// RAR archives (RAR 1.5-4.x and RAR 5.0): the names of the files in one, as
// WinRAR and Windows 11's File Explorer list them, from the header that
// precedes each file's data. Nothing is decompressed (an archive inside an
// archive is one name). I/O-free, bounded, and bad input never throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace postern::mime {

// Octets before the RAR signature searched for it: readers open an archive
// behind a self-extractor's stub (or any other prefix) that long.
inline constexpr std::size_t kMaxRarPrefix = 2 * 1024 * 1024;
// Octets of one header read whole (RAR 5.0 caps its headers at 2 MB).
inline constexpr std::size_t kMaxRarHeader = 2 * 1024 * 1024;

// Reads a RAR archive fed in pieces split anywhere, skipping file data.
class RarReader {
 public:
  void feed(std::string_view data);
  void finish();

  // The names of the files and directories in it, converted to UTF-8, in
  // archive order; a RAR 4.x name stored in Unicode and in code page 437
  // twice when the two differ (WinRAR shows the first, older readers the
  // other).
  const std::vector<std::string>& names() const { return names_; }
  // Why a name may have gone unread (encrypted headers, a header that does
  // not parse, the archive cut short, more than kMaxArchiveFiles names);
  // empty when read whole, and for data that is no RAR archive.
  const std::string& problem() const { return problem_; }

 private:
  enum class State { kSignature, kHeader, kSkip, kDone };
  std::string_view find_signature(std::string_view data);  // what follows it, or nothing
  std::size_t header_size() const;  // of the header in buf_: so far known; 0 when it cannot parse
  void header4();
  void header5();
  void after_header(std::uint64_t data, bool end);
  void fail(std::string why);

  State state_ = State::kSignature;
  int version_ = 0;           // 4 or 5 once the signature is found
  std::string buf_;           // the header being read (up to kMaxRarHeader octets)
  std::string seen_;          // the last octets searched for the signature
  std::size_t searched_ = 0;  // octets searched for the signature
  std::uint64_t skip_ = 0;    // data octets still to skip
  std::vector<std::string> names_;
  std::string problem_;
};

}  // namespace postern::mime
