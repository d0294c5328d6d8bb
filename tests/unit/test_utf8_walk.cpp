// The UTF-8 walk (filters/text/utf8.h) that the JSON, HTML, XML and terminal
// writers share: each well-formed sequence, or one ill-formed octet standing
// for U+FFFD. (Its writers' own escapes: test_audit_log, test_audit_report.)
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "filters/text/utf8.h"

namespace utf8 = postern::utf8;

namespace {

struct Step {
  std::string octets;
  char32_t code_point;
  bool well_formed;
  bool operator==(const Step&) const = default;
};

std::vector<Step> walk(std::string_view s) {
  std::vector<Step> out;
  for (const utf8::Unit& u : utf8::Units(s)) out.push_back({std::string(u.octets), u.code_point, u.well_formed});
  return out;
}

Step bad(const char* octet) { return {octet, utf8::kReplacement, false}; }

}  // namespace

TEST_CASE("utf8 walk yields each well-formed sequence with its code point", "[utf8]") {
  CHECK(walk("").empty());
  CHECK(walk("a\x7f") == std::vector<Step>{{"a", 'a', true}, {"\x7f", 0x7f, true}});
  CHECK(walk("\xc2\x80\xc3\xa4\xdf\xbf") ==
        std::vector<Step>{{"\xc2\x80", 0x80, true}, {"\xc3\xa4", 0xe4, true}, {"\xdf\xbf", 0x7ff, true}});
  CHECK(walk("\xe0\xa0\x80\xe2\x82\xac\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf") ==
        std::vector<Step>{{"\xe0\xa0\x80", 0x800, true},
                          {"\xe2\x82\xac", 0x20ac, true},
                          {"\xed\x9f\xbf", 0xd7ff, true},   // last before the surrogates
                          {"\xee\x80\x80", 0xe000, true},   // first after them
                          {"\xef\xbf\xbf", 0xffff, true}});
  CHECK(walk("\xf0\x90\x80\x80\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf") ==
        std::vector<Step>{{"\xf0\x90\x80\x80", 0x10000, true},
                          {"\xf0\x9f\x98\x80", 0x1f600, true},
                          {"\xf4\x8f\xbf\xbf", 0x10ffff, true}});
  // A U+FFFD written in the text is a well-formed character, not a replacement.
  CHECK(walk("\xef\xbf\xbd") == std::vector<Step>{{"\xef\xbf\xbd", 0xfffd, true}});
}

TEST_CASE("utf8 walk replaces each octet of an ill-formed sequence on its own", "[utf8]") {
  // Overlong forms: of '/', of U+007F, of U+07FF (3 octets), of U+FFFF (4 octets).
  CHECK(walk("\xc0\xaf") == std::vector<Step>{bad("\xc0"), bad("\xaf")});
  CHECK(walk("\xc1\xbf") == std::vector<Step>{bad("\xc1"), bad("\xbf")});
  CHECK(walk("\xe0\x9f\xbf") == std::vector<Step>{bad("\xe0"), bad("\x9f"), bad("\xbf")});
  CHECK(walk("\xf0\x8f\xbf\xbf") == std::vector<Step>{bad("\xf0"), bad("\x8f"), bad("\xbf"), bad("\xbf")});
  // Surrogates, high and low.
  CHECK(walk("\xed\xa0\x80") == std::vector<Step>{bad("\xed"), bad("\xa0"), bad("\x80")});
  CHECK(walk("\xed\xbf\xbf") == std::vector<Step>{bad("\xed"), bad("\xbf"), bad("\xbf")});
  // Truncated: at the end of the text, and followed by ASCII.
  CHECK(walk("\xc3") == std::vector<Step>{bad("\xc3")});
  CHECK(walk("\xe2\x82") == std::vector<Step>{bad("\xe2"), bad("\x82")});
  CHECK(walk("\xf0\x9f\x98" "a") == std::vector<Step>{bad("\xf0"), bad("\x9f"), bad("\x98"), {"a", 'a', true}});
  // Past U+10FFFF, and lead octets that never start a sequence.
  CHECK(walk("\xf4\x90\x80\x80") == std::vector<Step>{bad("\xf4"), bad("\x90"), bad("\x80"), bad("\x80")});
  CHECK(walk("\xf5\x80\x80\x80") == std::vector<Step>{bad("\xf5"), bad("\x80"), bad("\x80"), bad("\x80")});
  CHECK(walk("\xf8\xfc\xfe\xff") == std::vector<Step>{bad("\xf8"), bad("\xfc"), bad("\xfe"), bad("\xff")});
  // Stray continuation octets, alone and after a complete sequence.
  CHECK(walk("\x80\xbf") == std::vector<Step>{bad("\x80"), bad("\xbf")});
  CHECK(walk("\xc3\xa4\xa4") == std::vector<Step>{{"\xc3\xa4", 0xe4, true}, bad("\xa4")});
  // The walk resumes right after the bad octet: a good sequence there is kept.
  CHECK(walk("\xe2\xc3\xa4") == std::vector<Step>{bad("\xe2"), {"\xc3\xa4", 0xe4, true}});
}

TEST_CASE("utf8 walk covers every octet once and agrees with valid_utf8", "[utf8]") {
  const std::vector<std::string> texts = {"plain", "\xc3\xa4\xe2\x82\xac\xf0\x9f\x98\x80", "\xc0\xaf\xed\xa0\x80x",
                                          "\xff\xfe", "a\xe2\x82", std::string("\0\x01", 2)};
  for (const std::string& t : texts) {
    std::string joined;
    bool all_good = true;
    for (const utf8::Unit& u : utf8::Units(t)) {
      const std::size_t expected = !u.well_formed ? 1 : u.ascii() ? 1 : postern::utf8_sequence_length(t, joined.size());
      CHECK(u.octets.size() == expected);
      joined += u.octets;
      all_good = all_good && u.well_formed;
    }
    CHECK(joined == t);
    CHECK(all_good == postern::valid_utf8(t));
  }
}
