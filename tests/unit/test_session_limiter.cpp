// Concurrent-session limits: networks by prefix, the three limits, places
// given back when a ticket ends.
#include <catch2/catch.hpp>

#include <memory>
#include <vector>

#include "proxy/session_limiter.h"

using postern::Config;
using postern::SessionLimiter;

TEST_CASE("network_of masks IPv4 and IPv6 addresses to their prefix") {
  CHECK(SessionLimiter::network_of("192.0.2.77", 24, 64) == "192.0.2.0/24");
  CHECK(SessionLimiter::network_of("192.0.2.77", 32, 64) == "192.0.2.77/32");
  CHECK(SessionLimiter::network_of("192.0.2.77", 20, 64) == "192.0.0.0/20");
  CHECK(SessionLimiter::network_of("2001:db8:1:2:3:4:5:6", 24, 64) == "2001:db8:1:2::/64");
  CHECK(SessionLimiter::network_of("2001:db8:1:2:3:4:5:6", 24, 48) == "2001:db8:1::/48");
  CHECK(SessionLimiter::network_of("2001:db8:1:2:3:4:5:6", 24, 60) == "2001:db8:1::/60");
  CHECK(SessionLimiter::network_of("not-an-ip", 24, 64) == "not-an-ip");
}

TEST_CASE("admit enforces per-address, per-network and total limits, and release gives places back") {
  SessionLimiter limiter;
  Config::Limits limits;
  limits.sessions_exempt.clear();
  limits.sessions = 5;
  limits.sessions_per_ip = 2;
  limits.sessions_per_network = 3;
  std::vector<std::unique_ptr<SessionLimiter::Ticket>> held;
  auto admit = [&](const char* address) {
    auto t = std::make_unique<SessionLimiter::Ticket>();
    auto r = limiter.admit(address, limits, *t);
    if (r == SessionLimiter::Refusal::kNone) held.push_back(std::move(t));
    return r;
  };
  CHECK(admit("192.0.2.1") == SessionLimiter::Refusal::kNone);
  CHECK(admit("192.0.2.1") == SessionLimiter::Refusal::kNone);
  CHECK(admit("192.0.2.1") == SessionLimiter::Refusal::kAddress);
  CHECK(admit("192.0.2.2") == SessionLimiter::Refusal::kNone);
  CHECK(admit("192.0.2.3") == SessionLimiter::Refusal::kNetwork);  // 3 in 192.0.2.0/24
  CHECK(admit("198.51.100.1") == SessionLimiter::Refusal::kNone);
  CHECK(admit("203.0.113.1") == SessionLimiter::Refusal::kNone);
  CHECK(limiter.open() == 5);
  CHECK(admit("203.0.113.9") == SessionLimiter::Refusal::kTotal);
  held.erase(held.begin());  // one of 192.0.2.1's sessions ends
  CHECK(limiter.open() == 4);
  CHECK(admit("192.0.2.1") == SessionLimiter::Refusal::kNone);
  held.clear();
  CHECK(limiter.open() == 0);
}

TEST_CASE("the per-network limit groups addresses exactly as network_of's text does") {
  // Pairs of addresses: the same network under the prefixes, or not; every
  // session's network key must group as network_of() compares.
  struct Case {
    const char* a;
    const char* b;
    std::size_t v4, v6;
  };
  const Case cases[] = {
      {"192.0.2.1", "192.0.2.254", 24, 64},    {"192.0.2.1", "192.0.3.1", 24, 64},
      {"192.0.2.1", "192.0.3.1", 23, 64},      {"192.0.2.1", "192.0.2.2", 32, 64},
      {"192.0.2.1", "192.0.2.1", 32, 64},      {"10.1.2.3", "10.200.0.1", 8, 64},
      {"10.1.2.3", "11.1.2.3", 8, 64},         {"10.1.2.3", "203.0.113.9", 0, 64},
      {"10.1.2.3", "10.1.2.130", 25, 64},      {"10.1.2.3", "10.1.2.100", 25, 64},
      {"2001:db8:1:2::1", "2001:db8:1:2:ffff::9", 24, 64}, {"2001:db8:1:2::1", "2001:db8:1:3::1", 24, 64},
      {"2001:db8:1:2::1", "2001:db8:1:3::1", 24, 48},      {"2001:db8::1", "2001:db8::1", 24, 128},
      {"2001:db8::1", "2001:db8::2", 24, 128},   {"::1", "::2", 24, 120},
      {"0.0.0.1", "::1", 0, 0},                  // families never share a network
      {"192.0.2.1", "::ffff:192.0.2.1", 24, 64},  // a mapped text stays IPv6 here
      {"not-an-ip", "not-an-ip", 24, 64},        {"not-an-ip", "not-an-ip2", 24, 64},
      {"not-an-ip", "192.0.2.1", 24, 64},
  };
  for (const Case& c : cases) {
    SessionLimiter limiter;
    Config::Limits limits;
    limits.sessions_exempt.clear();
    limits.sessions = 0;
    limits.sessions_per_ip = 0;
    limits.sessions_per_network = 1;
    limits.network_prefix_v4 = c.v4;
    limits.network_prefix_v6 = c.v6;
    const bool same = SessionLimiter::network_of(c.a, c.v4, c.v6) == SessionLimiter::network_of(c.b, c.v4, c.v6);
    SessionLimiter::Ticket first, second;
    INFO(c.a << " " << c.b << " /" << c.v4 << " /" << c.v6);
    REQUIRE(limiter.admit(c.a, limits, first) == SessionLimiter::Refusal::kNone);
    CHECK(limiter.admit(c.b, limits, second) ==
          (same ? SessionLimiter::Refusal::kNetwork : SessionLimiter::Refusal::kNone));
  }
}

TEST_CASE("exempt networks count in all only") {
  SessionLimiter limiter;
  Config::Limits limits;
  limits.sessions = 4;
  limits.sessions_per_ip = 1;
  limits.sessions_exempt = {"192.0.2.0/24", "2001:db8::/32", "198.51.100.7"};
  CHECK(SessionLimiter::in_networks("192.0.2.200", limits.sessions_exempt));
  CHECK(SessionLimiter::in_networks("2001:db8:ffff::1", limits.sessions_exempt));
  CHECK(SessionLimiter::in_networks("198.51.100.7", limits.sessions_exempt));
  CHECK_FALSE(SessionLimiter::in_networks("198.51.100.8", limits.sessions_exempt));
  CHECK_FALSE(SessionLimiter::in_networks("192.0.3.1", limits.sessions_exempt));
  CHECK_FALSE(SessionLimiter::in_networks("2001:db9::1", limits.sessions_exempt));
  std::vector<std::unique_ptr<SessionLimiter::Ticket>> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(std::make_unique<SessionLimiter::Ticket>());
    REQUIRE(limiter.admit("192.0.2.1", limits, *held.back()) == SessionLimiter::Refusal::kNone);
  }
  held.push_back(std::make_unique<SessionLimiter::Ticket>());
  CHECK(limiter.admit("203.0.113.1", limits, *held.back()) == SessionLimiter::Refusal::kNone);
  SessionLimiter::Ticket over;
  CHECK(limiter.admit("192.0.2.1", limits, over) == SessionLimiter::Refusal::kTotal);
  held.clear();
  CHECK(limiter.open() == 0);
}

TEST_CASE("zero means no limit") {
  SessionLimiter limiter;
  Config::Limits limits;
  limits.sessions = 0;
  limits.sessions_per_ip = 0;
  limits.sessions_per_network = 0;
  std::vector<std::unique_ptr<SessionLimiter::Ticket>> held;
  for (int i = 0; i < 200; ++i) {
    held.push_back(std::make_unique<SessionLimiter::Ticket>());
    REQUIRE(limiter.admit("192.0.2.1", limits, *held.back()) == SessionLimiter::Refusal::kNone);
  }
  CHECK(limiter.open() == 200);
}

TEST_CASE("refusals map to their replies") {
  CHECK(postern::refusal_reply(SessionLimiter::Refusal::kAddress).code == 421);
  CHECK(std::string(postern::refusal_reply(SessionLimiter::Refusal::kAddress).text).rfind("4.7.0", 0) == 0);
  CHECK(std::string(postern::refusal_reply(SessionLimiter::Refusal::kNetwork).text).rfind("4.7.0", 0) == 0);
  CHECK(std::string(postern::refusal_reply(SessionLimiter::Refusal::kTotal).text).rfind("4.3.2", 0) == 0);
}

TEST_CASE("a PROXY listener counts the proxy in all at accept and the client per address after the header") {
  SessionLimiter limiter;
  Config::Limits limits;
  limits.sessions_exempt.clear();
  limits.sessions = 3;
  limits.sessions_per_ip = 1;
  using Scope = SessionLimiter::Scope;
  using R = SessionLimiter::Refusal;
  {
    SessionLimiter::Ticket proxy1, client1, proxy2, client2, proxy3, proxy4;
    // the proxy's own address is not limited per address: three at accept
    CHECK(limiter.admit("10.0.0.2", limits, proxy1, Scope::kTotal) == R::kNone);
    CHECK(limiter.admit("10.0.0.2", limits, proxy2, Scope::kTotal) == R::kNone);
    CHECK(limiter.admit("10.0.0.2", limits, proxy3, Scope::kTotal) == R::kNone);
    CHECK(limiter.admit("10.0.0.2", limits, proxy4, Scope::kTotal) == R::kTotal);  // all full, before any header
    CHECK(limiter.open() == 3);
    // the real clients, per address, without counting in all a second time
    CHECK(limiter.admit("192.0.2.1", limits, client1, Scope::kClient) == R::kNone);
    CHECK(limiter.open() == 3);
    CHECK(limiter.admit("192.0.2.1", limits, client2, Scope::kClient) == R::kAddress);
    CHECK(limiter.admit("192.0.2.9", limits, client2, Scope::kClient) == R::kNone);
  }
  CHECK(limiter.open() == 0);  // every place given back, the total never below zero
  SessionLimiter::Ticket again;
  CHECK(limiter.admit("192.0.2.1", limits, again, Scope::kClient) == R::kNone);
  CHECK(limiter.open() == 0);
}

// in_networks compares octets; its answer is the one comparing network_of()
// texts gave (what it did before): every prefix length, both families, mixed
// families, and text that is no address.
TEST_CASE("in_networks answers as comparing network_of of both at the network's prefix") {
  const std::vector<std::string> addresses = {
      "192.0.2.77", "192.0.2.0", "192.0.3.77", "10.1.2.3", "0.0.0.0", "255.255.255.255", "127.0.0.1",
      "2001:db8::1", "2001:db8:ffff::7", "2001:db9::1", "::1", "::", "::ffff:192.0.2.77", "fe80::1",
      "unknown", "", "192.0.2", "2001:db8::/32"};
  const std::vector<std::string> bases = {"192.0.2.0", "192.0.2.77", "10.0.0.0", "0.0.0.0", "127.0.0.1",
                                          "2001:db8::", "2001:db8:ffff::7", "::", "::1", "unknown"};
  auto by_text = [](const std::string& address, const std::string& net) {
    const std::size_t slash = net.find('/');
    const std::string ip = net.substr(0, slash);
    const bool v4 = ip.find(':') == std::string::npos;
    const std::size_t prefix = slash == std::string::npos ? (v4 ? 32 : 128) : std::stoul(net.substr(slash + 1));
    return SessionLimiter::network_of(address, prefix, prefix) == SessionLimiter::network_of(ip, prefix, prefix);
  };
  std::size_t compared = 0, matched = 0;
  for (const std::string& base : bases) {
    std::vector<std::string> nets = {base};
    for (int prefix : {0, 1, 7, 8, 9, 15, 16, 20, 23, 24, 25, 31, 32, 33, 48, 63, 64, 65, 127, 128}) {
      nets.push_back(base + "/" + std::to_string(prefix));
    }
    for (const std::string& net : nets) {
      for (const std::string& address : addresses) {
        INFO(address << " in " << net);
        const bool expected = by_text(address, net);
        CHECK(SessionLimiter::in_networks(address, {net}) == expected);
        ++compared;
        matched += expected;
      }
    }
  }
  CHECK(compared > 3000);
  CHECK(matched > 100);  // the cases are not all misses
  CHECK_FALSE(SessionLimiter::in_networks("192.0.2.1", {}));
  CHECK(SessionLimiter::in_networks("192.0.2.1", {"10.0.0.0/8", "192.0.2.0/24"}));
}
