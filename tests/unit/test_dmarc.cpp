// DMARC alignment (strict, relaxed, public suffixes), p/sp/pct, enforcement,
// and Authentication-Results with forgery removal; messages signed by dkimpy,
// DNS from a real unbound on loopback.
#include <catch2/catch.hpp>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/use_future.hpp>

#include "../auth/dns_test_server.h"
#include "../auth/fixtures.h"
#include "filters/auth/auth_filters.h"
#include "filters/auth/auth_results.h"
#include "filters/auth/authentication_results.h"
#include "filters/dkim/dkim_filter.h"
#include "filters/dmarc/dmarc.h"
#include "filters/audit/offline_check.h"
#include "filters/dns/unbound_resolver.h"
#include "filters/filter_chain.h"

using namespace postern;

namespace {

std::vector<std::string> dmarc_records() {
  std::vector<std::string> r = test::AuthFixtures::get().key_records();
  for (const char* rec : {
           "_dmarc.example.com. 300 IN TXT \"v=DMARC1; p=reject; sp=quarantine; adkim=r; aspf=r\"",
           "_dmarc.example.net. 300 IN TXT \"v=DMARC1; p=reject; adkim=s; aspf=s\"",
           "_dmarc.quarantine.example.org. 300 IN TXT \"v=DMARC1; p=quarantine\"",
           "_dmarc.none.example.org. 300 IN TXT \"v=DMARC1; p=none\"",
           "_dmarc.pct0.example.org. 300 IN TXT \"v=DMARC1; p=reject; pct=0\"",
           "_dmarc.example.co.uk. 300 IN TXT \"v=DMARC1; p=reject\"",
           "example.com. 300 IN TXT \"v=spf1 ip4:192.0.2.0/24 -all\"",
           "bounce.example.com. 300 IN TXT \"v=spf1 ip4:192.0.2.0/24 -all\"",
       }) {
    r.push_back(rec);
  }
  return r;
}

test::DnsTestServer& server() {
  static test::DnsTestServer s(dmarc_records(), {"example.com.", "example.org.", "example.net.", "co.uk."});
  return s;
}

std::shared_ptr<Resolver> resolver() {
  DnsOptions opt;
  opt.servers = {server().address()};
  static auto r = make_resolver(opt, {});
  return r;
}

struct Run {
  Verdict verdict;
  TransactionFacts tx;
  std::string headers;  // the rendered header block
};

// Runs the whole authenticity chain (as the proxy would) over a fixture.
Run run_chain(const std::string& fixture, const std::string& ip, const Mailbox& mail_from,
              DmarcOptions::Enforce enforce = DmarcOptions::Enforce::kReport, const std::string& extra_headers = "") {
  AuthOptions opt;
  opt.spf.enabled = opt.dkim.enabled = opt.dmarc.enabled = opt.authentication_results.enabled = true;
  opt.hostname = "mx.postern.example";
  opt.dmarc.enforce = enforce;
  opt.dmarc.honor_pct = true;
  FilterChain chain(make_auth_filters(opt, resolver()), ScoreThresholds{});
  test::LoadedMessage m(extra_headers + test::AuthFixtures::get().message(fixture));
  asio::io_context io;
  Run r;
  SessionFacts session;
  session.client_ip = ip;
  session.helo = "client.example.net";
  r.tx.reverse_path = mail_from;
  FilterContext mail{Stage::kMail, session, r.tx};
  auto f1 = asio::co_spawn(io, chain.run(mail), asio::use_future);
  io.run();
  f1.get();
  r.tx.message = m.message.get();
  FilterContext eom{Stage::kEom, session, r.tx};
  auto f2 = asio::co_spawn(io, chain.run(eom), asio::use_future);
  io.restart();
  io.run();
  r.verdict = f2.get();
  r.headers = render_header_block(*m.message, r.tx.changes, "");
  r.tx.message = nullptr;
  return r;
}

std::string dmarc(const std::string& fixture, const std::string& ip = "198.51.100.1",
                  const Mailbox& mail_from = Mailbox{"bounce", "elsewhere.example.org"}) {
  auto r = run_chain(fixture, ip, mail_from);
  INFO(fixture << ": " << auth_note(auth_results(r.tx), "dmarc.reason").value_or(""));
  return auth_note(auth_results(r.tx), "dmarc.result").value_or("") + "/" + auth_note(auth_results(r.tx), "dmarc.policy").value_or("") + "/" + auth_note(auth_results(r.tx), "dmarc.disposition").value_or("");
}

}  // namespace

TEST_CASE("organizational domains come from the Public Suffix List", "[dmarc]") {
  CHECK(organizational_domain("mail.example.com") == "example.com");
  CHECK(organizational_domain("a.b.example.co.uk") == "example.co.uk");
  CHECK(organizational_domain("co.uk") == "co.uk");
  CHECK(domains_aligned("mail.example.com", "example.com", false));
  CHECK_FALSE(domains_aligned("mail.example.com", "example.com", true));
  CHECK(domains_aligned("Example.COM", "example.com", true));
  CHECK_FALSE(domains_aligned("co.uk", "example.co.uk", false));
  CHECK_FALSE(domains_aligned("example.co.uk", "other.co.uk", false));
}

TEST_CASE("dmarc records parse with libopendmarc", "[dmarc]") {
  auto r = parse_dmarc_record("example.com", "v=DMARC1; p=reject; sp=quarantine; adkim=s; pct=50");
  REQUIRE(r);
  CHECK(r->p == 'r');
  CHECK(r->sp == 'q');
  CHECK(r->adkim_strict);
  CHECK_FALSE(r->aspf_strict);
  CHECK(r->pct == 50);
  CHECK_FALSE(parse_dmarc_record("example.com", "v=spf1 -all"));
}

TEST_CASE("organizational domains and parsed records are remembered without changing an answer", "[dmarc]") {
  // The same inputs again (answered from the per-thread memo), other case,
  // and more distinct inputs than the memo holds (it starts over).
  for (int round = 0; round < 3; ++round) {
    CHECK(organizational_domain("mail.example.com") == "example.com");
    CHECK(organizational_domain("MAIL.Example.COM") == "example.com");
    CHECK(organizational_domain("a.b.example.co.uk") == "example.co.uk");
    CHECK(organizational_domain("co.uk") == "co.uk");
    CHECK(organizational_domain(std::string(300, 'a') + ".example.com") == "example.com");
    for (int i = 0; i < 1500; ++i) {
      const std::string d = "h" + std::to_string(i) + ".sub" + std::to_string(i % 7) + ".example.org";
      REQUIRE(organizational_domain(d) == "example.org");
    }
    auto reject = parse_dmarc_record("example.com", "v=DMARC1; p=reject; pct=50");
    REQUIRE(reject);
    CHECK(reject->p == 'r');
    CHECK(reject->pct == 50);
    // A changed record (key rotation's twin: a new policy) is a new answer.
    auto none = parse_dmarc_record("example.com", "v=DMARC1; p=none");
    REQUIRE(none);
    CHECK(none->p == 'n');
    CHECK(none->pct == 100);
    CHECK_FALSE(parse_dmarc_record("example.com", "v=DMARC1; p=bogus"));
    CHECK_FALSE(parse_dmarc_record("example.com", "v=spf1 -all"));
    for (int i = 0; i < 1100; ++i) {
      auto r = parse_dmarc_record("d" + std::to_string(i) + ".example", "v=DMARC1; p=quarantine; pct=" + std::to_string(i % 101));
      REQUIRE(r);
      REQUIRE(r->p == 'q');
      REQUIRE(r->pct == i % 101);
    }
    const std::string long_record = "v=DMARC1; p=reject; rua=mailto:" + std::string(3000, 'r') + "@example.com";
    auto long_one = parse_dmarc_record("example.com", long_record);
    CHECK(long_one.has_value() == parse_dmarc_record("example.com", long_record).has_value());
  }
}

TEST_CASE("dmarc outcome keeps the published record and names a pct= override", "[dmarc]") {
  auto r = parse_dmarc_record("example.com", "v=DMARC1; p=reject; sp=quarantine; adkim=s; pct=50");
  REQUIRE(r);
  AuthResults none;
  // sample 70 >= pct 50: outside the sample, reject becomes quarantine.
  auto out = evaluate_dmarc("example.com", r, "example.com", none, 70);
  CHECK(out.published.p == 'r');
  CHECK(out.published.sp == 'q');
  CHECK(out.published.adkim_strict);
  CHECK(out.published.pct == 50);
  CHECK(out.disposition == "quarantine");
  CHECK(out.override_type == "sampled_out");
  CHECK(out.override_comment == "pct=50");
  // Inside the sample: the policy applies, no override.
  auto in = evaluate_dmarc("example.com", r, "example.com", none, 10);
  CHECK(in.disposition == "reject");
  CHECK(in.override_type.empty());
}

TEST_CASE("dmarc passes on aligned DKIM, strict and relaxed", "[dmarc]") {
  CHECK(dmarc("dmarc_aligned_dkim") == "pass/reject/none");
  CHECK(dmarc("dmarc_relaxed_sub") == "pass/quarantine/none");  // From mail.example.com, d=example.com
  CHECK(dmarc("dmarc_sub_signer") == "pass/reject/none");       // From example.com, d=sub.example.com
  CHECK(dmarc("dmarc_psl_ok") == "pass/reject/none");
}

TEST_CASE("dmarc fails on a foreign or public-suffix signer", "[dmarc]") {
  CHECK(dmarc("dmarc_foreign_signer") == "fail/reject/reject");
  // d=co.uk must not align with example.co.uk (libopendmarc would say it does).
  CHECK(dmarc("dmarc_psl") == "fail/reject/reject");
}

TEST_CASE("dmarc SPF alignment, strict and relaxed", "[dmarc]") {
  // From example.com (aspf=r): MAIL FROM bounce.example.com passing SPF aligns.
  CHECK(dmarc("dmarc_unsigned", "192.0.2.1", Mailbox{"b", "bounce.example.com"}) == "pass/reject/none");
  CHECK(dmarc("dmarc_unsigned", "198.51.100.1", Mailbox{"b", "bounce.example.com"}) == "fail/reject/reject");
  // From example.net (aspf=s, adkim=s): d=example.org never aligns.
  CHECK(dmarc("dmarc_strict_sub") == "fail/reject/reject");
}

TEST_CASE("dmarc subdomain policy, p=quarantine, p=none, pct=0 and no record", "[dmarc]") {
  CHECK(dmarc("dmarc_unsigned_sub") == "fail/quarantine/quarantine");
  CHECK(dmarc("dmarc_unsigned_quarantine") == "fail/quarantine/quarantine");
  CHECK(dmarc("dmarc_unsigned_none") == "fail/none/none");
  CHECK(dmarc("dmarc_unsigned_pct0") == "fail/reject/quarantine");
  CHECK(dmarc("dmarc_unsigned_nodmarc") == "none//");
}

TEST_CASE("dmarc enforcement feeds the verdict by configuration", "[dmarc]") {
  auto report = run_chain("dmarc_foreign_signer", "198.51.100.1", Mailbox{"b", "x.example.org"});
  CHECK_FALSE(report.verdict.decisive());
  auto reject = run_chain("dmarc_foreign_signer", "198.51.100.1", Mailbox{"b", "x.example.org"},
                          DmarcOptions::Enforce::kReject);
  CHECK(reject.verdict.action == Verdict::Action::kReject);
  CHECK(reject.verdict.enhanced == "5.7.1");
  auto quarantine = run_chain("dmarc_foreign_signer", "198.51.100.1", Mailbox{"b", "x.example.org"},
                              DmarcOptions::Enforce::kQuarantine);
  CHECK(quarantine.verdict.action == Verdict::Action::kQuarantine);
  // The quarantined copy carries Authentication-Results.
  CHECK(quarantine.headers.find("Authentication-Results: mx.postern.example; ") != std::string::npos);
  auto sub = run_chain("dmarc_unsigned_sub", "198.51.100.1", Mailbox{"b", "x.example.org"},
                       DmarcOptions::Enforce::kReject);
  CHECK(sub.verdict.action == Verdict::Action::kQuarantine);
}

TEST_CASE("Authentication-Results carries spf, dkim and dmarc and replaces forgeries", "[dmarc][authres]") {
  const std::string forged =
      "Authentication-Results: MX.Postern.Example; dkim=pass header.d=example.com\r\n"
      "Authentication-Results: other.example; spf=pass smtp.mailfrom=a@example.com\r\n"
      "Authentication-Results: (comment) mx.postern.example 1; spf=pass\r\n";
  auto r = run_chain("dmarc_aligned_dkim", "192.0.2.1", Mailbox{"a", "example.com"},
                     DmarcOptions::Enforce::kReport, forged);
  // Unfolded: postern folds what it writes (RFC 5322 §2.2.3).
  std::string h = r.headers;
  for (std::size_t f; (f = h.find("\r\n ")) != std::string::npos;) h.erase(f, 2);
  INFO(h);
  auto pos = h.find("Authentication-Results: mx.postern.example; spf=pass smtp.mailfrom=a@example.com; dkim=pass");
  CHECK(pos != std::string::npos);
  CHECK(h.find("header.d=example.com header.s=r2048 header.a=rsa-sha256 header.b=") != std::string::npos);
  CHECK(h.find("dmarc=pass (p=reject dis=none) header.from=example.com") != std::string::npos);
  CHECK(h.find("MX.Postern.Example") == std::string::npos);
  CHECK(h.find("mx.postern.example 1;") == std::string::npos);
  CHECK(h.find("Authentication-Results: other.example; spf=pass") != std::string::npos);
  CHECK(h.find("Received-SPF: pass (mx.postern.example: domain of a@example.com designates 192.0.2.1") !=
        std::string::npos);
  CHECK(r.tx.notes["authres.removed"] == "2");
  std::size_t count = 0;
  for (std::size_t p = h.find("Authentication-Results:"); p != std::string::npos; p = h.find("Authentication-Results:", p + 1)) ++count;
  CHECK(count == 2);
}

TEST_CASE("authserv-id parsing and the value for failures", "[authres]") {
  CHECK(authserv_id_of("example.org; spf=pass") == std::optional<std::string>("example.org"));
  CHECK(authserv_id_of(" (c) \"Ex.Org\" 1; none") == std::optional<std::string>("ex.org"));
  CHECK_FALSE(authserv_id_of("; none"));
  AuthResults a;
  CHECK(authentication_results_value("mx", a) == "mx; none");
  a.dkim_checked = true;
  DkimSignature s;
  s.result = DkimResult::kFail;
  s.domain = "example.com";
  s.selector = "s1";
  s.reason = "body hash did not verify";
  a.dkim.push_back(s);
  CHECK(authentication_results_value("mx", a) ==
        "mx; dkim=fail reason=\"body hash did not verify\" header.d=example.com header.s=s1");
}

TEST_CASE("offline check prints every result as one JSON object", "[dmarc][check]") {
  OfflineCheck c;
  c.client_ip = "198.51.100.1";
  c.helo = "client.example.net";
  c.mail_from = "a@example.com";
  std::string msg = test::AuthFixtures::get().message("dmarc_foreign_signer");
  c.message = msg;
  c.auth.hostname = "mx.postern.example";
  c.auth.dmarc.enforce = DmarcOptions::Enforce::kReject;
  c.dns.servers = {server().address()};
  std::string json = run_offline_check(c);
  INFO(json);
  CHECK(json.rfind("{\"spf\":{\"result\":\"fail\",\"domain\":\"example.com\"", 0) == 0);
  CHECK(json.find("\"dkim\":[{\"domain\":\"example.org\",\"selector\":\"r2048\",\"algorithm\":\"rsa-sha256\",\"result\":\"pass\"") !=
        std::string::npos);
  CHECK(json.find("\"dmarc\":{\"result\":\"fail\",\"policy\":\"reject\",\"from_domain\":\"example.com\",\"org_domain\":\"example.com\"}") !=
        std::string::npos);
  CHECK(json.find("\"authentication_results\":\"mx.postern.example; spf=fail") != std::string::npos);
  CHECK(json.find("\"verdict\":{\"action\":\"reject\"") != std::string::npos);
}
