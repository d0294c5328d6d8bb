// The MIME structure and header decoding rules see (filters/lua/mime): each
// hostile member of a class with what a mail reader would show, and bombs
// that must stay linear and bounded.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "filters/lua/mime.h"
#include "filters/lua/mime_rar.h"
#include "filters/lua/mime_tnef.h"
#include "filters/lua/mime_zip.h"
#include "filters/text/ascii.h"
#include "filters/text/base64.h"
#include "filters/text/utf8.h"

using namespace postern::mime;

namespace {

// A multipart/mixed message: a text part, then `attachment_header` with a body.
std::string message_with(const std::string& attachment_header, const std::string& boundary = "b1") {
  return "From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"" + boundary +
         "\"\r\n\r\n--" + boundary + "\r\nContent-Type: text/plain\r\n\r\nhello\r\n--" + boundary + "\r\n" +
         attachment_header + "\r\n\r\nTVqQAAMAAAAEAAAA\r\n--" + boundary + "--\r\n";
}

std::vector<std::string> filenames(const Structure& s) {
  std::vector<std::string> out;
  for (const Part& p : s.parts) {
    if (!p.filename.empty()) out.push_back(p.filename);
  }
  return out;
}

std::string filename_of(const std::string& attachment_header) {
  Structure s = read_structure(message_with(attachment_header));
  INFO(attachment_header << " problem: " << s.problem);
  REQUIRE(s.problem.empty());
  std::vector<std::string> names = filenames(s);
  REQUIRE(names.size() == 1);
  return names[0];
}

}  // namespace

TEST_CASE("mime: file names hidden by RFC 2231, RFC 2047 and comments", "[mime]") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"Content-Disposition: attachment; filename=\"evil.exe\"", "evil.exe"},
      {"Content-Disposition: attachment; filename*=UTF-8''evil%2Eexe", "evil.exe"},
      {"Content-Disposition: attachment; filename*=''evil%2eexe", "evil.exe"},
      {"Content-Disposition: attachment; filename*0=\"ev\"; filename*1=\"il.e\"; filename*2=xe", "evil.exe"},
      {"Content-Disposition: attachment; filename*0*=UTF-8''ev%69l; filename*1*=%2E; filename*2=exe", "evil.exe"},
      // Sections out of order are put in order (RFC 2231 §3).
      {"Content-Disposition: attachment; filename*1=\".exe\"; filename*0=\"evil\"", "evil.exe"},
      // The RFC 2231 value wins over a plain one, as in Thunderbird.
      {"Content-Disposition: attachment; filename=\"invoice.pdf\"; filename*=UTF-8''evil.exe", "evil.exe"},
      {"Content-Disposition: attachment; filename=\"invoice.pdf\"; filename*0=evil; filename*1=.exe", "evil.exe"},
      // name= of Content-Type only.
      {"Content-Type: application/octet-stream; name=\"evil.exe\"", "evil.exe"},
      {"Content-Type: application/octet-stream; name*=utf-8''evil.exe", "evil.exe"},
      // A parameter without '=' before the name does not swallow it.
      {"Content-Disposition: attachment; foo; filename=evil.exe", "evil.exe"},
      // Comments, also holding ';' and '"'.
      {"Content-Disposition: attachment (see \"x;\" here); filename=\"evil.exe\"", "evil.exe"},
      {"Content-Type: application/octet-stream (a;b) ; name=evil.exe", "evil.exe"},
      {"Content-Disposition: attachment; filename=\"evil (1).exe\"", "evil (1).exe"},
      // RFC 2047 words in a quoted name (Outlook), split mid-character.
      {"Content-Disposition: attachment; filename=\"=?utf-8?b?ZXZpbC5leGU=?=\"", "evil.exe"},
      {"Content-Disposition: attachment; filename=\"=?utf-8?q?=C3?= =?utf-8?q?=A9.exe?=\"", "\xC3\xA9.exe"},
      // A NUL ends the name where C code (the saving reader) stops.
      {"Content-Disposition: attachment; filename*=UTF-8''evil.exe%00.pdf", "evil.exe"},
      // Obsolete folding and a bare LF inside the part header.
      {"Content-Disposition: attachment;\r\n\tfilename=\r\n  \"evil.exe\"", "evil.exe"},
      {"Content-Disposition: attachment;\n filename=\"evil.exe\"", "evil.exe"},
      // Charsets are converted; what does not convert becomes U+FFFD.
      {"Content-Disposition: attachment; filename*=iso-8859-1''%E9vil.exe", "\xC3\xA9vil.exe"},
      {"Content-Disposition: attachment; filename*=utf-8''%FFevil.exe", "\xEF\xBF\xBD" "evil.exe"},
  };
  for (const auto& [header, want] : cases) {
    INFO(header);
    CHECK(filename_of(header) == want);
  }
}

TEST_CASE("mime: a long file name keeps its extension", "[mime]") {
  std::string name = std::string(5000, 'a') + ".exe";
  std::string got = filename_of("Content-Disposition: attachment; filename=\"" + name + "\"");
  CHECK(got.size() <= kMaxFilename);
  CHECK(got.substr(got.size() - 4) == ".exe");
  std::string sections = "Content-Disposition: attachment";
  for (int i = 0; i < 3000; ++i) sections += "; filename*" + std::to_string(i) + "=a";
  sections += "; filename*3000=.exe";
  CHECK(filename_of(sections) == std::string(kMaxFilename / 2, 'a') + std::string(kMaxFilename / 2 - 4, 'a') + ".exe");
}

TEST_CASE("mime: a long file name is cut between characters, at either end of the cut", "[mime]") {
  // A character of two, three or four octets (or U+FFFD for an octet that
  // is no UTF-8) across the first half's end or the second half's start.
  for (std::string ch : {"\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "\xA2"}) {
    for (std::size_t lead = kMaxFilename / 2 - 4; lead <= kMaxFilename / 2 + 1; ++lead) {
      std::string name = std::string(lead, 'a');
      for (int i = 0; i < 400; ++i) name += ch;
      name += ".exe";
      const std::string got = filename_of("Content-Disposition: attachment; filename*=UTF-8''" + name);
      INFO("lead " << lead << ", character of " << ch.size() << " octets");
      CHECK(got.size() <= kMaxFilename);
      CHECK(postern::valid_utf8(got));
      CHECK(got.ends_with(".exe"));
    }
  }
}

TEST_CASE("mime: delimiters are whole lines, as mail readers read them", "[mime]") {
  // Each line merely starts with the delimiter: a reader shows it as text and
  // goes on to the attachment after it.
  for (const std::string fake : {"--b1--x", "--b1-- x", "--b1x", " --b1--", "--b1--b1"}) {
    INFO(fake);
    std::string m = "Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n" + fake +
                    "\r\n--b1\r\nContent-Disposition: attachment; filename=evil.exe\r\n\r\nMZ\r\n--b1--\r\n";
    Structure s = read_structure(m);
    CHECK(s.problem.empty());
    CHECK(filenames(s) == std::vector<std::string>{"evil.exe"});
  }
  // Transport padding after a delimiter is allowed (RFC 2046 §5.1.1).
  Structure s = read_structure(
      "Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1 \t\r\nContent-Type: text/plain\r\n\r\nx\r\n"
      "--b1\t\r\nContent-Disposition: attachment; filename=evil.exe\r\n\r\nMZ\r\n--b1-- \r\n");
  CHECK(filenames(s) == std::vector<std::string>{"evil.exe"});
  // Nested boundaries that are prefixes of each other.
  s = read_structure(
      "Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: multipart/mixed; boundary=ab\r\n\r\n"
      "--ab\r\nContent-Type: text/plain\r\n\r\nx\r\n--ab\r\nContent-Disposition: attachment; filename=inner.exe\r\n\r\n"
      "MZ\r\n--ab--\r\n--a\r\nContent-Disposition: attachment; filename=outer.exe\r\n\r\nMZ\r\n--a--\r\n");
  CHECK(filenames(s) == std::vector<std::string>{"inner.exe", "outer.exe"});
  // No close-delimiter: the last part is shown.
  s = read_structure("Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Disposition: attachment; "
                     "filename=evil.exe\r\n\r\nMZ");
  CHECK(filenames(s) == std::vector<std::string>{"evil.exe"});
}

TEST_CASE("mime: the parts of an attached message are listed", "[mime]") {
  std::string inner = "Subject: fwd\r\nContent-Type: multipart/mixed; boundary=in\r\n\r\n--in\r\n"
                      "Content-Disposition: attachment; filename=evil.exe\r\n\r\nMZ\r\n--in--\r\n";
  Structure s = read_structure(message_with("Content-Type: message/rfc822\r\nContent-Disposition: attachment; "
                                            "filename=fwd.eml\r\n\r\n" + inner + "\r\n--b1--\r\n"));
  CHECK(s.problem.empty());
  CHECK(filenames(s) == std::vector<std::string>{"fwd.eml", "evil.exe"});
  // Encoded, which RFC 2046 §5.2.1 forbids: decoded all the same.
  const std::string b64 = "U3ViamVjdDogZndkDQpDb250ZW50LURpc3Bvc2l0aW9uOiBhdHRhY2htZW50OyBmaWxlbmFtZT1ldmlsLmV4ZQ0KDQpNWg0K";
  s = read_structure(message_with("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64));
  CHECK(s.problem.empty());
  CHECK(filenames(s) == std::vector<std::string>{"evil.exe"});
  s = read_structure(message_with("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
                                  "Content-Disposition: attachment; filename=3Devil.e=\r\nxe\r\n\r\nMZ"));
  CHECK(filenames(s) == std::vector<std::string>{"evil.exe"});
  // Nested encoded messages decode to at most kDecodedFactor times the message.
  std::string nested = "Content-Disposition: attachment; filename=evil.exe\r\n\r\n" + std::string(3000, 'M');
  for (int level = 0; level < 4; ++level) {
    nested = "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
             postern::base64_encode(nested, 76) + "\r\n";
    INFO("level " << level);
    s = read_structure(nested);
    if (level < 2) CHECK(filenames(s) == std::vector<std::string>{"evil.exe"});
    else CHECK(s.problem == "encoded attached messages nested past 2 times the message's size");
  }
}

TEST_CASE("mime: ambiguous part headers are a problem, not a guess", "[mime]") {
  for (const std::string header :
       {"Content-Type: text/plain\r\nContent-Type: application/octet-stream; name=evil.exe",
        "Content-Disposition: inline\r\nContent-Disposition: attachment; filename=evil.exe",
        "Content-Transfer-Encoding: 7bit\r\nContent-Transfer-Encoding: base64"}) {
    INFO(header);
    CHECK(read_structure(message_with(header)).problem.find("two different") != std::string::npos);
  }
  // The same field twice is no ambiguity.
  CHECK(read_structure(message_with("Content-Type: text/plain\r\ncontent-type:  text/plain")).problem.empty());
  // Many other fields do not push the Content-* fields out.
  std::string many;
  for (int i = 0; i < 5000; ++i) many += "X-Filler-" + std::to_string(i) + ": x\r\n";
  CHECK(filename_of(many + "Content-Disposition: attachment; filename=evil.exe") == "evil.exe");
}

TEST_CASE("mime: limits end the walk with a problem", "[mime]") {
  SECTION("10,000 parts") {
    std::string m = "Content-Type: multipart/mixed; boundary=b\r\n\r\n";
    for (int i = 0; i < 10000; ++i) m += "--b\r\n\r\nx\r\n";
    m += "--b\r\nContent-Disposition: attachment; filename=evil.exe\r\n\r\nMZ\r\n--b--\r\n";
    Structure s = read_structure(m);
    CHECK(s.parts.size() == kMaxParts);
    CHECK(s.problem == "more than 1000 parts");
  }
  SECTION("nesting past 16") {
    std::string m;
    for (int i = 0; i < 40; ++i) m += "Content-Type: multipart/mixed; boundary=n" + std::to_string(i) + "\r\n\r\n--n" + std::to_string(i) + "\r\n";
    m += "Content-Disposition: attachment; filename=evil.exe\r\n\r\nMZ\r\n";
    CHECK(read_structure(m).problem == "parts nested deeper than 16");
    std::string rfc822;
    for (int i = 0; i < 40; ++i) rfc822 += "Content-Type: message/rfc822\r\n\r\n";
    CHECK(read_structure(rfc822).problem == "parts nested deeper than 16");
  }
  SECTION("a 1 MB boundary parameter") {
    std::string b(1 << 20, 'x');
    CHECK(read_structure(message_with("Content-Disposition: attachment; filename=evil.exe", b)).problem ==
          "content-type field longer than 65536 octets");
  }
  SECTION("a boundary on every line, and 100,000 empty parts") {
    std::string m = "Content-Type: multipart/mixed; boundary=b\r\n\r\n";
    for (int i = 0; i < 100000; ++i) m += "--b\r\n";
    CHECK(read_structure(m).problem == "more than 1000 parts");
  }
}

TEST_CASE("mime: encoded-word bombs stay linear and bounded", "[mime]") {
  // Each would take one search of the rest of the value per "=?" before.
  std::string many_starts;
  while (many_starts.size() < (1 << 20)) many_starts += "=?abc?de?";
  many_starts += "?=";
  std::string no_end;
  while (no_end.size() < (1 << 20)) no_end += "=?a?b?";
  for (const std::string& v : {many_starts, no_end}) {
    std::string out = decode_header_value(v, 16384);
    CHECK(out.size() <= 16384);
    CHECK(postern::valid_utf8(out));
  }
  std::string word = "=?utf-8?b?" + std::string(1 << 20, 'Q') + "?=";
  CHECK(decode_header_value(word, 16384).size() <= 16384);
}

TEST_CASE("mime: decoded text is well-formed UTF-8", "[mime]") {
  CHECK(decode_header_value("=?utf-8?q?a=FFb?= \xC3", 100) == "a\xEF\xBF\xBD" "b \xEF\xBF\xBD");
  CHECK(decode_header_value("=?x-no-such-charset?q?ok=FF?=", 100) == "ok\xEF\xBF\xBD");
  // A Shift_JIS text with one octet that does not convert keeps the rest.
  CHECK(to_utf8("shift_jis", "\x82\xa0\xff\x82\xa2") == "\xE3\x81\x82\xEF\xBF\xBD\xE3\x81\x84");
  // A cut never splits a character.
  CHECK(decode_header_value("\xC3\xA9\xC3\xA9", 3) == "\xC3\xA9");
  Part p;
  p.charset = "utf-8";
  p.transfer_encoding = "base64";
  p.body = "/w==";  // 0xFF
  CHECK(decoded_text(p, 100) == "\xEF\xBF\xBD");
}

namespace {

// The structure of `m` read by a StructureReader fed in pieces of `step` octets.
Structure read_in_pieces(const std::string& m, std::size_t step, TextBudget budget = {}) {
  StructureReader r(m.size(), budget);
  for (std::size_t i = 0; i < m.size(); i += step) r.feed(std::string_view(m).substr(i, step));
  return r.finish();
}

void check_same(const Structure& a, const Structure& b) {
  CHECK(a.problem == b.problem);
  CHECK(a.text_whole == b.text_whole);
  REQUIRE(a.parts.size() == b.parts.size());
  for (std::size_t i = 0; i < a.parts.size(); ++i) {
    INFO("part " << i);
    CHECK(a.parts[i].type == b.parts[i].type);
    CHECK(a.parts[i].filename == b.parts[i].filename);
    CHECK(a.parts[i].encoded_size == b.parts[i].encoded_size);
    CHECK(a.parts[i].body == b.parts[i].body);
    CHECK(a.parts[i].body_whole == b.parts[i].body_whole);
  }
}

const std::string kPadding = std::string(76, 'A') + "\r\n";

// `octets` of base64-looking body lines.
std::string padding(std::size_t octets) {
  std::string out;
  out.reserve(octets + kPadding.size());
  while (out.size() < octets) out += kPadding;
  return out;
}

}  // namespace

TEST_CASE("mime: the structure is the same however the message is split", "[mime]") {
  const std::string inner = "Subject: fwd\r\nContent-Type: multipart/mixed; boundary=in\r\n\r\n--in\r\n"
                            "Content-Type: text/plain\r\n\r\nhi there\r\n--in\r\n"
                            "Content-Disposition: attachment; filename=evil.exe\r\n\r\nMZ\r\n--in--\r\n";
  const std::vector<std::string> messages = {
      message_with("Content-Disposition: attachment; filename*=UTF-8''evil%2Eexe"),
      message_with("Content-Type: message/rfc822\r\n\r\n" + inner + "\r\n--b1--\r\n"),
      message_with("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
                   postern::base64_encode(inner, 76)),
      message_with("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
                   "Content-Disposition: attachment; filename=3Devil.e=\r\nxe\r\n\r\nMZ"),
      // LF line ends, transport padding, an unclosed multipart, folded fields.
      "Content-Type: multipart/mixed;\n boundary=q\n\n--q \t\ntext\n--q\nContent-Disposition: attachment;\n\t"
      "filename=evil.exe\n\nMZ\n",
  };
  for (const std::string& m : messages) {
    const Structure whole = read_structure(m);
    REQUIRE(whole.problem.empty());
    for (std::size_t step = 1; step <= m.size(); step += (step < 40 ? 1 : 37)) {
      INFO("message " << m.substr(0, 60) << " step " << step);
      check_same(read_in_pieces(m, step), whole);
    }
  }
}

TEST_CASE("mime: attachments past the text budget are listed", "[mime]") {
  constexpr std::size_t kBudget = 1 << 20;
  const TextBudget budget{kBudget, 32};
  const std::string exe = "Content-Disposition: attachment; filename=evil.exe\r\n\r\nTVqQ\r\n";
  const std::string big = padding(kBudget + 1000);
  auto check_exe = [&](const std::string& m, bool text_whole) {
    for (std::size_t step : {m.size(), std::size_t(4096), std::size_t(65536 + 7)}) {
      INFO("step " << step);
      Structure s = read_in_pieces(m, step, budget);
      CHECK(s.problem.empty());
      CHECK(filenames(s).back() == "evil.exe");
      CHECK(s.text_whole == text_whole);
    }
  };
  SECTION("after a text part longer than the budget") {
    check_exe("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n" + big +
                  "--b\r\n" + exe + "--b--\r\n",
              false);
  }
  SECTION("after an attachment longer than the budget: the text is still kept") {
    std::string m = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/pdf; "
                    "name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" + big +
                    "--b\r\nContent-Type: text/plain\r\n\r\nbuy now\r\n--b\r\n" + exe + "--b--\r\n";
    check_exe(m, true);
    Structure s = read_structure(m, budget);
    CHECK(s.parts[1].body == "buy now");
    CHECK(s.parts[1].body_whole);
    CHECK(s.parts[0].encoded_size == big.size() - 2);
  }
  SECTION("in a nested multipart that starts past the budget") {
    check_exe("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: image/png; name=a.png\r\n\r\n" + big +
                  "--b\r\nContent-Type: multipart/alternative; boundary=c\r\n\r\n--c\r\n" + exe + "--c--\r\n--b--\r\n",
              true);
  }
  SECTION("in a base64 attached message past the budget") {
    const std::string inner = "Content-Type: multipart/mixed; boundary=in\r\n\r\n--in\r\n" + exe + "--in--\r\n";
    check_exe("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: image/png; name=a.png\r\n\r\n" + big +
                  "--b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
                  postern::base64_encode(inner, 76) + "\r\n--b--\r\n",
              true);
  }
  SECTION("more text parts than text_parts_max") {
    std::string m = "Content-Type: multipart/mixed; boundary=b\r\n\r\n";
    for (int i = 0; i < 40; ++i) m += "--b\r\n\r\nfiller\r\n";
    check_exe(m + "--b\r\n" + exe + "--b--\r\n", false);
  }
}

TEST_CASE("mime: lines longer than the reader looks at", "[mime]") {
  const std::string exe = "--b\r\nContent-Disposition: attachment; filename=evil.exe\r\n\r\nTVqQ\r\n--b--\r\n";
  const std::string head = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n";
  for (std::size_t step : {std::size_t(1000), std::size_t(1) << 22}) {
    INFO("step " << step);
    // A 1 MB body line, CRLF and LF ended, before the delimiter: it is body.
    for (std::string end : {"\r\n", "\n"}) {
      std::string m = head + "Content-Type: text/plain\r\n\r\n" + std::string(1 << 20, 'x') + end + exe;
      Structure s = read_in_pieces(m, step);
      CHECK(s.problem.empty());
      CHECK(filenames(s) == std::vector<std::string>{"evil.exe"});
      CHECK(s.parts[0].encoded_size == 1 << 20);
      CHECK(s.parts[0].body_whole);
    }
    // A delimiter with 1 MB of transport padding: readers may not agree.
    Structure s = read_in_pieces(head + "\r\nx\r\n--b" + std::string(1 << 20, ' ') + "\r\n" + exe, step);
    CHECK(s.problem == "a boundary delimiter line longer than 131072 octets");
    // A Content-Disposition field on one 1 MB line.
    s = read_in_pieces(head + "Content-Disposition: attachment; filename=" + std::string(1 << 20, 'a') + ".exe\r\n\r\nMZ\r\n--b--\r\n", step);
    CHECK(s.problem == "content-disposition field longer than 65536 octets");
    // Another field that long is skipped.
    s = read_in_pieces(head + "X-Long: " + std::string(1 << 20, 'a') + "\r\n" + exe.substr(5), step);
    CHECK(s.problem.empty());
    CHECK(filenames(s) == std::vector<std::string>{"evil.exe"});
  }
}

TEST_CASE("mime: deep nesting reads each line once", "[mime]") {
  // 15 nested multiparts around 32 MiB of body: a walk that rescans each
  // level reads 15 times as many lines; this one reads them once (about as
  // fast as the flat message, which the Release unit test run shows).
  std::string m;
  for (int i = 0; i < 15; ++i) m += "Content-Type: multipart/mixed; boundary=n" + std::to_string(i) + "\r\n\r\n--n" + std::to_string(i) + "\r\n";
  m += "Content-Type: application/pdf; name=a.pdf\r\n\r\n" + padding(32u << 20);
  m += "--n14\r\nContent-Disposition: attachment; filename=evil.exe\r\n\r\nMZ\r\n";
  Structure s = read_in_pieces(m, 256 * 1024);
  CHECK(s.problem.empty());
  CHECK(filenames(s) == std::vector<std::string>{"a.pdf", "evil.exe"});
}

TEST_CASE("mime: quoted-printable decodes the same fed whole or in pieces", "[mime]") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"a=3Db", "a=b"},   {"a=\r\nb", "ab"},     {"a= \t\r\nb", "ab"}, {"a=\nb", "ab"},
      {"a=4", "a=4"},     {"a=", "a="},          {"a=G1", "a=G1"},     {"a= x", "a= x"},
      {"=3d=3D", "=="},   {"a=\rb", "a=\rb"},    {"a==41", "a=A"},     {"=\r\r\n", "=\r\r\n"},
  };
  for (const auto& [in, expected] : cases) {
    INFO(in);
    CHECK(decode_quoted_printable(in, 100) == expected);
    std::string out;
    QuotedPrintableDecoder d;
    for (char c : in) d.feed(std::string_view(&c, 1), out, 100);
    d.finish(out, 100);
    CHECK(out == expected);
  }
  CHECK(decode_quoted_printable("abc=3Ddef", 4) == "abc=");
}

TEST_CASE("mime: the first body line is read in the body it starts", "[mime]") {
  // Found by running the recursive walker this reader replaced against it on
  // random messages: both cases read differently until fixed.
  SECTION("a multipart header without its empty line: the delimiter right after it") {
    const std::string m = "Content-Type: multipart/mixed; boundary=bb\r\n--bb\r\n"
                          "Content-Disposition: attachment; filename=evil.exe\r\n\r\nMZ\r\n--bb--\r\n";
    for (std::size_t step : {m.size(), std::size_t(1), std::size_t(7)}) {
      CHECK(filenames(read_in_pieces(m, step)) == std::vector<std::string>{"evil.exe"});
    }
  }
  SECTION("an encoded attached message ends before the delimiter's line break") {
    for (const std::string encoding : {"quoted-printable", "base64"}) {
      const std::string inner = "Content-Type: text/plain\r\n\r\nline 1\r\n\r\n";
      const std::string body = encoding == "base64" ? postern::base64_encode(inner, 76) + "\r\n" : inner;
      const std::string m = "Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: message/rfc822\r\n"
                            "Content-Transfer-Encoding: " + encoding + "\r\n\r\n" + body + "\r\n--a--\r\n";
      for (std::size_t step : {m.size(), std::size_t(1), std::size_t(5)}) {
        INFO(encoding << " step " << step);
        Structure s = read_in_pieces(m, step);
        REQUIRE(s.parts.size() == 2);
        // The inner message's own last empty line is kept; the delimiter's break is not in it.
        CHECK(s.parts[1].body == "line 1\r\n\r\n");
        CHECK(s.parts[1].body_whole);
      }
    }
  }
}

TEST_CASE("mime: a text budget spent on the delimiter's line break keeps the body whole", "[mime]") {
  // Found by fuzz_mime: the cut body kept the "\r" of the break before the delimiter.
  const std::string m = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nhello\r\n--b--\r\n";
  for (std::size_t budget : {5, 6, 7, 100}) {
    INFO("budget " << budget);
    Structure s = read_structure(m, {budget, 32});
    REQUIRE(s.parts.size() == 1);
    CHECK(s.parts[0].body == "hello");
    CHECK(s.parts[0].body_whole);
    CHECK(s.text_whole);
  }
  Structure s = read_structure(m, {4, 32});
  CHECK(s.parts[0].body == "hell");
  CHECK_FALSE(s.parts[0].body_whole);
  CHECK_FALSE(s.text_whole);
}

TEST_CASE("mime: files uuencoded or yEnc-encoded in a text part are listed as attachments", "[mime]") {
  const std::string uu = "begin 644 invoice.exe\r\nM35J0``,````$````__\\``+@`````````0`````````````````````````\r\n`\r\nend\r\n";
  auto embedded = [](const Structure& s) {
    std::vector<std::string> out;
    for (const Part& p : s.parts) {
      if (p.type == "application/octet-stream" && p.disposition == "attachment") out.push_back(p.filename + " " + p.transfer_encoding);
    }
    return out;
  };
  using V = std::vector<std::string>;
  SECTION("a message with no Content-Type (Thunderbird's untyped text)") {
    CHECK(embedded(read_structure("Subject: x\r\n\r\nHere it is:\r\n\r\n" + uu)) == V{"invoice.exe x-uuencode"});
  }
  SECTION("not at a line's start, mode of four digits, tabs (Roundcube reads it anywhere in a line)") {
    CHECK(embedded(read_structure("Subject: x\r\n\r\nsee: begin 0755\tsetup.scr  \r\n")) == V{"setup.scr x-uuencode"});
    CHECK(embedded(read_structure("Subject: x\r\n\r\nbegin begin 644 a.js\r\n")) == V{"a.js x-uuencode"});
  }
  SECTION("yEnc") {
    CHECK(embedded(read_structure("Subject: x\r\n\r\n=ybegin line=128 size=4 name=run me.bat\r\nabcd\r\n=yend size=4\r\n")) ==
          V{"run me.bat x-yenc"});
  }
  SECTION("in a text/plain part of a multipart, decoded from base64 or quoted-printable first") {
    const std::string b64 = postern::base64_encode("Hi,\r\n" + uu);
    std::string m = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n"
                    "Content-Transfer-Encoding: base64\r\n\r\n" + b64 + "\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    "Content-Transfer-Encoding: quoted-printable\r\n\r\n=62egin 644 =\r\nb.vbs\r\n--b--\r\n";
    CHECK(embedded(read_structure(m)) == V{"invoice.exe x-uuencode", "b.vbs x-uuencode"});
  }
  SECTION("the same whatever pieces the message comes in") {
    const std::string m = "Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nx=\r\nbegin 644 c.=\r\nexe\r\n";
    const V want{"c.exe x-uuencode"};
    CHECK(embedded(read_structure(m)) == want);
    for (std::size_t piece = 1; piece < 12; ++piece) {
      StructureReader r(m.size(), {});
      for (std::size_t i = 0; i < m.size(); i += piece) r.feed(std::string_view(m).substr(i, piece));
      CHECK(embedded(r.finish()) == want);
    }
  }
  SECTION("what is no embedded file") {
    for (std::string text : {"begin 64 a.exe", "begin 644", "begin 644   ", "begin 6448 a.exe", "begin 648 a.exe",
                             "BEGIN 644 a.exe", "=ybegin line=128 size=4", " =ybegin name=a.exe"}) {
      INFO(text);
      CHECK(embedded(read_structure("Subject: x\r\n\r\n" + text + "\r\n")).empty());
    }
    // Only text/plain parts that are no attachment: a mail reader shows the
    // others as what they are.
    CHECK(embedded(read_structure("Content-Type: text/html\r\n\r\nbegin 644 a.exe\r\n")).empty());
    CHECK(embedded(read_structure("Content-Type: text/plain\r\nContent-Disposition: attachment; filename=notes.txt\r\n\r\n"
                                  "begin 644 a.exe\r\n")).empty());
  }
  SECTION("they count toward the parts' limit") {
    std::string m = "Subject: x\r\n\r\n";
    for (std::size_t i = 0; i <= kMaxParts; ++i) m += "begin 644 f" + std::to_string(i) + ".txt\r\n";
    CHECK_FALSE(read_structure(m).problem.empty());
  }
}

namespace {

// TNEF (MS-OXTNEF) built field by field, as Outlook writes it.
std::string le(std::uint64_t v, int octets) {
  std::string out;
  for (int i = 0; i < octets; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  return out;
}

std::string attr(int level, std::uint32_t id, const std::string& data) {
  unsigned sum = 0;
  for (unsigned char c : data) sum += c;
  return std::string(1, static_cast<char>(level)) + le(id, 4) + le(data.size(), 4) + data + le(sum & 0xFFFF, 2);
}

std::string tnef(const std::vector<std::string>& attrs) {
  std::string out = le(0x223E9F78, 4) + le(0x0001, 2);
  for (const std::string& a : attrs) out += a;
  return out;
}

std::string padded(std::string s) {
  while (s.size() % 4) s.push_back('\0');
  return s;
}

std::string prop_string8(std::uint16_t id, const std::string& s) {
  return le(static_cast<std::uint32_t>(id) << 16 | 0x001E, 4) + le(1, 4) + le(s.size() + 1, 4) + padded(s + '\0');
}

std::string prop_unicode(std::uint16_t id, const std::string& ascii) {
  std::string utf16;
  for (char c : ascii + '\0') utf16 += std::string{c, '\0'};
  return le(static_cast<std::uint32_t>(id) << 16 | 0x001F, 4) + le(1, 4) + le(utf16.size(), 4) + padded(utf16);
}

std::string prop_long(std::uint16_t id, std::uint32_t v) { return le(static_cast<std::uint32_t>(id) << 16 | 0x0003, 4) + le(v, 4); }

std::string props(const std::vector<std::string>& list) {
  std::string out = le(list.size(), 4);
  for (const std::string& p : list) out += p;
  return out;
}

constexpr std::uint32_t kRenddata = 0x00069002, kTitle = 0x00018010, kAttachData = 0x0006800F, kAttachment = 0x00069005;

// winmail.dat with one attachment: its title, its data and its MAPI properties.
std::string winmail(const std::string& title, const std::string& props_blob) {
  return tnef({attr(1, 0x00089006, le(0x0001, 4)), attr(2, kRenddata, std::string(14, '\0')), attr(2, kTitle, title + '\0'),
               attr(2, kAttachData, std::string(3000, 'Z')), attr(2, kAttachment, props_blob)});
}

std::vector<std::string> tnef_names(const std::string& stream, std::string* problem = nullptr) {
  TnefReader r;
  r.feed(stream);
  r.finish();
  if (problem) *problem = r.problem();
  return r.names();
}

}  // namespace

TEST_CASE("mime: the files in a TNEF part (winmail.dat) are listed", "[mime]") {
  using V = std::vector<std::string>;
  const std::string blob = props({prop_long(0x3705, 1), prop_unicode(0x3707, "invoice.pdf.exe"), prop_string8(0x3704, "INVOIC~1.EXE")});
  const std::string stream = winmail("README.TXT", blob);

  SECTION("the title and the names in the MAPI properties, fed whole or in any pieces") {
    const V want{"README.TXT", "invoice.pdf.exe", "INVOIC~1.EXE"};
    std::string problem = "x";
    CHECK(tnef_names(stream, &problem) == want);
    CHECK(problem.empty());
    for (std::size_t piece : {1, 2, 5, 9, 64, 1000}) {
      TnefReader r;
      for (std::size_t i = 0; i < stream.size(); i += piece) r.feed(std::string_view(stream).substr(i, piece));
      r.finish();
      CHECK(r.names() == want);
      CHECK(r.problem().empty());
    }
  }
  SECTION("named properties and multi-valued ones before the name") {
    const std::string named = le(0x8005u << 16 | 0x001F, 4) + std::string(16, 'G') + le(1, 4) + le(6, 4) + padded(std::string("n\0m\0e\0", 6)) +
                              le(1, 4) + le(4, 4) + padded(std::string("x\0\0\0", 4));
    const std::string multi = le(0x1003u | 0x8006u << 16, 4) + std::string(16, 'G') + le(0, 4) + le(7, 4) + le(2, 4) + le(1, 4) + le(2, 4);
    std::string problem = "x";
    CHECK(tnef_names(winmail("a.txt", props({named, multi, prop_unicode(0x3707, "run.scr")})), &problem) == V{"a.txt", "run.scr"});
    CHECK(problem.empty());
  }
  SECTION("a message embedded in the attachment, with a file of its own") {
    const std::string inner = winmail("deep.exe", props({}));
    const std::string object = le(0x3701u << 16 | 0x000D, 4) + le(1, 4) + le(16 + inner.size(), 4) + padded(std::string(16, 'I') + inner);
    CHECK(tnef_names(winmail("outer.txt", props({object}))) == V{"outer.txt", "deep.exe"});
  }
  SECTION("in a base64 application/ms-tnef part, and a part named winmail.dat") {
    for (std::string head : {"Content-Type: application/ms-tnef; name=\"winmail.dat\"",
                             "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=WINMAIL.DAT"}) {
      const std::string m = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\n" +
                            head + "\r\nContent-Transfer-Encoding: base64\r\n\r\n" + postern::base64_encode(stream, 76) + "\r\n--b--\r\n";
      Structure s = read_structure(m);
      INFO(head);
      CHECK(s.problem.empty());
      V names = filenames(s);
      REQUIRE(names.size() == 4);
      CHECK(postern::ascii::to_lower(names[0]) == "winmail.dat");
      CHECK(V(names.begin() + 1, names.end()) == V{"README.TXT", "invoice.pdf.exe", "INVOIC~1.EXE"});
    }
  }
  SECTION("named winmail.dat only by the name= a reader may show") {
    const std::string m = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/octet-stream; "
                          "name=winmail.dat\r\nContent-Disposition: attachment; filename=att00001.dat\r\n"
                          "Content-Transfer-Encoding: base64\r\n\r\n" + postern::base64_encode(stream, 76) + "\r\n--b--\r\n";
    CHECK(filenames(read_structure(m)) == V{"att00001.dat", "README.TXT", "invoice.pdf.exe", "INVOIC~1.EXE"});
  }
  SECTION("what could hide a name is a problem; what is no TNEF is a plain file") {
    std::string problem;
    CHECK(tnef_names("not TNEF at all", &problem).empty());
    CHECK(problem.empty());
    tnef_names(tnef({attr(2, kAttachment, "")}).substr(0, 11) + le(kMaxTnefAttribute + 1, 4), &problem);  // header, level, id
    CHECK(problem.find("octets holding file names") != std::string::npos);
    tnef_names(stream.substr(0, stream.size() - 20), &problem);
    CHECK(problem.find("ends inside") != std::string::npos);
    tnef_names(winmail("a", props({le(0x3707u << 16 | 0x0099, 4) + le(0, 4), prop_unicode(0x3707, "b.exe")})), &problem);
    CHECK(problem.find("unknown type") != std::string::npos);
    tnef_names(winmail("a", props({prop_unicode(0x3707, "b.exe")}).substr(0, 12)), &problem);
    CHECK(problem.find("do not parse") != std::string::npos);
    std::string deep = winmail("deepest.exe", props({}));
    for (int i = 0; i <= kMaxTnefDepth; ++i) {
      deep = winmail("l" + std::to_string(i), props({le(0x3701u << 16 | 0x000D, 4) + le(1, 4) + le(16 + deep.size(), 4) +
                                                     padded(std::string(16, 'I') + deep)}));
    }
    tnef_names(deep, &problem);
    CHECK(problem.find("embedded deeper") != std::string::npos);
  }
}

TEST_CASE("mime: every file name a reader may show is kept", "[mime]") {
  auto part_of = [](const std::string& header) {
    Structure s = read_structure(message_with(header));
    REQUIRE(s.problem.empty());
    REQUIRE(s.parts.size() == 2);
    return s.parts[1];
  };
  Part p = part_of("Content-Type: application/octet-stream; name=\"invoice.exe\"\r\nContent-Disposition: attachment; filename=\"invoice.pdf\"");
  using V = std::vector<std::string>;
  CHECK(p.filename == "invoice.pdf");
  CHECK(p.other_filenames == V{"invoice.exe"});
  p = part_of("Content-Type: application/pdf; name=\"=?utf-8?q?r=C3=A9sum=C3=A9.pdf?=\"\r\n"
              "Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf");
  CHECK(p.filename == "r\xC3\xA9sum\xC3\xA9.pdf");
  CHECK(p.other_filenames.empty());  // the same name, however written
  p = part_of("Content-Type: application/octet-stream; name=\"setup.exe\"");
  CHECK(p.filename == "setup.exe");
  CHECK(p.other_filenames.empty());
  // The plain value beside an RFC 2231 one (readers without RFC 2231), and a
  // parameter given twice (a reader may take the last), in either field.
  p = part_of("Content-Disposition: attachment; filename*=utf-8''invoice.pdf; filename=\"invoice.exe\"");
  CHECK(p.filename == "invoice.pdf");
  CHECK(p.other_filenames == V{"invoice.exe"});
  p = part_of("Content-Disposition: attachment; filename*0=in; filename*1=voice.pdf; filename=a.scr");
  CHECK(p.filename == "invoice.pdf");
  CHECK(p.other_filenames == V{"a.scr"});
  p = part_of("Content-Type: application/pdf; name=a.pdf; name=a.exe; name*=utf-8''a.pdf; name*=utf-8''a.js");
  CHECK(p.filename == "a.pdf");
  CHECK(p.other_filenames == V{"a.exe", "a.js"});
  p = part_of("Content-Disposition: attachment; filename=a.pdf; filename=a.pdf; filename=b.exe");
  CHECK(p.other_filenames == V{"b.exe"});
  // More names than any reader needs: the structure is not read whole.
  std::string many = "Content-Disposition: attachment; filename=x.pdf";
  for (std::size_t i = 0; i < kMaxNames; ++i) many += "; filename=n" + std::to_string(i) + ".pdf";
  CHECK(read_structure(message_with(many)).problem.find("different file names") != std::string::npos);
}

namespace {

struct ZipEntry {
  ZipEntry(std::string n, std::string local = "", std::uint16_t f = 0, std::string x = "")
      : name(std::move(n)), local_name(std::move(local)), flags(f), extra(std::move(x)) {}
  std::string name;
  std::string local_name;  // the local header's name, when it differs
  std::uint16_t flags;
  std::string extra;
};

// A ZIP archive of stored (empty) files: local headers, central directory,
// end record; `zip64` writes the Zip64 end record and locator too.
std::string zip_archive(const std::vector<ZipEntry>& entries, const std::string& prefix = "", const std::string& comment = "",
                        bool zip64 = false) {
  std::string out = prefix, directory;
  for (const ZipEntry& e : entries) {
    const std::string local = e.local_name.empty() ? e.name : e.local_name;
    const std::size_t offset = out.size();
    out += "PK\x03\x04" + le(20, 2) + le(e.flags, 2) + le(0, 2) + le(0, 4) + le(0, 4) + le(0, 4) + le(0, 4) +
           le(local.size(), 2) + le(0, 2) + local;
    directory += "PK\x01\x02" + le(20, 2) + le(20, 2) + le(e.flags, 2) + le(0, 2) + le(0, 4) + le(0, 4) + le(0, 4) + le(0, 4) +
                 le(e.name.size(), 2) + le(e.extra.size(), 2) + le(0, 2) + le(0, 2) + le(0, 2) + le(0, 4) + le(offset, 4) +
                 e.name + e.extra;
  }
  const std::size_t at = out.size();
  out += directory;
  if (zip64) {
    const std::size_t record = out.size();
    out += "PK\x06\x06" + le(44, 8) + le(45, 2) + le(45, 2) + le(0, 4) + le(0, 4) + le(entries.size(), 8) +
           le(entries.size(), 8) + le(directory.size(), 8) + le(at, 8);
    out += "PK\x06\x07" + le(0, 4) + le(record, 8) + le(1, 4);
    return out + "PK\x05\x06" + le(0, 2) + le(0, 2) + le(0xFFFF, 2) + le(0xFFFF, 2) + le(0xFFFFFFFF, 4) + le(0xFFFFFFFF, 4) +
           le(comment.size(), 2) + comment;
  }
  return out + "PK\x05\x06" + le(0, 2) + le(0, 2) + le(entries.size(), 2) + le(entries.size(), 2) + le(directory.size(), 4) +
         le(at, 4) + le(comment.size(), 2) + comment;
}

std::vector<std::string> zip_names(const std::string& archive, std::string* problem = nullptr) {
  ZipReader r;
  r.feed(archive);
  r.finish();
  if (problem) *problem = r.problem();
  return r.names();
}

}  // namespace

TEST_CASE("mime: the files in a ZIP archive are listed from its central directory", "[mime]") {
  using V = std::vector<std::string>;
  SECTION("the directory's names, not the local headers', whatever comes before or after the archive") {
    const std::string z = zip_archive({{"docs/", ""}, {"docs/invoice.exe", "docs/invoice.pdf"}}, "MZ stub of a self-extractor",
                                      "a comment PK\x05\x06 in the comment");
    std::string problem = "x";
    CHECK(zip_names(z, &problem) == V{"docs/", "docs/invoice.exe"});
    CHECK(problem.empty());
    for (std::size_t piece : {1, 3, 7, 100}) {
      ZipReader r;
      for (std::size_t i = 0; i < z.size(); i += piece) r.feed(std::string_view(z).substr(i, piece));
      r.finish();
      CHECK(r.names() == V{"docs/", "docs/invoice.exe"});
    }
  }
  SECTION("code page 437, UTF-8 by flag, and an Info-ZIP Unicode path") {
    const std::string path = "r\xC3\xA9sum\xC3\xA9.js";
    const std::string unicode = le(0x7075, 2) + le(5 + path.size(), 2) + "\x01" + le(0, 4) + path;
    CHECK(zip_names(zip_archive({{"\x81" "ber.txt"}, {"caf\xC3\xA9.scr", "", 0x800}, {"resume.txt", "", 0, unicode}})) ==
          V{"\xC3\xBC" "ber.txt", "caf\xC3\xA9.scr", "resume.txt", "r\xC3\xA9sum\xC3\xA9.js"});
  }
  SECTION("past megabytes of data, fed whole or in pieces") {
    const std::string z = zip_archive({{"a.txt"}, {"b.exe"}}, std::string(3 * kMaxZipDirectory + 17, 'x'));
    for (std::size_t piece : {std::size_t{1000}, std::size_t{65536}, z.size()}) {
      ZipReader r;
      for (std::size_t i = 0; i < z.size(); i += piece) r.feed(std::string_view(z).substr(i, piece));
      r.finish();
      CHECK(r.names() == V{"a.txt", "b.exe"});
      CHECK(r.problem().empty());
    }
  }
  SECTION("Zip64") {
    CHECK(zip_names(zip_archive({{"a.txt"}, {"b.exe"}}, "", "", true)) == V{"a.txt", "b.exe"});
  }
  SECTION("what is no archive, and what could hide a name") {
    std::string problem = "x";
    CHECK(zip_names("just a PDF", &problem).empty());
    CHECK(problem.empty());
    // A directory larger than what is kept of the archive's end.
    std::string big = std::string(3 * kMaxZipDirectory, 'x') + "PK\x05\x06" + le(0, 4) + le(2, 2) + le(2, 2) +
                      le(2 * kMaxZipDirectory, 4) + le(0, 4) + le(0, 2);
    zip_names(big, &problem);
    CHECK(problem.find("central directory of") != std::string::npos);
    std::string z = zip_archive({{"a.txt"}, {"b.exe"}});
    z[z.size() - 22 + 10] = 3;  // three entries where the directory holds two
    zip_names(z, &problem);
    CHECK(problem.find("does not parse") != std::string::npos);
    std::vector<ZipEntry> many(kMaxArchiveFiles + 1, ZipEntry{"f.txt"});
    zip_names(zip_archive(many), &problem);
    CHECK(problem.find("more than") != std::string::npos);
  }
  SECTION("in a base64 part, with the archive named; thousands of files are no 1000 parts") {
    std::vector<ZipEntry> photos(1500, ZipEntry{"IMG.JPG"});
    photos.push_back({"viewer.exe"});
    for (std::string head : {"Content-Type: application/zip; name=\"photos.zip\"",
                             "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=PHOTOS.ZIP"}) {
      const std::string m = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\n" +
                            head + "\r\nContent-Transfer-Encoding: base64\r\n\r\n" + postern::base64_encode(zip_archive(photos), 76) +
                            "\r\n--b--\r\n";
      Structure s = read_structure(m);
      INFO(head);
      REQUIRE(s.problem.empty());
      REQUIRE(s.parts.size() == 2 + 1501);
      CHECK(s.parts.back().filename == "viewer.exe");
      CHECK(postern::ascii::to_lower(s.parts.back().archive) == "photos.zip");
      CHECK(s.parts.back().transfer_encoding == "x-zip");
    }
  }
}

namespace {

// A RAR 4.x block: CRC (not checked by the reader), type, flags, size, body; then data.
std::string rar4_block(int type, unsigned flags, const std::string& body, const std::string& data = "") {
  return le(0, 2) + le(type, 1) + le(flags, 2) + le(7 + body.size(), 2) + body + data;
}

// A RAR 4.x archive of files with these name fields (flags 0x200: Unicode).
std::string rar4_archive(const std::vector<std::pair<std::string, unsigned>>& files) {
  std::string out = std::string("Rar!\x1A\x07\x00", 7) + rar4_block(0x73, 0, std::string(6, '\0'));
  for (const auto& [field, flags] : files) {
    const std::string data = "data";
    out += rar4_block(0x74, 0x8000 | flags,
                      le(data.size(), 4) + le(data.size(), 4) + le(2, 1) + le(0, 4) + le(0, 4) + le(20, 1) + le(0x30, 1) +
                          le(field.size(), 2) + le(0x20, 4) + field,
                      data);
  }
  return out + rar4_block(0x7B, 0x4000, "");
}

std::string vint(std::uint64_t n) {
  std::string out;
  do {
    out += static_cast<char>((n & 0x7F) | (n > 0x7F ? 0x80 : 0));
    n >>= 7;
  } while (n);
  return out;
}

// A RAR 5.0 block: CRC32 (not checked), size, type, flags, [data size], body; then data.
std::string rar5_block(int type, const std::string& body, const std::string& data = "") {
  const std::string fields = vint(type) + vint(data.empty() ? 0 : 2) + (data.empty() ? "" : vint(data.size())) + body;
  return le(0, 4) + vint(fields.size()) + fields + data;
}

std::string rar5_archive(const std::vector<std::string>& names, const std::string& before = "") {
  std::string out = before + std::string("Rar!\x1A\x07\x01\x00", 8) + rar5_block(1, vint(0));
  for (const std::string& name : names) {
    out += rar5_block(2, vint(0) + vint(4) + vint(0x20) + vint(0) + vint(0) + vint(name.size()) + name, "data");
  }
  return out + rar5_block(5, vint(0));
}

std::vector<std::string> rar_names(const std::string& archive, std::string* problem = nullptr, std::size_t piece = 0) {
  RarReader r;
  if (piece == 0) piece = archive.size() + 1;
  for (std::size_t i = 0; i < archive.size(); i += piece) r.feed(std::string_view(archive).substr(i, piece));
  r.finish();
  if (problem) *problem = r.problem();
  return r.names();
}

}  // namespace

TEST_CASE("mime: the files in a RAR archive are listed from its headers", "[mime]") {
  using V = std::vector<std::string>;
  SECTION("RAR 5.0 and 4.x, fed whole or in pieces, behind a stub") {
    const std::string a5 = rar5_archive({"docs/", "docs/r\xC3\xA9sum\xC3\xA9.exe"}, std::string(100000, 'M'));
    const std::string a4 = rar4_archive({{"readme.txt", 0}, {"\x81" "ber.exe", 0}});
    for (std::size_t piece : {std::size_t{1}, std::size_t{5}, std::size_t{4096}, std::size_t{0}}) {
      std::string problem = "x";
      CHECK(rar_names(a5, &problem, piece) == V{"docs/", "docs/r\xC3\xA9sum\xC3\xA9.exe"});
      CHECK(problem.empty());
      CHECK(rar_names(a4, &problem, piece) == V{"readme.txt", "\xC3\xBC" "ber.exe"});  // code page 437
      CHECK(problem.empty());
    }
  }
  SECTION("RAR 4.x Unicode names: each way of encoding a character") {
    // High octet 0x04; flags 01 00 11 00: low octet with the high one
    // (U+0410), a low octet ('x'), a run of 2 + 2 copied from the OEM name.
    const std::string modes = std::string("??.exe") + '\0' + "\x04\x4C\x10x\x02";
    // Flags 11: a run of 0 + 2 copied with a correction of 1, under the high octet.
    const std::string corrected = std::string("\x0F\x10", 2) + '\0' + std::string("\x04\xC0\x80\x01", 4);
    // Flags 10 10: two whole UTF-16 units, a surrogate pair (U+1F600).
    const std::string pair = std::string("?", 1) + '\0' + std::string("\x00\xA0\x3D\xD8\x00\xDE", 6);
    // Each Unicode name, then the code page 437 one beside it, which older readers show.
    CHECK(rar_names(rar4_archive({{modes, 0x200}, {corrected, 0x200}, {pair, 0x200}})) ==
          V{"\xD0\x90x.exe", "??.exe", "\xD0\x90\xD0\x91", std::string("\x0F\x10", 2), "\xF0\x9F\x98\x80", "?"});
    // The same name both ways is listed once; one whose Unicode half is empty
    // by its other name; flag 0x200 without a NUL: the field is UTF-8.
    // ("a.exe" in Unicode: high octet 0, flags 00 00 00 00 (a low octet each), "a.ex", flags, "e".)
    CHECK(rar_names(rar4_archive({{std::string("a.exe") + '\0' + std::string("\x00\x00" "a.ex" "\x00" "e", 8), 0x200},
                                  {std::string("b.exe") + '\0', 0x200}, {"caf\xC3\xA9.scr", 0x200}})) ==
          V{"a.exe", "b.exe", "caf\xC3\xA9.scr"});
  }
  SECTION("what is no archive, and what could hide a name") {
    std::string problem = "x";
    CHECK(rar_names("Rar! is how this text starts", &problem).empty());
    CHECK(problem.empty());
    CHECK(rar_names(std::string(kMaxRarPrefix + 10, 'x') + rar5_archive({"a.exe"}), &problem).empty());
    CHECK(problem.empty());  // past the prefix readers search: no archive
    rar_names(std::string("Rar!\x1A\x07\x00", 7) + rar4_block(0x73, 0x80, std::string(6, '\0')), &problem);
    CHECK(problem == "a RAR archive whose file names are encrypted");
    rar_names(std::string("Rar!\x1A\x07\x01\x00", 8) + rar5_block(4, vint(0) + vint(0) + "\x0F" + std::string(16, 'S')),
              &problem);
    CHECK(problem == "a RAR archive whose file names are encrypted");
    const std::string a5 = rar5_archive({"a.txt", "b.exe"});
    CHECK(rar_names(a5.substr(0, a5.size() - 20), &problem) == V{"a.txt"});
    CHECK(problem == "a RAR archive cut short");
    CHECK(rar_names(rar5_archive(std::vector<std::string>(kMaxArchiveFiles + 1, "f.txt")), &problem).size() ==
          kMaxArchiveFiles + 1);  // what was read when it stopped
    CHECK(problem == "a RAR archive of more than 10000 files");
    rar_names(std::string("Rar!\x1A\x07\x01\x00", 8) + le(0, 4) + vint(3 * 1024 * 1024), &problem);  // over 2 MB
    CHECK(problem.find("does not parse") != std::string::npos);
    rar_names(std::string("Rar!\x1A\x07\x00", 7) + le(0, 2) + le(0x74, 1) + le(0x8000, 2) + le(20, 2) + std::string(13, '\0'),
              &problem);
    CHECK(problem.find("does not parse") != std::string::npos);
  }
  SECTION("in a base64 part named or typed as either format, with the archive's name") {
    for (std::string head : {"Content-Type: application/vnd.rar; name=\"scan.rar\"",
                             "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=SCAN.ZIP"}) {
      const std::string m = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" + head +
                            "\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
                            postern::base64_encode(rar5_archive({"a.txt", "viewer.exe"}), 76) + "\r\n--b--\r\n";
      Structure s = read_structure(m);
      INFO(head);
      REQUIRE(s.problem.empty());
      REQUIRE(s.parts.size() == 1 + 2);
      CHECK(s.parts.back().filename == "viewer.exe");
      CHECK(s.parts.back().transfer_encoding == "x-rar");
      CHECK(postern::ascii::to_lower(s.parts.back().archive).starts_with("scan."));
    }
  }
}
