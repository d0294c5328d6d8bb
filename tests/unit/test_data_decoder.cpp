// DATA decoder (RFC 5321 §4.1.1.4, §4.5.2, §2.3.8) and dot-stuffer: the one
// end of data, SMTP smuggling markers, faults, limits, and the same result
// whatever the split of the input.
#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include "proxy/data_decoder.h"
#include "test_util.h"

using postern::DataDecoder;
using postern::DotStuffer;
using postern::test::escape;
using Mode = DataDecoder::BareLineEnding;

namespace {

DataDecoder::Options options(Mode mode, std::size_t max_size = 1 << 20, std::size_t max_line = 1000) {
  return DataDecoder::Options{max_size, max_line, mode};
}

struct Decoded {
  std::string out;
  std::size_t consumed = 0;  // bytes of the whole stream used
  bool done = false;
  DataDecoder::Faults faults;
  std::size_t size = 0;
};

// Feeds `chunks` as the session does: unconsumed bytes stay buffered and are
// fed again with the next chunk; stops at the end of data.
Decoded decode_chunks(const std::vector<std::string>& chunks, DataDecoder::Options opts) {
  DataDecoder decoder(opts);
  std::string buffer;
  Decoded d;
  for (const std::string& chunk : chunks) {
    buffer += chunk;
    DataDecoder::Result r = decoder.feed(buffer, d.out);
    REQUIRE(r.consumed <= buffer.size());
    d.consumed += r.consumed;
    buffer.erase(0, r.consumed);
    if (r.done) {
      d.done = true;
      break;
    }
  }
  d.faults = decoder.faults();
  d.size = decoder.size();
  return d;
}

Decoded decode(const std::string& stream, DataDecoder::Options opts) { return decode_chunks({stream}, opts); }

Decoded decode_bytes(const std::string& stream, DataDecoder::Options opts) {
  std::vector<std::string> chunks;
  for (char c : stream) chunks.emplace_back(1, c);
  return decode_chunks(chunks, opts);
}

// True when every CR is followed by LF and every LF preceded by CR.
bool only_crlf(const std::string& s) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r' && (i + 1 >= s.size() || s[i + 1] != '\n')) return false;
    if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r')) return false;
  }
  return true;
}

std::string faults_str(const DataDecoder::Faults& f) {
  std::string s;
  if (f.bare_lf) s += "bare_lf ";
  if (f.bare_cr) s += "bare_cr ";
  if (f.nul) s += "nul ";
  if (f.line_too_long) s += "line_too_long ";
  if (f.too_big) s += "too_big ";
  return s.empty() ? "none" : s.substr(0, s.size() - 1);
}

// Whole, every two-piece split, and byte by byte must agree with `expected`.
void check_all_splits(const std::string& stream, DataDecoder::Options opts, const Decoded& expected) {
  for (std::size_t split = 0; split <= stream.size(); ++split) {
    Decoded d = decode_chunks({stream.substr(0, split), stream.substr(split)}, opts);
    if (d.out != expected.out || d.consumed != expected.consumed || d.done != expected.done ||
        faults_str(d.faults) != faults_str(expected.faults)) {
      INFO("split at " << split);
      CHECK(escape(d.out) == escape(expected.out));
      CHECK(d.consumed == expected.consumed);
      CHECK(d.done == expected.done);
      CHECK(faults_str(d.faults) == faults_str(expected.faults));
    }
  }
  Decoded b = decode_bytes(stream, opts);
  INFO("byte by byte");
  CHECK(escape(b.out) == escape(expected.out));
  CHECK(b.consumed == expected.consumed);
  CHECK(b.done == expected.done);
  CHECK(faults_str(b.faults) == faults_str(expected.faults));
}

}  // namespace

TEST_CASE("DataDecoder: content, unstuffing and the end of data", "[data_decoder]") {
  struct Case {
    std::string stream;
    std::string content;    // decoded
    std::size_t consumed;   // up to and including the end marker
    bool done;
  };
  const std::vector<Case> cases{
      {".\r\n", "", 3, true},                               // empty message
      {".\r\nMAIL FROM:<a@b>\r\n", "", 3, true},             // bytes after the end stay
      {"a\r\n.\r\n", "a\r\n", 6, true},
      {"\r\n.\r\n", "\r\n", 5, true},
      {"..x\r\n.\r\n", ".x\r\n", 8, true},                 // dot-unstuffing
      {"..\r\n.\r\n", ".\r\n", 7, true},
      {"...\r\n.\r\n", "..\r\n", 8, true},
      {"a\r\n..\r\n.\r\n", "a\r\n.\r\n", 10, true},
      {".x\r\n.\r\n", "x\r\n", 7, true},                   // lone leading dot removed (§4.5.2)
      {"a.\r\n.\r\n", "a.\r\n", 7, true},
      {"a\r\n .\r\n.\r\n", "a\r\n .\r\n", 10, true},
      {"Subject: t\r\n\r\nbody\r\n.\r\n", "Subject: t\r\n\r\nbody\r\n", 23, true},
      {"x\r\n.\r\n.\r\n", "x\r\n", 6, true},
      {"no end\r\n", "no end\r\n", 8, false},               // not done
      {"no end\r\n.", "no end\r\n", 9, false},
      {"no end\r\n.\r", "no end\r\n", 10, false},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION("stream: " << escape(c.stream)) {
      for (Mode mode : {Mode::kReject, Mode::kNormalize}) {
        Decoded d = decode(c.stream, options(mode));
        CHECK(escape(d.out) == escape(c.content));
        CHECK(d.consumed == c.consumed);
        CHECK(d.done == c.done);
        CHECK_FALSE(d.faults.any());
        CHECK(d.size == c.content.size());
        check_all_splits(c.stream, options(mode), d);
      }
    }
  }
}

TEST_CASE("DataDecoder: end marker split at every byte boundary", "[data_decoder]") {
  const std::string message = "From: a@b.example\r\nSubject: t\r\n\r\nbody\r\n..dot\r\n.\r\n";
  const std::string after = "QUIT\r\n";
  const std::string stream = message + after;
  const std::string content = "From: a@b.example\r\nSubject: t\r\n\r\nbody\r\n.dot\r\n";
  for (Mode mode : {Mode::kReject, Mode::kNormalize}) {
    Decoded whole = decode(stream, options(mode));
    REQUIRE(whole.done);
    CHECK(whole.out == content);
    CHECK(whole.consumed == message.size());
    CHECK_FALSE(whole.faults.any());
    check_all_splits(stream, options(mode), whole);
  }
}

TEST_CASE("DataDecoder: done is reported only with the last byte of the marker", "[data_decoder]") {
  const std::string stream = "a\r\n.\r\nQUIT\r\n";
  DataDecoder decoder(options(Mode::kReject));
  std::string out;
  for (std::size_t i = 0; i < 6; ++i) {
    DataDecoder::Result r = decoder.feed(stream.substr(i, 1), out);
    INFO("byte " << i);
    CHECK(r.consumed == 1);
    CHECK(r.done == (i == 5));
  }
  CHECK(out == "a\r\n");
}

TEST_CASE("DataDecoder: SMTP smuggling markers never end the data", "[data_decoder]") {
  struct Case {
    std::string marker;
    const char* fault;             // the one fault flag expected
    std::string normalized;        // kNormalize content between "hello" and "MAIL FROM"
  };
  const std::vector<Case> cases{
      {"\n.\n", "bare_lf", "\r\n.\r\n"},
      {"\n.\r\n", "bare_lf", "\r\n.\r\n"},
      {"\r\n.\n", "bare_lf", "\r\n\r\n"},  // the dot of a "." line before a bare LF is dropped
      {"\r.\r", "bare_cr", "\r\n.\r\n"},
      {"\r\n.\r", "bare_cr", "\r\n.\r\n"},
      {"\r.\r\n", "bare_cr", "\r\n.\r\n"},
      {std::string("\r\n\0.\r\n", 6), "nul", std::string("\r\n\0.\r\n", 6)},
      {std::string("\r\n.\0\r\n", 6), "nul", std::string("\r\n\0\r\n", 5)},
  };
  const std::string head = "From: a@b.example\r\n\r\nhello";
  const std::string smuggled = "MAIL FROM:<e@x>\r\n";
  const std::string real_end = "\r\n.\r\n";
  const std::string after = "RCPT TO:<f@x>\r\n";
  for (const Case& c : cases) {
    const std::string stream = head + c.marker + smuggled + real_end + after;
    const std::size_t end = stream.size() - after.size();
    DYNAMIC_SECTION("marker " << escape(c.marker)) {
      SECTION("reject") {
        Decoded d = decode(stream, options(Mode::kReject));
        CHECK(d.done);
        CHECK(d.consumed == end);
        CHECK(faults_str(d.faults) == c.fault);
        check_all_splits(stream, options(Mode::kReject), d);
      }
      SECTION("normalize") {
        Decoded d = decode(stream, options(Mode::kNormalize));
        CHECK(d.done);
        CHECK(d.consumed == end);
        CHECK(faults_str(d.faults) == c.fault);
        CHECK(escape(d.out) == escape(head + c.normalized + smuggled + "\r\n"));
        CHECK(only_crlf(d.out));
        CHECK(d.out.find(smuggled) != std::string::npos);  // stays content
        check_all_splits(stream, options(Mode::kNormalize), d);
        // Relayed to the MTA, the normalized content has its only end of data at the end.
        DotStuffer stuffer;
        std::string wire;
        stuffer.feed(d.out, wire);
        stuffer.finish(wire);
        CHECK(wire.find("\r\n.\r\n") == wire.size() - 5);
        CHECK(decode(wire, options(Mode::kReject)).out == d.out);
      }
      SECTION("the marker alone at the start of the data") {
        // Right after DATA the decoder is at a line start: the marker's own
        // leading line end is what makes it bare.
        const std::string s = c.marker + smuggled + real_end + after;
        for (Mode mode : {Mode::kReject, Mode::kNormalize}) {
          Decoded d = decode(s, options(mode));
          CHECK(d.done);
          CHECK(d.consumed == s.size() - after.size());
          CHECK(faults_str(d.faults) == c.fault);
          if (mode == Mode::kNormalize) CHECK(only_crlf(d.out));
          check_all_splits(s, options(mode), d);
        }
      }
    }
  }
}

TEST_CASE("DataDecoder: more bare line endings", "[data_decoder]") {
  struct Case {
    std::string stream;
    std::string faults;
    std::string normalized;  // kNormalize content
  };
  const std::vector<Case> cases{
      {"a\nb\r\n.\r\n", "bare_lf", "a\r\nb\r\n"},
      {"a\rb\r\n.\r\n", "bare_cr", "a\r\nb\r\n"},
      {"a\r\rb\r\n.\r\n", "bare_cr", "a\r\n\r\nb\r\n"},
      {"a\n\r\n.\r\n", "bare_lf", "a\r\n\r\n"},        // real CRLF.CRLF after the bare LF
      {"a\r\r\n.\r\n", "bare_cr", "a\r\n\r\n"},
      {"a\n..x\r\n.\r\n", "bare_lf", "a\r\n.x\r\n"},     // stuffed dot after a bare LF
      {"a\n.\r\n.\r\n", "bare_lf", "a\r\n.\r\n"},        // "." after a bare LF is content
      {"a\r\n.\r\r\n.\r\n", "bare_cr", "a\r\n.\r\n\r\n"},
      {"a\n\nb\r\n.\r\n", "bare_lf", "a\r\n\r\nb\r\n"},
      {"a\r\nb\n.\r\nc\r.\r\nd\r\n.\r\n", "bare_lf bare_cr", "a\r\nb\r\n.\r\nc\r\n.\r\nd\r\n"},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION("stream: " << escape(c.stream)) {
      Decoded r = decode(c.stream, options(Mode::kReject));
      CHECK(r.done);
      CHECK(r.consumed == c.stream.size());
      CHECK(faults_str(r.faults) == c.faults);
      check_all_splits(c.stream, options(Mode::kReject), r);

      Decoded n = decode(c.stream, options(Mode::kNormalize));
      CHECK(n.done);
      CHECK(n.consumed == c.stream.size());
      CHECK(faults_str(n.faults) == c.faults);
      CHECK(escape(n.out) == escape(c.normalized));
      CHECK(only_crlf(n.out));
      check_all_splits(c.stream, options(Mode::kNormalize), n);
    }
  }
}

TEST_CASE("DataDecoder: NUL is content, flagged", "[data_decoder]") {
  const std::string stream("a\0b\r\n\0\r\n.\r\n", 11);
  for (Mode mode : {Mode::kReject, Mode::kNormalize}) {
    Decoded d = decode(stream, options(mode));
    CHECK(d.done);
    CHECK(faults_str(d.faults) == "nul");
    CHECK(d.out == std::string("a\0b\r\n\0\r\n", 8));
  }
}

TEST_CASE("DataDecoder: line length limit counts the CRLF", "[data_decoder]") {
  const std::size_t max_line = 1000;
  struct Case {
    std::string name;
    std::string stream;
    bool too_long;
  };
  const std::vector<Case> cases{
      {"998 + CRLF", std::string(998, 'x') + "\r\n.\r\n", false},
      {"999 + CRLF", std::string(999, 'x') + "\r\n.\r\n", true},
      {"1000 without end", std::string(1000, 'x'), false},
      {"1001 without end", std::string(1001, 'x'), true},
      {"second line 998 + CRLF", "a\r\n" + std::string(998, 'x') + "\r\n.\r\n", false},
      {"second line 999 + CRLF", "a\r\n" + std::string(999, 'x') + "\r\n.\r\n", true},
      {"many lines of 998", [] {
         std::string s;
         for (int i = 0; i < 50; ++i) s += std::string(998, 'x') + "\r\n";
         return s + ".\r\n";
       }(), false},
      {"lone leading dot, 1000 on the wire", "." + std::string(997, 'x') + "\r\n.\r\n", false},
      {"lone leading dot, 1002 on the wire", "." + std::string(999, 'x') + "\r\n.\r\n", true},
      {"stuffed dot, 1002 on the wire", ".." + std::string(998, 'x') + "\r\n.\r\n", true},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION(c.name) {
      for (Mode mode : {Mode::kReject, Mode::kNormalize}) {
        Decoded d = decode(c.stream, options(mode, 1 << 20, max_line));
        CHECK(d.faults.line_too_long == c.too_long);
        CHECK_FALSE(d.faults.too_big);
        Decoded b = decode_bytes(c.stream, options(mode, 1 << 20, max_line));
        CHECK(b.faults.line_too_long == c.too_long);
      }
    }
  }
  SECTION("a bare line end in kNormalize starts a new line") {
    std::string s = std::string(998, 'x') + "\n" + std::string(998, 'y') + "\r\n.\r\n";
    Decoded d = decode(s, options(Mode::kNormalize, 1 << 20, max_line));
    CHECK(d.done);
    CHECK_FALSE(d.faults.line_too_long);
    CHECK(d.faults.bare_lf);
  }
  SECTION("a larger configured limit") {
    std::string ok = std::string(4094, 'x') + "\r\n.\r\n";
    std::string over = std::string(4095, 'x') + "\r\n.\r\n";
    CHECK_FALSE(decode(ok, options(Mode::kReject, 1 << 20, 4096)).faults.line_too_long);
    CHECK(decode(over, options(Mode::kReject, 1 << 20, 4096)).faults.line_too_long);
  }
}

TEST_CASE("DataDecoder: the stuffing dot does not count in the line length", "[data_decoder][regression]") {
  // RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with its CRLF
  // "not counting the leading dot duplicated for transparency". A content line
  // "." + 997 octets + CRLF (1000 octets) is sent as ".." + 997 + CRLF.
  const std::string stream = ".." + std::string(997, 'x') + "\r\n.\r\n";
  Decoded d = decode(stream, options(Mode::kReject, 1 << 20, 1000));
  REQUIRE(d.done);
  CHECK(d.out == "." + std::string(997, 'x') + "\r\n");
  CHECK_FALSE(d.faults.line_too_long);
}

TEST_CASE("DataDecoder: size limit drops content but decodes to the end", "[data_decoder]") {
  const std::string body = "0123456789\r\n";  // 12 octets
  SECTION("exactly max_size is accepted") {
    Decoded d = decode(body + ".\r\nQUIT\r\n", options(Mode::kReject, 12));
    CHECK(d.done);
    CHECK(d.consumed == 15);
    CHECK(d.out == body);
    CHECK_FALSE(d.faults.any());
    CHECK(d.size == 12);
  }
  SECTION("one octet over is too big") {
    const std::string stream = body + "x\r\n" + body + body + ".\r\nQUIT\r\n";
    const std::string content = body + "x\r\n" + body + body;
    const std::size_t content_size = content.size();
    REQUIRE(content_size == 39);
    for (Mode mode : {Mode::kReject, Mode::kNormalize}) {
      for (int bytewise = 0; bytewise < 2; ++bytewise) {
        INFO((bytewise ? "byte by byte" : "whole"));
        Decoded d = bytewise ? decode_bytes(stream, options(mode, 13)) : decode(stream, options(mode, 13));
        CHECK(d.done);
        CHECK(d.consumed == stream.size() - 6);  // decoding continued to the real end
        CHECK(faults_str(d.faults) == "too_big");
        CHECK(d.out.size() <= 13);
        CHECK(content.substr(0, d.out.size()) == d.out);  // what is kept is a prefix
        CHECK(d.size == content_size);                     // dropped octets are counted
      }
    }
  }
  SECTION("a dot line after the limit still ends the data, stuffing still removed") {
    const std::string stream = std::string(100, 'z') + "\r\n..x\r\n\r\n.\r\n";
    Decoded d = decode(stream, options(Mode::kReject, 10));
    CHECK(d.done);
    CHECK(d.consumed == stream.size());
    CHECK(d.faults.too_big);
    CHECK(d.size == 102 + 4 + 2);
  }
}

TEST_CASE("DataDecoder: reset() starts a new message", "[data_decoder]") {
  DataDecoder decoder(options(Mode::kReject, 4));
  std::string out;
  DataDecoder::Result r = decoder.feed("a\nbcdefgh\r\n.\r\n", out);
  REQUIRE(r.done);
  REQUIRE(decoder.faults().bare_lf);
  REQUIRE(decoder.faults().too_big);
  // Mid-line state is dropped too.
  out.clear();
  decoder.feed("partial line\r", out);
  decoder.reset();
  CHECK_FALSE(decoder.faults().any());
  CHECK(decoder.size() == 0);
  out.clear();
  r = decoder.feed(".\r\n", out);
  CHECK(r.done);
  CHECK(r.consumed == 3);
  CHECK(out.empty());
  CHECK_FALSE(decoder.faults().any());
}

TEST_CASE("DotStuffer: stuffing, chunks and the end of data", "[data_decoder]") {
  struct Case {
    std::vector<std::string> chunks;
    std::string wire;
  };
  const std::vector<Case> cases{
      {{}, ".\r\n"},
      {{""}, ".\r\n"},
      {{"a\r\n"}, "a\r\n.\r\n"},
      {{"a"}, "a\r\n.\r\n"},                          // a final CRLF is added
      {{"a\r\nb"}, "a\r\nb\r\n.\r\n"},
      {{".\r\n"}, "..\r\n.\r\n"},
      {{".x\r\n..y\r\n"}, "..x\r\n...y\r\n.\r\n"},
      {{"a\r\n.\r\nb\r\n"}, "a\r\n..\r\nb\r\n.\r\n"},
      {{"a.b\r\n .\r\n"}, "a.b\r\n .\r\n.\r\n"},
      {{"a\r\n", ".b\r\n"}, "a\r\n..b\r\n.\r\n"},     // chunk ends at a line end
      {{"a\r\n.", "b\r\n"}, "a\r\n..b\r\n.\r\n"},     // split mid-line after the dot
      {{"a\r", "\n.b\r\n"}, "a\r\n..b\r\n.\r\n"},
      {{"a", ".b\r\n"}, "a.b\r\n.\r\n"},              // not a line start
      {{"a\r\n", "", ".b"}, "a\r\n..b\r\n.\r\n"},
      {{".", ".", "."}, "....\r\n.\r\n"},             // one line "...", stuffed once
  };
  for (const Case& c : cases) {
    std::string joined;
    for (const auto& ch : c.chunks) joined += ch + "|";
    INFO("chunks: " << escape(joined));
    DotStuffer s;
    std::string wire;
    for (const auto& ch : c.chunks) s.feed(ch, wire);
    s.finish(wire);
    CHECK(escape(wire) == escape(c.wire));
    // reset() makes the same stuffer reusable.
    s.reset();
    std::string again;
    for (const auto& ch : c.chunks) s.feed(ch, again);
    s.finish(again);
    CHECK(again == wire);
  }
}

TEST_CASE("DotStuffer then DataDecoder round-trips content", "[data_decoder]") {
  // Lines built from a seed: dots at line starts, empty lines, dot-only
  // lines, "." + CRLF sequences inside lines; every line ends with CRLF.
  const std::vector<std::string> pieces{".", "..", "a", "Z", " ", "\t", ".\r\n.", "x.y", "\xC3\xA9"};
  for (unsigned seed = 1; seed <= 200; ++seed) {
    std::mt19937 rng(seed);
    std::string content;
    int lines = static_cast<int>(rng() % 30);
    for (int l = 0; l < lines; ++l) {
      int n = static_cast<int>(rng() % 8);
      for (int k = 0; k < n; ++k) content += pieces[rng() % pieces.size()];
      content += "\r\n";
    }
    // Stuff in random chunks.
    DotStuffer stuffer;
    std::string wire;
    for (std::size_t i = 0; i < content.size();) {
      std::size_t len = std::min<std::size_t>(1 + rng() % 7, content.size() - i);
      stuffer.feed(std::string_view(content).substr(i, len), wire);
      i += len;
    }
    stuffer.finish(wire);
    const std::string after = "QUIT\r\n";
    std::string stream = wire + after;
    // Decode in random chunks.
    std::vector<std::string> chunks;
    for (std::size_t i = 0; i < stream.size();) {
      std::size_t len = std::min<std::size_t>(1 + rng() % 11, stream.size() - i);
      chunks.push_back(stream.substr(i, len));
      i += len;
    }
    for (Mode mode : {Mode::kReject, Mode::kNormalize}) {
      Decoded d = decode_chunks(chunks, options(mode));
      INFO("seed " << seed << " content: " << escape(content));
      CHECK(d.done);
      CHECK(d.consumed == wire.size());
      CHECK(d.out == content);
      CHECK_FALSE(d.faults.any());
    }
  }
}
