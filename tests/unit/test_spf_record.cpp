// The strict RFC 7208 record parser in front of libspf2 (filters/auth/
// spf_record.h): lists of records that must parse and of records that must
// be a permerror, by class, and the form libspf2 is handed.
#include <catch2/catch.hpp>

#include "filters/spf/spf_record.h"

using namespace postern;

namespace {

std::string error_of(const std::string& record) {
  SpfRecordParse p = parse_spf_record(record);
  return p.record ? std::string() : p.error;
}

}  // namespace

TEST_CASE("spf record: valid records parse", "[spf_record]") {
  const char* valid[] = {
      "v=spf1",
      "V=SPF1 -ALL",
      "v=spf1 a  -all ",                                 // several spaces, a trailing one
      "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all",
      "v=spf1 ip4:0.0.0.0/0 ip6:::/0",                   // CIDR /0 (libspf2 refuses it)
      "v=spf1 a/0 mx//0 a:example.com/24//64 mx:example.com/32",
      "v=spf1 moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -all",  // modifier name with '.' and '_'
      "v=spf1 redirect=example.com ~all",                // redirect= before all
      "v=spf1 include:_spf.%{d2} exists:%{i}.%{l2r-}.user.%{d2} -all",
      "v=spf1 a:macro%%percent%_%_space%-url-space.example.com -all",
      "v=spf1 -all exp=explain.%{d}",
      "v=spf1 a:foo.example.xn--zckzah a:foo:bar/baz.example.com a:example.com.",
      "v=spf1 ptr ptr:example.com ?all",
      "v=spf1 ip6:::1.1.1.1/0 ip6:Cafe:Babe:8000::/33",
      "v=spf1 a:%{H} -all",
      "v=spf1 exists:%{d0001}.example.com exists:%{l12345678901234567890r-}.example.com",  // long DIGITs
      "v=spf1 foo=bar",                                  // an unknown modifier is ignored
  };
  for (const char* r : valid) {
    INFO(r);
    CHECK(error_of(r).empty());
  }
}

TEST_CASE("spf record: syntax errors are permerrors, by class", "[spf_record]") {
  const char* invalid[] = {
      // domain-spec: domain-end must be "." toplabel or a macro
      "v=spf1 a:museum", "v=spf1 a:museum.", "v=spf1 a:111.222.33.44", "v=spf1 a:abc.123",
      "v=spf1 a:example.-com", "v=spf1 mx:example.com:8080", "v=spf1 a:", "v=spf1 mx: -all",
      "v=spf1 include:", "v=spf1 exists:", "v=spf1 ptr:", "v=spf1 exists:foo.example.com/24",
      // bytes outside printable US-ASCII
      "v=spf1 a:ctrl.example.com\rptr -all",
      "v=spf1 \x80" "a:example.net -all", "v=spf1 a:example.net \x96" "all", "v=spf1 ip4:192.0.2.5\n",
      // CIDR lengths: leading zero, out of range, on the wrong mechanism
      "v=spf1 ip4:1.2.3.4/032", "v=spf1 ip4:1.2.3.4/33", "v=spf1 ip6:::1/129", "v=spf1 a/33",
      "v=spf1 a//129", "v=spf1 a/24/64", "v=spf1 ip6:::1.1.1.1//33", "v=spf1 ptr/0",
      // addresses
      "v=spf1 ip4:1.2.3", "v=spf1 ip4:01.2.3.4", "v=spf1 ip4:256.2.3.4", "v=spf1 ip6::CAFE::BABE", "v=spf1 ip4",
      // modifiers: twice, empty, bad macro-string, "redirect:" as a mechanism, a qualifier
      "v=spf1 exp=a.example.com -all exp=b.example.com", "v=spf1 redirect=a.example.com redirect=b.example.com",
      "v=spf1 exp= -all", "v=spf1 ?all redirect=", "v=spf1 -all foo=%abc", "v=spf1 redirect:example.com",
      "v=spf1 -redirect=example.com", "v=spf1 =all", "v=spf1 1up=foo",
      // macros
      "v=spf1 exists:%{x}.example.com", "v=spf1 exists:foo%.example.com", "v=spf1 exists:%(ir).example.com",
      "v=spf1 a:%{d0}.example.com", "v=spf1 a:%{c}.example.com", "v=spf1 a:%{ir", "v=spf1 a:example.com%",
      // mechanisms
      "v=spf1 all:foo", "v=spf1 all/24", "v=spf1 nothing", "v=spf1 -", "v=spf1 include",
  };
  for (const char* r : invalid) {
    INFO(r);
    CHECK_FALSE(error_of(r).empty());
  }
  CHECK(error_of("v=spf1 exp=a.example.com exp=b.example.com").find("twice") != std::string::npos);
  CHECK_FALSE(error_of(std::string("v=spf1 a:foo.example.com\0", 25)).empty());  // a NUL byte
  CHECK_FALSE(error_of(std::string("v=spf1 mx:foo.example.com\0 -all", 30)).empty());
}

TEST_CASE("spf record: only v=spf1 and a space or the end is a record", "[spf_record]") {
  CHECK(is_spf_record("v=spf1"));
  CHECK(is_spf_record("v=SPF1 -all"));
  CHECK_FALSE(is_spf_record("v=spf10 -all"));
  CHECK_FALSE(is_spf_record("v=spf1-all"));
  CHECK_FALSE(is_spf_record("spf2.0/pra -all"));
}

TEST_CASE("spf record: the form libspf2 is handed", "[spf_record]") {
  auto handed = [](const char* r, bool v6 = false) {
    SpfRecordParse p = parse_spf_record(r);
    REQUIRE(p.record);
    return spf_record_for_libspf2(*p.record, v6);
  };
  // exp= and unknown modifiers left out; redirect= last, and none with all.
  CHECK(handed("v=spf1 moo.cow=x exp=e.example.com ip4:1.2.3.4 -all") == "v=spf1 +ip4:1.2.3.4 -all");
  CHECK(handed("v=spf1 redirect=r.example.com ~all") == "v=spf1 ~all");
  CHECK(handed("v=spf1 redirect=r.example.com ip4:1.2.3.4") == "v=spf1 +ip4:1.2.3.4 redirect=r.example.com");
  // CIDR /0: halves for ip4/ip6; the any-address name for a/mx of the client's family.
  CHECK(handed("v=spf1 -ip4:1.2.3.4/0") == "v=spf1 -ip4:0.0.0.0/1 -ip4:128.0.0.0/1");
  CHECK(handed("v=spf1 ip6:::/0") == "v=spf1 +ip6:::/1 +ip6:8000::/1");
  CHECK(handed("v=spf1 a/0 -all") == "v=spf1 +a:%{d}" + std::string(kSpfAnyAddressSuffix) + " -all");
  CHECK(handed("v=spf1 a/0 -all", true) == "v=spf1 +a -all");
  CHECK(handed("v=spf1 mx:Example.COM.//0", true) == "v=spf1 +mx:example.com" + std::string(kSpfAnyAddressSuffix));
  CHECK(handed("v=spf1 a:example.com/24//0") == "v=spf1 +a:example.com/24");
  // Literals in lower case, macro letters as written (upper case = URL-escaped).
  CHECK(handed("v=spf1 ptr:Example.Com exists:%{L}.X.example.com") == "v=spf1 +ptr:example.com +exists:%{L}.x.example.com");
}

TEST_CASE("spf record: expanded names cut to 253 octets from the left", "[spf_record]") {
  std::string label(60, 'a');
  std::string name = label + "." + label + "." + label + "." + label + "." + label + ".example.com.";
  std::string cut = truncate_domain(name);
  CHECK(cut.size() <= 253);
  CHECK(cut == label + "." + label + "." + label + ".example.com");
  CHECK(truncate_domain("example.com.") == "example.com");
  CHECK(truncate_domain(std::string(300, 'a')).empty());
}
