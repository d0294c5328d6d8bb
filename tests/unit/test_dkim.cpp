// DKIM verification of messages signed by dkimpy, keys served by a real
// unbound on loopback.
#include <catch2/catch.hpp>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/use_future.hpp>

#include "../auth/dns_test_server.h"
#include "../auth/fixtures.h"
#include "filters/auth/auth_results.h"
#include "filters/dkim/dkim_filter.h"
#include "filters/dkim/dkim_stream.h"
#include "filters/dns/unbound_resolver.h"

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
  INFO(sigs[0].reason);
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
  CHECK(auth_note(auth_results(tx), "dkim.count").value_or("") == "2");
  CHECK(auth_note(auth_results(tx), "dkim.1.result").value_or("") == "pass");
  REQUIRE_FALSE(tx.symbols.empty());
  CHECK(tx.symbols[0].name == "DKIM_PASS");
  auto loaded = auth_results(tx);
  CHECK(loaded.dkim_checked);
  CHECK(loaded.dkim.size() == 2);
  pool->join();
}

namespace {

// Feeds `content` to a spool with a DkimStream tap in the chunks `cuts` gives
// (each the offset of a boundary), then finishes the stream as the filter does.
std::optional<std::vector<DkimSignature>> streamed(const std::string& content, const std::vector<std::size_t>& cuts,
                                                   std::chrono::milliseconds budget = std::chrono::milliseconds(10000)) {
  static auto verifier = std::make_shared<const DkimVerifier>(dkim_resolver(), DkimVerifyOptions{});
  int owner = 0;
  auto stream = std::make_shared<DkimStream>(verifier, &owner);
  Spool spool(1 << 24, "");
  spool.add_tap(stream);
  std::size_t at = 0;
  for (std::size_t cut : cuts) {
    if (cut <= at || cut >= content.size()) continue;
    spool.append(std::string_view(content).substr(at, cut - at));
    at = cut;
  }
  spool.append(std::string_view(content).substr(at));
  spool.finish();
  Message message(spool);
  return stream->finish(message, budget);
}

std::string describe(const std::vector<DkimSignature>& sigs) {
  std::string out;
  for (const auto& s : sigs) {
    out += std::string(dkim_result_name(s.result)) + " d=" + s.domain + " s=" + s.selector + " a=" + s.algorithm +
           " bits=" + std::to_string(s.key_bits) + " b=" + s.b + " l=" + std::to_string(s.body_length) +
           (s.body_truncated ? " truncated" : "") + (s.weak_key ? " weak" : "") + " reason=" + s.reason + "\n";
  }
  return out;
}

}  // namespace

TEST_CASE("dkim fed chunk by chunk as the content streams in gives the whole-message result", "[dkim][stream]") {
  const char* fixtures[] = {"rsa2048_relaxed", "rsa1024_simple", "ed25519", "folded_relaxed", "length",
                            "altered_body", "altered_header", "missing_key", "revoked_key", "malformed_key",
                            "two_signatures", "unsigned", "dmarc_relaxed_sub"};
  for (const char* name : fixtures) {
    const std::string content = test::AuthFixtures::get().message(name);
    const std::string whole = describe(verify(name));
    INFO(name << "\nwhole message:\n" << whole);
    const std::size_t header_end = content.find("\r\n\r\n");
    REQUIRE(header_end != std::string::npos);
    const std::size_t last_line = content.rfind("\r\n", content.size() - 3);
    std::vector<std::vector<std::size_t>> chunkings = {
        {},                                                  // one append
        {header_end + 1, header_end + 3},                    // inside the empty line's CRLFs
        {header_end + 2, header_end + 4},                    // right at the end of the header section
        {content.size() - 1},                                // inside the final CRLF
        {last_line + 1, last_line + 5, content.size() - 1},  // inside the body's last line and its CRLF
        {1, 2, 17, header_end - 1, header_end + 5},          // inside the first field and before the body
    };
    std::vector<std::size_t> every7;
    for (std::size_t i = 7; i < content.size(); i += 7) every7.push_back(i);
    chunkings.push_back(every7);
    std::vector<std::size_t> every1;
    for (std::size_t i = 1; i < content.size(); ++i) every1.push_back(i);
    chunkings.push_back(every1);
    for (const auto& cuts : chunkings) {
      auto got = streamed(content, cuts);
      REQUIRE(got);
      CHECK(describe(*got) == whole);
    }
  }
}

TEST_CASE("dkim stream gives way to the spool pass for content it cannot follow", "[dkim][stream]") {
  const std::string signed_msg = test::AuthFixtures::get().message("rsa2048_relaxed");
  // A line that is no header field before the empty line: Message ends the
  // header section there, so the stream's guess (the empty line) is wrong.
  const std::string odd = "Not a field line\r\n" + signed_msg;
  CHECK_FALSE(streamed(odd, {5, 40}));
  // Header fields only, no empty line and no body: followed.
  auto headers_only = streamed("From: a@example.com\r\nDKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=x; "
                               "h=from; bh=AAAA; b=AAAA\r\n", {3});
  REQUIRE(headers_only);
  CHECK(headers_only->size() == 1);
  // No header section at all (the content starts with the empty line), in
  // one append and with the CRLF split: followed, no signature.
  for (std::vector<std::size_t> cuts : {std::vector<std::size_t>{}, {1}, {1, 2}}) {
    auto bodyonly = streamed("\r\nJust a body\r\n", cuts);
    REQUIRE(bodyonly);
    CHECK(bodyonly->empty());
  }
  // A header section longer than Message parses.
  std::string huge = "X-Big: " + std::string(Message::kMaxHeaderBlock + 10, 'a') + "\r\n" + signed_msg;
  CHECK_FALSE(streamed(huge, {100000, 600000}));
  // What the filter then does gives the spool pass's answer.
  test::LoadedMessage lm(odd);
  static DkimVerifier verifier(dkim_resolver(), DkimVerifyOptions{});
  CHECK(verifier.verify(*lm.message, std::chrono::milliseconds(10000)).empty());  // no fields: no signature
}

TEST_CASE("dkim filter uses its stream tap and records the streamed results", "[dkim][stream]") {
  asio::io_context io;
  auto pool = std::make_shared<asio::thread_pool>(1);
  DkimFilter filter(DkimOptions{}, dkim_resolver(), pool);
  SessionFacts session;
  TransactionFacts tx;
  FilterContext data{Stage::kData, session, tx};
  auto tap = filter.content_tap(data);
  REQUIRE(tap);
  auto stream = std::dynamic_pointer_cast<DkimStream>(tap);
  REQUIRE(stream);
  CHECK(stream->owner() == &filter);
  const std::string content = test::AuthFixtures::get().message("two_signatures");
  Spool spool(1 << 20, "");
  spool.add_tap(tap);
  for (std::size_t i = 0; i < content.size(); i += 1000) spool.append(std::string_view(content).substr(i, 1000));
  spool.finish();
  Message message(spool);
  tx.message = &message;
  FilterContext ctx{Stage::kEom, session, tx};
  auto fut = asio::co_spawn(io, filter.run(ctx), asio::use_future);
  io.run();
  CHECK_FALSE(fut.get().decisive());
  CHECK(auth_note(auth_results(tx), "dkim.count").value_or("") == "2");
  CHECK(auth_note(auth_results(tx), "dkim.1.result").value_or("") == "pass");
  CHECK(auth_note(auth_results(tx), "dkim.2.result").value_or("") == "pass");
  pool->join();
}
