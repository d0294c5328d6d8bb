// Shared by the fuzz targets of the readers that list the file names in a
// binary part (TNEF, RAR, 7z): a Reader has feed(), finish(), names() and
// problem(). Asserts:
//  - the same names and problem whether the stream is fed whole, one byte
//    per feed, or in pieces of random sizes (derived from the stream);
//  - every name is well-formed UTF-8;
//  - no more names than the stream could hold: `max_names`, by default
//    one for each 8 octets (a name takes at least the 8 octets of the
//    record that holds it).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "filters/text/utf8.h"
#include "fuzz_util.h"

namespace postern::fuzz {

template <typename Reader>
void check_name_reader(std::string_view stream, std::size_t max_names = 0) {
  if (max_names == 0) max_names = stream.size() / 8 + 1;
  auto describe = [](const Reader& r) {
    std::string out = "problem=" + r.problem() + "\n";
    for (const std::string& n : r.names()) out += "  " + escape(n, 80) + "\n";
    return out;
  };
  auto same = [](const Reader& a, const Reader& b) { return a.problem() == b.problem() && a.names() == b.names(); };
  Choices choices(stream);

  Reader whole;
  whole.feed(stream);
  whole.finish();

  Reader bytes;
  for (char c : stream) bytes.feed(std::string_view(&c, 1));
  bytes.finish();
  FUZZ_CHECK(same(whole, bytes), "whole:\n" + describe(whole) + "byte by byte:\n" + describe(bytes));

  Reader pieces;
  for (std::size_t i = 0; i < stream.size();) {
    const std::size_t n = choices.range(1, 300);
    pieces.feed(stream.substr(i, n));
    i += n;
  }
  pieces.finish();
  FUZZ_CHECK(same(whole, pieces), "whole:\n" + describe(whole) + "in pieces:\n" + describe(pieces));

  FUZZ_CHECK(whole.names().size() <= max_names, describe(whole));
  for (const std::string& n : whole.names()) FUZZ_CHECK(postern::valid_utf8(n), describe(whole));
}

}  // namespace postern::fuzz
