// The resolver against a real unbound on a loopback port, and a black hole.
#include <catch2/catch.hpp>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/detached.hpp>
#include <asio/use_future.hpp>

#include "../auth/dns_test_server.h"
#include "filters/dns/unbound_resolver.h"

using namespace postern;

namespace {

DnsAnswer run_query(asio::io_context& io, Resolver& r, const std::string& name, DnsType type) {
  auto fut = asio::co_spawn(io, r.query(name, type), asio::use_future);
  io.restart();
  io.run();
  return fut.get();
}

const std::vector<std::string> kRecords = {
    "a.example.com. 300 IN A 192.0.2.1",
    "a.example.com. 300 IN A 192.0.2.2",
    "a.example.com. 300 IN AAAA 2001:db8::1",
    "mx.example.com. 300 IN MX 10 mail.example.com.",
    "txt.example.com. 300 IN TXT \"v=spf1 \" \"ip4:192.0.2.1 -all\"",
    "alias.example.com. 300 IN CNAME a.example.com.",
    "4.3.2.1.in-addr.arpa. 300 IN PTR a.example.com.",
};

}  // namespace

TEST_CASE("resolver answers A, AAAA, MX, TXT, PTR from a real server", "[dns]") {
  test::DnsTestServer server(kRecords, {"example.com.", "3.2.1.in-addr.arpa."});
  asio::io_context io;
  DnsOptions opt;
  opt.servers = {server.address()};
  opt.timeout = std::chrono::milliseconds(2000);
  auto r = UnboundResolver::create(opt, {});

  auto a = run_query(io, *r, "a.example.com", DnsType::kA);
  REQUIRE(a.status == DnsStatus::kOk);
  std::sort(a.records.begin(), a.records.end());
  CHECK(a.records == std::vector<std::string>{"192.0.2.1", "192.0.2.2"});
  CHECK(a.ttl > 0);
  CHECK_FALSE(a.from_cache);

  auto again = run_query(io, *r, "A.Example.COM.", DnsType::kA);
  CHECK(again.status == DnsStatus::kOk);
  CHECK(again.from_cache);

  auto aaaa = run_query(io, *r, "a.example.com", DnsType::kAaaa);
  REQUIRE(aaaa.status == DnsStatus::kOk);
  CHECK(aaaa.records == std::vector<std::string>{"2001:db8::1"});

  auto mx = run_query(io, *r, "mx.example.com", DnsType::kMx);
  REQUIRE(mx.status == DnsStatus::kOk);
  CHECK(mx.records == std::vector<std::string>{"10 mail.example.com"});

  auto txt = run_query(io, *r, "txt.example.com", DnsType::kTxt);
  REQUIRE(txt.status == DnsStatus::kOk);
  CHECK(txt.records == std::vector<std::string>{"v=spf1 ip4:192.0.2.1 -all"});

  auto ptr = run_query(io, *r, "4.3.2.1.in-addr.arpa", DnsType::kPtr);
  REQUIRE(ptr.status == DnsStatus::kOk);
  CHECK(ptr.records == std::vector<std::string>{"a.example.com"});

  auto cname = run_query(io, *r, "alias.example.com", DnsType::kA);
  CHECK(cname.status == DnsStatus::kOk);
  CHECK(cname.records.size() == 2);
}

TEST_CASE("resolver distinguishes NXDOMAIN and NODATA and caches them", "[dns]") {
  test::DnsTestServer server(kRecords, {"example.com."});
  asio::io_context io;
  DnsOptions opt;
  opt.servers = {server.address()};
  auto r = UnboundResolver::create(opt, {});
  auto nx = run_query(io, *r, "missing.example.com", DnsType::kA);
  CHECK(nx.status == DnsStatus::kNxDomain);
  auto nodata = run_query(io, *r, "mx.example.com", DnsType::kA);
  CHECK(nodata.status == DnsStatus::kNoData);
  auto nx2 = run_query(io, *r, "missing.example.com", DnsType::kA);
  CHECK(nx2.status == DnsStatus::kNxDomain);
  CHECK(nx2.from_cache);
  auto nodata2 = r->query_blocking("mx.example.com", DnsType::kA);
  CHECK(nodata2.status == DnsStatus::kNoData);
  CHECK(nodata2.from_cache);
  // Names that cannot exist are not sent.
  auto before = r->stats().queries;
  auto longlabel = run_query(io, *r, std::string(64, 'x') + ".example.com", DnsType::kTxt);
  CHECK(longlabel.status == DnsStatus::kNxDomain);
  CHECK(r->stats().queries == before);
}

TEST_CASE("resolver times out against a server that drops queries", "[dns]") {
  test::BlackHoleDns hole;
  asio::io_context io;
  DnsOptions opt;
  opt.servers = {hole.address()};
  opt.timeout = std::chrono::milliseconds(300);
  opt.retries = 1;
  auto r = UnboundResolver::create(opt, {});
  auto t0 = std::chrono::steady_clock::now();
  auto a = run_query(io, *r, "a.example.com", DnsType::kA);
  auto elapsed = std::chrono::steady_clock::now() - t0;
  CHECK((a.status == DnsStatus::kTimeout || a.status == DnsStatus::kServFail));
  CHECK(elapsed < std::chrono::seconds(3));
  auto b = r->query_blocking("b.example.com", DnsType::kTxt);
  CHECK((b.status == DnsStatus::kTimeout || b.status == DnsStatus::kServFail));
  CHECK(r->stats().timeouts >= 1);
}

TEST_CASE("resolver completes on the awaiting executor with many concurrent queries", "[dns]") {
  test::DnsTestServer server(kRecords, {"example.com."});
  asio::io_context io;
  DnsOptions opt;
  opt.servers = {server.address()};
  auto r = UnboundResolver::create(opt, {});
  int ok = 0;
  for (int i = 0; i < 50; ++i) {
    // Coroutine parameters, not lambda captures: the frame outlives the lambda.
    auto task = [](asio::io_context& io, std::shared_ptr<Resolver> r, int i, int& ok) -> asio::awaitable<void> {
      // A named argument: g++ 12 double-destroys some temporaries in a co_await expression.
      std::string name = i % 2 ? "a.example.com" : "n" + std::to_string(i) + ".example.com";
      auto a = co_await r->query(std::move(name), DnsType::kA);
      CHECK(io.get_executor().running_in_this_thread());
      if (a.status == (i % 2 ? DnsStatus::kOk : DnsStatus::kNxDomain)) ++ok;
    };
    asio::co_spawn(io, task(io, r, i, ok), asio::detached);
  }
  io.run();
  CHECK(ok == 50);
  CountingResolver counting(r, 2);
  auto c1 = run_query(io, counting, "a.example.com", DnsType::kA);
  auto c2 = run_query(io, counting, "a.example.com", DnsType::kA);
  auto c3 = run_query(io, counting, "a.example.com", DnsType::kA);
  CHECK(c1.status == DnsStatus::kOk);
  CHECK(c2.status == DnsStatus::kOk);
  CHECK(c3.status == DnsStatus::kServFail);
  CHECK(counting.count() == 3);
}

TEST_CASE("resolver asks its forwarders for private and documentation reverse zones", "[dns]") {
  // libunbound answers these itself (NXDOMAIN, RFC 6303) unless told not to;
  // behind configured servers they are the servers' to answer.
  const std::vector<std::string> records = {
      "1.2.0.192.in-addr.arpa. 300 IN PTR doc4.example.com.",
      "7.100.51.198.in-addr.arpa. 300 IN PTR doc4b.example.com.",
      "9.113.0.203.in-addr.arpa. 300 IN PTR doc4c.example.com.",
      "40.218.168.192.in-addr.arpa. 300 IN PTR lan.example.com.",
      "1.0.0.10.in-addr.arpa. 300 IN PTR ten.example.com.",
      "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 300 IN PTR doc6.example.com.",
  };
  test::DnsTestServer server(records, {"2.0.192.in-addr.arpa.", "100.51.198.in-addr.arpa.", "113.0.203.in-addr.arpa.",
                                       "168.192.in-addr.arpa.", "10.in-addr.arpa.", "8.b.d.0.1.0.0.2.ip6.arpa."});
  asio::io_context io;
  DnsOptions opt;
  opt.servers = {server.address()};
  opt.timeout = std::chrono::milliseconds(2000);
  auto r = UnboundResolver::create(opt, {});
  const std::pair<const char*, const char*> cases[] = {
      {"1.2.0.192.in-addr.arpa", "doc4.example.com"},
      {"7.100.51.198.in-addr.arpa", "doc4b.example.com"},
      {"9.113.0.203.in-addr.arpa", "doc4c.example.com"},
      {"40.218.168.192.in-addr.arpa", "lan.example.com"},
      {"1.0.0.10.in-addr.arpa", "ten.example.com"},
      {"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "doc6.example.com"},
  };
  for (auto [name, host] : cases) {
    INFO(name);
    auto ptr = run_query(io, *r, name, DnsType::kPtr);
    REQUIRE(ptr.status == DnsStatus::kOk);
    CHECK(ptr.records == std::vector<std::string>{host});
  }
  r->shutdown();
}
