// Fuzz target: the MIME structure reader (filters/lua/mime.h). The input is a
// message; piece sizes and the text budget derive from it, so seeds are
// plain .eml files.
//
// Asserts:
//  - the same structure (problem, every part's type, charset, encoding,
//    disposition, file name, encoded size, kept body) whether the message is
//    fed whole, one byte per feed, or in pieces of random sizes: a read
//    boundary never hides or shows a part (an attachment past any split of
//    the spool is listed);
//  - at most kMaxParts parts; a file name at most kMaxFilename octets plus
//    the cut's character boundary, well-formed UTF-8 with no NUL;
//  - a kept body is a prefix of at most the encoded size, body_whole iff it
//    is all of it; text bodies kept stay within the text budget in all, and
//    text_whole is false when a text part's body is not kept whole.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "filters/lua/mime.h"
#include "filters/text/utf8.h"
#include "fuzz_util.h"

using namespace postern::mime;
using postern::fuzz::Choices;

namespace {

std::string describe(const Structure& s) {
  std::string out = "problem=" + s.problem + " text_whole=" + std::to_string(s.text_whole) + "\n";
  for (const Part& p : s.parts) {
    out += "  " + p.type + " cs=" + p.charset + " cte=" + p.transfer_encoding + " disp=" + p.disposition +
           " name=" + postern::fuzz::escape(p.filename, 80) + " others=" + std::to_string(p.other_filenames.size()) +
           " size=" + std::to_string(p.encoded_size) +
           " body=" + postern::fuzz::escape(p.body, 80) + " whole=" + std::to_string(p.body_whole) + "\n";
  }
  return out;
}

bool same(const Structure& a, const Structure& b) {
  if (a.problem != b.problem || a.text_whole != b.text_whole || a.parts.size() != b.parts.size()) return false;
  for (std::size_t i = 0; i < a.parts.size(); ++i) {
    const Part& x = a.parts[i];
    const Part& y = b.parts[i];
    if (x.type != y.type || x.charset != y.charset || x.transfer_encoding != y.transfer_encoding ||
        x.disposition != y.disposition || x.filename != y.filename || x.other_filenames != y.other_filenames ||
        x.encoded_size != y.encoded_size ||
        x.body != y.body || x.body_whole != y.body_whole) {
      return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view message(reinterpret_cast<const char*>(data), size);
  Choices choices(message);
  const TextBudget budget{choices.range(0, 4096), choices.range(0, 40)};

  const Structure whole = read_structure(message, budget);

  StructureReader bytes(message.size(), budget);
  for (char c : message) bytes.feed(std::string_view(&c, 1));
  const Structure by_byte = bytes.finish();
  FUZZ_CHECK(same(whole, by_byte), "whole:\n" + describe(whole) + "byte by byte:\n" + describe(by_byte));

  StructureReader pieces(message.size(), budget);
  for (std::size_t i = 0; i < message.size();) {
    const std::size_t n = choices.range(1, 300);
    pieces.feed(message.substr(i, n));
    i += n;
  }
  const Structure in_pieces = pieces.finish();
  FUZZ_CHECK(same(whole, in_pieces), "whole:\n" + describe(whole) + "in pieces:\n" + describe(in_pieces));

  FUZZ_CHECK(whole.parts.size() <= kMaxParts, describe(whole));
  std::size_t kept = 0;
  for (const Part& p : whole.parts) {
    FUZZ_CHECK(p.other_filenames.size() < kMaxNames, describe(whole));
    std::vector<const std::string*> names{&p.filename};
    for (const std::string& other : p.other_filenames) names.push_back(&other);
    for (const std::string* name : names) {
      FUZZ_CHECK(name->size() <= kMaxFilename + 3 && postern::valid_utf8(*name) && name->find('\0') == std::string::npos,
                 describe(whole));
    }
    if (!whole.problem.empty()) continue;  // the walk stopped: the open parts were not ended
    FUZZ_CHECK(p.body.size() <= p.encoded_size, describe(whole));
    FUZZ_CHECK(!p.body_whole || p.body.size() == p.encoded_size, describe(whole));
    kept += p.body.size();
    const bool text = p.type.rfind("text/", 0) == 0 && p.disposition != "attachment";
    if (text && !p.body_whole && p.encoded_size > 0) FUZZ_CHECK(!whole.text_whole, describe(whole));
  }
  FUZZ_CHECK(kept <= budget.text_limit, describe(whole));
  return 0;
}
