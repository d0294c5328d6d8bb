// Fuzz target: parse_spf_record, spf_record_for_libspf2, valid_domain_spec,
// truncate_domain (filters/spf/spf_record.h). The input is a TXT string, tried
// as is and behind "v=spf1 ".
//
// Asserts, for a record that parses:
//  - it is printable US-ASCII (every byte of a term 0x21..0x7E);
//  - each directive's domain-spec is a valid domain-spec (or empty);
//  - the form handed to libspf2, for either address family, parses again,
//    has no exp=, is printable US-ASCII, and keeps the record's directives in
//    order (two for a CIDR /0 ip4/ip6) with their qualifiers;
// and for any text: valid_domain_spec implies a valid macro-string;
// truncate_domain's result is at most 253 octets, the input's tail after a
// dot (one trailing dot dropped).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "filters/spf/spf_record.h"
#include "fuzz_util.h"

using postern::fuzz::escape;

namespace {

void check_record(std::string_view text) {
  postern::SpfRecordParse p = postern::parse_spf_record(text);
  if (!p.record) {
    FUZZ_CHECK(!p.error.empty(), "  no record and no error: \"" + escape(text) + "\"");
    return;
  }
  for (std::size_t i = 6; i < text.size(); ++i) {
    const unsigned char c = text[i];
    FUZZ_CHECK(c == ' ' || (c >= 0x21 && c <= 0x7e), "  accepted a byte outside US-ASCII: \"" + escape(text) + "\"");
  }
  std::size_t expected = 0;
  for (const auto& d : p.record->directives) {
    FUZZ_CHECK(d.domain_spec.empty() || postern::valid_domain_spec(d.domain_spec),
               "  directive with a bad domain-spec: \"" + escape(text) + "\"");
    const bool split = (d.mechanism == postern::SpfMechanism::kIp4 && d.cidr4 == 0u) ||
                       (d.mechanism == postern::SpfMechanism::kIp6 && d.cidr6 == 0u);
    expected += split ? 2 : 1;
  }
  for (bool v6 : {false, true}) {
    const std::string handed = postern::spf_record_for_libspf2(*p.record, v6);
    postern::SpfRecordParse again = postern::parse_spf_record(handed);
    FUZZ_CHECK(again.record.has_value(), "  libspf2 form does not parse: \"" + escape(handed) + "\" (" + again.error +
                                             ")\n  from: \"" + escape(text) + "\"");
    FUZZ_CHECK(!again.record->exp, "  libspf2 form keeps exp=: \"" + escape(handed) + "\"");
    FUZZ_CHECK(again.record->directives.size() == expected,
               "  libspf2 form has other directives: \"" + escape(handed) + "\"\n  from: \"" + escape(text) + "\"");
    std::size_t k = 0;
    for (const auto& d : p.record->directives) {
      FUZZ_CHECK(again.record->directives[k].qualifier == d.qualifier,
                 "  qualifier changed: \"" + escape(handed) + "\"\n  from: \"" + escape(text) + "\"");
      k += (d.mechanism == postern::SpfMechanism::kIp4 && d.cidr4 == 0u) ||
                   (d.mechanism == postern::SpfMechanism::kIp6 && d.cidr6 == 0u)
               ? 2
               : 1;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 4096) return 0;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  check_record(text);
  check_record("v=spf1 " + std::string(text));
  if (postern::valid_domain_spec(text)) {
    FUZZ_CHECK(postern::valid_macro_string(text, false), "  domain-spec not a macro-string: \"" + escape(text) + "\"");
  }
  const std::string cut = postern::truncate_domain(std::string(text));
  std::string_view whole = text;
  if (!whole.empty() && whole.back() == '.') whole.remove_suffix(1);
  FUZZ_CHECK(cut.size() <= 253 && whole.ends_with(cut) &&
                 (cut.size() == whole.size() || whole[whole.size() - cut.size() - 1] == '.' || cut.empty()),
             "  truncate_domain: \"" + escape(cut) + "\" from \"" + escape(text) + "\"");
  return 0;
}
