// RFC 5321 §4.1.2 path parser, Domain and address-literal checks: hostile
// inputs with the exact error, mailbox and end offset.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "filters/address.h"
#include "test_util.h"

using postern::Mailbox;
using postern::PathError;
using postern::PathParse;
using postern::same_mailbox;
using postern::test::escape;

namespace {

const char* error_name(PathError e) {
  switch (e) {
    case PathError::kNone: return "none";
    case PathError::kSyntax: return "syntax";
    case PathError::kTooLong: return "too-long";
    case PathError::kNonAscii: return "non-ascii";
    case PathError::kNullNotAllowed: return "null-not-allowed";
  }
  return "?";
}

const std::string k63(63, 'd');
const std::string k61(61, 'd');
const std::string k62(62, 'd');

}  // namespace

TEST_CASE("parse_path: mailbox, end offset and error", "[address]") {
  struct Case {
    std::string text;
    bool allow_null;
    bool allow_postmaster;
    bool allow_utf8;
    PathError error;
    std::string local_part;
    std::string domain;
    std::size_t end;
  };
  const std::string local64(64, 'l');
  const std::string domain189 = k63 + "." + k63 + "." + k61;  // path of 256 with local64
  const std::string domain190 = k63 + "." + k63 + "." + k62;  // path of 257
  const std::string domain255 = k63 + "." + k63 + "." + k63 + "." + k63;
  const std::vector<Case> cases{
      {"<a@b.example>", false, false, false, PathError::kNone, "a", "b.example", 13},
      {"<a@b.example> SIZE=1", false, false, false, PathError::kNone, "a", "b.example", 13},
      {"<a@b.example>>", false, false, false, PathError::kNone, "a", "b.example", 13},
      {"<>", true, false, false, PathError::kNone, "", "", 2},
      {"<> BODY=7BIT", true, true, false, PathError::kNone, "", "", 2},
      {"<>", false, true, false, PathError::kNullNotAllowed, "", "", 0},
      {"<Postmaster>", false, true, false, PathError::kNone, "Postmaster", "", 12},
      {"<pOSTMASTER>", false, true, false, PathError::kNone, "pOSTMASTER", "", 12},
      {"<Postmaster>", true, false, false, PathError::kSyntax, "", "", 0},
      {"<\"Postmaster\">", false, true, false, PathError::kSyntax, "", "", 0},
      {"<@r.example:a@b.example>", false, false, false, PathError::kNone, "a", "b.example", 24},
      {"<@r1.example,@r2.example:a@b.example>", false, false, false, PathError::kNone, "a", "b.example",
       37},
      {"<@r.example,a@b.example>", false, false, false, PathError::kSyntax, "", "", 0},
      {"<@r.example;a@b.example>", false, false, false, PathError::kSyntax, "", "", 0},
      {"<@:a@b.example>", false, false, false, PathError::kSyntax, "", "", 0},
      {"<\"a b\"@b.example>", false, false, false, PathError::kNone, "\"a b\"", "b.example", 17},
      {"<\"a\\\\b\"@b.example>", false, false, false, PathError::kNone, "\"a\\\\b\"", "b.example", 18},
      {"<\"a\\\x01\"@b.example>", false, false, false, PathError::kSyntax, "", "", 0},
      {"<\"a\\", false, false, false, PathError::kSyntax, "", "", 0},
      {"<a@[1.2.3.4]>", false, false, false, PathError::kNone, "a", "[1.2.3.4]", 13},
      {"<a@[IPv6:::1]>", false, false, false, PathError::kNone, "a", "[IPv6:::1]", 14},
      {"", true, true, false, PathError::kSyntax, "", "", 0},
      {"<", true, true, false, PathError::kSyntax, "", "", 0},
      {">", true, true, false, PathError::kSyntax, "", "", 0},
      {"a@b.example", true, true, false, PathError::kSyntax, "", "", 0},
      {" <a@b.example>", true, true, false, PathError::kSyntax, "", "", 0},
      {"<a@b.example", true, true, false, PathError::kSyntax, "", "", 0},
      {"<a@b.example x>", true, true, false, PathError::kSyntax, "", "", 0},
      // §4.5.3.1: local part 64, path 256 including the brackets.
      {"<" + local64 + "@b.example>", false, false, false, PathError::kNone, local64, "b.example", 76},
      {"<" + local64 + "l@b.example>", false, false, false, PathError::kTooLong, "", "", 0},
      {"<" + local64 + "@" + domain189 + ">", false, false, false, PathError::kNone, local64, domain189,
       256},
      {"<" + local64 + "@" + domain190 + ">", false, false, false, PathError::kTooLong, "", "", 0},
      {"<a@" + domain255 + ">", false, false, false, PathError::kTooLong, "", "", 0},
      {"<a@" + domain255 + "d>", false, false, false, PathError::kTooLong, "", "", 0},
      // 8-bit octets need SMTPUTF8.
      {"<\xC3\xA5@b.example>", false, false, false, PathError::kNonAscii, "", "", 0},
      {"<a@\xC3\xA5.example>", false, false, false, PathError::kNonAscii, "", "", 0},
      {"<\xC3\xA5@b.example>", false, false, true, PathError::kNone, "\xC3\xA5", "b.example", 14},
      {"<a@\xC3\xA5.example>", false, false, true, PathError::kNone, "a", "\xC3\xA5.example", 14},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION(escape(c.text) << " null=" << c.allow_null << " postmaster=" << c.allow_postmaster
                                   << " utf8=" << c.allow_utf8) {
      PathParse p = postern::parse_path(c.text, c.allow_null, c.allow_postmaster, c.allow_utf8);
      CHECK(error_name(p.error) == std::string(error_name(c.error)));
      CHECK(p.mailbox.local_part == c.local_part);
      CHECK(p.mailbox.domain == c.domain);
      if (c.error == PathError::kNone) CHECK(p.end == c.end);
    }
  }
}

TEST_CASE("Mailbox: str() and empty()", "[address]") {
  CHECK(Mailbox{"a", "b.example"}.str() == "a@b.example");
  CHECK(Mailbox{"\"a b\"", "[1.2.3.4]"}.str() == "\"a b\"@[1.2.3.4]");
  CHECK(Mailbox{"Postmaster", ""}.str() == "Postmaster");
  CHECK(Mailbox{}.empty());
  CHECK_FALSE(Mailbox{"Postmaster", ""}.empty());
  CHECK_FALSE(Mailbox{"a", "b"}.empty());
}

TEST_CASE("same_mailbox: the domain in any case, the local part exactly", "[address]") {
  CHECK(same_mailbox(Mailbox{"a", "b.example"}, Mailbox{"a", "B.Example"}));
  CHECK_FALSE(same_mailbox(Mailbox{"a", "b.example"}, Mailbox{"A", "b.example"}));
  CHECK_FALSE(same_mailbox(Mailbox{"a", "b.example"}, Mailbox{"a", "b.example.org"}));
  CHECK_FALSE(same_mailbox(Mailbox{"a.b", "example"}, Mailbox{"a", "b.example"}));  // same str() length, not the same
  CHECK(same_mailbox(Mailbox{"Postmaster", ""}, Mailbox{"Postmaster", ""}));
}

// The spellings of one mailbox an MTA reads as the same (the class the
// duplicate-recipient check must see through), parsed as RCPT would.
TEST_CASE("same_mailbox: quoting, quoted-pairs, postmaster and address literals", "[address]") {
  auto rcpt = [](std::string_view path) {
    PathParse p = postern::parse_path(path, false, true);
    REQUIRE(p.error == PathError::kNone);
    return p.mailbox;
  };
  auto same = [&](std::string_view a, std::string_view b) {
    const bool ab = same_mailbox(rcpt(a), rcpt(b));
    CHECK(ab == same_mailbox(rcpt(b), rcpt(a)));  // symmetric
    return ab;
  };
  // RFC 5322 §3.2.4: the quotes and a quoted-pair's backslash are not part of the value.
  CHECK(same("<user@example.com>", "<\"user\"@example.com>"));
  CHECK(same("<user@example.com>", "<\"us\\er\"@example.com>"));
  CHECK(same("<\"\\u\\s\\e\\r\"@example.com>", "<\"user\"@EXAMPLE.com>"));
  CHECK(same("<first.last@example.com>", "<\"first.last\"@example.com>"));
  CHECK(same("<\"a\\\\b\"@example.com>", "<\"a\\\\b\"@example.com>"));  // a\b: an escaped backslash
  CHECK_FALSE(same("<\"a\\\\b\"@example.com>", "<\"ab\"@example.com>"));
  CHECK_FALSE(same("<\"a b\"@example.com>", "<ab@example.com>"));
  CHECK_FALSE(same("<\"user\"@example.com>", "<User@example.com>"));  // case still matters
  CHECK_FALSE(same("<\"user\"@example.com>", "<user@example.org>"));
  CHECK_FALSE(same("<\"\"@example.com>", "<\"x\"@example.com>"));
  CHECK_FALSE(same("<\"user.\"@example.com>", "<user@example.com>"));
  // RFC 5321 §4.5.1: postmaster in any case, quoted or not; with or without a domain it
  // names different mailboxes.
  CHECK(same("<Postmaster>", "<postmaster>"));
  CHECK(same("<POSTMASTER>", "<PostMaster>"));
  CHECK(same("<postmaster@example.com>", "<PostMaster@Example.COM>"));
  CHECK(same("<\"Postmaster\"@example.com>", "<postmaster@example.com>"));
  CHECK_FALSE(same("<postmaster@example.com>", "<postmaster>"));
  CHECK_FALSE(same("<postmasters@example.com>", "<postmaster@example.com>"));
  CHECK_FALSE(same("<Abuse@example.com>", "<abuse@example.com>"));  // only postmaster is reserved
  // Address literals by their address.
  CHECK(same("<u@[IPv6:2001:db8::1]>", "<u@[ipv6:2001:DB8:0:0:0:0:0:1]>"));
  CHECK(same("<u@[192.0.2.1]>", "<u@[IPv6:::ffff:192.0.2.1]>"));
  CHECK_FALSE(same("<u@[192.0.2.1]>", "<u@[192.0.2.2]>"));
  CHECK_FALSE(same("<u@[IPv6:2001:db8::1]>", "<u@[IPv6:2001:db8::2]>"));
  CHECK_FALSE(same("<u@[192.0.2.1]>", "<u@192.0.2.1.example>"));
  CHECK(same("<u@[x-tag:abc]>", "<u@[X-TAG:ABC]>"));  // a general literal: as text, in any case
}

// An internationalized domain (RFC 6531 paths) names one host as U-labels
// or A-labels, in any case, composed or not (IDNA2008 with UTS #46).
TEST_CASE("same_mailbox: a domain as U-labels or A-labels", "[address]") {
  auto rcpt = [](std::string_view path) {
    PathParse p = postern::parse_path(path, false, true, true);
    REQUIRE(p.error == PathError::kNone);
    return p.mailbox;
  };
  auto same = [&](std::string_view a, std::string_view b) {
    const bool ab = same_mailbox(rcpt(a), rcpt(b));
    CHECK(ab == same_mailbox(rcpt(b), rcpt(a)));
    CHECK(ab == (postern::mailbox_key(rcpt(a)) == postern::mailbox_key(rcpt(b))));
    return ab;
  };
  CHECK(same("<u@b\xC3\xBC" "cher.example>", "<u@xn--bcher-kva.example>"));
  CHECK(same("<u@b\xC3\xBC" "cher.example>", "<u@XN--BCHER-KVA.Example>"));
  CHECK(same("<u@B\xC3\x9C" "CHER.example>", "<u@b\xC3\xBC" "cher.example>"));            // Ü folds to ü
  CHECK(same("<u@bu\xCC\x88" "cher.example>", "<u@xn--bcher-kva.example>"));              // u + U+0308, composed
  CHECK(same("<u@\xD0\xBF\xD1\x80\xD0\xB8\xD0\xBC\xD0\xB5\xD1\x80.\xD1\x80\xD1\x84>",
             "<u@xn--e1afmkfd.xn--p1ai>"));                                                  // пример.рф
  CHECK(same("<\"u\"@b\xC3\xBC" "cher.example>", "<u@xn--bcher-kva.example>"));          // and the local part's quoting
  CHECK_FALSE(same("<u@b\xC3\xBC" "cher.example>", "<u@bucher.example>"));
  CHECK_FALSE(same("<U@b\xC3\xBC" "cher.example>", "<u@xn--bcher-kva.example>"));         // a local part's case matters
  CHECK_FALSE(same("<\xC3\xBC@example.com>", "<\xC3\x9C@example.com>"));                  // ... also in UTF-8
  // A domain that is not valid IDNA is compared as it is written, in any ASCII case.
  CHECK(same("<u@a\xE2\x80\x8D" "b.example>", "<u@A\xE2\x80\x8D" "B.example>"));
  CHECK_FALSE(same("<u@a\xE2\x80\x8D" "b.example>", "<u@ab.example>"));
}

TEST_CASE("is_domain", "[address]") {
  const std::string k64(64, 'd');
  const std::string d255 = k63 + "." + k63 + "." + k63 + "." + k63;
  const std::vector<std::pair<std::string, bool>> cases{
      {"example.com", true},
      {"a", true},
      {"A-b.C", true},
      {"a--b.example", true},
      {"xn--bcher-kva.example", true},
      {"1.2.3.4", true},
      {"123", true},
      {k63 + ".example", true},
      {d255, true},
      {"", false},
      {".", false},
      {"..", false},
      {"a.", false},
      {".a", false},
      {"a..b", false},
      {"-a", false},
      {"a-", false},
      {"a-.b", false},
      {"a.-b", false},
      {"-", false},
      {"a_b", false},
      {"a b", false},
      {"a\tb", false},
      {"[1.2.3.4]", false},
      {"a@b", false},
      {"b\xC3\xBC" "cher.example", false},
      {std::string("a\0b", 3), false},
      {k64 + ".example", false},
      {d255 + "d", false},
  };
  for (const auto& [text, expected] : cases) {
    INFO("domain: " << escape(text) << " (" << text.size() << " octets)");
    CHECK(postern::is_domain(text) == expected);
  }
}

TEST_CASE("is_address_literal", "[address]") {
  const std::vector<std::pair<std::string, bool>> cases{
      {"[1.2.3.4]", true},
      {"[0.0.0.0]", true},
      {"[255.255.255.255]", true},
      {"[IPv6:::1]", true},
      {"[IPv6:2001:db8::1]", true},
      {"[IPv6:::ffff:192.0.2.1]", true},
      {"[ipv6:::1]", true},
      {"[x-tag:anything]", true},  // General-address-literal (§4.1.3)
      {"[", false},
      {"[]", false},
      {"[ ]", false},
      {"1.2.3.4", false},
      {"[1.2.3.4", false},
      {"1.2.3.4]", false},
      {"[1.2.3]", false},
      {"[1.2.3.4.5]", false},
      {"[256.1.1.1]", false},
      {"[1.2.3.4 ]", false},
      {"[IPv6:]", false},
      {"[IPv6:1.2.3.4]", false},
      {"[IPv6:::g]", false},
      {"[IPv6:1:2:3:4:5:6:7:8:9]", false},
      {"[:abc]", false},
      {"[-tag:abc]", false},
      {"[tag:]", false},
      {"[tag:a b]", false},
      {"[tag:a]b]", false},
      {"[tag:a[b]", false},
      {"[tag:a\\b]", false},
      {"[t_g:abc]", false},
      {"[example.com]", false},
  };
  for (const auto& [text, expected] : cases) {
    INFO("literal: " << escape(text));
    CHECK(postern::is_address_literal(text) == expected);
  }
}

TEST_CASE("is_address_literal: hidden bytes and tag case", "[address][regression]") {
  // The literal is handed to inet_pton as a C string: a NUL ends it early, so
  // "[1.2.3.4\0junk]" passes as an IPv4 literal.
  CHECK_FALSE(postern::is_address_literal(std::string("[1.2.3.4\0junk]", 14)));
  CHECK_FALSE(postern::is_address_literal(std::string("[IPv6:::1\0junk]", 15)));
  // ABNF strings are case-insensitive (RFC 5234 §2.3): "IPV6:" is the IPv6
  // tag, so an invalid address after it must not pass as a general literal.
  CHECK(postern::is_address_literal("[IPV6:::1]"));
  CHECK_FALSE(postern::is_address_literal("[IPV6:not-an-address]"));
  CHECK_FALSE(postern::is_address_literal("[IpV6:zzz]"));
}
