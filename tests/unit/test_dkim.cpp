// DKIM verification of messages signed by dkimpy, keys served by a real
// unbound on loopback.
#include <catch2/catch.hpp>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/use_future.hpp>

#include "../auth/dns_test_server.h"
#include "../auth/fixtures.h"
#include "filters/auth/dkim_filter.h"

using namespace postern;

namespace {

std::shared_ptr<UnboundResolver> dkim_resolver() {
  static test::DnsTestServer server(test::AuthFixtures::get().key_records(),
                                    {"example.com.", "example.org.", "co.uk."});
  DnsOptions opt;
  opt.servers = {server.address()};
  opt.timeout = std::chrono::milliseconds(2000);
  static auto r = UnboundResolver::create(opt, {});
  return r;
}

std::vector<DkimSignature> verify(const std::string& fixture) {
  static DkimVerifier verifier(dkim_resolver(), DkimVerifyOptions{});
  test::LoadedMessage m(test::AuthFixtures::get().message(fixture));
  return verifier.verify(*m.message, std::chrono::milliseconds(10000));
}

std::string one(const std::string& fixture) {
  auto sigs = verify(fixture);
  if (sigs.size() != 1) return "signatures: " + std::to_string(sigs.size());
  INFO(fixture << ": " << sigs[0].reason);
  return dkim_result_name(sigs[0].result);
}

}  // namespace

TEST_CASE("dkim passes RSA-SHA256 relaxed and simple, 1024 and 2048 bits, and Ed25519", "[dkim]") {
  auto rsa = verify("rsa2048_relaxed");
  REQUIRE(rsa.size() == 1);
  CHECK(rsa[0].result == DkimResult::kPass);
  CHECK(rsa[0].domain == "example.com");
  CHECK(rsa[0].selector == "r2048");
  CHECK(rsa[0].algorithm == "rsa-sha256");
  CHECK(rsa[0].key_bits == 2048);
  CHECK(rsa[0].b.size() == 12);
  CHECK_FALSE(rsa[0].weak_key);
  CHECK(rsa[0].body_length == -1);

  auto simple = verify("rsa1024_simple");
  REQUIRE(simple.size() == 1);
  CHECK(simple[0].result == DkimResult::kPass);
  CHECK(simple[0].key_bits == 1024);

  auto ed = verify("ed25519");
  REQUIRE(ed.size() == 1);
  CHECK(ed[0].result == DkimResult::kPass);
  CHECK(ed[0].algorithm == "ed25519-sha256");
  CHECK(ed[0].selector == "ed");

  CHECK(one("folded_relaxed") == "pass");
}

TEST_CASE("dkim reports every signature", "[dkim]") {
  auto two = verify("two_signatures");
  REQUIRE(two.size() == 2);
  CHECK(two[0].result == DkimResult::kPass);
  CHECK(two[1].result == DkimResult::kPass);
  CHECK(two[0].algorithm != two[1].algorithm);
  CHECK(verify("unsigned").empty());
}

TEST_CASE("dkim l= passes and reports the unsigned rest of the body", "[dkim]") {
  auto l = verify("length");
  REQUIRE(l.size() == 1);
  CHECK(l[0].result == DkimResult::kPass);
  CHECK(l[0].body_length > 0);
  CHECK(l[0].body_truncated);
  CHECK(l[0].reason.find("l= covers") != std::string::npos);
}

TEST_CASE("dkim altered body or header fails", "[dkim]") {
  CHECK(one("altered_body") == "fail");
  CHECK(one("altered_header") == "fail");
}

TEST_CASE("dkim missing, revoked and malformed keys are permerror", "[dkim]") {
  CHECK(one("missing_key") == "permerror");
  CHECK(one("revoked_key") == "permerror");
  CHECK(one("malformed_key") == "permerror");
}

TEST_CASE("dkim weak keys are reported", "[dkim]") {
  auto weak = verify("weak_key");
  REQUIRE(weak.size() == 1);
  CHECK(weak[0].weak_key);
  CHECK(weak[0].key_bits == 512);
  CHECK(weak[0].result == DkimResult::kPolicy);
}

TEST_CASE("dkim temperror when the key server drops queries", "[dkim]") {
  test::BlackHoleDns hole;
  DnsOptions opt;
  opt.servers = {hole.address()};
  opt.timeout = std::chrono::milliseconds(200);
  DkimVerifier verifier(UnboundResolver::create(opt, {}), DkimVerifyOptions{});
  test::LoadedMessage m(test::AuthFixtures::get().message("rsa2048_relaxed"));
  auto sigs = verifier.verify(*m.message, std::chrono::milliseconds(2000));
  REQUIRE(sigs.size() == 1);
  CHECK(sigs[0].result == DkimResult::kTemperror);
}

TEST_CASE("dkim filter runs at eom on the pool and records results", "[dkim]") {
  asio::io_context io;
  auto pool = std::make_shared<asio::thread_pool>(2);
  DkimFilter filter(DkimOptions{}, dkim_resolver(), pool);
  test::LoadedMessage m(test::AuthFixtures::get().message("two_signatures"));
  SessionFacts session;
  TransactionFacts tx;
  tx.message = m.message.get();
  FilterContext ctx{Stage::kEom, session, tx};
  auto fut = asio::co_spawn(io, filter.run(ctx), asio::use_future);
  io.run();
  CHECK_FALSE(fut.get().decisive());
  CHECK(tx.notes["dkim.count"] == "2");
  CHECK(tx.notes["dkim.1.result"] == "pass");
  REQUIRE_FALSE(tx.symbols.empty());
  CHECK(tx.symbols[0].name == "DKIM_PASS");
  auto loaded = load_auth_results(tx);
  CHECK(loaded.dkim_checked);
  CHECK(loaded.dkim.size() == 2);
  pool->join();
}
