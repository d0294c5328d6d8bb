// Command line scanner, command table and MAIL/RCPT argument parser
// (RFC 5321 §4.1, §4.5.3.1.4; RFC 2920): hostile inputs, exact outcomes.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "proxy/smtp_command.h"
#include "test_util.h"

using postern::BdatArgs;
using postern::Command;
using postern::EsmtpOffer;
using postern::EsmtpParam;
using postern::check_mail_param;
using postern::check_rcpt_param;
using postern::parse_bdat_args;
using postern::LineScan;
using postern::PathArgs;
using postern::Verb;
using postern::test::escape;
namespace replies = postern::replies;

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return s;
}

// "MaIl": upper and lower case alternating.
std::string mixed(std::string s) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (i % 2 == 1 && c >= 'A' && c <= 'Z') s[i] = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

const char* outcome_name(LineScan::Outcome o) {
  switch (o) {
    case LineScan::Outcome::kComplete: return "complete";
    case LineScan::Outcome::kIncomplete: return "incomplete";
    case LineScan::Outcome::kTooLong: return "too-long";
    case LineScan::Outcome::kBareLf: return "bare-lf";
  }
  return "?";
}

}  // namespace

TEST_CASE("parse_command: every verb in upper, lower and mixed case", "[smtp_command]") {
  using namespace postern;
  struct Case {
    std::string name;
    Verb verb;
    unsigned flags;
  };
  const std::vector<Case> cases{
      {"EHLO", Verb::kEhlo, kArgsRequired},
      {"HELO", Verb::kHelo, kArgsRequired},
      {"MAIL", Verb::kMail, kArgsRequired | kTlsPolicy | kNeedsHelo | kNoTransaction},
      {"RCPT", Verb::kRcpt, kArgsRequired | kTlsPolicy | kNeedsMail},
      {"DATA", Verb::kData, kArgsNone | kTlsPolicy | kNeedsMail | kNeedsRcpt},
      {"RSET", Verb::kRset, kArgsNone},
      {"NOOP", Verb::kNoop, 0},
      {"QUIT", Verb::kQuit, kArgsNone},
      {"HELP", Verb::kHelp, 0},
      {"VRFY", Verb::kVrfy, kArgsRequired},
      {"EXPN", Verb::kExpn, kNotImplemented},
      {"STARTTLS", Verb::kStarttls, kArgsNone | kOffered | kForbidsTls},
      {"AUTH", Verb::kAuth, kArgsRequired | kOffered | kNeedsTls | kNeedsEhlo | kNoTransaction},
      {"BDAT", Verb::kBdat, kArgsRequired | kTlsPolicy | kNeedsMail | kNeedsRcpt},
  };
  for (const Case& c : cases) {
    for (const std::string& spelled : {c.name, lower(c.name), mixed(c.name)}) {
      DYNAMIC_SECTION(spelled) {
        Command bare = parse_command(spelled);
        CHECK(bare.verb == c.verb);
        REQUIRE(bare.spec != nullptr);
        CHECK(bare.spec->name == c.name);
        CHECK(bare.spec->verb == c.verb);
        CHECK(bare.spec->flags == c.flags);
        CHECK(bare.args.empty());

        const std::string line = spelled + " some args";  // args view into it
        Command with_args = parse_command(line);
        CHECK(with_args.verb == c.verb);
        CHECK(with_args.args == "some args");
      }
    }
  }
}

TEST_CASE("parse_command: argument split and unknown verbs", "[smtp_command]") {
  struct Case {
    std::string line;
    Verb verb;
    std::string args;
  };
  const std::vector<Case> cases{
      {"MAIL FROM:<a@b.example>", Verb::kMail, "FROM:<a@b.example>"},
      {"MAIL FROM:<a@b.example> SIZE=10   ", Verb::kMail, "FROM:<a@b.example> SIZE=10"},
      {"RCPT TO:<a@b.example>", Verb::kRcpt, "TO:<a@b.example>"},
      {"DATA", Verb::kData, ""},
      {"DATA ", Verb::kData, ""},
      {"DATA    ", Verb::kData, ""},
      {"QUIT x", Verb::kQuit, "x"},
      {"EHLO  client.example", Verb::kEhlo, " client.example"},  // only one separator space is eaten
      {"EHLO client.example ", Verb::kEhlo, "client.example"},
      {"NOOP a b  c", Verb::kNoop, "a b  c"},
      {"HELO \t", Verb::kHelo, "\t"},  // only spaces are trimmed
      // Unknown: no spec, arguments still split.
      {"", Verb::kUnknown, ""},
      {" ", Verb::kUnknown, ""},
      {" DATA", Verb::kUnknown, "DATA"},
      {"DATAX", Verb::kUnknown, ""},
      {"DAT", Verb::kUnknown, ""},
      {"MAILFROM:<a@b>", Verb::kUnknown, ""},
      {"MAIL\tFROM:<a@b>", Verb::kUnknown, ""},
      {"XCLIENT NAME=x", Verb::kUnknown, "NAME=x"},
      {"STARTTLSX", Verb::kUnknown, ""},
      {std::string("DATA\0", 5), Verb::kUnknown, ""},
      {"D\xC3\x85TA", Verb::kUnknown, ""},
      {"GET / HTTP/1.0", Verb::kUnknown, "/ HTTP/1.0"},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION("line: " << escape(c.line)) {
      Command cmd = postern::parse_command(c.line);
      CHECK(cmd.verb == c.verb);
      CHECK(cmd.args == c.args);
      if (c.verb == Verb::kUnknown) CHECK(cmd.spec == nullptr);
      else CHECK(cmd.spec != nullptr);
    }
  }
}

TEST_CASE("scan_line: complete, incomplete, too long, bare LF", "[smtp_command]") {
  using O = LineScan::Outcome;
  struct Case {
    std::string buffer;
    std::size_t limit;
    O outcome;
    std::string line;
    std::size_t consumed;
  };
  const std::string x13(13, 'x'), x14(14, 'x'), x15(15, 'x'), x16(16, 'x');
  const std::vector<Case> cases{
      {"", 16, O::kIncomplete, "", 0},
      {"NOOP", 16, O::kIncomplete, "", 0},
      {"NOOP\r", 16, O::kIncomplete, "", 0},
      {"NOOP\r\n", 16, O::kComplete, "NOOP", 6},
      {"\r\n", 16, O::kComplete, "", 2},
      {"NOOP\r\nQUIT\r\n", 16, O::kComplete, "NOOP", 6},
      {"NOOP\r\n" + std::string(100, 'y'), 16, O::kComplete, "NOOP", 6},
      {"NOOP\n", 16, O::kBareLf, "", 5},
      {"\n", 16, O::kBareLf, "", 1},
      {"\n\r\n", 16, O::kBareLf, "", 1},
      {"NOOP\n\r\nQUIT\r\n", 16, O::kBareLf, "", 5},
      {"NOOP\r\r\n", 16, O::kComplete, "NOOP\r", 7},
      // The limit counts CRLF: 14 + 2 = 16 fits, 15 + 2 = 17 does not.
      {x14 + "\r\n", 16, O::kComplete, x14, 16},
      {x14 + "\r\nQUIT\r\n", 16, O::kComplete, x14, 16},
      {x15 + "\r\n", 16, O::kTooLong, "", 0},
      {x14 + "\r", 16, O::kIncomplete, "", 0},
      {x15, 16, O::kIncomplete, "", 0},
      {x15 + "\r", 16, O::kTooLong, "", 0},  // the LF could only make 17
      {x16, 16, O::kTooLong, "", 0},
      {x16 + std::string(1000, 'z'), 16, O::kTooLong, "", 0},
      {x15 + "\n", 16, O::kBareLf, "", 16},
      {x16 + "\n", 16, O::kTooLong, "", 0},
      {x13 + "\n", 16, O::kBareLf, "", 14},
      // RFC 5321 minimum: 512 octets with CRLF.
      {std::string(510, 'a') + "\r\n", 512, O::kComplete, std::string(510, 'a'), 512},
      {std::string(511, 'a') + "\r\n", 512, O::kTooLong, "", 0},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION("buffer: " << escape(c.buffer.substr(0, 40)) << " (" << c.buffer.size()
                               << " bytes) limit " << c.limit) {
      LineScan s = postern::scan_line(c.buffer, c.limit);
      CHECK(outcome_name(s.outcome) == std::string(outcome_name(c.outcome)));
      CHECK(s.consumed == c.consumed);
      if (c.outcome == O::kComplete) CHECK(s.line == c.line);
    }
  }
}

namespace {

struct PathCase {
  std::string args;
  const replies::Def* error;  // null: accepted
  std::string local_part;
  std::string domain;
  std::vector<std::tuple<std::string, std::string, bool>> params = {};
  bool utf8 = false;
};

void check_path_case(const PathCase& c, bool is_mail) {
  PathArgs r = is_mail ? postern::parse_mail_args(c.args, c.utf8) : postern::parse_rcpt_args(c.args, c.utf8);
  INFO("args: " << escape(c.args) << (c.utf8 ? " (SMTPUTF8)" : ""));
  INFO("expected: " << (c.error ? c.error->text : std::string_view("accepted")));
  INFO("actual: " << (r.error ? r.error->text : std::string_view("accepted")));
  CHECK(r.error == c.error);
  if (c.error == nullptr && r.error == nullptr) {
    CHECK(r.mailbox.local_part == c.local_part);
    CHECK(r.mailbox.domain == c.domain);
    REQUIRE(r.params.size() == c.params.size());
    for (std::size_t i = 0; i < c.params.size(); ++i) {
      CHECK(r.params[i].keyword == std::get<0>(c.params[i]));
      CHECK(r.params[i].value == std::get<1>(c.params[i]));
      CHECK(r.params[i].has_value == std::get<2>(c.params[i]));
    }
  }
}

const std::string kLabel63(63, 'd');
const std::string kLocal64(64, 'l');

}  // namespace

TEST_CASE("parse_mail_args: accepted reverse-paths", "[smtp_command]") {
  const std::vector<PathCase> cases{
      {"FROM:<a@b.example>", nullptr, "a", "b.example"},
      {"from:<a@b.example>", nullptr, "a", "b.example"},
      {"From:<a@b.example>", nullptr, "a", "b.example"},
      {"FROM: <a@b.example>", nullptr, "a", "b.example"},  // one space tolerated
      {"FROM:<>", nullptr, "", ""},
      {"FROM: <>", nullptr, "", ""},
      {"FROM:<> SIZE=0", nullptr, "", "", {{"SIZE", "0", true}}},
      {"FROM:<first.last+tag@sub.b.example>", nullptr, "first.last+tag", "sub.b.example"},
      {"FROM:<!#$%&'*+-/=?^_`{|}~@b.example>", nullptr, "!#$%&'*+-/=?^_`{|}~", "b.example"},
      {"FROM:<\"john doe\"@b.example>", nullptr, "\"john doe\"", "b.example"},
      {"FROM:<\"a\\\"b\"@b.example>", nullptr, "\"a\\\"b\"", "b.example"},
      {"FROM:<\"a>b\"@b.example>", nullptr, "\"a>b\"", "b.example"},
      {"FROM:<\"a@b\"@b.example>", nullptr, "\"a@b\"", "b.example"},
      {"FROM:<\"\"@b.example>", nullptr, "\"\"", "b.example"},
      {"FROM:<a@[1.2.3.4]>", nullptr, "a", "[1.2.3.4]"},
      {"FROM:<a@[IPv6:::1]>", nullptr, "a", "[IPv6:::1]"},
      {"FROM:<a@[IPv6:2001:db8::25]>", nullptr, "a", "[IPv6:2001:db8::25]"},
      // Source routes are accepted and dropped (§4.1.2, Appendix C).
      {"FROM:<@relay.example:a@b.example>", nullptr, "a", "b.example"},
      {"FROM:<@r1.example,@r2.example:a@b.example>", nullptr, "a", "b.example"},
      {"FROM:<a@b.example> SIZE=123 BODY=8BITMIME", nullptr, "a", "b.example",
       {{"SIZE", "123", true}, {"BODY", "8BITMIME", true}}},
      {"FROM:<a@b.example> size=123 body=8bitmime", nullptr, "a", "b.example",
       {{"SIZE", "123", true}, {"BODY", "8bitmime", true}}},
      {"FROM:<a@b.example>  SMTPUTF8   X-Y=z", nullptr, "a", "b.example",
       {{"SMTPUTF8", "", false}, {"X-Y", "z", true}}},
      {"FROM:<a@b.example> AUTH=<>", nullptr, "a", "b.example", {{"AUTH", "<>", true}}},
      {"FROM:<a@b.example> ENVID=QQ314159", nullptr, "a", "b.example", {{"ENVID", "QQ314159", true}}},
      {"FROM:<" + kLocal64 + "@b.example>", nullptr, kLocal64, "b.example"},
      {"FROM:<a@" + kLabel63 + ".example>", nullptr, "a", kLabel63 + ".example"},
      // SMTPUTF8 (RFC 6531).
      {"FROM:<j\xC3\xB6rg@b.example>", nullptr, "j\xC3\xB6rg", "b.example", {}, true},
      {"FROM:<a@b\xC3\xBC" "cher.example>", nullptr, "a", "b\xC3\xBC" "cher.example", {}, true},
      {"FROM:<\"j\xC3\xB6rg\"@b.example>", nullptr, "\"j\xC3\xB6rg\"", "b.example", {}, true},
  };
  for (const PathCase& c : cases) {
    DYNAMIC_SECTION("MAIL " << escape(c.args)) { check_path_case(c, true); }
  }
}

TEST_CASE("parse_rcpt_args: accepted forward-paths", "[smtp_command]") {
  const std::vector<PathCase> cases{
      {"TO:<a@b.example>", nullptr, "a", "b.example"},
      {"to:<a@b.example>", nullptr, "a", "b.example"},
      {"TO: <a@b.example>", nullptr, "a", "b.example"},
      {"TO:<Postmaster>", nullptr, "Postmaster", ""},
      {"TO:<postmaster>", nullptr, "postmaster", ""},
      {"TO:<POSTMASTER>", nullptr, "POSTMASTER", ""},
      {"TO:<Postmaster@b.example>", nullptr, "Postmaster", "b.example"},
      {"TO:<a@[1.2.3.4]>", nullptr, "a", "[1.2.3.4]"},
      {"TO:<a@[IPv6:::1]>", nullptr, "a", "[IPv6:::1]"},
      {"TO:<@relay.example:a@b.example>", nullptr, "a", "b.example"},
      {"TO:<a@b.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@b.example", nullptr, "a", "b.example",
       {{"NOTIFY", "SUCCESS,FAILURE", true}, {"ORCPT", "rfc822;a@b.example", true}}},
  };
  for (const PathCase& c : cases) {
    DYNAMIC_SECTION("RCPT " << escape(c.args)) { check_path_case(c, false); }
  }
}

TEST_CASE("parse_mail_args: refused arguments give the exact reply", "[smtp_command]") {
  const replies::Def* syntax = &replies::kMailSyntax;
  const replies::Def* bad = &replies::kBadSenderAddress;
  const replies::Def* too_long = &replies::kAddressTooLong;
  const replies::Def* non_ascii = &replies::kNonAsciiAddress;
  const replies::Def* param = &replies::kBadParameter;
  const std::vector<PathCase> cases{
      // Not "FROM:<": the command syntax reply.
      {"", syntax, "", ""},
      {"FROM:", syntax, "", ""},
      {"FROM: ", syntax, "", ""},
      {"FROM:a@b.example", syntax, "", ""},           // missing brackets
      {"FROM: a@b.example", syntax, "", ""},
      {"FROM:a@b.example>", syntax, "", ""},
      {"FROM <a@b.example>", syntax, "", ""},
      {"FROM : <a@b.example>", syntax, "", ""},
      {"FROM:  <a@b.example>", syntax, "", ""},       // only one space is tolerated
      {"FROM:\t<a@b.example>", syntax, "", ""},
      {"TO:<a@b.example>", syntax, "", ""},
      {"FRO:<a@b.example>", syntax, "", ""},
      // A bad path: the sender address reply.
      {"FROM:<a@b.example", bad, "", ""},             // unbalanced
      {"FROM:<", bad, "", ""},
      {"FROM:<<a@b.example>>", bad, "", ""},
      {"FROM:<a @b.example>", bad, "", ""},           // spaces inside
      {"FROM:< a@b.example>", bad, "", ""},
      {"FROM:<a@ b.example>", bad, "", ""},
      {"FROM:<a@b.example >", bad, "", ""},
      {"FROM:<a..b@b.example>", bad, "", ""},         // double dots
      {"FROM:<.a@b.example>", bad, "", ""},
      {"FROM:<a.@b.example>", bad, "", ""},
      {"FROM:<a@b..example>", bad, "", ""},
      {"FROM:<a@b.example.>", bad, "", ""},           // trailing dot
      {"FROM:<a@.b.example>", bad, "", ""},
      {"FROM:<a@-b.example>", bad, "", ""},
      {"FROM:<a@b-.example>", bad, "", ""},
      {"FROM:<a@b_c.example>", bad, "", ""},
      {"FROM:<@b.example>", bad, "", ""},             // empty local part
      {"FROM:<a@>", bad, "", ""},
      {"FROM:<a>", bad, "", ""},
      {"FROM:<Postmaster>", bad, "", ""},             // RCPT only
      {"FROM:<a@b@c.example>", bad, "", ""},
      {"FROM:<a@" + kLabel63 + "d.example>", bad, "", ""},  // label of 64
      {"FROM:<a@[1.2.3]>", bad, "", ""},
      {"FROM:<a@[IPv6:::g]>", bad, "", ""},
      {"FROM:<a@[1.2.3.4>", bad, "", ""},
      {"FROM:<\"unterminated@b.example>", bad, "", ""},
      {"FROM:<\"a\rb\"@b.example>", bad, "", ""},
      {std::string("FROM:<a\0b@b.example>", 20), bad, "", ""},
      {"FROM:<@relay.example:Postmaster>", bad, "", ""},
      {"FROM:<@relay.example>", bad, "", ""},
      {"FROM:<@relay..example:a@b.example>", bad, "", ""},
      // Length limits (§4.5.3.1).
      {"FROM:<" + kLocal64 + "l@b.example>", too_long, "", ""},  // local part of 65
      {"FROM:<\"" + std::string(63, 'q') + "\"@b.example>", too_long, "", ""},
      {"FROM:<" + kLocal64 + "@" + kLabel63 + "." + kLabel63 + "." + kLabel63 + "." + kLabel63 + ">",
       too_long, "", ""},  // path of 322
      // 8-bit without SMTPUTF8.
      {"FROM:<j\xC3\xB6rg@b.example>", non_ascii, "", ""},
      {"FROM:<a@b\xC3\xBC" "cher.example>", non_ascii, "", ""},
      {"FROM:<\"j\xC3\xB6rg\"@b.example>", non_ascii, "", ""},
      {"FROM:<\xFF@b.example>", non_ascii, "", ""},
      // ESMTP parameters.
      {"FROM:<a@b.example>SIZE=1", param, "", ""},   // no space after the path
      {"FROM:<a@b.example>>", param, "", ""},
      {"FROM:<a@b.example> SIZE=", param, "", ""},   // empty value
      {"FROM:<a@b.example> SIZE=10 size=99999", &replies::kDuplicateParameter, "", ""},
      {"FROM:<a@b.example> BODY=7BIT BODY=8BITMIME", &replies::kDuplicateParameter, "", ""},
      {"FROM:<a@b.example> =1", param, "", ""},
      {"FROM:<a@b.example> -SIZE=1", param, "", ""},
      {"FROM:<a@b.example> SI_ZE=1", param, "", ""},  // bad keyword
      {"FROM:<a@b.example> SIZE=1=2", param, "", ""},
      {"FROM:<a@b.example> SIZE=1\x7F", param, "", ""},
      {"FROM:<a@b.example> SIZE=\t1", param, "", ""},
      {"FROM:<a@b.example> B\xC3\x96" "DY=8BITMIME", param, "", ""},
      {"FROM:<> BODY=", param, "", ""},
  };
  for (const PathCase& c : cases) {
    DYNAMIC_SECTION("MAIL " << escape(c.args)) { check_path_case(c, true); }
  }
}

TEST_CASE("parse_rcpt_args: refused arguments give the exact reply", "[smtp_command]") {
  const replies::Def* syntax = &replies::kRcptSyntax;
  const replies::Def* bad = &replies::kBadRecipientAddress;
  const std::vector<PathCase> cases{
      {"", syntax, "", ""},
      {"TO:", syntax, "", ""},
      {"TO:a@b.example", syntax, "", ""},
      {"FROM:<a@b.example>", syntax, "", ""},
      {"TO:  <a@b.example>", syntax, "", ""},
      {"TO:<>", bad, "", ""},                         // null path is MAIL only
      {"TO:<a@b.example", bad, "", ""},
      {"TO:<a..b@b.example>", bad, "", ""},
      {"TO:<a@b.example.>", bad, "", ""},
      {"TO:<postmaster.>", bad, "", ""},
      {"TO:<postmasterx>", bad, "", ""},
      {"TO:<@relay.example:Postmaster>", bad, "", ""},
      {"TO:<" + kLocal64 + "l@b.example>", &replies::kAddressTooLong, "", ""},
      {"TO:<\xC3\xA5@b.example>", &replies::kNonAsciiAddress, "", ""},
      {"TO:<a@b.example> NOTIFY=", &replies::kBadParameter, "", ""},
      {"TO:<a@b.example> NOTIFY=NEVER notify=SUCCESS", &replies::kDuplicateParameter, "", ""},
      {"TO:<a@b.example> ORCPT=rfc822;a ORCPT=rfc822;b", &replies::kDuplicateParameter, "", ""},
  };
  for (const PathCase& c : cases) {
    DYNAMIC_SECTION("RCPT " << escape(c.args)) { check_path_case(c, false); }
  }
}

TEST_CASE("parse_mail_args: SMTPUTF8 keeps the domain grammar", "[smtp_command][regression]") {
  // With SMTPUTF8 a U-label domain is allowed (RFC 6531 §3.3), but it is still
  // a sequence of non-empty labels: empty labels, leading/trailing hyphens and
  // over-long labels are as wrong as without it.
  const replies::Def* bad = &replies::kBadSenderAddress;
  const std::vector<PathCase> cases{
      {"FROM:<a@b..example>", bad, "", "", {}, true},
      {"FROM:<a@b.example.>", bad, "", "", {}, true},
      {"FROM:<a@.>", bad, "", "", {}, true},
      {"FROM:<a@->", bad, "", "", {}, true},
      {"FROM:<a@-b.example>", bad, "", "", {}, true},
      {"FROM:<a@b\xC3\xBC..example>", bad, "", "", {}, true},
      {"FROM:<a@" + kLabel63 + "d.example>", bad, "", "", {}, true},
  };
  for (const PathCase& c : cases) {
    DYNAMIC_SECTION("MAIL " << escape(c.args) << " SMTPUTF8") { check_path_case(c, true); }
  }
}

TEST_CASE("check_mail_param: SIZE, BODY, SMTPUTF8, RET, ENVID and what is not offered", "[smtp_command][esmtp]") {
  const EsmtpOffer all{true, true, true, 1000};
  auto p = [](std::string k, std::string v = "", bool has = true) { return EsmtpParam{k, v, has}; };
  const replies::Def* ok = nullptr;
  struct Case {
    EsmtpParam param;
    const replies::Def* want;
  };
  for (const Case& c : std::initializer_list<Case>{
           {p("SIZE", "0"), ok},
           {p("SIZE", "1000"), ok},
           {p("SIZE", "1001"), &replies::kSizeExceeded},
           {p("SIZE", "99999999999999999999"), &replies::kSizeExceeded},  // 20 digits: valid, too big
           {p("SIZE", "999999999999999999999"), &replies::kBadParameter},  // 21 digits
           {p("SIZE", "12a"), &replies::kBadParameter},
           {p("SIZE", "-1"), &replies::kBadParameter},
           {p("SIZE", "", false), &replies::kBadParameter},
           {p("SIZE", ""), &replies::kBadParameter},
           {p("BODY", "8bitmime"), ok},
           {p("BODY", "7BIT"), ok},
           {p("BODY", "BINARYMIME"), &replies::kBadParameter},  // RFC 3030 BINARYMIME is not offered
           {p("BODY", "", false), &replies::kBadParameter},
           {p("SMTPUTF8", "", false), ok},
           {p("SMTPUTF8", "yes"), &replies::kBadParameter},
           {p("RET", "hdrs"), ok},
           {p("RET", "FULL"), ok},
           {p("RET", "NONE"), &replies::kBadParameter},
           {p("ENVID", "QQ+2B314"), ok},
           {p("ENVID", "a=b"), &replies::kBadParameter},     // '=' must be +3D
           {p("ENVID", "a+2b"), &replies::kBadParameter},    // lower-case hex
           {p("ENVID", "a+2"), &replies::kBadParameter},     // cut short
           {p("ENVID", "a b"), &replies::kBadParameter},
           {p("ENVID", std::string(101, 'x')), &replies::kBadParameter},
           {p("AUTH", "<>"), &replies::kUnknownParameter},
           {p("XYZZY", "", false), &replies::kUnknownParameter},
       }) {
    INFO(c.param.keyword << "=" << c.param.value);
    CHECK(check_mail_param(c.param, all) == c.want);
  }
  // Not offered: the extension's keywords are unknown parameters; after HELO, all are.
  const EsmtpOffer plain{true, false, false, 1000};
  CHECK(check_mail_param(p("SMTPUTF8", "", false), plain) == &replies::kUnknownParameter);
  CHECK(check_mail_param(p("RET", "FULL"), plain) == &replies::kUnknownParameter);
  CHECK(check_mail_param(p("ENVID", "x"), plain) == &replies::kUnknownParameter);
  CHECK(check_mail_param(p("BODY", "8BITMIME"), plain) == nullptr);
  const EsmtpOffer helo{false, true, true, 1000};
  CHECK(check_mail_param(p("SIZE", "10"), helo) == &replies::kUnknownParameter);
  CHECK(check_mail_param(p("BODY", "8BITMIME"), helo) == &replies::kUnknownParameter);
  // Where AUTH is offered, AUTH=<> or an xtext addr-spec (RFC 4954 §5).
  const EsmtpOffer auth{true, false, false, 1000, true};
  CHECK(check_mail_param(p("AUTH", "<>"), auth) == nullptr);
  CHECK(check_mail_param(p("AUTH", "boss+2Bx@example.org"), auth) == nullptr);
  CHECK(check_mail_param(p("AUTH", "a+ZZ@example.org"), auth) == &replies::kBadParameter);
  CHECK(check_mail_param(p("AUTH", "a+2"), auth) == &replies::kBadParameter);
  CHECK(check_mail_param(p("AUTH", std::string(501, 'a')), auth) == &replies::kBadParameter);
  CHECK(check_mail_param(p("AUTH", "", false), auth) == &replies::kBadParameter);
}

TEST_CASE("check_rcpt_param: NOTIFY and ORCPT only with DSN", "[smtp_command][esmtp]") {
  const EsmtpOffer dsn{true, false, true, 1000};
  auto p = [](std::string k, std::string v = "", bool has = true) { return EsmtpParam{k, v, has}; };
  CHECK(check_rcpt_param(p("NOTIFY", "NEVER"), dsn) == nullptr);
  CHECK(check_rcpt_param(p("NOTIFY", "success,Failure,DELAY"), dsn) == nullptr);
  CHECK(check_rcpt_param(p("NOTIFY", "NEVER,SUCCESS"), dsn) == &replies::kBadParameter);
  CHECK(check_rcpt_param(p("NOTIFY", "SUCCESS,,DELAY"), dsn) == &replies::kBadParameter);
  CHECK(check_rcpt_param(p("NOTIFY", "SOMETIMES"), dsn) == &replies::kBadParameter);
  CHECK(check_rcpt_param(p("NOTIFY", "", false), dsn) == &replies::kBadParameter);
  CHECK(check_rcpt_param(p("ORCPT", "rfc822;a@example.org"), dsn) == nullptr);
  CHECK(check_rcpt_param(p("ORCPT", "rfc822;a+2Bb@example.org"), dsn) == nullptr);
  CHECK(check_rcpt_param(p("ORCPT", ";a@example.org"), dsn) == &replies::kBadParameter);
  CHECK(check_rcpt_param(p("ORCPT", "a@example.org"), dsn) == &replies::kBadParameter);
  CHECK(check_rcpt_param(p("ORCPT", "rfc822;a=b"), dsn) == &replies::kBadParameter);
  CHECK(check_rcpt_param(p("ORCPT", "rfc822;" + std::string(494, 'a')), dsn) == &replies::kBadParameter);
  CHECK(check_rcpt_param(p("ORCPT", "rfc822;" + std::string(493, 'a')), dsn) == nullptr);
  CHECK(check_rcpt_param(p("XYZZY", "1"), dsn) == &replies::kUnknownParameter);
  const EsmtpOffer no_dsn{true, true, false, 1000};
  CHECK(check_rcpt_param(p("NOTIFY", "NEVER"), no_dsn) == &replies::kUnknownParameter);
  CHECK(check_rcpt_param(p("ORCPT", "rfc822;a@example.org"), no_dsn) == &replies::kUnknownParameter);
}

TEST_CASE("parse_bdat_args: chunk-size [LAST], nothing else", "[smtp_command][bdat]") {
  struct Case {
    std::string_view args;
    bool valid;
    std::uint64_t size;
    bool last;
  };
  for (const Case& c : std::initializer_list<Case>{
           {"0", true, 0, false},
           {"0 LAST", true, 0, true},
           {"100 last", true, 100, true},
           {"100 LaSt", true, 100, true},
           {"999999999999999", true, 999999999999999ull, false},  // 15 digits
           {"1000000000000000", false, 0, false},                 // 16 digits
           {"", false, 0, false},
           {"LAST", false, 0, false},
           {"-1", false, 0, false},
           {"+1", false, 0, false},
           {"1x", false, 0, false},
           {"0x10", false, 0, false},
           {"10 FIRST", false, 0, false},
           {"10 LAST LAST", false, 0, false},
           {"10 LASTX", false, 0, false},
           {"10  LAST", false, 0, false},
       }) {
    INFO(escape(c.args));
    BdatArgs a = parse_bdat_args(c.args);
    CHECK(a.valid == c.valid);
    if (c.valid) {
      CHECK(a.size == c.size);
      CHECK(a.last == c.last);
    }
  }
}

namespace {

const postern::CommandSpec& spec_of(std::string_view verb) {
  static std::vector<std::string> lines;  // parse_command's views point into them
  lines.emplace_back(verb);
  const postern::CommandSpec* spec = postern::parse_command(lines.back()).spec;
  REQUIRE(spec != nullptr);
  return *spec;
}

}  // namespace

TEST_CASE("check_syntax: arguments where none belong, none where required", "[smtp_command][preconditions]") {
  using namespace postern;
  CHECK(check_syntax(spec_of("EXPN"), true).reply == &replies::kNotImplemented);
  CHECK(check_syntax(spec_of("DATA"), true).reply == &replies::kNoArguments);
  CHECK(check_syntax(spec_of("QUIT"), true).reply == &replies::kNoArguments);
  CHECK(check_syntax(spec_of("STARTTLS"), true).reply == &replies::kNoArguments);
  CHECK(check_syntax(spec_of("EHLO"), false).reply == &replies::kHeloSyntax);
  CHECK(check_syntax(spec_of("HELO"), false).reply == &replies::kHeloSyntax);
  CHECK(check_syntax(spec_of("MAIL"), false).reply == &replies::kMailSyntax);
  CHECK(check_syntax(spec_of("RCPT"), false).reply == &replies::kRcptSyntax);
  CHECK(check_syntax(spec_of("AUTH"), false).reply == &replies::kArgsSyntax);
  CHECK(check_syntax(spec_of("BDAT"), false).reply == &replies::kArgsSyntax);
  CHECK(check_syntax(spec_of("VRFY"), false).reply == &replies::kArgsSyntax);
  for (std::string_view v : {"NOOP", "HELP"}) {
    CHECK_FALSE(check_syntax(spec_of(v), true));
    CHECK_FALSE(check_syntax(spec_of(v), false));
  }
  CHECK(check_syntax(spec_of("EXPN"), true).client_error);
}

TEST_CASE("check_preconditions: each verb's place in the dialogue, one exact reply", "[smtp_command][preconditions]") {
  using namespace postern;
  DialogueState fresh;  // connected, plaintext, nothing offered
  DialogueState greeted = fresh;
  greeted.phase = Phase::kGreeted;
  greeted.esmtp = true;
  DialogueState mail = greeted;
  mail.phase = Phase::kTransaction;
  DialogueState rcpt = mail;
  rcpt.recipients = 1;
  rcpt.rcpt_commands = 1;

  SECTION("MAIL needs HELO, no open transaction, TLS where required") {
    CHECK(check_preconditions(spec_of("MAIL"), fresh).reply == &replies::kNeedHelo);
    CHECK_FALSE(check_preconditions(spec_of("MAIL"), greeted));
    CHECK(check_preconditions(spec_of("MAIL"), mail).reply == &replies::kNestedMail);
    DialogueState s = greeted;
    s.tls_required = true;
    CHECK(check_preconditions(spec_of("MAIL"), s).reply == &replies::kTlsRequired);
    s.tls = true;
    CHECK_FALSE(check_preconditions(spec_of("MAIL"), s));
    DialogueState helo = greeted;
    helo.esmtp = false;  // HELO is enough for MAIL
    CHECK_FALSE(check_preconditions(spec_of("MAIL"), helo));
  }
  SECTION("RCPT needs MAIL and a transaction the upstream did not lose") {
    CHECK(check_preconditions(spec_of("RCPT"), fresh).reply == &replies::kNeedMail);
    CHECK(check_preconditions(spec_of("RCPT"), greeted).reply == &replies::kNeedMail);
    CHECK_FALSE(check_preconditions(spec_of("RCPT"), mail));
    DialogueState s = mail;
    s.transaction_failed = true;
    Refusal r = check_preconditions(spec_of("RCPT"), s);
    CHECK(r.reply == &replies::kTransactionFailed);
    CHECK_FALSE(r.client_error);  // not the client's fault
  }
  for (std::string_view verb : {"DATA", "BDAT"}) {
    DYNAMIC_SECTION(verb << " needs HELO, MAIL, an accepted recipient") {
      CHECK(check_preconditions(spec_of(verb), fresh).reply == &replies::kNeedHelo);
      CHECK(check_preconditions(spec_of(verb), greeted).reply == &replies::kNeedMail);
      Refusal none = check_preconditions(spec_of(verb), mail);
      CHECK(none.reply == &replies::kNeedRcpt);
      CHECK(none.client_error);
      DialogueState refused = mail;
      refused.rcpt_commands = 2;  // every RCPT was refused: a pipelining client's DATA
      Refusal all_refused = check_preconditions(spec_of(verb), refused);
      CHECK(all_refused.reply == &replies::kNoValidRecipients);
      CHECK_FALSE(all_refused.client_error);
      CHECK_FALSE(check_preconditions(spec_of(verb), rcpt));
      DialogueState lost = rcpt;
      lost.transaction_failed = true;
      CHECK(check_preconditions(spec_of(verb), lost).reply == &replies::kTransactionFailed);
      DialogueState plain = rcpt;
      plain.tls_required = true;
      CHECK(check_preconditions(spec_of(verb), plain).reply == &replies::kTlsRequired);
    }
  }
  SECTION("STARTTLS: offered by the listener, never under TLS") {
    CHECK(check_preconditions(spec_of("STARTTLS"), greeted).reply == &replies::kNotImplemented);
    DialogueState s = fresh;
    s.starttls_offered = true;
    CHECK_FALSE(check_preconditions(spec_of("STARTTLS"), s));  // before EHLO too (RFC 3207 allows it)
    s.tls = true;
    CHECK(check_preconditions(spec_of("STARTTLS"), s).reply == &replies::kTlsAlreadyActive);
  }
  SECTION("AUTH: offered, under TLS, after EHLO, once, outside a transaction — in that order") {
    DialogueState s = fresh;
    CHECK(check_preconditions(spec_of("AUTH"), s).reply == &replies::kAuthNotOffered);
    s.auth_offered = true;
    CHECK(check_preconditions(spec_of("AUTH"), s).reply == &replies::kAuthNeedsTls);
    s.tls = true;
    CHECK(check_preconditions(spec_of("AUTH"), s).reply == &replies::kNeedHelo);
    s.phase = Phase::kGreeted;  // after HELO: AUTH is an ESMTP extension
    CHECK(check_preconditions(spec_of("AUTH"), s).reply == &replies::kNeedHelo);
    s.esmtp = true;
    CHECK_FALSE(check_preconditions(spec_of("AUTH"), s));
    s.phase = Phase::kTransaction;
    CHECK(check_preconditions(spec_of("AUTH"), s).reply == &replies::kAuthInTransaction);
    s.authenticated = true;
    CHECK(check_preconditions(spec_of("AUTH"), s).reply == &replies::kAuthAlready);
  }
  SECTION("verbs without preconditions pass in any phase") {
    for (std::string_view verb : {"EHLO", "HELO", "RSET", "NOOP", "QUIT", "HELP", "VRFY"}) {
      for (const DialogueState& s : {fresh, greeted, mail, rcpt}) CHECK_FALSE(check_preconditions(spec_of(verb), s));
    }
  }
}
