// SMTP command vocabulary (a table with RFC flags) and the I/O-free command
// line parser of the server side (RFC 5321 §4.1, RFC 2920).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "filters/address.h"
#include "proxy/replies.h"

namespace postern {

enum class Verb { kHelo, kEhlo, kMail, kRcpt, kData, kRset, kNoop, kQuit, kHelp, kVrfy,
                  kExpn, kStarttls, kAuth, kBdat, kUnknown };

enum CommandFlags : unsigned {
  kArgsNone = 1u << 0,        // arguments are a syntax error (501 5.5.4)
  kArgsRequired = 1u << 1,    // missing arguments are a syntax error
  kNotImplemented = 1u << 2,  // recognised but not offered (502 5.5.1)
  kEndsGroup = 1u << 3,       // last in a pipelined group (RFC 2920 §3.1): flush replies
};

struct CommandSpec {
  std::string_view name;
  Verb verb;
  unsigned flags;
};

struct Command {
  Verb verb = Verb::kUnknown;
  std::string_view args;  // after the verb and one space; trailing spaces removed
  const CommandSpec* spec = nullptr;  // null for kUnknown
};

// Finds the next command line in `buffer`.
struct LineScan {
  enum class Outcome { kComplete, kIncomplete, kTooLong, kBareLf } outcome;
  std::string_view line;  // without CRLF, for kComplete
  std::size_t consumed;   // bytes to drop from the buffer (0 for kIncomplete)
};
// `limit` counts the line with its CRLF (RFC 5321 §4.5.3.1.4).
LineScan scan_line(std::string_view buffer, std::size_t limit);

// Splits a line into verb and arguments; never fails (unknown verbs are kUnknown).
Command parse_command(std::string_view line);

// An ESMTP parameter (RFC 5321 §4.1.2 esmtp-param); keyword upper-cased.
struct EsmtpParam {
  std::string keyword;
  std::string value;
  bool has_value = false;
};

// The arguments of MAIL FROM / RCPT TO.
struct PathArgs {
  const replies::Def* error = nullptr;  // set when the arguments are refused
  Mailbox mailbox;                      // empty for the null reverse-path
  std::vector<EsmtpParam> params;
};

// `allow_utf8`: the transaction carries SMTPUTF8 (RFC 6531).
PathArgs parse_mail_args(std::string_view args, bool allow_utf8);
PathArgs parse_rcpt_args(std::string_view args, bool allow_utf8);

// What the server offers that MAIL and RCPT parameters depend on: EHLO (not
// HELO) was said, and the extensions the MTA behind can carry.
struct EsmtpOffer {
  bool esmtp = false;
  bool smtputf8 = false;           // RFC 6531
  bool dsn = false;                // RFC 3461
  std::uint64_t message_size = 0;  // SIZE (RFC 1870)
};

// MAIL parameters (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8, RFC 3461
// RET/ENVID): null when `p` is acceptable, else the reply (kSizeExceeded is
// the client's honest declaration, not a syntax error).
const replies::Def* check_mail_param(const EsmtpParam& p, const EsmtpOffer& offer);
// RCPT parameters: RFC 3461 NOTIFY and ORCPT, when DSN is offered.
const replies::Def* check_rcpt_param(const EsmtpParam& p, const EsmtpOffer& offer);
// xtext (RFC 3461 §4): printable ASCII except '+' and '=', or "+" and two
// upper-case hex digits.
bool is_xtext(std::string_view s);

// BDAT chunk-size [SP "LAST"] (RFC 3030 §2). Without a valid size nobody
// knows where the chunk ends: the session cannot stay in step.
struct BdatArgs {
  bool valid = false;
  std::uint64_t size = 0;  // at most 15 digits
  bool last = false;
};
BdatArgs parse_bdat_args(std::string_view args);

}  // namespace postern
