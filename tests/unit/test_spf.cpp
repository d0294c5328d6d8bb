// SPF against a real unbound on loopback: every mechanism and modifier,
// macros, include/redirect loops, the term and void-lookup limits across
// include:, time-outs, IPv4, IPv6 and IPv4-mapped clients.
#include <catch2/catch.hpp>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/use_future.hpp>

#include "../auth/dns_test_server.h"
#include "filters/auth/auth_results.h"
#include "filters/dns/unbound_resolver.h"
#include "filters/spf/spf_checker.h"
#include "filters/spf/spf_filter.h"

using namespace postern;

namespace {

std::vector<std::string> spf_records() {
  std::vector<std::string> r = {
      "ip4.example.com. 300 IN TXT \"v=spf1 ip4:192.0.2.0/24 -all\"",
      "ip6.example.com. 300 IN TXT \"v=spf1 ip6:2001:db8::/32 -all\"",
      "a.example.com. 300 IN TXT \"v=spf1 a -all\"",
      "a.example.com. 300 IN A 192.0.2.10",
      "a.example.com. 300 IN AAAA 2001:db8::10",
      "acidr.example.com. 300 IN TXT \"v=spf1 a:a.example.com/28 -all\"",
      "mx.example.com. 300 IN TXT \"v=spf1 mx -all\"",
      "mx.example.com. 300 IN MX 10 mail.example.com.",
      "mail.example.com. 300 IN A 192.0.2.20",
      "include.example.com. 300 IN TXT \"v=spf1 include:ip4.example.com -all\"",
      "redirect.example.com. 300 IN TXT \"v=spf1 redirect=ip4.example.com\"",
      "exists.example.com. 300 IN TXT \"v=spf1 exists:%{i}.allow.example.com -all\"",
      "192.0.2.30.allow.example.com. 300 IN A 127.0.0.2",
      "macro.example.com. 300 IN TXT \"v=spf1 exists:%{l}.%{o}.users.example.com ~all\"",
      "alice.macro.example.com.users.example.com. 300 IN A 127.0.0.2",
      "soft.example.com. 300 IN TXT \"v=spf1 ~all\"",
      "neutral.example.com. 300 IN TXT \"v=spf1 ?all\"",
      "nospf.example.com. 300 IN TXT \"google-site-verification=abc\"",
      "multi.example.com. 300 IN TXT \"v=spf1 -all\"",
      "multi.example.com. 300 IN TXT \"v=spf1 +all\"",
      "bad.example.com. 300 IN TXT \"v=spf1 foo:bar -all\"",
      "loop1.example.com. 300 IN TXT \"v=spf1 include:loop2.example.com -all\"",
      "loop2.example.com. 300 IN TXT \"v=spf1 include:loop1.example.com -all\"",
      "redirloop.example.com. 300 IN TXT \"v=spf1 redirect=redirloop2.example.com\"",
      "redirloop2.example.com. 300 IN TXT \"v=spf1 redirect=redirloop.example.com\"",
      "includenone.example.com. 300 IN TXT \"v=spf1 include:nospf.example.com -all\"",
      "expl.example.com. 300 IN TXT \"v=spf1 -all exp=explain.example.com\"",
      "explredir.example.com. 300 IN TXT \"v=spf1 redirect=expl.example.com\"",
      "explain.example.com. 300 IN TXT \"%{i} is not allowed to send for %{d}\"",
      // 5 terms here + 1 include + 5 there = 11 > 10, counted across include:
      "deep.example.com. 300 IN TXT \"v=spf1 a:a.example.com a:a.example.com a:a.example.com a:a.example.com "
      "a:a.example.com include:deep2.example.com -all\"",
      "deep2.example.com. 300 IN TXT \"v=spf1 a:a.example.com a:a.example.com a:a.example.com "
      "a:a.example.com a:a.example.com ip4:192.0.2.0/24 -all\"",
      // 10 terms exactly: allowed.
      "ten.example.com. 300 IN TXT \"v=spf1 a:a.example.com a:a.example.com a:a.example.com a:a.example.com "
      "include:ten2.example.com -all\"",
      "ten2.example.com. 300 IN TXT \"v=spf1 a:a.example.com a:a.example.com a:a.example.com "
      "a:a.example.com a:a.example.com ip4:192.0.2.0/24 -all\"",
      // Three void lookups before the match: permerror; two: fine.
      "void3.example.com. 300 IN TXT \"v=spf1 a:nx1.example.com a:nx2.example.com mx:nx3.example.com "
      "ip4:192.0.2.0/24 -all\"",
      "void2.example.com. 300 IN TXT \"v=spf1 a:nx1.example.com a:nx2.example.com ip4:192.0.2.0/24 -all\"",
      "longlabel.example.com. 300 IN TXT \"v=spf1 exists:%{l}.example.com ?all\"",
      "ptr.example.com. 300 IN TXT \"v=spf1 ptr -all\"",
      "40.3.2.1.in-addr.arpa. 300 IN PTR host.ptr.example.com.",
      "host.ptr.example.com. 300 IN A 1.2.3.40",
      "helo.example.org. 300 IN TXT \"v=spf1 ip4:198.51.100.7 -all\"",
      // The result cache: an explanation using the time (%{t} is allowed only
      // there, §7.3), and a record with TTL 0.
      "time.example.com. 300 IN TXT \"v=spf1 -all exp=texplain.example.com\"",
      "texplain.example.com. 300 IN TXT \"refused at %{t}\"",
      "zero.example.com. 0 IN TXT \"v=spf1 ip4:192.0.2.0/24 -all\"",
  };
  return r;
}

test::DnsTestServer& server() {
  static test::DnsTestServer s(spf_records(), {"example.com.", "example.org.", "3.2.1.in-addr.arpa."});
  return s;
}

std::shared_ptr<UnboundResolver> resolver_for(const std::string& address,
                                              std::chrono::milliseconds timeout = std::chrono::milliseconds(2000)) {
  DnsOptions opt;
  opt.servers = {address};
  opt.timeout = timeout;
  return UnboundResolver::create(opt, {});
}

SpfOutcome check(const std::string& ip, const std::string& sender, const std::string& helo = "mx.client.example") {
  static auto resolver = resolver_for(server().address());
  SpfChecker checker(resolver, SpfLimits{});
  return checker.check(SpfQuery{ip, helo, sender, "mx.postern.example"}, std::chrono::milliseconds(10000));
}

std::string result(const std::string& ip, const std::string& sender) {
  auto out = check(ip, sender);
  INFO(sender << " from " << ip << ": " << out.reason);
  return spf_result_name(out.result);
}

}  // namespace

TEST_CASE("spf mechanisms ip4 ip6 a mx include redirect exists all", "[spf]") {
  CHECK(result("192.0.2.1", "u@ip4.example.com") == "pass");
  CHECK(result("198.51.100.1", "u@ip4.example.com") == "fail");
  CHECK(result("2001:db8::5", "u@ip6.example.com") == "pass");
  CHECK(result("2001:db9::5", "u@ip6.example.com") == "fail");
  CHECK(result("192.0.2.10", "u@a.example.com") == "pass");
  CHECK(result("2001:db8::10", "u@a.example.com") == "pass");
  CHECK(result("192.0.2.11", "u@a.example.com") == "fail");
  CHECK(result("192.0.2.11", "u@acidr.example.com") == "pass");
  CHECK(result("192.0.2.20", "u@mx.example.com") == "pass");
  CHECK(result("192.0.2.21", "u@mx.example.com") == "fail");
  CHECK(result("192.0.2.1", "u@include.example.com") == "pass");
  CHECK(result("198.51.100.1", "u@include.example.com") == "fail");
  CHECK(result("192.0.2.1", "u@redirect.example.com") == "pass");
  CHECK(result("198.51.100.1", "u@redirect.example.com") == "fail");
  CHECK(result("192.0.2.30", "u@exists.example.com") == "pass");
  CHECK(result("192.0.2.31", "u@exists.example.com") == "fail");
  CHECK(result("1.2.3.40", "u@ptr.example.com") == "pass");
  CHECK(result("1.2.3.41", "u@ptr.example.com") == "fail");
  CHECK(result("192.0.2.1", "u@soft.example.com") == "softfail");
  CHECK(result("192.0.2.1", "u@neutral.example.com") == "neutral");
}

TEST_CASE("spf macros expand local part and domain", "[spf]") {
  CHECK(result("192.0.2.99", "alice@macro.example.com") == "pass");
  CHECK(result("192.0.2.99", "bob@macro.example.com") == "softfail");
  // A local part that makes a label over 63 octets is a non-existent name.
  CHECK(result("192.0.2.99", std::string(64, 'x') + "@longlabel.example.com") == "neutral");
}

TEST_CASE("spf none, permerror for broken and multiple records", "[spf]") {
  CHECK(result("192.0.2.1", "u@nospf.example.com") == "none");
  CHECK(result("192.0.2.1", "u@missing.example.com") == "none");
  CHECK(result("192.0.2.1", "u@multi.example.com") == "permerror");
  CHECK(result("192.0.2.1", "u@bad.example.com") == "permerror");
  CHECK(result("192.0.2.1", "u@includenone.example.com") == "permerror");
}

TEST_CASE("spf include and redirect loops end in permerror", "[spf]") {
  CHECK(result("192.0.2.1", "u@loop1.example.com") == "permerror");
  CHECK(result("192.0.2.1", "u@redirloop.example.com") == "permerror");
}

TEST_CASE("spf 10 DNS terms are counted across include:", "[spf]") {
  auto deep = check("192.0.2.1", "u@deep.example.com");
  CHECK(spf_result_name(deep.result) == std::string("permerror"));
  CHECK(deep.reason.find("DNS-querying terms") != std::string::npos);
  CHECK(result("192.0.2.1", "u@ten.example.com") == "pass");
}

TEST_CASE("spf void lookups are limited to two", "[spf]") {
  auto v3 = check("192.0.2.1", "u@void3.example.com");
  CHECK(spf_result_name(v3.result) == std::string("permerror"));
  CHECK(v3.reason.find("void") != std::string::npos);
  CHECK(result("192.0.2.1", "u@void2.example.com") == "pass");
}

TEST_CASE("spf exp= explanation is expanded on fail", "[spf]") {
  auto out = check("192.0.2.99", "u@expl.example.com");
  CHECK(out.result == SpfResult::kFail);
  CHECK(out.explanation == "192.0.2.99 is not allowed to send for expl.example.com");
  auto redirected = check("192.0.2.99", "u@explredir.example.com");
  CHECK(redirected.result == SpfResult::kFail);
  CHECK(redirected.explanation == "192.0.2.99 is not allowed to send for expl.example.com");
  CHECK(check("198.51.100.1", "u@ip4.example.com").explanation.empty());
}

TEST_CASE("spf IPv4-mapped IPv6 clients are checked as IPv4", "[spf]") {
  auto out = check("::ffff:192.0.2.1", "u@ip4.example.com");
  CHECK(out.result == SpfResult::kPass);
  CHECK(out.client_ip == "192.0.2.1");
  CHECK(result("::ffff:198.51.100.1", "u@ip4.example.com") == "fail");
}

TEST_CASE("spf null reverse-path checks the HELO identity", "[spf]") {
  auto pass = check("198.51.100.7", "", "helo.example.org");
  CHECK(pass.result == SpfResult::kPass);
  CHECK(pass.identity == "helo");
  CHECK(pass.sender == "postmaster@helo.example.org");
  CHECK(check("198.51.100.8", "", "helo.example.org").result == SpfResult::kFail);
  CHECK(check("198.51.100.8", "", "[198.51.100.8]").result == SpfResult::kNone);
}

TEST_CASE("spf temperror when the DNS server drops queries", "[spf]") {
  test::BlackHoleDns hole;
  auto resolver = resolver_for(hole.address(), std::chrono::milliseconds(200));
  SpfChecker checker(resolver, SpfLimits{});
  auto t0 = std::chrono::steady_clock::now();
  auto out = checker.check(SpfQuery{"192.0.2.1", "h.example", "u@ip4.example.com", "r"}, std::chrono::milliseconds(3000));
  CHECK(out.result == SpfResult::kTemperror);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(4));
}

namespace {
std::uint64_t lookups(const UnboundResolver& r) {
  auto s = r.stats();
  return s.queries + s.cache_hits;
}
}  // namespace

TEST_CASE("spf outcomes are kept by their exact inputs, without asking DNS again", "[spf]") {
  auto resolver = resolver_for(server().address());
  SpfChecker checker(resolver, SpfLimits{});
  const auto budget = std::chrono::milliseconds(10000);
  SpfQuery q{"192.0.2.30", "mx.client.example", "alice@exists.example.com", "mx.postern.example"};
  SpfOutcome first = checker.check(q, budget);
  REQUIRE(first.result == SpfResult::kPass);
  const auto before = lookups(*resolver);
  SpfOutcome again = checker.check(q, budget);
  CHECK(lookups(*resolver) == before);
  CHECK(checker.cache_hits() == 1);
  CHECK(again.result == first.result);
  CHECK(again.domain == first.domain);
  CHECK(again.sender == first.sender);
  CHECK(again.reason == first.reason);
  // The I/O thread's cache-only attempt is answered from it too.
  auto cached = checker.check_cached(q);
  REQUIRE(cached);
  CHECK(cached->result == SpfResult::kPass);
  CHECK(checker.cache_hits() == 2);
  // Any other input is a check of its own.
  for (SpfQuery other : {SpfQuery{"192.0.2.31", q.helo, q.sender, q.receiver},
                         SpfQuery{q.client_ip, "other.client.example", q.sender, q.receiver},
                         SpfQuery{q.client_ip, q.helo, "bob@exists.example.com", q.receiver}}) {
    checker.check(other, budget);
  }
  CHECK(checker.cache_hits() == 2);
  CHECK(checker.check(SpfQuery{"192.0.2.31", q.helo, q.sender, q.receiver}, budget).result == SpfResult::kFail);
  CHECK(checker.cache_hits() == 3);
}

TEST_CASE("spf outcomes using the time macro, a zero TTL or a failed lookup are not kept", "[spf]") {
  auto resolver = resolver_for(server().address());
  SpfChecker checker(resolver, SpfLimits{});
  const auto budget = std::chrono::milliseconds(10000);
  SpfQuery timed{"192.0.2.5", "mx.client.example", "u@time.example.com", "mx.postern.example"};
  SpfOutcome t = checker.check(timed, budget);
  CHECK(t.result == SpfResult::kFail);
  CHECK(t.explanation.rfind("refused at 1", 0) == 0);
  checker.check(timed, budget);
  SpfQuery zero{"192.0.2.5", "mx.client.example", "u@zero.example.com", "mx.postern.example"};
  CHECK(checker.check(zero, budget).result == SpfResult::kPass);
  CHECK(checker.check(zero, budget).result == SpfResult::kPass);
  CHECK(checker.cache_hits() == 0);

  test::BlackHoleDns hole;
  SpfChecker dropped(resolver_for(hole.address(), std::chrono::milliseconds(200)), SpfLimits{});
  SpfQuery q{"192.0.2.1", "h.example", "u@ip4.example.com", "r"};
  CHECK(dropped.check(q, std::chrono::milliseconds(3000)).result == SpfResult::kTemperror);
  CHECK(dropped.check(q, std::chrono::milliseconds(3000)).result == SpfResult::kTemperror);
  CHECK(dropped.cache_hits() == 0);

  SpfChecker uncached(resolver, SpfLimits{}, 0);
  SpfQuery p{"192.0.2.30", "mx.client.example", "alice@exists.example.com", "mx.postern.example"};
  uncached.check(p, budget);
  uncached.check(p, budget);
  CHECK(uncached.cache_hits() == 0);
}

TEST_CASE("spf filter runs on the pool at MAIL and records its result", "[spf]") {
  asio::io_context io;
  auto pool = std::make_shared<asio::thread_pool>(2);
  SpfOptions opt;
  opt.reject_fail = true;
  SpfFilter filter(opt, "mx.postern.example", resolver_for(server().address()), pool);
  SessionFacts session;
  session.client_ip = "192.0.2.1";
  session.helo = "client.example";
  TransactionFacts tx;
  tx.reverse_path = Mailbox{"u", "ip4.example.com"};
  FilterContext ctx{Stage::kMail, session, tx};
  auto fut = asio::co_spawn(io, filter.run(ctx), asio::use_future);
  io.run();
  Verdict v = fut.get();
  CHECK_FALSE(v.decisive());
  CHECK(auth_note(auth_results(tx), "spf.result").value_or("") == "pass");
  CHECK(auth_note(auth_results(tx), "spf.domain").value_or("") == "ip4.example.com");
  REQUIRE(tx.symbols.size() == 1);
  CHECK(tx.symbols[0].name == "SPF_PASS");
  REQUIRE(tx.changes.headers.size() == 1);
  CHECK(tx.changes.headers[0].name == "Received-SPF");
  CHECK(tx.changes.headers[0].value.rfind("pass (mx.postern.example: domain of u@ip4.example.com designates 192.0.2.1", 0) == 0);
  auto loaded = auth_results(tx);
  REQUIRE(loaded.spf);
  CHECK(loaded.spf->result == SpfResult::kPass);

  session.client_ip = "198.51.100.1";
  TransactionFacts tx2;
  tx2.reverse_path = Mailbox{"u", "ip4.example.com"};
  FilterContext ctx2{Stage::kMail, session, tx2};
  auto fut2 = asio::co_spawn(io, filter.run(ctx2), asio::use_future);
  io.restart();
  io.run();
  Verdict v2 = fut2.get();
  CHECK(v2.action == Verdict::Action::kReject);
  CHECK(v2.enhanced == "5.7.23");
  CHECK(tx2.symbols.at(0).name == "SPF_FAIL");
  pool->join();
}

TEST_CASE("spf checks the HELO identity at HELO and the null reverse-path takes its result", "[spf]") {
  asio::io_context io;
  auto pool = std::make_shared<asio::thread_pool>(1);
  SpfOptions opt;
  opt.reject_fail = true;
  SpfFilter filter(opt, "mx.postern.example", resolver_for(server().address()), pool);
  CHECK(filter.wants(Stage::kHelo));
  auto run = [&](FilterContext& ctx) {
    auto fut = asio::co_spawn(io, filter.run(ctx), asio::use_future);
    io.restart();
    io.run();
    return fut.get();
  };

  // RFC 7208 §2.3: "v=spf1 ip4:198.51.100.7 -all" at the HELO name.
  SessionFacts session;
  session.client_ip = "198.51.100.7";
  session.helo = "helo.example.org";
  TransactionFacts none;
  FilterContext at_helo{Stage::kHelo, session, none};
  CHECK_FALSE(run(at_helo).decisive());
  CHECK(session.notes["spf.helo.result"] == "pass");
  CHECK(session.notes["spf.helo.domain"] == "helo.example.org");
  CHECK(none.symbols.empty());  // no transaction yet: nothing scored

  // §2.4: MAIL FROM:<> is checked as postmaster@HELO: the HELO's result.
  TransactionFacts bounce;
  FilterContext at_mail{Stage::kMail, session, bounce};
  CHECK_FALSE(run(at_mail).decisive());
  CHECK(auth_note(auth_results(bounce), "spf.result").value_or("") == "pass");
  CHECK(auth_note(auth_results(bounce), "spf.identity").value_or("") == "helo");
  CHECK(auth_note(auth_results(bounce), "spf.sender").value_or("") == "postmaster@helo.example.org");
  REQUIRE(bounce.changes.headers.size() == 1);
  CHECK(bounce.changes.headers[0].value.find("identity=helo;") != std::string::npos);
  CHECK(bounce.changes.headers[0].value.find("helo=\"helo.example.org\"") != std::string::npos);
  auto ar = auth_results(bounce);
  REQUIRE(ar.spf);
  CHECK(ar.spf->identity == "helo");

  // A client outside the HELO's record: fail at HELO, and the bounce is
  // refused at MAIL with the SPF reply (reject_fail).
  SessionFacts other;
  other.client_ip = "198.51.100.8";
  other.helo = "helo.example.org";
  FilterContext at_helo2{Stage::kHelo, other, none};
  run(at_helo2);
  CHECK(other.notes["spf.helo.result"] == "fail");
  TransactionFacts bounce2;
  FilterContext at_mail2{Stage::kMail, other, bounce2};
  Verdict v = run(at_mail2);
  CHECK(v.action == Verdict::Action::kReject);
  CHECK(v.enhanced == "5.7.23");
  CHECK(bounce2.symbols.at(0).name == "SPF_FAIL");

  // A mail from a real sender still checks MAIL FROM, whatever the HELO said.
  TransactionFacts mail;
  mail.reverse_path = Mailbox{"u", "ip4.example.com"};
  FilterContext at_mail3{Stage::kMail, other, mail};
  CHECK(run(at_mail3).action == Verdict::Action::kReject);  // 198.51.100.8 is outside 192.0.2.0/24
  CHECK(auth_note(auth_results(mail), "spf.identity").value_or("") == "mailfrom");
  CHECK(auth_note(auth_results(mail), "spf.domain").value_or("") == "ip4.example.com");

  // A new HELO name the filter did not see is checked afresh, not taken
  // from the old name's result.
  session.helo = "nohelo.example.org";
  TransactionFacts bounce3;
  FilterContext at_mail4{Stage::kMail, session, bounce3};
  run(at_mail4);
  CHECK(auth_note(auth_results(bounce3), "spf.identity").value_or("") == "helo");
  CHECK(auth_note(auth_results(bounce3), "spf.domain").value_or("") == "nohelo.example.org");
  CHECK(auth_note(auth_results(bounce3), "spf.result").value_or("") == "none");

  // An address literal is no domain: none (§2.3), at HELO as at MAIL.
  SessionFacts literal;
  literal.client_ip = "198.51.100.7";
  literal.helo = "[198.51.100.7]";
  FilterContext at_helo3{Stage::kHelo, literal, none};
  run(at_helo3);
  CHECK(literal.notes["spf.helo.result"] == "none");

  SpfOptions off;
  off.check_helo = false;
  SpfFilter no_helo(off, "r", resolver_for(server().address()), pool);
  CHECK_FALSE(no_helo.wants(Stage::kHelo));
  pool->join();
}

namespace {

// The Received-SPF value as it was built before it became one string built
// piece by piece: the reference the new one must match octet for octet.
std::string reference_received_spf_value(const SpfOutcome& spf, const std::string& receiver) {
  auto quoted = [](const std::string& v) {
    std::string out = "\"";
    for (char c : v) {
      if (c == '"' || c == '\\') out.push_back('\\');
      if (static_cast<unsigned char>(c) >= 32 && c != 127) out.push_back(c);
    }
    return out + '"';
  };
  std::string v = receiver + ": ";
  switch (spf.result) {
    case SpfResult::kPass: v += "domain of " + spf.sender + " designates " + spf.client_ip + " as permitted sender"; break;
    case SpfResult::kFail: v += "domain of " + spf.sender + " does not designate " + spf.client_ip + " as permitted sender"; break;
    case SpfResult::kSoftfail: v += "domain of transitioning " + spf.sender + " does not designate " + spf.client_ip + " as permitted sender"; break;
    case SpfResult::kNeutral: v += spf.client_ip + " is neither permitted nor denied by domain of " + spf.sender; break;
    case SpfResult::kNone: v += "domain of " + spf.sender + " does not designate permitted sender hosts"; break;
    case SpfResult::kTemperror: v += "error in processing during lookup of " + spf.sender + ": DNS error"; break;
    case SpfResult::kPermerror: v += "permanent error in processing domain of " + spf.sender; break;
  }
  std::string comment = std::string(spf_result_name(spf.result)) + " (";
  for (char c : v) {
    if (static_cast<unsigned char>(c) < 32 || c == 127) c = ' ';
    if (c == '(' || c == ')' || c == '\\') comment.push_back('\\');
    comment.push_back(c);
  }
  v = std::move(comment);
  v += ") client-ip=" + spf.client_ip + ";";
  v += " envelope-from=" + quoted(spf.sender) + ";";
  if (!spf.helo.empty()) v += " helo=" + quoted(spf.helo) + ";";
  v += " receiver=" + receiver + ";";
  v += " identity=" + spf.identity + ";";
  return v;
}

}  // namespace

TEST_CASE("Received-SPF value: every result, hostile senders and HELO names, octet for octet as before", "[spf]") {
  const std::vector<std::string> senders = {
      "a@example.com", "", "x) client-ip=192.0.2.9; y=(\"@example.com", "\"q\\\"uote\"@example.com",
      std::string("ctl\x01\x1f\x7f\ttab@example.com"), "back\\slash(paren)@example.com", "postmaster@mx.example.net",
      std::string(300, 'l') + "@example.com", "utf8-\xc3\xa9@example.com"};
  const std::vector<std::string> helos = {"", "mx.example.com", "[192.0.2.1]", "evil) x=(y", std::string("c\x02r\\\"")};
  const std::vector<std::string> ips = {"192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1"};
  const std::vector<std::string> receivers = {"mx.postern.example", "r(x)\\y"};
  int checked = 0;
  for (SpfResult r : {SpfResult::kPass, SpfResult::kFail, SpfResult::kSoftfail, SpfResult::kNeutral, SpfResult::kNone,
                      SpfResult::kTemperror, SpfResult::kPermerror}) {
    for (const auto& sender : senders) {
      for (const auto& helo : helos) {
        for (const auto& ip : ips) {
          for (const auto& receiver : receivers) {
            SpfOutcome o;
            o.result = r;
            o.sender = sender;
            o.helo = helo;
            o.client_ip = ip;
            o.identity = helo.empty() ? "mailfrom" : "helo";
            const std::string got = received_spf_value(o, receiver);
            const std::string want = reference_received_spf_value(o, receiver);
            if (got != want) FAIL_CHECK("got  " << got << "\nwant " << want);
            ++checked;
          }
        }
      }
    }
  }
  CHECK(checked == 7 * 9 * 5 * 3 * 2);
  SpfOutcome pass;
  pass.result = SpfResult::kPass;
  pass.sender = "a@example.com";
  pass.client_ip = "192.0.2.1";
  pass.identity = "mailfrom";
  CHECK(received_spf_value(pass, "mx.postern.example") ==
        "pass (mx.postern.example: domain of a@example.com designates 192.0.2.1 as permitted sender) "
        "client-ip=192.0.2.1; envelope-from=\"a@example.com\"; receiver=mx.postern.example; identity=mailfrom;");
}
