// Command table and parsers; see smtp_command.h.
#include "proxy/smtp_command.h"
#include "filters/text/ascii.h"

#include <array>

namespace postern {
namespace {

constexpr unsigned kMailCommand = kTlsPolicy | kNeedsMail;
constexpr std::array<CommandSpec, 14> kCommands{{
    {"EHLO", Verb::kEhlo, kArgsRequired},
    {"HELO", Verb::kHelo, kArgsRequired},
    {"MAIL", Verb::kMail, kArgsRequired | kTlsPolicy | kNeedsHelo | kNoTransaction},
    {"RCPT", Verb::kRcpt, kArgsRequired | kMailCommand},
    {"DATA", Verb::kData, kArgsNone | kMailCommand | kNeedsRcpt},
    {"RSET", Verb::kRset, kArgsNone},
    {"NOOP", Verb::kNoop, 0},
    {"QUIT", Verb::kQuit, kArgsNone},
    {"HELP", Verb::kHelp, 0},
    {"VRFY", Verb::kVrfy, kArgsRequired},
    {"EXPN", Verb::kExpn, kNotImplemented},
    {"STARTTLS", Verb::kStarttls, kArgsNone | kOffered | kForbidsTls},
    {"AUTH", Verb::kAuth, kArgsRequired | kOffered | kNeedsTls | kNeedsEhlo | kNoTransaction},
    // Its arguments are read first (the chunk's octets follow at once): parse_bdat_args().
    {"BDAT", Verb::kBdat, kArgsRequired | kMailCommand | kNeedsRcpt},
}};

bool is_alnum(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

// Parses "keyword[=value]" *(SP ...) after a path, each keyword once;
// returns null or an error.
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
    // A keyword given twice is read one way here and maybe another by the
    // MTA (first wins, last wins): refused, as RFC 3461 §4 asks of DSN's.
    for (const EsmtpParam& q : out) {
      if (q.keyword == p.keyword) return &replies::kDuplicateParameter;
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

bool is_xtext(std::string_view s) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    unsigned char c = s[i];
    if (c == '+') {
      if (i + 2 >= s.size()) return false;
      for (int k = 1; k <= 2; ++k) {
        unsigned char h = s[i + k];
        if (!((h >= '0' && h <= '9') || (h >= 'A' && h <= 'F'))) return false;
      }
      i += 2;
    } else if (c < '!' || c > '~' || c == '=') {
      return false;
    }
  }
  return true;
}

const replies::Def* check_mail_param(const EsmtpParam& p, const EsmtpOffer& offer) {
  if (!offer.esmtp) return &replies::kUnknownParameter;
  if (p.keyword == "SIZE") {
    // size-value = 1*20DIGIT.
    if (!p.has_value || p.value.empty() || p.value.size() > 20 ||
        p.value.find_first_not_of("0123456789") != std::string::npos) {
      return &replies::kBadParameter;
    }
    if (p.value.size() > 15) return &replies::kSizeExceeded;
    std::uint64_t size = 0;
    for (char c : p.value) size = size * 10 + static_cast<std::uint64_t>(c - '0');
    return size > offer.message_size ? &replies::kSizeExceeded : nullptr;
  }
  if (p.keyword == "BODY") {
    bool ok = p.has_value && (ascii::iequals(p.value, "7BIT") || ascii::iequals(p.value, "8BITMIME"));
    return ok ? nullptr : &replies::kBadParameter;
  }
  if (p.keyword == "AUTH" && offer.auth) {
    // RFC 4954 §5: AUTH=<> or an addr-spec in xtext, 500 octets at most (§3).
    bool ok = p.has_value && p.value.size() <= 500 && (p.value == "<>" || is_xtext(p.value));
    return ok ? nullptr : &replies::kBadParameter;
  }
  if (p.keyword == "SMTPUTF8" && offer.smtputf8) return p.has_value ? &replies::kBadParameter : nullptr;
  if (p.keyword == "RET" && offer.dsn) {
    bool ok = p.has_value && (ascii::iequals(p.value, "FULL") || ascii::iequals(p.value, "HDRS"));
    return ok ? nullptr : &replies::kBadParameter;
  }
  if (p.keyword == "ENVID" && offer.dsn) {
    return p.has_value && p.value.size() <= 100 && is_xtext(p.value) ? nullptr : &replies::kBadParameter;
  }
  return &replies::kUnknownParameter;
}

const replies::Def* check_rcpt_param(const EsmtpParam& p, const EsmtpOffer& offer) {
  if (!offer.esmtp || !offer.dsn) return &replies::kUnknownParameter;
  if (p.keyword == "NOTIFY") {
    if (!p.has_value) return &replies::kBadParameter;
    if (ascii::iequals(p.value, "NEVER")) return nullptr;
    std::string_view rest = p.value;
    while (!rest.empty()) {
      std::size_t comma = rest.find(',');
      std::string_view word = rest.substr(0, comma);
      if (!ascii::iequals(word, "SUCCESS") && !ascii::iequals(word, "FAILURE") && !ascii::iequals(word, "DELAY")) {
        return &replies::kBadParameter;
      }
      rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    }
    return nullptr;
  }
  if (p.keyword == "ORCPT") {
    // addr-type ";" xtext, at most 500 characters (RFC 3461 §4.2).
    std::size_t semi = p.value.find(';');
    bool ok = p.has_value && p.value.size() <= 500 && semi != std::string::npos && semi > 0 &&
              is_xtext(std::string_view(p.value).substr(semi + 1));
    return ok ? nullptr : &replies::kBadParameter;
  }
  return &replies::kUnknownParameter;
}

BdatArgs parse_bdat_args(std::string_view args) {
  std::size_t sp = args.find(' ');
  std::string_view size = args.substr(0, sp);
  std::string_view rest = sp == std::string_view::npos ? std::string_view{} : args.substr(sp + 1);
  BdatArgs out;
  if (!rest.empty() && !ascii::iequals(rest, "LAST")) return out;
  if (size.empty() || size.size() > 15 || size.find_first_not_of("0123456789") != std::string_view::npos) return out;
  out.valid = true;
  out.last = !rest.empty();
  for (char c : size) out.size = out.size * 10 + static_cast<std::uint64_t>(c - '0');
  return out;
}

Refusal check_syntax(const CommandSpec& spec, bool has_args) {
  const unsigned f = spec.flags;
  if (f & kNotImplemented) return {&replies::kNotImplemented};
  if ((f & kArgsNone) && has_args) return {&replies::kNoArguments};
  if ((f & kArgsRequired) && !has_args) {
    switch (spec.verb) {
      case Verb::kEhlo: case Verb::kHelo: return {&replies::kHeloSyntax};
      case Verb::kMail: return {&replies::kMailSyntax};
      case Verb::kRcpt: return {&replies::kRcptSyntax};
      default: return {&replies::kArgsSyntax};
    }
  }
  return {};
}

Refusal check_preconditions(const CommandSpec& spec, const DialogueState& s) {
  const unsigned f = spec.flags;
  if ((f & kTlsPolicy) && s.tls_required && !s.tls) return {&replies::kTlsRequired};
  if (f & kOffered) {
    const bool offered = spec.verb == Verb::kStarttls ? s.starttls_offered : s.auth_offered;
    if (!offered) return {spec.verb == Verb::kAuth ? &replies::kAuthNotOffered : &replies::kNotImplemented};
  }
  if ((f & kNeedsTls) && !s.tls) return {&replies::kAuthNeedsTls};
  if ((f & kForbidsTls) && s.tls) return {&replies::kTlsAlreadyActive};
  if ((f & kNeedsEhlo) && (s.phase == Phase::kConnected || !s.esmtp)) return {&replies::kNeedHelo};
  if ((f & kNeedsHelo) && s.phase == Phase::kConnected) return {&replies::kNeedHelo};
  if (spec.verb == Verb::kAuth && s.authenticated) return {&replies::kAuthAlready};
  if ((f & kNoTransaction) && s.phase == Phase::kTransaction) {
    return {spec.verb == Verb::kAuth ? &replies::kAuthInTransaction : &replies::kNestedMail};
  }
  if ((f & kNeedsMail) && s.phase != Phase::kTransaction) {
    // RCPT says what is missing next: MAIL; DATA and BDAT name the first step missing.
    const bool helo_missing = spec.verb != Verb::kRcpt && s.phase == Phase::kConnected;
    return {helo_missing ? &replies::kNeedHelo : &replies::kNeedMail};
  }
  if ((f & kNeedsMail) && s.transaction_failed) return {&replies::kTransactionFailed, false};
  if ((f & kNeedsRcpt) && s.recipients == 0) {
    // Every RCPT refused is not the client's mistake (RFC 2920 §3.1: it pipelined DATA).
    if (s.rcpt_commands > 0) return {&replies::kNoValidRecipients, false};
    return {&replies::kNeedRcpt};
  }
  return {};
}

}  // namespace postern
