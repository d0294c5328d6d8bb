// Fuzz target: scan_line, parse_command, parse_mail_args, parse_rcpt_args
// (proxy/smtp_command.h). The input is what a client sends in the command
// phase; it is cut into lines as Session::process_input does, with a line
// limit derived from the input, so seeds are plain SMTP sessions.
//
// Asserts:
//  - scan_line: consumed <= buffer; kComplete is exactly a line ending in
//    CRLF with no LF inside, within the limit, and scanning any shorter prefix
//    of it gives kIncomplete (or kTooLong at the limit); kBareLf consumes up
//    to the first LF, which has no CR before it; kIncomplete / kTooLong only
//    when no LF lies within the limit, kTooLong only at the limit;
//  - parse_command: the verb is the table entry matching the text before the
//    first space, case-insensitively (kUnknown otherwise), and args is the
//    text after it without trailing spaces;
//  - parse_mail_args / parse_rcpt_args (with and without SMTPUTF8): on
//    success the mailbox has no control octet (no 8-bit without SMTPUTF8), a
//    forward-path is never null, parameters have upper-case keywords of
//    letters, digits and '-' and values of %d33-126 minus '=' (or 8-bit), and
//    "FROM:<mailbox> KEY=VALUE..." re-serialized parses back to the same.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_util.h"
#include "proxy/smtp_command.h"

using postern::Command;
using postern::LineScan;
using postern::PathArgs;
using postern::Verb;
using postern::fuzz::Choices;
using postern::fuzz::escape;
using Outcome = LineScan::Outcome;

namespace {

const char* name(Outcome o) {
  switch (o) {
    case Outcome::kComplete: return "complete";
    case Outcome::kIncomplete: return "incomplete";
    case Outcome::kTooLong: return "too-long";
    case Outcome::kBareLf: return "bare-lf";
  }
  return "?";
}

std::string describe(const LineScan& s) {
  return std::string(name(s.outcome)) + " consumed=" + std::to_string(s.consumed) + " line=\"" + escape(s.line) + "\"";
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto up = [](char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c; };
    if (up(a[i]) != up(b[i])) return false;
  }
  return true;
}

void check_scan(std::string_view buffer, std::size_t limit, const LineScan& s) {
  auto where = [&] {
    return std::string("  buffer: \"" + escape(buffer) + "\" limit=" + std::to_string(limit) +
                            "\n  got: " + describe(s));
  };
  std::size_t lf = buffer.find('\n');
  switch (s.outcome) {
    case Outcome::kComplete:
      FUZZ_CHECK(s.consumed >= 2 && s.consumed <= buffer.size() && s.consumed <= limit && lf == s.consumed - 1 &&
                     buffer[s.consumed - 2] == '\r' && s.line.data() == buffer.data() &&
                     s.line.size() == s.consumed - 2,
                 where());
      break;
    case Outcome::kBareLf:
      FUZZ_CHECK(lf != std::string_view::npos && s.consumed == lf + 1 && (lf == 0 || buffer[lf - 1] != '\r'),
                 where());
      break;
    case Outcome::kIncomplete:
      FUZZ_CHECK(s.consumed == 0 && lf == std::string_view::npos && buffer.size() < limit, where());
      break;
    case Outcome::kTooLong:
      FUZZ_CHECK(s.consumed == 0 && buffer.size() >= limit && (lf == std::string_view::npos || lf >= limit), where());
      break;
  }
}

void check_command(std::string_view line) {
  Command cmd = postern::parse_command(line);
  std::string_view verb = line.substr(0, line.find(' '));
  auto where = [&] {
    return std::string("  line: \"" + escape(line) + "\"");
  };
  if (cmd.verb == Verb::kUnknown) {
    FUZZ_CHECK(cmd.spec == nullptr, where());
    for (std::string_view known : {"EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "HELP", "VRFY",
                                   "EXPN", "STARTTLS", "AUTH", "BDAT"}) {
      FUZZ_CHECK(!iequals(verb, known), where() + " not recognised as " + std::string(known));
    }
  } else {
    FUZZ_CHECK(cmd.spec != nullptr && cmd.spec->verb == cmd.verb && iequals(verb, cmd.spec->name), where());
  }
  std::size_t sp = line.find(' ');
  if (sp == std::string_view::npos) {
    FUZZ_CHECK(cmd.args.empty(), where());
  } else {
    std::string_view expected = line.substr(sp + 1);
    while (!expected.empty() && expected.back() == ' ') expected.remove_suffix(1);
    FUZZ_CHECK(cmd.args == expected, where() + "\n  args: \"" + escape(cmd.args) + "\"");
  }
}

std::string serialize(const PathArgs& a, bool is_mail) {
  std::string s = is_mail ? "FROM:<" : "TO:<";
  s += a.mailbox.str() + ">";
  for (const postern::EsmtpParam& p : a.params) {
    s += " " + p.keyword;
    if (p.has_value) s += "=" + p.value;
  }
  return s;
}

std::string describe(const PathArgs& a) {
  std::string s = std::string("error=") + (a.error ? std::string(a.error->text) : "none") + " mailbox=\"" +
                  escape(a.mailbox.str()) + "\" params:";
  for (const postern::EsmtpParam& p : a.params) s += " [" + escape(p.keyword) + (p.has_value ? "=" + escape(p.value) : "") + "]";
  return s;
}

void check_path_args(std::string_view args, bool is_mail, bool utf8) {
  PathArgs a = is_mail ? postern::parse_mail_args(args, utf8) : postern::parse_rcpt_args(args, utf8);
  if (a.error) return;
  auto where = [&] {
    return std::string(std::string(is_mail ? "  MAIL" : "  RCPT") + " args: \"" + escape(args) +
                            "\" utf8=" + std::to_string(utf8) + "\n  got: " + describe(a));
  };
  FUZZ_CHECK(iequals(args.substr(0, is_mail ? 5 : 3), is_mail ? "FROM:" : "TO:"), where());
  FUZZ_CHECK(is_mail || !a.mailbox.empty(), "null forward-path accepted\n" + where());
  for (unsigned char c : a.mailbox.local_part + a.mailbox.domain) {
    FUZZ_CHECK(c >= 32 && c != 127 && (utf8 || c < 0x80), "octet in the mailbox\n" + where());
  }
  for (const postern::EsmtpParam& p : a.params) {
    bool ok = !p.keyword.empty() && p.keyword[0] != '-';
    for (char c : p.keyword) ok = ok && ((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-');
    ok = ok && p.has_value == !p.value.empty();
    for (unsigned char c : p.value) ok = ok && c >= 33 && c != '=' && c != 127;
    FUZZ_CHECK(ok, "parameter\n" + where());
  }
  std::string wire = serialize(a, is_mail);
  PathArgs back = is_mail ? postern::parse_mail_args(wire, utf8) : postern::parse_rcpt_args(wire, utf8);
  FUZZ_CHECK(!back.error && serialize(back, is_mail) == wire && back.mailbox.local_part == a.mailbox.local_part &&
                 back.mailbox.domain == a.mailbox.domain,
             "  re-serialized arguments do not parse back\n" + where() + "\n  wire: \"" + escape(wire) +
                 "\"\n  back: " + describe(back));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  Choices choices(input);
  // Mostly the configurable range (512..2048), sometimes tiny to reach kTooLong.
  std::size_t limit = choices.next() % 4 ? choices.range(512, 2048) : choices.range(1, 64);

  std::string_view buffer = input;
  while (!buffer.empty()) {
    LineScan s = postern::scan_line(buffer, limit);
    check_scan(buffer, limit, s);
    if (s.outcome == Outcome::kComplete) {
      // A read boundary inside the line must not change the outcome.
      std::size_t cut = choices.range(0, s.consumed - 1);
      LineScan part = postern::scan_line(buffer.substr(0, cut), limit);
      FUZZ_CHECK(part.outcome == Outcome::kIncomplete,
                 "  prefix of a complete line: \"" + escape(buffer.substr(0, cut)) + "\" limit=" +
                     std::to_string(limit) + "\n  got: " + describe(part));
      check_command(s.line);
      Command cmd = postern::parse_command(s.line);
      for (bool utf8 : {false, true}) {
        if (cmd.verb == Verb::kMail) check_path_args(cmd.args, true, utf8);
        if (cmd.verb == Verb::kRcpt) check_path_args(cmd.args, false, utf8);
      }
    } else if (s.outcome == Outcome::kBareLf) {
      check_command(buffer.substr(0, s.consumed - 1));
    }
    if (s.consumed == 0) {
      // kIncomplete / kTooLong: the session skips to the next LF.
      std::size_t lf = buffer.find('\n');
      if (lf == std::string_view::npos) break;
      buffer.remove_prefix(lf + 1);
    } else {
      buffer.remove_prefix(s.consumed);
    }
  }
  // The whole input as MAIL / RCPT arguments too (seeds may be bare arguments).
  for (bool utf8 : {false, true}) {
    check_path_args(input, true, utf8);
    check_path_args(input, false, utf8);
  }
  return 0;
}
