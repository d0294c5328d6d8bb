// Unicode format characters that change how the text around them is shown
// without being seen themselves: the bidirectional controls of UAX #9
// (embeddings, overrides, isolates, marks), invisible separators and the
// line and paragraph separators. In a hostile name they reverse or hide the
// characters an admin reads ("Trojan Source", CVE-2021-42574), in a terminal
// and in a browser alike; the report writers replace them as they replace
// control characters. I/O-free.
#pragma once

namespace postern::bidi {

// True for U+061C, U+200B..U+200F, U+2028..U+202E, U+2060..U+2064,
// U+2066..U+2069, U+FEFF and U+FFF9..U+FFFB.
constexpr bool hides_or_reorders(char32_t cp) {
  return cp == 0x061c || (cp >= 0x200b && cp <= 0x200f) || (cp >= 0x2028 && cp <= 0x202e) ||
         (cp >= 0x2060 && cp <= 0x2064) || (cp >= 0x2066 && cp <= 0x2069) || cp == 0xfeff ||
         (cp >= 0xfff9 && cp <= 0xfffb);
}

}  // namespace postern::bidi
