// Mailbox and path model of RFC 5321 §4.1.2, and its strict parser.
// Filters see addresses as local part + domain; the proxy parses them from
// MAIL FROM / RCPT TO lines. The parser is I/O-free and never throws.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace postern {

// A mailbox "local@domain"; both parts kept as sent (quoted local parts keep
// their quotes, so the mailbox is forwarded exactly as the client wrote it).
struct Mailbox {
  std::string local_part;
  std::string domain;  // empty only for the special "<postmaster>" recipient

  std::string str() const;  // "local@domain" (or "postmaster")
  bool empty() const { return local_part.empty() && domain.empty(); }
};

// One mailbox named twice, in any spelling every MTA reads as the same: the
// local part's value exactly (RFC 5321 §2.4 leaves its case to the receiving
// host; quotes and quoted-pairs are not part of it, RFC 5322 §3.2.4), except
// "postmaster" in any case (§4.5.1); the domain in any case (§2.4, DNS
// names; an internationalized one as U-labels or A-labels alike, "bücher.example"
// = "BÜCHER.example" = "xn--bcher-kva.example", IDNA2008), an address literal
// by its address ("[IPv6:::1]" = "[ipv6:0::1]").
bool same_mailbox(const Mailbox& a, const Mailbox& b);
// What same_mailbox compares: one string for every spelling of a mailbox
// ("local-value@domain-key"), for a set of the mailboxes seen.
std::string mailbox_key(const Mailbox& m);

enum class PathError {
  kNone,
  kSyntax,      // not a Path of RFC 5321 §4.1.2
  kTooLong,     // local part > 64, domain > 255 or path > 256 octets (§4.5.3.1)
  kNonAscii,    // 8-bit octets: needs SMTPUTF8 (RFC 6531), 553 5.6.7
  kNullNotAllowed,  // "<>" where a forward-path is required
};

struct PathParse {
  PathError error = PathError::kNone;
  Mailbox mailbox;    // empty for the null reverse-path "<>"
  std::size_t end = 0;  // offset just past the closing '>'
};

// Parses a Path ("<" [A-d-l ":"] Mailbox ">") at the start of `text`.
// `allow_null` accepts "<>" (reverse-path); `allow_postmaster` accepts the
// domain-less "<Postmaster>" of §4.5.1. A source route (A-d-l) is accepted
// and dropped, as §4.1.2 and Appendix C allow.
PathParse parse_path(std::string_view text, bool allow_null, bool allow_postmaster,
                     bool allow_utf8 = false);

// True when `text` is a Domain (sub-domain *("." sub-domain)).
bool is_domain(std::string_view text);
// True when `text` is an address-literal "[...]".
bool is_address_literal(std::string_view text);

}  // namespace postern
