// Fuzz target: ReplyParser and append_reply (proxy/smtp_reply.h). The input
// is what an upstream MTA sends; seeds are real reply streams.
//
// Asserts:
//  - feeding the stream whole, one byte per read, or in random chunks (the
//    unconsumed rest fed again, as SmtpUpstream::receive does) gives the same
//    sequence of outcomes and replies, up to the first kInvalid / kTooLong;
//  - consumed never exceeds the input; kIncomplete leaves at most one
//    partial line of at most kUpstreamReplyLine octets;
//  - a complete reply has a code 200-599 and text without CR or NUL, at most
//    kUpstreamReplyLines lines;
//  - append_reply(reply) re-parses, whole, to the same code and text and
//    consumes exactly its wire form, which has only CRLF line ends;
//  - enhanced_code() is a prefix of first_line() of the form D.D{1,3}.D{1,3};
//  - with_enhanced_codes() keeps code, lines and their text, puts a code of
//    the reply's class on every 2xx/4xx/5xx line, leaves 3xx alone, and is
//    idempotent.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.h"
#include "proxy/limits.h"
#include "proxy/smtp_reply.h"

using postern::Reply;
using postern::ReplyParser;
using postern::fuzz::Choices;
using postern::fuzz::escape;
namespace limits = postern::limits;

namespace {

struct Event {
  ReplyParser::Outcome outcome;
  int code = 0;
  std::string text;
  bool operator==(const Event&) const = default;
};

const char* name(ReplyParser::Outcome o) {
  switch (o) {
    case ReplyParser::Outcome::kComplete: return "complete";
    case ReplyParser::Outcome::kIncomplete: return "incomplete";
    case ReplyParser::Outcome::kInvalid: return "invalid";
    case ReplyParser::Outcome::kTooLong: return "too-long";
  }
  return "?";
}

std::string describe(const std::vector<Event>& events) {
  std::string s;
  for (const Event& e : events) {
    s += std::string("    ") + name(e.outcome);
    if (e.outcome == ReplyParser::Outcome::kComplete) s += " " + std::to_string(e.code) + " \"" + escape(e.text) + "\"";
    s += "\n";
  }
  return s;
}

// Replies and the final error, reading `stream` in chunks of `next_chunk()`.
template <typename NextChunk>
std::vector<Event> parse(std::string_view stream, NextChunk next_chunk) {
  ReplyParser parser;
  std::vector<Event> events;
  std::string buffer;
  std::size_t pos = 0;
  for (;;) {
    if (pos < stream.size()) {
      std::size_t n = std::min(next_chunk(), stream.size() - pos);
      buffer.append(stream.substr(pos, n));
      pos += n;
    }
    for (;;) {
      if (buffer.empty()) break;
      ReplyParser::Result r = parser.feed(buffer);
      FUZZ_CHECK(r.consumed <= buffer.size(), "consumed past the input");
      buffer.erase(0, r.consumed);
      if (r.outcome == ReplyParser::Outcome::kComplete) {
        Reply reply = parser.take();
        events.push_back({r.outcome, reply.code, reply.text});
        continue;
      }
      if (r.outcome != ReplyParser::Outcome::kIncomplete) {
        events.push_back({r.outcome, 0, {}});
        return events;
      }
      FUZZ_CHECK(buffer.find('\n') == std::string::npos && buffer.size() <= limits::kUpstreamReplyLine,
                 "kIncomplete left \"" + escape(buffer) + "\"");
      break;
    }
    if (pos >= stream.size()) return events;
  }
}

void check_reply(const Reply& reply) {
  FUZZ_CHECK(reply.code >= 200 && reply.code <= 599, "code " + std::to_string(reply.code));
  FUZZ_CHECK(reply.text.find('\r') == std::string::npos && reply.text.find('\0') == std::string::npos,
             "text \"" + escape(reply.text) + "\"");
  std::size_t lines = 1;
  for (char c : reply.text) lines += c == '\n';
  FUZZ_CHECK(lines <= limits::kUpstreamReplyLines, std::to_string(lines) + " lines");

  std::string wire;
  postern::append_reply(wire, reply);
  for (std::size_t i = 0; i < wire.size(); ++i) {
    bool bad = (wire[i] == '\r' && (i + 1 >= wire.size() || wire[i + 1] != '\n')) ||
               (wire[i] == '\n' && (i == 0 || wire[i - 1] != '\r'));
    FUZZ_CHECK(!bad, "wire form with a bare CR/LF: \"" + escape(wire) + "\"");
  }
  ReplyParser again;
  ReplyParser::Result r = again.feed(wire);
  Reply back = again.take();
  FUZZ_CHECK(r.outcome == ReplyParser::Outcome::kComplete && r.consumed == wire.size() &&
                 back.code == reply.code && back.text == reply.text,
             "  append_reply does not re-parse to the same reply\n  reply: " + std::to_string(reply.code) +
                 " \"" + escape(reply.text) + "\"\n  wire: \"" + escape(wire) + "\"\n  re-parsed: " +
                 name(r.outcome) + " consumed=" + std::to_string(r.consumed) + " " +
                 std::to_string(back.code) + " \"" + escape(back.text) + "\"");

  std::string_view first = reply.first_line();
  FUZZ_CHECK(std::string_view(reply.text).substr(0, first.size()) == first &&
                 first.find('\n') == std::string_view::npos,
             "first_line \"" + escape(first) + "\"");
  std::string_view enhanced = reply.enhanced_code();
  if (!enhanced.empty()) {
    bool ok = first.substr(0, enhanced.size()) == enhanced && enhanced.size() >= 5 && enhanced.size() <= 9 &&
              (enhanced[0] == '2' || enhanced[0] == '4' || enhanced[0] == '5') && enhanced[1] == '.' &&
              (enhanced.size() == first.size() || first[enhanced.size()] == ' ');
    int dots = 0;
    for (char c : enhanced) {
      if (c == '.') ++dots;
      else if (c < '0' || c > '9') ok = false;
    }
    FUZZ_CHECK(ok && dots == 2, "enhanced_code \"" + escape(enhanced) + "\" of \"" + escape(first) + "\"");
  }

  // with_enhanced_codes: same code and line count; for 2xx/4xx/5xx every line
  // starts with a code of the reply's class and ends with the original line;
  // applied twice it changes nothing more.
  std::optional<Reply> done = postern::with_enhanced_codes(reply);
  const Reply& out = done ? *done : reply;
  std::size_t out_lines = 1;
  for (char c : out.text) out_lines += c == '\n';
  FUZZ_CHECK(out.code == reply.code && out_lines == lines, "with_enhanced_codes changed the code or lines");
  if (reply.klass() != 3) {
    std::string_view rest_in = reply.text, rest_out = out.text;
    for (;;) {
      const std::size_t ni = rest_in.find('\n'), no = rest_out.find('\n');
      const std::string_view li = rest_in.substr(0, ni), lo = rest_out.substr(0, no);
      const Reply line{out.code, std::string(lo)};
      const std::string_view code = line.enhanced_code();
      FUZZ_CHECK(!code.empty() && code[0] - '0' == reply.klass() && lo.size() >= li.size() &&
                     lo.substr(lo.size() - li.size()) == li,
                 "with_enhanced_codes line \"" + escape(lo) + "\" for \"" + escape(li) + "\"");
      if (ni == std::string_view::npos || no == std::string_view::npos) break;
      rest_in.remove_prefix(ni + 1);
      rest_out.remove_prefix(no + 1);
    }
    FUZZ_CHECK(!postern::with_enhanced_codes(out), "with_enhanced_codes is not idempotent: \"" + escape(out.text) + "\"");
  } else {
    FUZZ_CHECK(!done, "with_enhanced_codes changed a 3xx reply");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view stream(reinterpret_cast<const char*>(data), size);
  Choices choices(stream);
  std::vector<Event> whole = parse(stream, [&] { return stream.size(); });
  std::vector<Event> bytes = parse(stream, [] { return std::size_t{1}; });
  FUZZ_CHECK(whole == bytes, "  stream: \"" + escape(stream) + "\"\n  whole:\n" + describe(whole) +
                                 "  byte by byte:\n" + describe(bytes));
  std::vector<Event> chunks = parse(stream, [&] { return choices.range(1, 700); });
  FUZZ_CHECK(whole == chunks, "  stream: \"" + escape(stream) + "\"\n  whole:\n" + describe(whole) +
                                  "  in chunks:\n" + describe(chunks));
  for (const Event& e : whole) {
    if (e.outcome != ReplyParser::Outcome::kComplete) continue;
    Reply reply;
    reply.code = e.code;
    reply.text = e.text;
    check_reply(reply);
  }
  return 0;
}
