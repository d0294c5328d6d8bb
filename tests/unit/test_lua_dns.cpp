// postern.dns.* against postern's real resolver and a real unbound on a
// loopback port: answers, DNSBL codes, NXDOMAIN as "not listed", and a rule
// whose lookup outlives its deadline (a server that never answers) failing
// with its policy while the thread stays free.
#include <catch2/catch.hpp>

#include "../auth/dns_test_server.h"
#include "filters/dns/unbound_resolver.h"
#include "test_lua_util.h"

using postern::DnsOptions;
using postern::Stage;
using postern::UnboundResolver;
using postern::Verdict;
using postern::test::LuaHarness;

namespace {
const std::vector<std::string> kRecords = {
    "99.2.0.192.bl.example.net. 300 IN A 127.0.0.2",
    "99.2.0.192.bl.example.net. 300 IN A 127.0.0.4",
    "mail.example.com. 300 IN A 192.0.2.1",
    "example.com. 300 IN MX 10 mail.example.com.",
    "example.com. 300 IN TXT \"v=spf1 -all\"",
    "4.3.2.1.in-addr.arpa. 300 IN PTR mail.example.com.",
};
}  // namespace

TEST_CASE("lua dns: lookups through the real resolver", "[lua][dns]") {
  postern::test::DnsTestServer server(kRecords, {"bl.example.net.", "example.com.", "3.2.1.in-addr.arpa."});
  DnsOptions opt;
  opt.servers = {server.address()};
  opt.timeout = std::chrono::milliseconds(2000);
  auto resolver = UnboundResolver::create(opt, {});
  LuaHarness h;
  auto f = h.load(R"(
    postern.rule{name='DNS', stage='connect', fn=function(ctx)
      local out = {}
      local codes = postern.dns.dnsbl('bl.example.net', '192.0.2.99')
      table.sort(codes)
      out[#out + 1] = table.concat(codes, ',')
      out[#out + 1] = #postern.dns.dnsbl('bl.example.net', '192.0.2.98')
      local mx, st = postern.dns.mx('example.com') out[#out + 1] = mx and mx[1] or st
      local a, ast = postern.dns.a('mail.example.com') out[#out + 1] = a and a[1] or ast
      local t, tst = postern.dns.txt('example.com') out[#out + 1] = t and t[1] or tst
      local p, pst = postern.dns.ptr("1.2.3.4") out[#out + 1] = p and p[1] or pst
      local none, status = postern.dns.a('missing.example.com')
      out[#out + 1] = tostring(none) .. ':' .. status
      return postern.reject(table.concat(out, '|'))
    end}
  )", resolver.get());
  Verdict v = h.run(*f, Stage::kConnect);
  for (const auto& line : h.logs) UNSCOPED_INFO(line);
  CHECK(v.text == "127.0.0.2,127.0.0.4|0|10 mail.example.com|192.0.2.1|v=spf1 -all|mail.example.com|nil:nxdomain");
  resolver->shutdown();
}

TEST_CASE("lua dns: a lookup past the rule's deadline fails with its policy", "[lua][dns]") {
  postern::test::BlackHoleDns hole;
  DnsOptions opt;
  opt.servers = {hole.address()};
  opt.timeout = std::chrono::milliseconds(1500);
  opt.retries = 0;
  auto resolver = UnboundResolver::create(opt, {});
  LuaHarness h;
  h.options.timeout = std::chrono::milliseconds(200);
  auto f = h.load("postern.rule{name='SLOW', stage='connect', on_error='continue', fn=function(ctx)\n"
                  "  postern.dns.a('slow.example')\n"
                  "  return postern.reject('answered')\n"
                  "end}\n", resolver.get());
  auto start = std::chrono::steady_clock::now();
  Verdict v = h.run(*f, Stage::kConnect);
  auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(v.action == Verdict::Action::kContinue);
  CHECK(h.logged("time limit exceeded while waiting"));
  // Bounded by the resolver's own time-out even if it ignores cancellation.
  CHECK(elapsed < std::chrono::milliseconds(1900));
  INFO("elapsed ms: " << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count());
  CHECK(elapsed < std::chrono::milliseconds(1000));
  resolver->shutdown();
}
