// Fuzz target: ReplyMatcher (proxy/reply_matcher.h). The first octet is the
// number of replies owed (1 to 4); the rest is what the MTA sends. Read as
// SmtpUpstream reads it: next() while a reply is owed, unsolicited() once
// nothing is (the check before postern's next write).
//
// Asserts:
//  - no more replies are given than were owed, each with a code 200-599;
//  - fed in random chunks, the replies given are those given when the stream
//    is fed whole, plus at most one (the last reply owed, given before the
//    octets behind it arrived: those are judged at the next write instead);
//  - when the whole stream is exactly the replies owed, every split gives
//    them all and ends quiet.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.h"
#include "proxy/reply_matcher.h"

using postern::Reply;
using postern::ReplyMatcher;
using postern::fuzz::Choices;
using postern::fuzz::escape;

namespace {

struct Played {
  std::vector<int> codes;
  std::string verdict;
};

template <typename NextChunk>
Played play(std::size_t owed, std::string_view stream, NextChunk next_chunk) {
  ReplyMatcher m;
  m.expect(owed);
  Played p;
  std::size_t pos = 0;
  while (pos < stream.size()) {
    std::size_t n = std::min(next_chunk(), stream.size() - pos);
    m.input().append(stream.substr(pos, n));
    pos += n;
    while (m.owed() > 0) {
      Reply r;
      ReplyMatcher::Outcome o = m.next(r);
      if (o == ReplyMatcher::Outcome::kNeedMore) break;
      if (o != ReplyMatcher::Outcome::kReply) {
        p.verdict = o == ReplyMatcher::Outcome::kMalformed ? "malformed" : "unexplained";
        return p;
      }
      FUZZ_CHECK(r.code >= 200 && r.code <= 599, "code " + std::to_string(r.code));
      p.codes.push_back(r.code);
      FUZZ_CHECK(p.codes.size() <= owed, "more replies than owed");
      if (m.closing()) {
        p.verdict = "closing";
        return p;
      }
    }
  }
  if (m.owed() > 0) {
    p.verdict = "need-more";
    return p;
  }
  Reply r;
  ReplyMatcher::Outcome o = m.unsolicited(r);
  p.verdict = o == ReplyMatcher::Outcome::kQuiet ? "quiet" : o == ReplyMatcher::Outcome::kClosing ? "closing"
                                                                                                 : "unexplained";
  return p;
}

std::string describe(const Played& p) {
  std::string s = p.verdict + " after";
  for (int c : p.codes) s += " " + std::to_string(c);
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t owed = 1 + data[0] % 4;
  std::string_view stream(reinterpret_cast<const char*>(data) + 1, size - 1);
  Choices choices(stream);
  Played whole = play(owed, stream, [&] { return stream.size(); });
  Played bytes = play(owed, stream, [] { return std::size_t{1}; });
  Played chunks = play(owed, stream, [&] { return choices.range(1, 64); });
  for (const Played* split : {&bytes, &chunks}) {
    const std::string detail = "  stream: \"" + escape(stream) + "\" owed " + std::to_string(owed) + "\n  whole: " +
                               describe(whole) + "\n  split: " + describe(*split);
    bool prefix = split->codes.size() >= whole.codes.size() && split->codes.size() <= whole.codes.size() + 1;
    for (std::size_t i = 0; prefix && i < whole.codes.size(); ++i) prefix = split->codes[i] == whole.codes[i];
    FUZZ_CHECK(prefix, "replies given depend on the reads\n" + detail);
    if (whole.verdict == "quiet") FUZZ_CHECK(split->verdict == "quiet" && split->codes == whole.codes, detail);
  }
  return 0;
}
