// SpfChecker by RFC 7208 where libspf2 alone is wrong (issue 16), against a
// real unbound on loopback: record syntax errors are permerrors, valid
// records libspf2 refuses evaluate, CIDR /0, the MX 10-name limit, and the
// explanation (§6.2). The whole openspf suite runs in tests/e2e/test_spf_suite.py.
#include <catch2/catch.hpp>

#include "../auth/dns_test_server.h"
#include "filters/dns/unbound_resolver.h"
#include "filters/spf/spf_checker.h"

using namespace postern;

namespace {

std::vector<std::string> records() {
  std::vector<std::string> r = {
      "ip4.example.com. 300 IN TXT \"v=spf1 ip4:192.0.2.0/24 -all\"",
      // Syntax errors: libspf2 evaluates these (some to pass).
      "museum.example.com. 300 IN TXT \"v=spf1 a:museum +all\"",
      "cidr032.example.com. 300 IN TXT \"v=spf1 ip4:192.0.2.1/032 -all\"",
      "redirmech.example.com. 300 IN TXT \"v=spf1 redirect:ip4.example.com +all\"",
      "twoexp.example.com. 300 IN TXT \"v=spf1 exp=a.example.com exp=b.example.com -all\"",
      "badmacro.example.com. 300 IN TXT \"v=spf1 exists:%{x}.example.com +all\"",
      "inclbad.example.com. 300 IN TXT \"v=spf1 include:museum.example.com -all\"",
      // Valid records libspf2 refuses.
      "modname.example.com. 300 IN TXT \"v=spf1 moo.cow-far_out=man:dog/cat ip4:192.0.2.1 -all\"",
      "redirall.example.com. 300 IN TXT \"v=spf1 redirect=ip4.example.com ~all\"",
      // CIDR /0.
      "ip40.example.com. 300 IN TXT \"v=spf1 -ip4:203.0.113.1/0 +all\"",
      "ip60.example.com. 300 IN TXT \"v=spf1 ip6:2001:db8::/0 -all\"",
      "a0.example.com. 300 IN TXT \"v=spf1 a/0 -all\"",
      "a0.example.com. 300 IN A 203.0.113.9",
      "a0nx.example.com. 300 IN TXT \"v=spf1 a:nothing.example.com/0 -all\"",
      "mx0.example.com. 300 IN TXT \"v=spf1 mx//0 -all\"",
      "mx0.example.com. 300 IN MX 10 v6host.example.com.",
      "v6host.example.com. 300 IN AAAA 2001:db8::99",
      // More than 10 MX names.
      "mx11.example.com. 300 IN TXT \"v=spf1 mx ?all\"",
      // The explanation.
      "lp.example.com. 300 IN TXT \"v=spf1 -all exp=lpmsg.example.com\"",
      "lpmsg.example.com. 300 IN TXT \"%{l} of %{o}\"",
      "dot.example.com. 300 IN TXT \"v=spf1 -all exp=dotmsg.example.com.\"",
      "dotmsg.example.com. 300 IN TXT \"trailing dot\"",
      "utf8.example.com. 300 IN TXT \"v=spf1 -all exp=utf8msg.example.com\"",
      "utf8msg.example.com. 300 IN TXT \"caf\\195\\169\"",
      "p.example.com. 300 IN TXT \"v=spf1 -all exp=pmsg.example.com\"",
      "pmsg.example.com. 300 IN TXT \"connect from %{p}\"",
      "50.2.0.192.in-addr.arpa. 300 IN PTR other.example.org.",
      "50.2.0.192.in-addr.arpa. 300 IN PTR host.p.example.com.",
      "host.p.example.com. 300 IN A 192.0.2.50",
      "other.example.org. 300 IN A 192.0.2.50",
      "badexp.example.com. 300 IN TXT \"v=spf1 -all exp=badmsg.example.com\"",
      "badmsg.example.com. 300 IN TXT \"The %{x}-files\"",
      "long.example.com. 300 IN TXT \"v=spf1 -all exp=x.%{o}.%{o}.%{o}.%{o}.%{o}.%{o}.%{o}.%{o}.%{o}.%{o}.%{o}.%{o}."
      "%{o}.%{o}.%{o}.%{o}.%{o}\"",
  };
  for (int i = 0; i < 11; ++i) {
    r.push_back("mx11.example.com. 300 IN MX " + std::to_string(i) + " m" + std::to_string(i) + ".example.com.");
  }
  r.push_back("m10.example.com. 300 IN A 192.0.2.77");
  // The long explanation target cut to 253 octets from the left (§7.3):
  // "x." and six labels go, 249 octets stay.
  std::string cut = "example.com";
  for (int i = 0; i < 14; ++i) cut += ".long.example.com";
  r.push_back(cut + ". 300 IN TXT \"cut from the left\"");
  return r;
}

test::DnsTestServer& server() {
  static test::DnsTestServer s(records(), {"example.com.", "example.org.", "2.0.192.in-addr.arpa."});
  return s;
}

SpfOutcome check(const std::string& ip, const std::string& sender) {
  static auto resolver = [] {
    DnsOptions opt;
    opt.servers = {server().address()};
    opt.timeout = std::chrono::milliseconds(2000);
    return UnboundResolver::create(opt, {});
  }();
  SpfChecker checker(resolver, SpfLimits{}, 0);
  return checker.check(SpfQuery{ip, "mx.client.example", sender, "mx.postern.example"}, std::chrono::milliseconds(10000));
}

std::string result(const std::string& ip, const std::string& sender) {
  auto out = check(ip, sender);
  INFO(sender << " from " << ip << ": " << out.reason);
  return spf_result_name(out.result);
}

}  // namespace

TEST_CASE("spf rfc7208: records that do not parse are permerrors, whatever libspf2 makes of them", "[spf][spf_record]") {
  for (const char* domain : {"museum", "cidr032", "redirmech", "twoexp", "badmacro", "inclbad"}) {
    auto out = check("192.0.2.1", std::string("u@") + domain + ".example.com");
    INFO(domain << ": " << out.reason);
    CHECK(out.result == SpfResult::kPermerror);
    CHECK(out.reason.find("syntax") != std::string::npos);
  }
}

TEST_CASE("spf rfc7208: valid records libspf2 refuses are evaluated", "[spf][spf_record]") {
  CHECK(result("192.0.2.1", "u@modname.example.com") == "pass");
  CHECK(result("192.0.2.2", "u@modname.example.com") == "fail");
  CHECK(result("198.51.100.1", "u@redirall.example.com") == "softfail");  // redirect= ignored beside all
}

TEST_CASE("spf rfc7208: CIDR /0 matches every address of its family", "[spf][spf_record]") {
  CHECK(result("198.51.100.1", "u@ip40.example.com") == "fail");
  CHECK(result("2001:db8::1", "u@ip40.example.com") == "pass");
  CHECK(result("2001:db9::1", "u@ip60.example.com") == "pass");
  CHECK(result("192.0.2.1", "u@ip60.example.com") == "fail");
  CHECK(result("198.51.100.1", "u@a0.example.com") == "pass");   // any IPv4: a0 has an A record
  CHECK(result("2001:db8::1", "u@a0.example.com") == "fail");    // no AAAA
  CHECK(result("198.51.100.1", "u@a0nx.example.com") == "fail"); // no address, no match (§5.3)
  CHECK(result("2001:db9::7", "u@mx0.example.com") == "pass");   // an MX host with an AAAA
  CHECK(result("198.51.100.1", "u@mx0.example.com") == "fail");
}

TEST_CASE("spf rfc7208: more than 10 MX names is a permerror", "[spf][spf_record]") {
  auto out = check("192.0.2.77", "u@mx11.example.com");
  CHECK(out.result == SpfResult::kPermerror);
  CHECK(out.reason.find("MX") != std::string::npos);
}

TEST_CASE("spf rfc7208: the explanation", "[spf][spf_record]") {
  // §4.3: no local-part is postmaster.
  auto lp = check("198.51.100.1", "@lp.example.com");
  CHECK(lp.result == SpfResult::kFail);
  CHECK(lp.explanation == "postmaster of lp.example.com");
  CHECK(check("198.51.100.1", "alice@lp.example.com").explanation == "alice of lp.example.com");
  // A trailing dot on the target.
  CHECK(check("198.51.100.1", "u@dot.example.com").explanation == "trailing dot");
  // Not US-ASCII, or a bad macro: no explanation, still fail (§6.2).
  auto utf8 = check("198.51.100.1", "u@utf8.example.com");
  CHECK(utf8.result == SpfResult::kFail);
  CHECK(utf8.explanation.empty());
  auto bad = check("198.51.100.1", "u@badexp.example.com");
  CHECK(bad.result == SpfResult::kFail);
  CHECK(bad.explanation.empty());
  // %{p}: a validated name, the domain's subdomain first.
  CHECK(check("192.0.2.50", "u@p.example.com").explanation == "connect from host.p.example.com");
  CHECK(check("192.0.2.51", "u@p.example.com").explanation == "connect from unknown");
  // A target over 253 octets is cut from the left.
  auto longer = check("198.51.100.1", "u@long.example.com");
  CHECK(longer.result == SpfResult::kFail);
  CHECK(longer.explanation == "cut from the left");
}
