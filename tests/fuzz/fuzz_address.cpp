// Fuzz target: parse_path, is_domain, is_address_literal (filters/address.h).
// The input is the text after "MAIL FROM:" / "RCPT TO:"; the flags
// (allow_null, allow_postmaster, allow_utf8) are tried in all eight
// combinations, so seeds are plain paths.
//
// Asserts, for a successful parse:
//  - end is within the text, text[0] == '<', text[end - 1] == '>', end <= 256
//    (RFC 5321 §4.5.3.1.3), local part <= 64 and domain <= 255 octets;
//  - the mailbox is empty only for "<>" with allow_null, and domain-less only
//    for "<Postmaster>" (any case) with allow_postmaster;
//  - the mailbox has no control octet (CR, LF, NUL: it reaches headers and
//    logs) and, without allow_utf8, no octet >= 0x80;
//  - the domain is a Domain or an address literal;
//  - "<" + mailbox.str() + ">" re-parses to the same mailbox, consuming it all;
//  - the result does not depend on the bytes after end;
//  - anything accepted without allow_utf8 is accepted the same with it;
//  - same_mailbox holds between the mailbox and itself, its domain in upper
//    case, and its local part quoted (each octet a quoted-pair), both ways;
// and for a failure: the mailbox is empty and kNonAscii only without allow_utf8.
// is_domain(x) implies letters, digits, '-', '.' only, <= 255 octets.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "filters/address.h"
#include "fuzz_util.h"

using postern::Mailbox;
using postern::PathError;
using postern::PathParse;
using postern::fuzz::escape;

namespace {

const char* name(PathError e) {
  switch (e) {
    case PathError::kNone: return "none";
    case PathError::kSyntax: return "syntax";
    case PathError::kTooLong: return "too-long";
    case PathError::kNonAscii: return "non-ascii";
    case PathError::kNullNotAllowed: return "null-not-allowed";
  }
  return "?";
}

std::string describe(const PathParse& p) {
  return std::string("error=") + name(p.error) + " local=\"" + escape(p.mailbox.local_part) + "\" domain=\"" +
         escape(p.mailbox.domain) + "\" end=" + std::to_string(p.end);
}

bool same(const PathParse& a, const PathParse& b) {
  return a.error == b.error && a.end == b.end && a.mailbox.local_part == b.mailbox.local_part &&
         a.mailbox.domain == b.mailbox.domain;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i] >= 'A' && a[i] <= 'Z' ? static_cast<char>(a[i] - 'A' + 'a') : a[i];
    if (x != b[i]) return false;
  }
  return true;
}

void check(std::string_view text, bool allow_null, bool allow_postmaster, bool allow_utf8) {
  auto where = [&] {
    return std::string(std::string("  text: \"") + escape(text) + "\" allow_null=" +
                            std::to_string(allow_null) + " allow_postmaster=" +
                            std::to_string(allow_postmaster) + " allow_utf8=" + std::to_string(allow_utf8));
  };
  PathParse p = postern::parse_path(text, allow_null, allow_postmaster, allow_utf8);
  const Mailbox& m = p.mailbox;
  bool ascii = true;
  for (unsigned char c : text) ascii = ascii && c < 0x80;
  if (!allow_utf8 && (ascii || p.error == PathError::kNone)) {
    PathParse utf8 = postern::parse_path(text, allow_null, allow_postmaster, true);
    FUZZ_CHECK(same(utf8, p), "  allow_utf8 changes the result of an ASCII path\n" + where() + "\n  got: " +
                                  describe(p) + "\n  with utf8: " + describe(utf8));
  }
  if (p.error != PathError::kNone) {
    FUZZ_CHECK(m.empty(), where() + "\n  got: " + describe(p));
    FUZZ_CHECK(!(allow_utf8 && p.error == PathError::kNonAscii), where() + "\n  got: " + describe(p));
    FUZZ_CHECK(!(allow_null && p.error == PathError::kNullNotAllowed), where() + "\n  got: " + describe(p));
    return;
  }
  FUZZ_CHECK(p.end >= 2 && p.end <= text.size() && text[0] == '<' && text[p.end - 1] == '>' && p.end <= 256,
             where() + "\n  got: " + describe(p));
  FUZZ_CHECK(m.local_part.size() <= 64 && m.domain.size() <= 255, where() + "\n  got: " + describe(p));
  if (m.empty()) {
    FUZZ_CHECK(allow_null && text.substr(0, 2) == "<>" && p.end == 2, where() + "\n  got: " + describe(p));
  } else {
    FUZZ_CHECK(!m.local_part.empty(), where() + "\n  got: " + describe(p));
  }
  if (m.domain.empty() && !m.empty()) {
    FUZZ_CHECK(allow_postmaster && iequals(m.local_part, "postmaster"), where() + "\n  got: " + describe(p));
  }
  for (unsigned char c : m.local_part + m.domain) {
    FUZZ_CHECK(c >= 32 && c != 127, "control octet in the mailbox\n" + where() + "\n  got: " + describe(p));
    FUZZ_CHECK(allow_utf8 || c < 0x80, "8-bit mailbox without SMTPUTF8\n" + where() + "\n  got: " + describe(p));
  }
  if (!m.domain.empty()) {
    FUZZ_CHECK(postern::is_domain(m.domain) || postern::is_address_literal(m.domain) || allow_utf8,
               where() + "\n  got: " + describe(p));
  }

  // Re-serialized (the source route dropped), the mailbox parses back the same.
  if (!m.empty()) {
    std::string wire = "<" + m.str() + ">";
    PathParse back = postern::parse_path(wire, allow_null, allow_postmaster, allow_utf8);
    FUZZ_CHECK(back.error == PathError::kNone && back.end == wire.size() &&
                   back.mailbox.local_part == m.local_part && back.mailbox.domain == m.domain,
               "  re-serialized mailbox does not parse back\n" + where() + "\n  got: " + describe(p) +
                   "\n  wire: \"" + escape(wire) + "\"\n  back: " + describe(back));
  }
  // One mailbox in the spellings an MTA reads as the same (the duplicate-RCPT check).
  if (!m.empty()) {
    Mailbox upper = m;
    for (char& c : upper.domain) c = c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c;
    Mailbox quoted = m;
    if (m.local_part.front() != '"') {
      quoted.local_part = "\"";
      for (char c : m.local_part) quoted.local_part.append(1, '\\').append(1, c);
      quoted.local_part += '"';
    }
    const Mailbox* spellings[] = {&m, &upper, &quoted};
    for (const Mailbox* other : spellings) {
      FUZZ_CHECK(postern::same_mailbox(m, *other) && postern::same_mailbox(*other, m),
                 "  same_mailbox misses a spelling\n" + where() + "\n  got: " + describe(p) + "\n  other: \"" +
                     escape(other->str()) + "\"");
    }
  }
  // What follows the path (ESMTP parameters) cannot change the path.
  PathParse cut = postern::parse_path(text.substr(0, p.end), allow_null, allow_postmaster, allow_utf8);
  FUZZ_CHECK(same(cut, p), "  result depends on the bytes after the path\n" + where() + "\n  got: " +
                               describe(p) + "\n  on text[0:end]: " + describe(cut));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  for (int flags = 0; flags < 8; ++flags) check(text, flags & 1, flags & 2, flags & 4);

  // The same text as a domain and as an address literal.
  if (postern::is_domain(text)) {
    bool ok = text.size() <= 255;
    for (unsigned char c : text) {
      ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.');
    }
    FUZZ_CHECK(ok, "is_domain(\"" + escape(text) + "\")");
  }
  if (postern::is_address_literal(text)) {
    bool ok = text.size() >= 3 && text.front() == '[' && text.back() == ']';
    for (unsigned char c : text.substr(1, text.size() - 2)) ok = ok && c >= 33 && c <= 126 && c != '[' && c != ']' && c != '\\';
    FUZZ_CHECK(ok, "is_address_literal(\"" + escape(text) + "\")");
  }
  return 0;
}
