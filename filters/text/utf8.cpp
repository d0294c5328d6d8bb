// UTF-8 well-formedness and the walk over possibly ill-formed text; see utf8.h.
#include "filters/text/utf8.h"

namespace postern {

std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  auto at = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = at(i);
  std::size_t len = 0;
  unsigned char lo = 0x80, hi = 0xbf;  // bounds of the second octet
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  if (at(i + 1) < lo || at(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < len; ++k) {
    if ((at(i + k) & 0xc0) != 0x80) return 0;
  }
  return len;
}

bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = utf8_sequence_length(s, i);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

namespace utf8 {

Unit unit_at(std::string_view s, std::size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return Unit{s.substr(i, 1), c, true};
  const std::size_t len = utf8_sequence_length(s, i);
  if (len == 0) return Unit{s.substr(i, 1), kReplacement, false};
  // The lead octet's payload bits, then six from each continuation octet.
  char32_t cp = c & (len == 2 ? 0x1f : len == 3 ? 0x0f : 0x07);
  for (std::size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
  return Unit{s.substr(i, len), cp, true};
}

}  // namespace utf8
}  // namespace postern
