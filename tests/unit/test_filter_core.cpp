// The core's generic pieces (issue 22): TransactionFacts::results keeps the
// records of specific checks by type, and the Resolver interface's default
// blocking query, which SPF and DKIM use on their pool with any resolver.
#include <catch2/catch.hpp>

#include <string>
#include <thread>

#include "filters/auth/auth_results.h"
#include "filters/dns/resolver.h"
#include "filters/filter.h"
#include "filters/typed_slots.h"

using namespace postern;

namespace {

struct OtherRecord {
  int hits = 0;
};

// Answers from a table at once; throws for "boom." to show an exception is a SERVFAIL.
class TableResolver final : public Resolver {
 public:
  asio::awaitable<DnsAnswer> query(std::string name, DnsType type) override {
    ++queries;
    if (name == "boom.") throw std::runtime_error("boom");
    if (name == "example.com" && type == DnsType::kTxt) co_return DnsAnswer{DnsStatus::kOk, {"v=spf1 -all"}, 300, false};
    co_return DnsAnswer{DnsStatus::kNxDomain, {}, 0, false};
  }
  int queries = 0;
};

}  // namespace

TEST_CASE("TypedSlots: one value per type, made on first use, copied by value", "[core]") {
  TypedSlots slots;
  CHECK(slots.find<OtherRecord>() == nullptr);
  slots.get<OtherRecord>().hits = 3;
  REQUIRE(slots.find<OtherRecord>() != nullptr);
  CHECK(slots.find<OtherRecord>()->hits == 3);
  CHECK(&slots.get<OtherRecord>() == slots.find<OtherRecord>());  // the same value, not a new one
  CHECK(slots.find<int>() == nullptr);                            // another type is another slot
  TypedSlots copy = slots;
  copy.get<OtherRecord>().hits = 9;
  CHECK(slots.find<OtherRecord>()->hits == 3);  // a copy owns its values
}

TEST_CASE("auth_results reads an empty record before any check and the stored one after", "[core]") {
  TransactionFacts t;
  const TransactionFacts& read_only = t;
  CHECK_FALSE(auth_results(read_only).spf);
  CHECK(auth_results(read_only).skipped.empty());
  CHECK(t.results.find<AuthResults>() == nullptr);  // reading made nothing
  SpfOutcome spf;
  spf.result = SpfResult::kPass;
  store(t, spf);
  REQUIRE(auth_results(read_only).spf);
  CHECK(auth_results(read_only).spf->result == SpfResult::kPass);
  store(t, std::vector<DkimSignature>{DkimSignature{}});
  CHECK(auth_results(t).dkim_checked);
  CHECK(auth_results(t).spf);  // DKIM's record did not replace SPF's
  t = TransactionFacts{};     // a new transaction forgets them
  CHECK_FALSE(auth_results(read_only).spf);
}

TEST_CASE("Resolver::query_blocking runs query() to its answer on the calling thread", "[core][dns]") {
  TableResolver r;
  DnsAnswer a = r.query_blocking("example.com", DnsType::kTxt);
  CHECK(a.status == DnsStatus::kOk);
  REQUIRE(a.records.size() == 1);
  CHECK(a.records[0] == "v=spf1 -all");
  CHECK(r.query_blocking("example.com", DnsType::kA).status == DnsStatus::kNxDomain);
  CHECK(r.query_blocking("boom.", DnsType::kA).status == DnsStatus::kServFail);
  // From another thread too (the SPF/DKIM worker pool).
  DnsAnswer from_pool;
  std::thread worker([&] { from_pool = r.query_blocking("example.com", DnsType::kTxt); });
  worker.join();
  CHECK(from_pool.status == DnsStatus::kOk);
  CHECK(r.queries == 4);
}

TEST_CASE("dns_name_valid: label and name lengths (RFC 1035 2.3.4)", "[dns]") {
  CHECK(dns_name_valid("example.com"));
  CHECK(dns_name_valid("example.com."));
  CHECK(dns_name_valid(std::string(63, 'a') + ".com"));
  CHECK_FALSE(dns_name_valid(std::string(64, 'a') + ".com"));
  CHECK_FALSE(dns_name_valid(""));
  CHECK_FALSE(dns_name_valid("."));
  CHECK_FALSE(dns_name_valid("a..b"));
  std::string long_name;
  while (long_name.size() < 260) long_name += "abcdefghi.";
  CHECK_FALSE(dns_name_valid(long_name + "com"));
}

TEST_CASE("Changes::recipients_after names each forward-path once", "[core]") {
  auto box = [](const char* local, const char* domain) {
    Mailbox m;
    m.local_part = local;
    m.domain = domain;
    return m;
  };
  auto strs = [](const std::vector<Mailbox>& list) {
    std::vector<std::string> out;
    for (const Mailbox& m : list) out.push_back(m.str());
    return out;
  };
  const std::vector<Mailbox> client{box("a", "example.com"), box("b", "example.com")};
  Changes c;
  c.add_recipients = {box("a", "example.com"), box("c", "example.com"), box("c", "example.com")};
  c.remove_recipients = {box("b", "example.com")};
  CHECK(strs(c.recipients_after(client)) == std::vector<std::string>{"a@example.com", "c@example.com"});
  c.redirect = std::vector<Mailbox>{box("d", "example.net"), box("d", "example.net"), box("b", "example.com")};
  // A redirect replaces everything; a removal does not apply to it.
  CHECK(strs(c.recipients_after(client)) == std::vector<std::string>{"d@example.net", "b@example.com"});
}
