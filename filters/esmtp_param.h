// ESMTP parameters (RFC 5321 §4.1.2 esmtp-param) as the decision side
// carries them, and the parser for parameters a filter hands over: a
// milter's SMFIR_ADDRCPT_PAR and SMFIR_CHGFROM arguments are untrusted text
// that would otherwise end up inside a MAIL or RCPT command to the MTA.
// I/O-free.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace postern {

// One parameter; keyword upper-cased.
struct EsmtpParam {
  std::string keyword;
  std::string value;
  bool has_value = false;
  // "KEYWORD" or "KEYWORD=value", as it goes on a command line.
  std::string text() const { return has_value ? keyword + "=" + value : keyword; }
};

// Bounds on what a filter may attach to one address: no more parameters
// than the DSN and MAIL extensions ever use together, no value longer than
// ORCPT's 500 characters (RFC 3461 §4.2), and a command line that stays far
// below RFC 5321's 512 octets plus extensions (§4.5.3.1.4).
constexpr std::size_t kMaxFilterEsmtpParams = 8;
constexpr std::size_t kMaxFilterEsmtpKeyword = 20;
constexpr std::size_t kMaxFilterEsmtpValue = 500;
constexpr std::size_t kMaxFilterEsmtpText = 1000;

// A filter's parameters: all of them or none. `error` says why none (empty
// when `params` holds them all).
struct EsmtpParamsParse {
  std::vector<EsmtpParam> params;
  std::string error;
};

// Parses "KEYWORD[=value] *(SP KEYWORD[=value])" strictly: keyword is
// ALPHA/DIGIT then ALPHA/DIGIT/"-"; a value is 1*(%d33-60 / %d62-126)
// (printable US-ASCII but "=", so no SP, CR, LF, NUL or 8-bit octet can
// reach a command line); SP separates (leading, trailing and repeated SP
// are tolerated); a keyword appears once; bounds above. Empty text: none.
EsmtpParamsParse parse_filter_esmtp_params(std::string_view text);

// The EHLO keyword an MTA must offer before a parameter may be sent to it
// (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8, RFC 3461 RET, ENVID,
// NOTIFY, ORCPT); "" for a keyword postern does not know, which is never sent.
std::string_view esmtp_param_extension(std::string_view keyword);
// Whether `keyword` belongs on RCPT (NOTIFY, ORCPT) rather than MAIL.
bool esmtp_rcpt_param(std::string_view keyword);

// Parameters joined with single spaces, for logs and audit notes.
std::string esmtp_params_text(const std::vector<EsmtpParam>& params);

}  // namespace postern
