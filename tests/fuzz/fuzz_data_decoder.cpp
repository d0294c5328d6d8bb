// Fuzz target: DataDecoder and DotStuffer (proxy/data_decoder.h). The input is
// the byte stream a client sends after 354; limits and chunkings derive from
// it, so seeds are plain SMTP DATA streams.
//
// Asserts, in both bare-line-ending modes:
//  - the same result (content, consumed, done, faults, size) whether the
//    stream arrives whole, one byte per read, or in random chunks, fed as the
//    session does (unconsumed bytes are fed again with the next read);
//  - the end of data is exactly the first <CRLF>.<CRLF> of CRLF + stream
//    (never earlier, never missed: SMTP smuggling);
//  - the faults match a reference scan of the consumed bytes; size() is the
//    unstuffed content size; too_big iff that exceeds max_size;
//  - for a stream with only CRLF line ends, the content equals a reference
//    unstuffing (first dot of each line removed) and line_too_long matches
//    the §4.5.3.1.6 count; kNormalize gives the same content as kReject;
//  - kNormalize content has only CRLF line ends;
// and for DotStuffer, with the input as content x:
//  - stuffing whole, byte by byte or in chunks gives the same bytes;
//  - the decoder finds the end of data exactly at the end of stuff(x)
//    (the "a CRLF if the content did not end with one" contract);
//  - decode(stuff(x)) == x (+ CRLF when x lacks a final one) for CRLF-only x.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.h"
#include "proxy/data_decoder.h"

using postern::DataDecoder;
using postern::DotStuffer;
using postern::fuzz::Choices;
using postern::fuzz::escape;
using Mode = DataDecoder::BareLineEnding;

namespace {

struct Decoded {
  std::string out;
  std::size_t consumed = 0;
  bool done = false;
  DataDecoder::Faults faults;
  std::size_t size = 0;
};

std::string faults_str(const DataDecoder::Faults& f) {
  std::string s;
  if (f.bare_lf) s += "bare_lf ";
  if (f.bare_cr) s += "bare_cr ";
  if (f.nul) s += "nul ";
  if (f.line_too_long) s += "line_too_long ";
  if (f.too_big) s += "too_big ";
  return s.empty() ? "none" : s;
}

std::string describe(const Decoded& d) {
  return "consumed=" + std::to_string(d.consumed) + " done=" + (d.done ? "yes" : "no") +
         " faults=" + faults_str(d.faults) + " size=" + std::to_string(d.size) + " out=\"" +
         escape(d.out) + "\"";
}

// Feeds `stream` in chunks whose sizes `next_chunk` gives, as the session does.
template <typename NextChunk>
Decoded decode(std::string_view stream, DataDecoder::Options opts, NextChunk next_chunk) {
  DataDecoder decoder(opts);
  Decoded d;
  std::string buffer;
  std::size_t pos = 0;
  while (pos < stream.size()) {
    std::size_t n = std::min(next_chunk(), stream.size() - pos);
    buffer.append(stream.substr(pos, n));
    pos += n;
    DataDecoder::Result r = decoder.feed(buffer, d.out);
    FUZZ_CHECK(r.consumed <= buffer.size(), "consumed " + std::to_string(r.consumed) + " of " +
                                                std::to_string(buffer.size()));
    d.consumed += r.consumed;
    buffer.erase(0, r.consumed);
    if (r.done) {
      d.done = true;
      break;
    }
    // Only a lone '.' after a normalized bare line end may wait for more.
    FUZZ_CHECK(buffer.size() <= 1, "left " + std::to_string(buffer.size()) + " bytes unconsumed: \"" +
                                       escape(buffer) + "\"");
  }
  d.faults = decoder.faults();
  d.size = decoder.size();
  return d;
}

bool same_faults(const DataDecoder::Faults& a, const DataDecoder::Faults& b) {
  return a.bare_lf == b.bare_lf && a.bare_cr == b.bare_cr && a.nul == b.nul &&
         a.line_too_long == b.line_too_long && a.too_big == b.too_big;
}

void check_same(const Decoded& whole, const Decoded& other, const char* how, std::string_view stream) {
  bool same = whole.consumed == other.consumed && whole.done == other.done &&
              same_faults(whole.faults, other.faults) && whole.size == other.size &&
              // Past max_size, what was kept depends on the reads (content is dropped).
              (whole.faults.too_big || whole.out == other.out);
  FUZZ_CHECK(same, std::string("  fed ") + how + " vs whole\n  stream: \"" + escape(stream) +
                       "\"\n  whole: " + describe(whole) + "\n  other: " + describe(other));
}

bool crlf_only(std::string_view s) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r' && (i + 1 >= s.size() || s[i + 1] != '\n')) return false;
    if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r')) return false;
  }
  return true;
}

void check_decoder(std::string_view stream, Mode mode, Choices& choices) {
  const std::size_t max_line = choices.range(3, 120);
  const std::size_t max_size = choices.next() % 2 ? (1u << 20) : choices.range(0, stream.size());
  const DataDecoder::Options opts{max_size, max_line, mode};
  auto where = [&] {
    return std::string(std::string(mode == Mode::kReject ? "reject" : "normalize") +
                            " max_line=" + std::to_string(max_line) +
                            " max_size=" + std::to_string(max_size) + "\n  stream: \"" +
                            escape(stream) + "\"");
  };

  Decoded whole = decode(stream, opts, [&] { return stream.size(); });
  Decoded bytes = decode(stream, opts, [] { return std::size_t{1}; });
  check_same(whole, bytes, "byte by byte", stream);
  Choices chunks = choices;
  Decoded random = decode(stream, opts, [&] { return chunks.range(1, 64); });
  check_same(whole, random, "in random chunks", stream);

  // The one end of data: the first CRLF "." CRLF, the stream starting after a CRLF.
  std::string prefixed = "\r\n" + std::string(stream);
  std::size_t marker = prefixed.find("\r\n.\r\n");
  FUZZ_CHECK(whole.done == (marker != std::string::npos),
             "  end of data " + std::string(whole.done ? "reported without" : "missed despite") +
                 " a <CRLF>.<CRLF>\n  " + where() + "\n  got: " + describe(whole));
  if (!whole.done) {
    FUZZ_CHECK(whole.consumed + 1 >= stream.size(), where() + "\n  got: " + describe(whole));
    return;
  }
  FUZZ_CHECK(whole.consumed == marker + 3, "  end of data at the wrong place; expected consumed=" +
                                               std::to_string(marker + 3) + "\n  " + where() +
                                               "\n  got: " + describe(whole));

  // Faults over what was consumed, the end-of-data line included.
  std::string_view used = stream.substr(0, whole.consumed);
  bool bare_lf = false, bare_cr = false, nul = false;
  for (std::size_t i = 0; i < used.size(); ++i) {
    if (used[i] == '\n' && (i == 0 || used[i - 1] != '\r')) bare_lf = true;
    if (used[i] == '\r' && (i + 1 >= used.size() || used[i + 1] != '\n')) bare_cr = true;
    if (used[i] == '\0') nul = true;
  }
  FUZZ_CHECK(whole.faults.bare_lf == bare_lf && whole.faults.bare_cr == bare_cr && whole.faults.nul == nul,
             "  expected bare_lf=" + std::to_string(bare_lf) + " bare_cr=" + std::to_string(bare_cr) +
                 " nul=" + std::to_string(nul) + "\n  " + where() + "\n  got: " + describe(whole));
  if (mode == Mode::kNormalize && !whole.faults.too_big) {
    FUZZ_CHECK(crlf_only(whole.out), "  normalized content has a bare CR or LF\n  " + where() +
                                         "\n  got: " + describe(whole));
  }
  if (bare_lf || bare_cr) return;

  // Reference: lines of the consumed stream minus ".\r\n", first dot removed.
  std::string_view body = used.substr(0, used.size() - 3);
  std::string expected;
  bool too_long = false;
  std::size_t start = 0;
  while (start < body.size()) {
    std::size_t crlf = body.find("\r\n", start);
    std::string_view line = body.substr(start, crlf - start);
    // §4.5.3.1.6: the line with its CRLF, not counting a dot doubled for transparency.
    std::size_t counted = line.size() + 2 - (line.substr(0, 2) == ".." ? 1 : 0);
    if (counted > max_line) too_long = true;
    if (!line.empty() && line[0] == '.') line.remove_prefix(1);
    expected.append(line).append("\r\n");
    start = crlf + 2;
  }
  FUZZ_CHECK(whole.size == expected.size(), "  expected size=" + std::to_string(expected.size()) +
                                                "\n  " + where() + "\n  got: " + describe(whole));
  FUZZ_CHECK(whole.faults.too_big == (expected.size() > max_size), where() + "\n  got: " + describe(whole));
  FUZZ_CHECK(whole.faults.line_too_long == too_long,
             "  expected line_too_long=" + std::to_string(too_long) + "\n  " + where() + "\n  got: " +
                 describe(whole));
  if (!whole.faults.too_big) {
    FUZZ_CHECK(whole.out == expected, "  expected content: \"" + escape(expected) + "\"\n  " + where() +
                                          "\n  got: " + describe(whole));
  }
}

std::string stuff(std::string_view content, std::size_t chunk) {
  DotStuffer stuffer;
  std::string out;
  for (std::size_t pos = 0; pos < content.size(); pos += chunk) {
    stuffer.feed(content.substr(pos, chunk), out);
  }
  stuffer.finish(out);
  return out;
}

void check_stuffer(std::string_view content, Choices& choices) {
  std::string whole = stuff(content, content.size() + 1);
  FUZZ_EQ(stuff(content, 1), whole);
  FUZZ_EQ(stuff(content, choices.range(1, 32)), whole);

  const DataDecoder::Options opts{1u << 20, 1u << 20, Mode::kReject};
  Decoded d = decode(whole, opts, [&] { return whole.size(); });
  FUZZ_CHECK_NAMED("stuffer-end-of-data", d.done && d.consumed == whole.size(),
                   "  stuff(x) must end with the one end of data\n  content: \"" + escape(content) +
                       "\"\n  stuffed: \"" + escape(whole) + "\"\n  decoded: " + describe(d));
  if (crlf_only(content)) {
    std::string expected(content);
    if (!expected.empty() && expected.back() != '\n') expected += "\r\n";
    FUZZ_CHECK(d.out == expected && !d.faults.bare_lf && !d.faults.bare_cr,
               "  decode(stuff(x)) != x\n  content: \"" + escape(content) + "\"\n  stuffed: \"" +
                   escape(whole) + "\"\n  decoded: " + describe(d));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view stream(reinterpret_cast<const char*>(data), size);
  Choices choices(stream);
  check_decoder(stream, Mode::kReject, choices);
  check_decoder(stream, Mode::kNormalize, choices);
  check_stuffer(stream, choices);
  // Content as the relay sees it: what the decoder accepted in kNormalize.
  Decoded normalized = decode(stream, {1u << 20, 1u << 20, Mode::kNormalize}, [&] { return stream.size(); });
  check_stuffer(normalized.out, choices);
  return 0;
}
