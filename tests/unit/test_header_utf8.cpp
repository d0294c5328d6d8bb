// UTF-8 well-formedness of envelope text (valid_utf8) and of an SMTPUTF8
// message's header section (HeaderUtf8Check), fed whole and octet by octet.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "filters/text/utf8.h"
#include "proxy/header_utf8_check.h"

using postern::HeaderUtf8Check;
using postern::valid_utf8;

namespace {

const std::vector<std::string> kIllFormed = {
    "\xc0\xaf", "\xc1\xbf", "\xe0\x80\xaf", "\xf0\x80\x80\xaf",  // overlong
    "\xed\xa0\x80", "\xed\xbf\xbf",                               // surrogates
    "\xc3", "\xe2\x82", "\xf0\x9f\x98",                           // truncated
    "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xfe", "\xff",       // past U+10FFFF
    "\x80", "\xbf", "\xc3\xb6\x80",                                // lone continuation
};
const std::vector<std::string> kWellFormed = {
    "", "ascii", "j\xc3\xb6rg", "\xe2\x9c\x93", "\xf0\x9f\x98\x80", "\xef\xbf\xbf", "\xf4\x8f\xbf\xbf",
    "\xed\x9f\xbf", "\xee\x80\x80",
};

bool check(const std::string& content, bool by_octet) {
  HeaderUtf8Check c;
  if (by_octet) {
    for (char ch : content) c.on_append(std::string_view(&ch, 1));
  } else {
    c.on_append(content);
  }
  return c.valid();
}

}  // namespace

TEST_CASE("valid_utf8 refuses every kind of ill-formed sequence", "[utf8]") {
  for (const std::string& bad : kIllFormed) {
    INFO("bad: " << bad);
    CHECK_FALSE(valid_utf8("a" + bad + "b"));
    CHECK_FALSE(valid_utf8(bad));
  }
  for (const std::string& good : kWellFormed) {
    INFO("good: " << good);
    CHECK(valid_utf8("a" + good + "b"));
  }
}

TEST_CASE("HeaderUtf8Check checks the header section only", "[utf8]") {
  for (bool by_octet : {false, true}) {
    for (const std::string& bad : kIllFormed) {
      INFO("bad: " << bad << " by octet " << by_octet);
      CHECK_FALSE(check("Subject: x" + bad + "y\r\n\r\nbody\r\n", by_octet));
      CHECK_FALSE(check("From: a\r\nSubject: " + bad + "\r\n", by_octet));  // no body, ends in the header
      CHECK_FALSE(check("Subject: x\r\n\t" + bad + "\r\n\r\n", by_octet));  // folded line
      CHECK(check("Subject: x\r\n\r\nbody " + bad + "\r\n", by_octet));     // the body is not checked
      CHECK(check("\r\n" + bad + "\r\n", by_octet));                        // empty header section
    }
    for (const std::string& good : kWellFormed) {
      INFO("good: " << good);
      CHECK(check("Subject: " + good + "\r\n\r\nbody\r\n", by_octet));
    }
  }
  CHECK_FALSE(check("Subject: \xc3", false));  // truncated at the very end
}
