// The one header parser (issue 15): obsolete syntax (WSP before the colon),
// folding, the limits that refuse a message instead of leaving fields unread,
// the folding of what postern writes, and the From mailboxes DMARC reads.
#include <catch2/catch.hpp>

#include "filters/text/ascii.h"

#include <string>
#include <vector>

#include "filters/dkim/dkim_tags.h"
#include "filters/dmarc/dmarc.h"
#include "filters/filter.h"
#include "filters/message.h"
#include "filters/spool.h"

using postern::AuthorDomains;
using postern::Changes;
using postern::HeaderLimits;
using postern::Message;
using postern::Spool;

namespace {

struct Parsed {
  std::unique_ptr<Spool> spool;
  std::unique_ptr<Message> message;
};

Parsed parse(const std::string& content, HeaderLimits limits = {}, std::size_t memory = 1 << 20) {
  Parsed p;
  p.spool = std::make_unique<Spool>(memory, "");
  REQUIRE(p.spool->append(content));
  REQUIRE(p.spool->finish());
  p.message = std::make_unique<Message>(*p.spool, limits);
  return p;
}

std::vector<std::string> names(const Message& m) {
  std::vector<std::string> out;
  for (const auto& h : m.headers()) out.push_back(h.name);
  return out;
}

// Every line of a rendered field, without the CRLF, is at most `max` octets.
std::size_t longest_line(const std::string& text) {
  std::size_t longest = 0, start = 0;
  for (std::size_t e; (e = text.find("\r\n", start)) != std::string::npos; start = e + 2) {
    longest = std::max(longest, e - start);
  }
  return std::max(longest, text.size() - start);
}

std::string unfold(std::string s) {
  for (std::size_t f; (f = s.find("\r\n")) != std::string::npos;) s.erase(f, 2);
  return s;
}

}  // namespace

TEST_CASE("header parser: WSP before the colon is a field (RFC 5322 4.5.3)", "[message][header-parser]") {
  auto p = parse("X-Obs : x\r\nFrom\t: ceo@victim.example\r\nSubject  :  hi\r\n\r\nbody\r\n");
  const Message& m = *p.message;
  CHECK(names(m) == std::vector<std::string>{"X-Obs", "From", "Subject"});
  CHECK(m.first("from") == "ceo@victim.example");
  CHECK(m.first("X-OBS") == "x");
  CHECK(m.first("subject") == "hi");
  CHECK_FALSE(m.headers_truncated());
  CHECK(m.body_offset() == std::string("X-Obs : x\r\nFrom\t: ceo@victim.example\r\nSubject  :  hi\r\n\r\n").size());
}

TEST_CASE("header parser: what is not a field starts the body, as the MTA reads it", "[message][header-parser]") {
  // No colon, a space inside the name, 8-bit in the name, a leading fold.
  for (const std::string bad : {"Not a field\r\n", "Bad Name: x\r\n", "N\xc3\xa4me: x\r\n", ": empty name\r\n"}) {
    auto p = parse("A: 1\r\n" + bad + "From: x@y.example\r\n\r\nbody\r\n");
    INFO(bad);
    CHECK(names(*p.message) == std::vector<std::string>{"A"});
    CHECK(p.message->body_offset() == 6);
    CHECK_FALSE(p.message->headers_truncated());
  }
  auto lead = parse(" folded first\r\nFrom: x@y.example\r\n\r\n");
  CHECK(lead.message->headers().empty());
}

TEST_CASE("header parser: folding, CR-less lines and values", "[message][header-parser]") {
  auto p = parse("Subject: one\r\n two\r\n\tthree\r\nX-Cr: a\rb\r\nX-Empty:\r\nX-Colon: a: b\r\n\r\n");
  const Message& m = *p.message;
  CHECK(m.first("subject") == "one two\tthree");
  CHECK(m.first("x-cr") == "a\rb");  // a lone CR is no line end, no fold
  CHECK(m.first("x-empty") == "");
  CHECK(m.first("x-colon") == "a: b");
  CHECK(m.all("SUBJECT").size() == 1);
}

TEST_CASE("header parser: duplicates in any case are all seen", "[message][header-parser]") {
  auto p = parse("From: a@one.example\r\nfrom: b@two.example\r\nFROM : c@three.example\r\n\r\n");
  CHECK(p.message->all("From") == std::vector<std::string>{"a@one.example", "b@two.example", "c@three.example"});
}

TEST_CASE("header parser: the field count limit refuses, never stops silently", "[message][header-parser]") {
  std::string padding;
  for (int i = 0; i < 1000; ++i) padding += "a:\r\n";
  const HeaderLimits limits{1 << 20, 1000};
  auto at = parse(padding + "\r\nbody\r\n", limits);
  CHECK_FALSE(at.message->headers_truncated());
  CHECK(at.message->headers().size() == 1000);
  auto over = parse(padding + "From: ceo@victim.example\r\n\r\nbody\r\n", limits);
  CHECK(over.message->headers_truncated());
  CHECK_FALSE(over.message->first("From"));
  // The default: the 10,000 tiny fields before a From are over it.
  std::string many;
  for (int i = 0; i < 10000; ++i) many += "a:\r\n";
  CHECK(parse(many + "From: ceo@victim.example\r\n\r\nbody\r\n").message->headers_truncated());
  CHECK_FALSE(parse(many + "\r\nbody\r\n").message->headers_truncated());
}

TEST_CASE("header parser: the size limit refuses at every length around it", "[message][header-parser]") {
  const std::size_t limit = 64 * 1024;
  for (std::size_t extra : {0, 1, 2, 3, 100}) {
    std::string content = "From: x@y.example\r\nX-Big: ";
    content += std::string(limit - content.size() - 4, 'v');  // the section is limit octets with its empty line
    content += std::string(extra, 'w');
    content += "\r\n\r\nbody\r\n";
    for (std::size_t memory : {std::size_t(1 << 12), std::size_t(1 << 20)}) {  // in a file and in memory
      auto p = parse(content, HeaderLimits{limit, 10000}, memory);
      INFO("extra " << extra << " memory " << memory);
      CHECK(p.message->headers_truncated() == (extra > 0));
    }
  }
}

TEST_CASE("header parser: every split point of the stream gives the same fields", "[message][header-parser]") {
  // The spool is written in two appends at every offset (the DATA stream's
  // reads), in memory and in a file: the parse must not depend on the seam.
  const std::string content =
      "X-Obs : x\r\nFrom\t:\r\n \"Ceo, The\" <ceo@victim.example>\r\nSubject: a\r\n b\r\n\r\nbody\r\n";
  for (std::size_t cut = 0; cut <= content.size(); ++cut) {
    for (std::size_t memory : {std::size_t(16), std::size_t(1 << 16)}) {
      Spool spool(memory, "");
      REQUIRE(spool.append(content.substr(0, cut)));
      REQUIRE(spool.append(content.substr(cut)));
      REQUIRE(spool.finish());
      Message m(spool);
      INFO("cut " << cut << " memory " << memory);
      CHECK(names(m) == std::vector<std::string>{"X-Obs", "From", "Subject"});
      CHECK(m.first("from") == "\"Ceo, The\" <ceo@victim.example>");
      CHECK(m.body_offset() == content.find("body"));
    }
  }
}

TEST_CASE("header parser: an obsolete-syntax Subject is tagged after its colon", "[message][header-parser]") {
  auto p = parse("Subject : hello\r\n\r\nbody\r\n");
  Changes c;
  c.subject_tag = "[SPAM]";
  CHECK(render_header_block(*p.message, c, "") == "Subject : [SPAM] hello\r\n\r\n");
}

TEST_CASE("folding: fields postern writes stay within line limits whatever the input", "[message][header-parser]") {
  const std::string word(5000, 'x');
  for (const std::string& value : {std::string("short"), std::string(200, 'a') + " " + std::string(200, 'b'),
                                  word, "a " + word + " b", std::string(300, ' ') + "x"}) {
    const std::string f = postern::fold_header_field("X-Postern-Test", value);
    INFO(value.substr(0, 40));
    CHECK(longest_line(f.substr(0, f.size() - 2)) <= 998);
    CHECK(f.ends_with("\r\n"));
    // Each line after the first starts with white space: one field.
    for (std::size_t at = f.find("\r\n"); at + 2 < f.size(); at = f.find("\r\n", at + 2)) CHECK(f[at + 2] == ' ');
  }
  const std::string words = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen";
  const std::string f = postern::fold_header_field("Authentication-Results", words + " " + words);
  CHECK(longest_line(f) <= 78);
  CHECK(unfold(f) == "Authentication-Results: " + words + " " + words);
}

TEST_CASE("folding: a tagged Subject never grows a line past 78 (or what was received)", "[message][header-parser]") {
  const std::string long_subject = "Subject: " + std::string(985, 's') + "\r\n\r\nbody\r\n";  // a 994-octet line
  auto p = parse(long_subject);
  Changes c;
  c.subject_tag = "[SPAM]";
  const std::string out = render_header_block(*p.message, c, "");
  CHECK(longest_line(out) <= 994);
  CHECK(unfold(out).starts_with("Subject: [SPAM] sss"));
  auto short_p = parse("Subject: hi\r\n\r\n");
  CHECK(render_header_block(*short_p.message, c, "") == "Subject: [SPAM] hi\r\n\r\n");
}

TEST_CASE("DMARC author domains: every mailbox of every From field", "[dmarc][header-parser]") {
  auto domains = [](const std::string& headers) {
    auto p = parse(headers + "\r\nbody\r\n");
    return postern::author_domains(*p.message);
  };
  using V = std::vector<std::string>;
  CHECK(domains("From: ceo@victim.example, me@attacker.example\r\n").domains == V{"victim.example", "attacker.example"});
  CHECK(domains("From: ceo@victim.example\r\nFrom: me@attacker.example\r\n").domains ==
        V{"victim.example", "attacker.example"});
  CHECK(domains("FROM: ceo@Victim.Example\r\nfrom : me@attacker.example\r\n").domains ==
        V{"victim.example", "attacker.example"});
  CHECK(domains("X-Obs : x\r\nFrom : ceo@victim.example\r\n").domains == V{"victim.example"});
  // Group syntax (RFC 6854), comments, quoted local parts, display names
  // with specials, encoded words, routes.
  CHECK(domains("From: Team: ceo@victim.example, b@other.example;\r\n").domains == V{"victim.example", "other.example"});
  CHECK(domains("From: ceo(the boss)@(really)victim.example (CEO)\r\n").domains == V{"victim.example"});
  CHECK(domains("From: \"me@attacker.example, x\"@victim.example\r\n").domains == V{"victim.example"});
  CHECK(domains("From: \"ceo@victim.example\" <me@attacker.example>\r\n").domains == V{"attacker.example"});
  CHECK(domains("From: =?utf-8?q?ceo=40victim=2Eexample?= <me@attacker.example>\r\n").domains == V{"attacker.example"});
  CHECK(domains("From: <@relay.example:ceo@victim.example>\r\n").domains == V{"victim.example"});
  CHECK(domains("From: a@victim.example,\r\n b@victim.example\r\n").domains == V{"victim.example"});
  CHECK(domains("From: a@victim.example,\r\n b@victim.example\r\n").mailboxes == 2);
  // An internationalized domain (RFC 6532) is looked up as its A-label.
  CHECK(domains("From: ceo@V\xc3\xaf" "ctim.example\r\n").domains == V{"xn--vctim-cta.example"});
  // Nothing usable: every one is an error, never "no From" silently.
  for (const std::string bad : {"Subject: no from\r\n", "From: undisclosed-recipients:;\r\n", "From: ceo\r\n",
                                "From: ceo@[192.0.2.1]\r\n", "From: ceo@victim.example, nobody\r\n",
                                "From: \"unclosed <ceo@victim.example>\r\n", "From: <ceo@victim.example\r\n",
                                "From: ceo@victim.example (unclosed\r\n", "From: a <b@c.example> <d@e.example>\r\n",
                                "From: ceo@v\xff" "ctim.example\r\n", "From:\r\n"}) {
    INFO(bad);
    CHECK_FALSE(domains(bad).error.empty());
  }
  std::string many = "From: ";
  for (int i = 0; i < 11; ++i) many += (i ? ", a@d" : "a@d") + std::to_string(i) + ".example";
  CHECK(domains(many + "\r\n").error == "too many From domains");
}

TEST_CASE("DMARC records: WSP around '=' and tags in any case (RFC 7489 6.4)", "[dmarc][header-parser]") {
  CHECK(postern::normalize_dmarc_record("v = DMARC1 ; P = Reject ; SP=None; adkim = S") ==
        std::optional<std::string>("v=DMARC1; p=reject; sp=none; adkim=s"));
  CHECK_FALSE(postern::normalize_dmarc_record("v=dmarc1; p=reject"));  // the version is case-sensitive
  CHECK_FALSE(postern::normalize_dmarc_record("p=reject; v=DMARC1"));
  CHECK_FALSE(postern::normalize_dmarc_record("v=spf1 -all"));
  auto r = postern::parse_dmarc_record("example.org", "v = DMARC1 ;  P = Reject; ADKIM=s ; pct = 50");
  REQUIRE(r);
  CHECK(r->p == 'r');
  CHECK(r->adkim_strict);
  CHECK(r->pct == 50);
}

TEST_CASE("DMARC: several author domains, the strictest failing policy", "[dmarc][header-parser]") {
  using postern::DmarcOutcome;
  using postern::DmarcResult;
  auto outcome = [](DmarcResult r, const char* domain, const char* disposition) {
    DmarcOutcome o;
    o.result = r;
    o.from_domain = domain;
    o.disposition = disposition;
    return o;
  };
  auto c = postern::combine_dmarc_outcomes({outcome(DmarcResult::kPass, "a.example", "none"),
                                            outcome(DmarcResult::kFail, "b.example", "quarantine"),
                                            outcome(DmarcResult::kFail, "c.example", "reject"),
                                            outcome(DmarcResult::kNone, "d.example", "")});
  CHECK(c.result == DmarcResult::kFail);
  CHECK(c.from_domain == "c.example");
  auto pass = postern::combine_dmarc_outcomes({outcome(DmarcResult::kPass, "a.example", "none"),
                                               outcome(DmarcResult::kPass, "b.example", "none")});
  CHECK(pass.result == DmarcResult::kPass);
  auto mixed = postern::combine_dmarc_outcomes({outcome(DmarcResult::kPass, "a.example", "none"),
                                                outcome(DmarcResult::kNone, "b.example", "")});
  CHECK(mixed.result == DmarcResult::kNone);  // pass only when every author domain passes
}

TEST_CASE("DKIM tag-lists: one parser, RFC 6376 3.2", "[dkim][header-parser]") {
  using postern::dkim_key_problem;
  using postern::dkim_signature_problem;
  using postern::dkim_tag_value;
  using postern::parse_dkim_tag_list;
  auto tags = parse_dkim_tag_list(" v=1;\r\n\ta = rsa-sha256 ; l = 20 ;b=ab\r\n cd;");
  REQUIRE(tags);
  REQUIRE(tags->size() == 4);
  CHECK((*tags)[1].name == "a");
  CHECK((*tags)[1].value == "rsa-sha256");
  CHECK(dkim_tag_value(" v=1; l = 20 ;", "l") == "20");
  CHECK(dkim_tag_value("b=ab\r\n cd", "b") == "abcd");
  CHECK(dkim_tag_value("v=1; V=2", "V") == "2");  // names are case-sensitive: two tags
  for (const std::string bad : {"d=a; d=b", "c=simple; x=1; c=simple", "novalue; d=a", "=x", "1a=b", "a=1;;b=2",
                                "a-b=1"}) {
    INFO(bad);
    CHECK_FALSE(parse_dkim_tag_list(bad));
    CHECK(dkim_tag_value(bad, "d").empty());
  }
  const std::string good = "v=1; a=rsa-sha256; d=example.com; s=s; h=from; bh=YWJj; b=YWJjZA==";
  CHECK(dkim_signature_problem(good).empty());
  CHECK(dkim_signature_problem(good + "; q=dns/txt").empty());
  CHECK(dkim_signature_problem(good + "; q=other:dns/txt").empty());
  CHECK_FALSE(dkim_signature_problem(good + "; q=dns").empty());
  CHECK_FALSE(dkim_signature_problem(good + "; d=example.com").empty());
  CHECK_FALSE(dkim_signature_problem("v=1; a=rsa-sha256; bh=YWJj; b=YW!JjZA==").empty());
  CHECK_FALSE(dkim_signature_problem("v=1; a=rsa-sha256; bh=YWJj; b=YWJj=ZA=").empty());
  CHECK_FALSE(dkim_signature_problem(good + "; l=2x").empty());
  CHECK(dkim_signature_problem(good + "; l = 20").empty());
  CHECK_FALSE(dkim_signature_problem("v=2; a=rsa-sha256; bh=YWJj; b=YWJj").empty());
  // Key records against the signature.
  CHECK(dkim_key_problem("v=DKIM1; k=rsa; p=YWJj", "rsa-sha256", "example.com", "").empty());
  CHECK(dkim_key_problem("p=YWJj", "rsa-sha1", "example.com", "").empty());  // k= defaults to rsa
  CHECK_FALSE(dkim_key_problem("k=ed25519; p=YWJj", "rsa-sha256", "example.com", "").empty());
  CHECK_FALSE(dkim_key_problem("k=rsa; p=YWJj", "ed25519-sha256", "example.com", "").empty());
  CHECK(dkim_key_problem("k=ed25519; p=YWJj", "ed25519-sha256", "example.com", "").empty());
  CHECK_FALSE(dkim_key_problem("p=YWJj; v=DKIM1", "rsa-sha256", "example.com", "").empty());  // v= not first
  CHECK_FALSE(dkim_key_problem("k=rsa; k=rsa; p=YWJj", "rsa-sha256", "example.com", "").empty());
  CHECK_FALSE(dkim_key_problem("s=other; p=YWJj", "rsa-sha256", "example.com", "").empty());
  CHECK(dkim_key_problem("s=email:other; p=YWJj", "rsa-sha256", "example.com", "").empty());
  CHECK_FALSE(dkim_key_problem("t=y:s; p=YWJj", "rsa-sha256", "example.com", "a@sub.example.com").empty());
  CHECK(dkim_key_problem("t=s; p=YWJj", "rsa-sha256", "example.com", "a@Example.COM").empty());
  CHECK(dkim_key_problem("t=y; p=YWJj", "rsa-sha256", "example.com", "a@sub.example.com").empty());
}

TEST_CASE("DKIM b= and bh= base64 checks and tag look-ups match the plain reading", "[dkim][header-parser]") {
  using postern::dkim_signature_problem;
  using postern::dkim_tag_starts_with;
  using postern::parse_dkim_tag_list;
  // The plain reading of base64string (RFC 6376 2.4) the table-driven check
  // replaced: white space skipped, the alphabet, at most two "=" at the end,
  // a multiple of four.
  auto reference = [](std::string_view v) {
    std::size_t n = 0, pad = 0;
    for (char c : v) {
      if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
      ++n;
      if (c == '=') {
        ++pad;
        continue;
      }
      const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
      if (pad || !alpha) return false;
    }
    return n > 0 && n % 4 == 0 && pad <= 2;
  };
  // Every string of up to 6 octets over an alphabet with each class in it
  // (letters, digits, + /, =, white space, and octets outside base64),
  // as b= and as bh=.
  const std::string alphabet = std::string("aZ9+/= \t!-\x80") + '\0';
  std::vector<std::string> values = {""};
  for (int len = 1; len <= 6; ++len) {
    std::vector<std::string> next;
    for (const auto& v : values) {
      if (v.size() != static_cast<std::size_t>(len - 1)) continue;
      for (char c : alphabet) next.push_back(v + c);
    }
    values.insert(values.end(), next.begin(), next.end());
  }
  int checked = 0;
  for (const auto& v : values) {
    if (v.find(';') != std::string::npos) continue;
    const std::string as_b = "v=1; a=rsa-sha256; bh=YWJj; b=" + v;
    const std::string as_bh = "v=1; a=rsa-sha256; bh=" + v + "; b=YWJj";
    // A value the tag-list does not take (white space only, NUL...) is a
    // problem either way; otherwise exactly when the reading says so.
    const std::string trimmed(postern::ascii::trim(v));
    const bool ok = !trimmed.empty() && reference(trimmed);
    if (dkim_signature_problem(as_b).empty() != ok) FAIL_CHECK("b=" << v);
    if (dkim_signature_problem(as_bh).empty() != ok) FAIL_CHECK("bh=" << v);
    CHECK(dkim_signature_problem(parse_dkim_tag_list(as_b)) == dkim_signature_problem(as_b));
    ++checked;
  }
  CHECK(checked > 2000000 / 1000);
  // b= prefixes compared with white space removed, as dkim_tag_value reads.
  auto tags = parse_dkim_tag_list("v=1; b = ab\r\n cd ef; bh=x; B=zz");
  REQUIRE(tags);
  for (std::string_view prefix : {"a", "ab", "abc", "abcd", "abcdef", ""}) {
    INFO(prefix);
    CHECK(dkim_tag_starts_with(*tags, "b", prefix));
  }
  for (std::string_view prefix : {"b", "abd", "abcdefg", "ab cd"}) {
    INFO(prefix);
    CHECK_FALSE(dkim_tag_starts_with(*tags, "b", prefix));
  }
  CHECK(dkim_tag_starts_with(*tags, "B", "zz"));
  CHECK_FALSE(dkim_tag_starts_with(*tags, "c", ""));  // absent
  CHECK_FALSE(dkim_tag_starts_with(*tags, "", ""));
}

TEST_CASE("render: a milter's SMFIR_INSHEADER position is honoured", "[message][milter]") {
  auto p = parse("A: 1\r\nB: 2\r\nC: 3\r\n\r\nbody\r\n");
  using K = postern::HeaderEdit::Kind;
  Changes c;
  c.headers = {{K::kInsert, "X-Two", "b", 2}, {K::kInsert, "X-Two-Later", "a", 2}, {K::kInsert, "X-Zero", "z", 0},
               {K::kInsert, "X-End", "e", 99}, {K::kPrepend, "X-Top", "t"}, {K::kAdd, "X-Added", "d"}};
  CHECK(render_header_block(*p.message, c, "Received: x\r\n") ==
        "Received: x\r\nX-Top: t\r\nX-Zero: z\r\nA: 1\r\nB: 2\r\nX-Two-Later: a\r\nX-Two: b\r\nC: 3\r\n"
        "X-End: e\r\nX-Added: d\r\n\r\n");
  // past the end by exactly one: after the last field too
  Changes d;
  d.headers = {{K::kInsert, "X-Three", "c", 3}};
  CHECK(render_header_block(*p.message, d, "") == "A: 1\r\nB: 2\r\nC: 3\r\nX-Three: c\r\n\r\n");
}
