// Fuzz target: the RAR reader (filters/lua/mime_rar.h), the file names of
// a RAR archive that ctx.body:attachments() lists. The input is a RAR
// archive (or anything); piece sizes derive from it.
//
// Asserts:
//  - the same names and problem whether the stream is fed whole, one byte
//    per feed, or in pieces of random sizes;
//  - every name is well-formed UTF-8 (code page 437 and RAR 4.x Unicode names converted);
//  - no more names than the stream could hold (a name takes at least the header
//    that holds it).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "filters/lua/mime_rar.h"
#include "filters/text/utf8.h"
#include "fuzz_util.h"

using namespace postern::mime;
using postern::fuzz::Choices;

namespace {

std::string describe(const RarReader& r) {
  std::string out = "problem=" + r.problem() + "\n";
  for (const std::string& n : r.names()) out += "  " + postern::fuzz::escape(n, 80) + "\n";
  return out;
}

bool same(const RarReader& a, const RarReader& b) { return a.problem() == b.problem() && a.names() == b.names(); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view stream(reinterpret_cast<const char*>(data), size);
  Choices choices(stream);

  RarReader whole;
  whole.feed(stream);
  whole.finish();

  RarReader bytes;
  for (char c : stream) bytes.feed(std::string_view(&c, 1));
  bytes.finish();
  FUZZ_CHECK(same(whole, bytes), "whole:\n" + describe(whole) + "byte by byte:\n" + describe(bytes));

  RarReader pieces;
  for (std::size_t i = 0; i < stream.size();) {
    const std::size_t n = choices.range(1, 300);
    pieces.feed(stream.substr(i, n));
    i += n;
  }
  pieces.finish();
  FUZZ_CHECK(same(whole, pieces), "whole:\n" + describe(whole) + "in pieces:\n" + describe(pieces));

  FUZZ_CHECK(whole.names().size() <= size / 8 + 1, describe(whole));
  for (const std::string& n : whole.names()) FUZZ_CHECK(postern::valid_utf8(n), describe(whole));
  return 0;
}
