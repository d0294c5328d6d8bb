// Microsoft Cabinet archives (MS-CAB): the names of the files in one, as
// Windows' File Explorer (which opens *.cab and runs files from it) and
// 7-Zip list them, from the CFFILE entries the header points to. Nothing is
// decompressed. I/O-free, bounded, and bad input never throws.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace postern::mime {

// Octets from the cabinet's start within which its file entries must lie;
// entries past that are a problem, for their names would go unread.
inline constexpr std::size_t kMaxCabHeader = 1024 * 1024;

// Reads a cabinet fed in pieces split anywhere, keeping its first octets.
class CabReader {
 public:
  void feed(std::string_view data);
  void finish();

  // The names of its files, converted to UTF-8 (code page 437 unless
  // flagged UTF-8), in entry order.
  const std::vector<std::string>& names() const { return names_; }
  // Why a name may have gone unread (entries past kMaxCabHeader or past the
  // end, a name without its end, more than kMaxArchiveFiles files); empty
  // when read whole, and for data that is no cabinet (no "MSCF" header at
  // its start: nothing opens it).
  const std::string& problem() const { return problem_; }

 private:
  std::string head_;   // the first octets, up to kMaxCabHeader
  bool more_ = false;  // more octets came than head_ keeps
  std::vector<std::string> names_;
  std::string problem_;
};

}  // namespace postern::mime
