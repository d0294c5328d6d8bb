// SMTP command vocabulary (a table with RFC flags) and the I/O-free command
// line parser of the server side (RFC 5321 §4.1, RFC 2920).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "filters/address.h"
#include "filters/esmtp_param.h"
#include "proxy/replies.h"

namespace postern {

enum class Verb { kHelo, kEhlo, kMail, kRcpt, kData, kRset, kNoop, kQuit, kHelp, kVrfy,
                  kExpn, kStarttls, kAuth, kBdat, kUnknown };

// Each verb's syntax and its preconditions in the dialogue (checked by
// check_syntax() and check_preconditions() in this order, so each refusal
// has one exact reply).
enum CommandFlags : unsigned {
  kArgsNone = 1u << 0,        // arguments are a syntax error (501 5.5.4)
  kArgsRequired = 1u << 1,    // missing arguments are a syntax error
  kNotImplemented = 1u << 2,  // recognised but not offered (502 5.5.1)
  kTlsPolicy = 1u << 3,       // refused before TLS where the listener requires TLS (530 5.7.0)
  kOffered = 1u << 4,         // only where the listener offers the extension (STARTTLS, AUTH)
  kNeedsTls = 1u << 5,        // only under TLS (AUTH: credentials never in plaintext)
  kForbidsTls = 1u << 6,      // never under TLS (STARTTLS, RFC 3207 §4.2)
  kNeedsEhlo = 1u << 7,       // after EHLO, not HELO (AUTH, RFC 4954 §4)
  kNeedsHelo = 1u << 8,       // after HELO or EHLO (MAIL, RFC 5321 §4.1.4)
  kNoTransaction = 1u << 9,   // outside a mail transaction (MAIL, AUTH)
  kNeedsMail = 1u << 10,      // inside a mail transaction the upstream did not lose (RCPT, DATA, BDAT)
  kNeedsRcpt = 1u << 11,      // with at least one accepted recipient (DATA, BDAT)
};

struct CommandSpec {
  std::string_view name;
  Verb verb;
  unsigned flags;
};

// Where the dialogue stands (RFC 5321 §4.1.4, §3.3). The parser's position
// (command line, DATA content, BDAT octets) is the session's, separately.
enum class Phase {
  kConnected,    // before a HELO/EHLO was accepted (again after STARTTLS)
  kGreeted,      // HELO/EHLO accepted, no mail transaction
  kTransaction,  // MAIL accepted: RCPT, DATA/BDAT until the end of the message or RSET
};

// What the preconditions read: the dialogue and what this listener offers.
struct DialogueState {
  Phase phase = Phase::kConnected;
  bool esmtp = false;               // the accepted greeting was EHLO
  bool tls = false;                 // TLS is active
  bool tls_required = false;        // the listener requires TLS for mail
  bool starttls_offered = false;
  bool auth_offered = false;
  bool authenticated = false;
  bool transaction_failed = false;  // the upstream was lost in this transaction
  std::size_t recipients = 0;       // accepted so far
  std::size_t rcpt_commands = 0;    // RCPT commands in this transaction
};

// The reply a command gets when the dialogue does not allow it; null reply
// when it may proceed. `client_error`: counted toward limits.errors.
struct Refusal {
  const replies::Def* reply = nullptr;
  bool client_error = true;
  explicit operator bool() const { return reply != nullptr; }
};
// The verb's syntax flags: not implemented, arguments where none belong or
// none where they are required.
Refusal check_syntax(const CommandSpec& spec, bool has_args);
// The verb's place in the dialogue (the flags from kTlsPolicy on).
Refusal check_preconditions(const CommandSpec& spec, const DialogueState& state);

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

// EsmtpParam (RFC 5321 §4.1.2 esmtp-param) lives with the filters, which
// carry a milter's parameters for new recipients and senders.

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
  bool auth = false;               // RFC 4954: AUTH, and so MAIL's AUTH= parameter (§5)
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
