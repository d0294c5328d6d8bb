// Every reply postern itself gives, named once, with its enhanced status code
// (RFC 3463, RFC 2034). Handlers refer to these; none formats a reply inline.
#pragma once

#include <string_view>

namespace postern::replies {

struct Def {
  int code;
  std::string_view text;  // starts with the enhanced status code
};

// Dialogue.
inline constexpr Def kOk{250, "2.0.0 Ok"};
inline constexpr Def kSenderOk{250, "2.1.0 Ok"};
inline constexpr Def kRecipientOk{250, "2.1.5 Ok"};
// A forward-path the transaction already has: the message goes to it once.
inline constexpr Def kDuplicateRecipient{250, "2.1.5 Ok: duplicate recipient, delivered once"};
inline constexpr Def kStartData{354, "End data with <CR><LF>.<CR><LF>"};
inline constexpr Def kBye{221, "2.0.0 Bye"};
inline constexpr Def kHelp{214, "2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY"};
inline constexpr Def kVrfy{252, "2.5.2 Cannot VRFY user, but will accept message and attempt delivery"};

// Client errors (RFC 5321 §4.2.2, §4.2.4).
inline constexpr Def kUnknownCommand{500, "5.5.2 Error: command not recognized"};
inline constexpr Def kLineTooLong{500, "5.5.2 Error: line too long"};
inline constexpr Def kBareLfInCommand{500, "5.5.2 Error: command line must end with <CR><LF>"};
inline constexpr Def kNulInCommand{500, "5.5.2 Error: NUL character in command"};
inline constexpr Def kNotImplemented{502, "5.5.1 Error: command not implemented"};
inline constexpr Def kHeloSyntax{501, "5.5.4 Syntax: EHLO hostname"};
inline constexpr Def kMailSyntax{501, "5.5.4 Syntax: MAIL FROM:<address>"};
inline constexpr Def kRcptSyntax{501, "5.5.4 Syntax: RCPT TO:<address>"};
inline constexpr Def kBadSenderAddress{501, "5.1.7 Bad sender address syntax"};
inline constexpr Def kBadRecipientAddress{501, "5.1.3 Bad recipient address syntax"};
inline constexpr Def kAddressTooLong{501, "5.5.4 Error: address too long (RFC 5321 4.5.3.1)"};
inline constexpr Def kNonAsciiAddress{553, "5.6.7 Error: non-ASCII address requires SMTPUTF8"};
inline constexpr Def kInvalidUtf8Address{553, "5.6.7 Error: address is not valid UTF-8 (RFC 6531)"};
inline constexpr Def kNoArguments{501, "5.5.4 Syntax error: no arguments allowed"};
inline constexpr Def kArgsSyntax{501, "5.5.4 Syntax error in parameters or arguments"};
inline constexpr Def kUnknownParameter{555, "5.5.4 Error: unsupported MAIL/RCPT parameter"};
inline constexpr Def kBadParameter{501, "5.5.4 Error: bad MAIL/RCPT parameter value"};
inline constexpr Def kDuplicateParameter{501, "5.5.4 Error: duplicate MAIL/RCPT parameter"};
inline constexpr Def kNeedHelo{503, "5.5.1 Error: send HELO/EHLO first"};
inline constexpr Def kNestedMail{503, "5.5.1 Error: nested MAIL command"};
inline constexpr Def kNeedMail{503, "5.5.1 Error: need MAIL command"};
inline constexpr Def kNeedRcpt{503, "5.5.1 Error: need RCPT command"};
inline constexpr Def kNoValidRecipients{554, "5.5.1 Error: no valid recipients"};
inline constexpr Def kTooManyRecipients{452, "4.5.3 Error: too many recipients"};
inline constexpr Def kTooManyMessages{421, "4.7.0 Error: too many messages in this session"};
inline constexpr Def kTooManyErrors{421, "4.7.0 Error: too many errors"};
inline constexpr Def kSizeExceeded{552, "5.3.4 Error: message size exceeds fixed limit"};
inline constexpr Def kHeaderSectionTooBig{552, "5.3.4 Error: message header section exceeds fixed limit"};

// TLS (RFC 3207).
inline constexpr Def kReadyToStartTls{220, "2.0.0 Ready to start TLS"};
inline constexpr Def kTlsAlreadyActive{503, "5.5.1 Error: TLS already active"};
inline constexpr Def kTlsRequired{530, "5.7.0 Must issue a STARTTLS command first"};

// AUTH (RFC 4954).
inline constexpr Def kAuthNotOffered{502, "5.5.1 Error: authentication not enabled"};
inline constexpr Def kAuthNeedsTls{538, "5.7.11 Encryption required for requested authentication mechanism"};
inline constexpr Def kAuthAlready{503, "5.5.1 Error: already authenticated"};
inline constexpr Def kAuthInTransaction{503, "5.5.1 Error: MAIL transaction in progress"};
inline constexpr Def kAuthMechanism{504, "5.5.4 Unrecognized authentication type"};
inline constexpr Def kAuthUnavailable{454, "4.7.0 Temporary authentication failure"};
// RFC 4954 §4: a response is base64 or "*"; CR, LF, NUL or anything else in it is refused.
inline constexpr Def kSaslResponseSyntax{501, "5.5.2 Error: SASL response must be base64 or *"};
inline constexpr Def kTooManyAuthFailures{421, "4.7.0 Error: too many authentication failures"};

// CHUNKING (RFC 3030).
inline constexpr Def kBdatSyntax{501, "5.5.4 Syntax: BDAT size [LAST]"};
inline constexpr Def kDataAfterBdat{503, "5.5.1 Error: DATA cannot follow BDAT in one transaction"};

// Content (end of DATA).
inline constexpr Def kBareLineEnding{554, "5.5.2 Error: bare <CR> or <LF> in message content (RFC 5321 2.3.8)"};
inline constexpr Def kNulInContent{554, "5.6.0 Error: NUL character in message content"};
inline constexpr Def kInvalidUtf8Header{554, "5.6.7 Error: header section is not valid UTF-8 (RFC 6532)"};
inline constexpr Def kTextLineTooLong{554, "5.6.0 Error: message line too long (RFC 5321 4.5.3.1.6)"};
inline constexpr Def kSpoolFailed{451, "4.3.0 Error: cannot spool message, try again later"};
inline constexpr Def kDkimSignFailed{451, "4.3.0 Error: cannot DKIM-sign the message, try again later"};

// Service.
inline constexpr Def kTimeout{421, "4.4.2 Error: timeout exceeded"};
inline constexpr Def kEarlyTalker{554, "5.5.0 Error: SMTP protocol synchronization (client spoke before the greeting)"};
inline constexpr Def kShuttingDown{421, "4.3.2 Service shutting down, try again later"};
// Concurrent-session limits ([limits] sessions, sessions_per_ip, sessions_per_network).
inline constexpr Def kTooManySessions{421, "4.3.2 Error: too many connections, try again later"};
inline constexpr Def kTooManySessionsFromAddress{421, "4.7.0 Error: too many connections from your address"};
inline constexpr Def kTooManySessionsFromNetwork{421, "4.7.0 Error: too many connections from your network"};
inline constexpr Def kUpstreamUnavailable{451, "4.4.1 Error: upstream not available, try again later"};
inline constexpr Def kUpstreamLost{451, "4.4.2 Error: upstream connection lost, try again later"};
inline constexpr Def kUpstreamProtocol{451, "4.4.0 Error: unexpected upstream reply, try again later"};
// The MTA said 421 without a 4.x.x enhanced code, or after its reply: its
// session ends, and so does the client's.
inline constexpr Def kUpstreamClosing{421, "4.4.2 Error: upstream closed the connection, try again later"};
inline constexpr Def kUpstreamNoSmtputf8{553, "5.6.7 Error: SMTPUTF8 is not supported by the destination"};
inline constexpr Def kTransactionFailed{451, "4.4.2 Error: transaction failed upstream, send RSET"};

}  // namespace postern::replies
