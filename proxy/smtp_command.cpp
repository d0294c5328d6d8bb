// Command table and parsers; see smtp_command.h.
#include "proxy/smtp_command.h"
#include "filters/text/ascii.h"

#include <array>

namespace postern {
namespace {

constexpr std::array<CommandSpec, 14> kCommands{{
    {"EHLO", Verb::kEhlo, kArgsRequired},
    {"HELO", Verb::kHelo, kArgsRequired},
    {"MAIL", Verb::kMail, kArgsRequired},
    {"RCPT", Verb::kRcpt, kArgsRequired},
    {"DATA", Verb::kData, kArgsNone},
    {"RSET", Verb::kRset, kArgsNone},
    {"NOOP", Verb::kNoop, 0},
    {"QUIT", Verb::kQuit, kArgsNone},
    {"HELP", Verb::kHelp, 0},
    {"VRFY", Verb::kVrfy, kArgsRequired},
    {"EXPN", Verb::kExpn, kNotImplemented},
    {"STARTTLS", Verb::kStarttls, kArgsNone},
    {"AUTH", Verb::kAuth, kArgsRequired},
    {"BDAT", Verb::kBdat, kArgsRequired},
}};

bool is_alnum(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

// Parses "keyword[=value]" *(SP ...) after a path; returns null or an error.
const replies::Def* parse_params(std::string_view s, std::vector<EsmtpParam>& out) {
  while (!s.empty()) {
    if (s[0] != ' ') return &replies::kBadParameter;
    while (!s.empty() && s[0] == ' ') s.remove_prefix(1);
    if (s.empty()) break;
    std::size_t end = s.find(' ');
    std::string_view param = s.substr(0, end);
    s = end == std::string_view::npos ? std::string_view{} : s.substr(end);
    EsmtpParam p;
    std::size_t eq = param.find('=');
    std::string_view keyword = param.substr(0, eq);
    if (keyword.empty() || !is_alnum(static_cast<unsigned char>(keyword[0]))) {
      return &replies::kBadParameter;
    }
    for (char c : keyword) {
      if (!is_alnum(static_cast<unsigned char>(c)) && c != '-') return &replies::kBadParameter;
      p.keyword.push_back(ascii::to_upper(c));
    }
    if (eq != std::string_view::npos) {
      std::string_view value = param.substr(eq + 1);
      if (value.empty()) return &replies::kBadParameter;
      for (unsigned char c : value) {
        // esmtp-value = 1*(%d33-60 / %d62-126); RFC 6531 allows UTF-8 here.
        if (c < 33 || c == '=' || c == 127) return &replies::kBadParameter;
      }
      p.value.assign(value);
      p.has_value = true;
    }
    out.push_back(std::move(p));
  }
  return nullptr;
}

PathArgs parse_path_args(std::string_view args, std::string_view prefix, bool is_mail,
                         bool allow_utf8) {
  PathArgs result;
  const replies::Def& syntax = is_mail ? replies::kMailSyntax : replies::kRcptSyntax;
  if (args.size() < prefix.size() || !ascii::iequals(args.substr(0, prefix.size()), prefix)) {
    result.error = &syntax;
    return result;
  }
  args.remove_prefix(prefix.size());
  // Common deviation tolerated by Postfix and Exim: one space after the colon.
  if (!args.empty() && args[0] == ' ') args.remove_prefix(1);
  if (args.empty() || args[0] != '<') {
    result.error = &syntax;
    return result;
  }
  PathParse path = parse_path(args, is_mail, !is_mail, allow_utf8);
  switch (path.error) {
    case PathError::kNone: break;
    case PathError::kTooLong: result.error = &replies::kAddressTooLong; return result;
    case PathError::kNonAscii: result.error = &replies::kNonAsciiAddress; return result;
    case PathError::kSyntax:
    case PathError::kNullNotAllowed:
      result.error = is_mail ? &replies::kBadSenderAddress : &replies::kBadRecipientAddress;
      return result;
  }
  result.mailbox = std::move(path.mailbox);
  if (const replies::Def* e = parse_params(args.substr(path.end), result.params)) {
    result.error = e;
  }
  return result;
}

}  // namespace

LineScan scan_line(std::string_view buffer, std::size_t limit) {
  std::size_t window = std::min(buffer.size(), limit);
  std::size_t lf = buffer.substr(0, window).find('\n');
  if (lf == std::string_view::npos) {
    if (buffer.size() >= limit) return {LineScan::Outcome::kTooLong, {}, 0};
    return {LineScan::Outcome::kIncomplete, {}, 0};
  }
  if (lf == 0 || buffer[lf - 1] != '\r') return {LineScan::Outcome::kBareLf, {}, lf + 1};
  return {LineScan::Outcome::kComplete, buffer.substr(0, lf - 1), lf + 1};
}

Command parse_command(std::string_view line) {
  Command cmd;
  std::size_t sp = line.find(' ');
  std::string_view verb = line.substr(0, sp);
  for (const CommandSpec& spec : kCommands) {
    if (ascii::iequals(verb, spec.name)) {
      cmd.verb = spec.verb;
      cmd.spec = &spec;
      break;
    }
  }
  if (sp != std::string_view::npos) {
    std::string_view args = line.substr(sp + 1);
    while (!args.empty() && args.back() == ' ') args.remove_suffix(1);
    cmd.args = args;
  }
  return cmd;
}

PathArgs parse_mail_args(std::string_view args, bool allow_utf8) {
  return parse_path_args(args, "FROM:", true, allow_utf8);
}

PathArgs parse_rcpt_args(std::string_view args, bool allow_utf8) {
  return parse_path_args(args, "TO:", false, allow_utf8);
}

}  // namespace postern
