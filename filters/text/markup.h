// Escaping one ASCII character for HTML or XML text and attribute values:
// the five characters markup gives a meaning to become entities. Shared by
// the audit report's HTML page and the DMARC aggregate report's XML; the
// UTF-8 around them is walked with filters/text/utf8.h.
#pragma once

#include <string>

namespace postern::markup {

enum class Dialect {
  kHtml,  // ' as &#39; (HTML 4 has no &apos;)
  kXml,   // ' as &apos;
};

// Appends `c` (ASCII) to `out`, escaped; false, and nothing appended, for a
// control character (below 0x20, and DEL): the caller replaces or drops it.
inline bool append_escaped(std::string& out, char c, Dialect dialect) {
  switch (c) {
    case '&': out += "&amp;"; return true;
    case '<': out += "&lt;"; return true;
    case '>': out += "&gt;"; return true;
    case '"': out += "&quot;"; return true;
    case '\'': out += dialect == Dialect::kHtml ? "&#39;" : "&apos;"; return true;
    default:
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return false;
      out.push_back(c);
      return true;
  }
}

}  // namespace postern::markup
