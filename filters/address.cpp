// RFC 5321 §4.1.2 path and mailbox parser: strict, bounded, allocation only
// for the result.
#include "filters/address.h"

#include <arpa/inet.h>

#include <cctype>
#include <cstring>

#include <fmt/format.h>

#include "filters/text/ascii.h"
#include "filters/text/idna.h"

namespace postern {
namespace {

constexpr std::size_t kMaxLocalPart = 64;   // RFC 5321 §4.5.3.1.1
constexpr std::size_t kMaxDomain = 255;     // §4.5.3.1.2
constexpr std::size_t kMaxPath = 256;       // §4.5.3.1.3

bool is_alpha(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
bool is_let_dig(unsigned char c) { return is_alpha(c) || is_digit(c); }

// atext of RFC 5322 §3.2.3.
bool is_atext(unsigned char c) {
  if (is_let_dig(c)) return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '/': case '=': case '?': case '^': case '_': case '`': case '{':
    case '|': case '}': case '~':
      return true;
    default:
      return false;
  }
}

bool is_utf8_octet(unsigned char c) { return c >= 0x80; }

// Dot-string = Atom *("." Atom); returns the length consumed, 0 on error.
std::size_t scan_dot_string(std::string_view s, bool allow_utf8, bool& saw_8bit) {
  std::size_t i = 0;
  bool atom_start = true;
  while (i < s.size()) {
    unsigned char c = s[i];
    if (is_atext(c) || is_utf8_octet(c)) {
      if (is_utf8_octet(c)) {
        saw_8bit = true;
        if (!allow_utf8) return 0;
      }
      atom_start = false;
      ++i;
    } else if (c == '.' && !atom_start) {
      atom_start = true;
      ++i;
    } else {
      break;
    }
  }
  return atom_start ? 0 : i;  // empty, or ends with '.'
}

// Quoted-string = DQUOTE *QcontentSMTP DQUOTE; returns length, 0 on error.
std::size_t scan_quoted_string(std::string_view s, bool allow_utf8, bool& saw_8bit) {
  if (s.empty() || s[0] != '"') return 0;
  std::size_t i = 1;
  while (i < s.size()) {
    unsigned char c = s[i];
    if (c == '"') return i + 1;
    if (c == '\\') {
      if (i + 1 >= s.size()) return 0;
      unsigned char q = s[i + 1];
      if (q < 32 || q > 126) return 0;
      i += 2;
      continue;
    }
    if (is_utf8_octet(c)) {
      saw_8bit = true;
      if (!allow_utf8) return 0;
    } else if (c < 32 || c == 127) {
      return 0;
    }
    ++i;
  }
  return 0;
}

// Domain = sub-domain *("." sub-domain) (RFC 5321 §4.1.2); with `utf8`, octets
// >= 0x80 count as letters (U-labels, RFC 6531 §3.3).
bool domain_syntax(std::string_view text, bool utf8) {
  if (text.empty() || text.size() > kMaxDomain) return false;
  std::size_t label_len = 0;
  unsigned char prev = '.';
  for (unsigned char c : text) {
    if (c == '.') {
      if (label_len == 0 || prev == '-') return false;
      label_len = 0;
    } else if (is_let_dig(c) || (utf8 && c >= 0x80) || (c == '-' && label_len > 0)) {
      if (++label_len > 63) return false;
    } else {
      return false;
    }
    prev = c;
  }
  return label_len > 0 && prev != '-';
}

}  // namespace

bool is_domain(std::string_view text) { return domain_syntax(text, false); }

bool is_address_literal(std::string_view text) {
  if (text.size() < 3 || text.front() != '[' || text.back() != ']') return false;
  std::string_view inner_view = text.substr(1, text.size() - 2);
  // dcontent is %d33-90 / %d94-126 (§4.1.3); checked before inet_pton, which
  // would stop at a NUL.
  for (unsigned char c : inner_view) {
    if (c < 33 || c > 126 || c == '[' || c == '\\' || c == ']') return false;
  }
  std::string inner(inner_view);
  unsigned char buf[16];
  if (inet_pton(AF_INET, inner.c_str(), buf) == 1) return true;
  auto colon = inner.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == inner.size()) return false;
  // ABNF strings are case-insensitive: "IPV6:" is the IPv6 tag too.
  if (ascii::iequals(std::string_view(inner).substr(0, colon), "ipv6")) {
    return inet_pton(AF_INET6, inner.c_str() + colon + 1, buf) == 1;
  }
  // General-address-literal = Standardized-tag ":" 1*dcontent.
  for (std::size_t i = 0; i < colon; ++i) {
    unsigned char c = inner[i];
    if (!is_let_dig(c) && !(c == '-' && i > 0)) return false;
  }
  return true;
}

std::string Mailbox::str() const {
  if (domain.empty()) return local_part;
  std::string out;
  out.reserve(local_part.size() + 1 + domain.size());
  out.append(local_part).append(1, '@').append(domain);
  return out;
}

namespace {

// A local part's value octet by octet: a Quoted-string without its quotes
// and with its quoted-pairs resolved (RFC 5322 §3.2.4: quoting is not part
// of the value), so "user", "us\er" and user are one local part.
class LocalValue {
 public:
  explicit LocalValue(std::string_view s) : s_(s) {
    quoted_ = s_.size() >= 2 && s_.front() == '"' && s_.back() == '"';
    if (quoted_) s_ = s_.substr(1, s_.size() - 2);
  }
  // The next octet, or -1 past the end.
  int next() {
    if (i_ >= s_.size()) return -1;
    if (quoted_ && s_[i_] == '\\' && i_ + 1 < s_.size()) ++i_;
    return static_cast<unsigned char>(s_[i_++]);
  }

 private:
  std::string_view s_;
  bool quoted_ = false;
  std::size_t i_ = 0;
};

// The 16 octets of an address literal's IP address ("[192.0.2.1]" as
// ::ffff:192.0.2.1, "[IPv6:...]" with its tag in any case), or false for a
// general address literal or a domain.
bool literal_address(std::string_view domain, unsigned char out[16]) {
  if (domain.size() < 3 || domain.size() > 64 || domain.front() != '[' || domain.back() != ']') return false;
  std::string inner(domain.substr(1, domain.size() - 2));
  unsigned char v4[4];
  if (inet_pton(AF_INET, inner.c_str(), v4) == 1) {
    std::memset(out, 0, 10);
    out[10] = out[11] = 0xff;
    std::memcpy(out + 12, v4, 4);
    return true;
  }
  return ascii::istarts_with(inner, "ipv6:") && inet_pton(AF_INET6, inner.c_str() + 5, out) == 1;
}

}  // namespace

std::string mailbox_key(const Mailbox& m) {
  std::string key;
  LocalValue value(m.local_part);
  for (int c = value.next(); c >= 0; c = value.next()) key += static_cast<char>(c);
  // RFC 5321 §4.5.1: "postmaster" is a case-insensitive local name.
  if (ascii::iequals(key, "postmaster")) key = "postmaster";
  key += '@';
  unsigned char ip[16];
  if (literal_address(m.domain, ip)) {
    key += '[';
    for (unsigned char octet : ip) key += fmt::format("{:02x}", octet);
    key += ']';
  } else if (std::optional<std::string> a_labels = domain_a_labels(m.domain)) {
    key += *a_labels;
  } else {
    key += ascii::to_lower(m.domain);
  }
  return key;
}

bool same_mailbox(const Mailbox& a, const Mailbox& b) { return mailbox_key(a) == mailbox_key(b); }

PathParse parse_path(std::string_view text, bool allow_null, bool allow_postmaster,
                     bool allow_utf8) {
  PathParse result;
  auto fail = [&](PathError e) {
    result.error = e;
    result.mailbox = {};
    return result;
  };
  if (text.empty() || text[0] != '<') return fail(PathError::kSyntax);
  auto close = text.find('>');
  if (close == std::string_view::npos) return fail(PathError::kSyntax);
  // A quoted local part may contain '>': find the real closing bracket.
  std::string_view inner = text.substr(1);
  if (inner.size() > 0 && inner[0] == '>') {
    if (!allow_null) return fail(PathError::kNullNotAllowed);
    result.end = 2;
    return result;
  }
  if (text.size() > kMaxPath + 2 && close > kMaxPath + 1) return fail(PathError::kTooLong);

  std::size_t i = 0;
  // Optional A-d-l ":" source route, e.g. "@a.example,@b.example:".
  if (!inner.empty() && inner[0] == '@') {
    while (i < inner.size() && inner[i] == '@') {
      std::size_t start = ++i;
      while (i < inner.size() && inner[i] != ',' && inner[i] != ':') ++i;
      if (i >= inner.size() || !is_domain(inner.substr(start, i - start))) {
        return fail(PathError::kSyntax);
      }
      if (inner[i] == ',') ++i;
      else break;
    }
    if (i >= inner.size() || inner[i] != ':') return fail(PathError::kSyntax);
    ++i;
  }
  std::string_view rest = inner.substr(i);
  bool saw_8bit = false;
  std::size_t local_len = !rest.empty() && rest[0] == '"'
                              ? scan_quoted_string(rest, allow_utf8, saw_8bit)
                              : scan_dot_string(rest, allow_utf8, saw_8bit);
  if (local_len == 0) {
    return fail(saw_8bit && !allow_utf8 ? PathError::kNonAscii : PathError::kSyntax);
  }
  std::string_view local = rest.substr(0, local_len);
  rest = rest.substr(local_len);
  std::string_view domain;
  if (!rest.empty() && rest[0] == '@') {
    std::size_t end = rest.find('>');
    if (end == std::string_view::npos) return fail(PathError::kSyntax);
    domain = rest.substr(1, end - 1);
    for (unsigned char c : domain) {
      if (c >= 0x80) {
        if (!allow_utf8) return fail(PathError::kNonAscii);
      }
    }
    if (!domain_syntax(domain, allow_utf8) && !is_address_literal(domain)) {
      return fail(PathError::kSyntax);
    }
    rest = rest.substr(end);
  } else {
    // No domain: only "<Postmaster>" (case-insensitive) is allowed (§4.5.1).
    auto eq_ci = [](std::string_view a, std::string_view b) {
      if (a.size() != b.size()) return false;
      for (std::size_t k = 0; k < a.size(); ++k) {
        unsigned char x = a[k], y = b[k];
        if (x >= 'A' && x <= 'Z') x = x - 'A' + 'a';
        if (x != y) return false;
      }
      return true;
    };
    if (!allow_postmaster || !eq_ci(local, "postmaster") || i != 0) {
      return fail(PathError::kSyntax);
    }
  }
  if (rest.empty() || rest[0] != '>') return fail(PathError::kSyntax);
  if (local.size() > kMaxLocalPart || domain.size() > kMaxDomain) return fail(PathError::kTooLong);
  result.end = 1 + i + local_len + (domain.empty() ? 0 : 1 + domain.size()) + 1;
  if (result.end > kMaxPath) return fail(PathError::kTooLong);
  result.mailbox.local_part.assign(local);
  result.mailbox.domain.assign(domain);
  return result;
}

}  // namespace postern
