// A strict RFC 7208 §4.6 / §7.1 (ABNF, Appendix A) parser for SPF records,
// in front of libspf2. libspf2 evaluates, but it compiles records loosely:
// it evaluates records RFC 7208 calls permerror (bad domain-specs, NUL and
// control bytes, "/032", two exp= or redirect=, bad macros, "redirect:" as a
// mechanism) and refuses valid ones (CIDR /0, modifier names with '.' or '_',
// redirect= before all). So every SPF record libspf2 is handed is parsed
// here first: a record that does not parse makes the check a permerror, and
// one that does is handed to libspf2 rewritten into a form it evaluates as
// RFC 7208 says (spf_record_for_libspf2()). I/O-free; never throws.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace postern {

enum class SpfMechanism { kAll, kInclude, kA, kMx, kPtr, kIp4, kIp6, kExists };

struct SpfDirective {
  char qualifier = '+';           // + - ~ ?
  SpfMechanism mechanism = SpfMechanism::kAll;
  std::string domain_spec;        // include, a, mx, ptr, exists ("" = the current domain)
  std::string network;            // ip4, ip6: the address as written
  std::optional<unsigned> cidr4;  // a, mx, ip4
  std::optional<unsigned> cidr6;  // a, mx, ip6
};

struct SpfRecord {
  std::vector<SpfDirective> directives;
  std::optional<std::string> redirect;  // domain-spec
  std::optional<std::string> exp;       // domain-spec
  bool has_all() const;
};

struct SpfRecordParse {
  std::optional<SpfRecord> record;
  std::string error;  // why not, when !record
};

// Whether a TXT string is an SPF record: "v=spf1" (any case) followed by a
// space or its end (§4.5).
bool is_spf_record(std::string_view txt);

// The whole record, "v=spf1" included.
SpfRecordParse parse_spf_record(std::string_view text);

// macro-string (§7.1); c, r and t only in an explanation.
bool valid_macro_string(std::string_view s, bool explanation);
// domain-spec = macro-string domain-end (§7.1).
bool valid_domain_spec(std::string_view s);

// Names ending so are never sent: the SPF DNS layer answers them from the
// name before the suffix (see spf_record_for_libspf2).
inline constexpr std::string_view kSpfAnyAddressSuffix = ".postern-cidr0.invalid";

// `record` as libspf2 must see it to evaluate it by RFC 7208, for a client of
// that address family:
// - exp= is left out (postern fetches the explanation itself, §6.2: its
//   failure must not change the result), and unknown modifiers (ignored,
//   §6) too; redirect= goes last, and only when there is no "all" (§6.1).
// - CIDR /0, which libspf2 refuses: ip4:X/0 and ip6:X/0 become the two /1
//   halves; a/0 and mx/0 of the client's family become a:D+suffix and
//   mx:D+suffix, which the DNS layer answers with the client's own address
//   whenever D (or each MX host) has an address of that family.
// - Literal parts of domain-specs in lower case (DNS names are not case
//   sensitive; libspf2 compares ptr: targets by bytes).
std::string spf_record_for_libspf2(const SpfRecord& record, bool client_ipv6);

// A name from a macro expansion cut to 253 octets by dropping labels from the
// left (§7.3), without a trailing dot.
std::string truncate_domain(std::string name);

}  // namespace postern
