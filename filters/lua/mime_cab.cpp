// Cabinet file names; see mime_cab.h. The header (CFHEADER) starts "MSCF";
// at offset 16 it gives where the file entries start (coffFiles), at 28 how
// many there are (cFiles). Each entry (CFFILE) is 16 octets -- size, offset
// in its folder, folder, date, time, attributes -- then its name, ending in
// a NUL; attribute 0x80 (_A_NAME_IS_UTF) says the name is UTF-8.
#include "filters/lua/mime_cab.h"

#include <algorithm>

#include "filters/lua/mime.h"
#include "filters/lua/mime_binary.h"

namespace postern::mime {

void CabReader::feed(std::string_view data) {
  // No "MSCF" at the start: no cabinet, nothing more to keep.
  if (head_.size() >= 4 && !head_.starts_with("MSCF")) return;
  if (head_.size() >= kMaxCabHeader) {
    more_ = more_ || !data.empty();
    return;
  }
  const std::size_t take = std::min(kMaxCabHeader - head_.size(), data.size());
  head_.append(data.substr(0, take));
  more_ = take < data.size();
}

void CabReader::finish() {
  const std::string_view h = head_;
  // "MSCF" and format version 1 (FDI, Windows' reader, wants 1.3): else no
  // cabinet, and nothing opens it.
  if (h.size() < 36 || !h.starts_with("MSCF") || h[25] != 1) return;
  const std::uint64_t files = little_endian(h, 28, 2);
  if (files > kMaxArchiveFiles) {
    problem_ = "a cabinet of more than " + std::to_string(kMaxArchiveFiles) + " files";
    return;
  }
  const auto not_read = [this] {
    names_.clear();
    problem_ = more_ ? "a cabinet whose file entries lie past its first 1 MiB" : "a cabinet cut short";
  };
  std::size_t at = static_cast<std::size_t>(little_endian(h, 16, 4));
  for (std::uint64_t i = 0; i < files; ++i) {
    if (at > h.size() || h.size() - at < 16) return not_read();
    const std::uint64_t attributes = little_endian(h, at + 14, 2);
    const std::size_t nul = h.find('\0', at + 16);
    if (nul == std::string_view::npos) return not_read();
    names_.push_back(to_utf8((attributes & 0x80) != 0 ? "UTF-8" : "CP437", h.substr(at + 16, nul - at - 16)));
    at = nul + 1;
  }
}

}  // namespace postern::mime
