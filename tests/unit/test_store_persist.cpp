// The store's backends and their failure policy: the LMDB-persisted memory
// store (write, restart, read, expiry), postern.store.add, and what a rule
// gets when the store cannot answer ([store] on_error).
#include <catch2/catch.hpp>

#include <chrono>
#include <thread>

#include "filters/store/persisted_store.h"
#include "test_lua_util.h"

using postern::KeyValueStore;
using postern::LmdbFile;
using postern::MemoryStore;
using postern::PersistedStore;
using postern::Stage;
using postern::StoreResult;
using postern::test::LuaHarness;
using postern::test::TempDir;

namespace {

constexpr std::size_t kMapSize = 16u << 20;
const std::chrono::milliseconds kInterval{50};

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string rule(const char* stage, const std::string& body) {
  return std::string("postern.rule{name='T', stage='") + stage + "', on_error='continue', fn=function(ctx)\n" + body +
         "\nend}\n";
}

// A backend that never answers: what RedisStore returns while Redis is down.
class UnreachableStore final : public KeyValueStore {
 public:
  asio::awaitable<StoreResult> get(std::string) override { co_return StoreResult::failed("redis down"); }
  asio::awaitable<StoreResult> set(std::string, std::string, Ttl) override { co_return StoreResult::failed("redis down"); }
  asio::awaitable<StoreResult> add(std::string, std::string, Ttl) override { co_return StoreResult::failed("redis down"); }
  asio::awaitable<StoreResult> incr(std::string, std::int64_t, Ttl) override {
    co_return StoreResult::failed("redis down");
  }
  asio::awaitable<StoreResult> del(std::string) override { co_return StoreResult::failed("redis down"); }
  std::string_view backend() const override { return "redis"; }
};

}  // namespace

TEST_CASE("persisted store: values, counters and deletes survive a restart", "[store]") {
  TempDir dir;
  std::string path = dir.path() + "/store.lmdb";
  {
    PersistedStore store(path, kMapSize, 1000, kInterval);
    CHECK(store.loaded() == 0);
    store.memory().set_now("grey:192.0.2|a@x|b@y", "1700000000", std::chrono::seconds(3600));
    store.memory().set_now("forever", "v", std::chrono::seconds(0));
    CHECK(store.memory().incr_now("rate:ip:192.0.2.1:5", 3, std::chrono::seconds(600)) == 3);
    store.memory().set_now("gone", "x", std::chrono::seconds(600));
    store.memory().del_now("gone");
  }  // destroyed: the last changes are committed
  {
    PersistedStore store(path, kMapSize, 1000, kInterval);
    CHECK(store.loaded() == 3);
    CHECK(store.memory().get_now("grey:192.0.2|a@x|b@y") == "1700000000");
    CHECK(store.memory().get_now("forever") == "v");
    CHECK(store.memory().get_now("gone") == std::nullopt);
    CHECK(store.memory().incr_now("rate:ip:192.0.2.1:5", 1, std::chrono::seconds(600)) == 4);
    store.memory().del_now("forever");
  }
  PersistedStore store(path, kMapSize, 1000, kInterval);
  CHECK(store.loaded() == 2);
  CHECK(store.memory().get_now("forever") == std::nullopt);
  CHECK(store.memory().get_now("rate:ip:192.0.2.1:5") == "4");
}

TEST_CASE("persisted store: an entry that expired while postern was down is not loaded", "[store]") {
  TempDir dir;
  std::string path = dir.path() + "/store.lmdb";
  {
    PersistedStore store(path, kMapSize, 1000, kInterval);
    store.memory().set_now("short", "1", std::chrono::seconds(1));
    store.memory().set_now("long", "2", std::chrono::seconds(3600));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // past the 1 s TTL
  PersistedStore store(path, kMapSize, 1000, kInterval);
  CHECK(store.loaded() == 1);
  CHECK(store.memory().get_now("short") == std::nullopt);
  CHECK(store.memory().get_now("long") == "2");
}

TEST_CASE("lmdb file: load keeps live records with their expiry and deletes expired ones", "[store]") {
  TempDir dir;
  LmdbFile file(dir.path() + "/f.lmdb", kMapSize);
  std::int64_t now = now_ms();
  std::vector<MemoryStore::Change> batch(3);
  batch[0] = {"old", std::string("a"), now - 1};
  batch[1] = {"live", std::string("b"), now + 60'000};
  batch[2] = {"never", std::string("c"), 0};
  CHECK(file.write(batch) == "");
  auto records = file.load(now);
  REQUIRE(records.size() == 2);
  CHECK(records[0].key == "live");
  CHECK(records[0].value == "b");
  CHECK(records[0].expires_unix_ms == now + 60'000);
  CHECK(records[1].key == "never");
  CHECK(records[1].expires_unix_ms == 0);
  // The same file read an hour later: "live" has expired too.
  CHECK(file.load(now + 3'600'000).size() == 1);
  CHECK(file.load(now).size() == 1);  // and was deleted by that load
}

TEST_CASE("persisted store: a file that cannot be opened is a start-up error", "[store]") {
  TempDir dir;
  CHECK_THROWS_AS(PersistedStore(dir.path() + "/no/such/dir/store.lmdb", kMapSize, 10, kInterval),
                  postern::StoreError);
}

TEST_CASE("store: restored entries keep their remaining lifetime", "[store]") {
  MemoryStore store;
  store.restore("a", "1", now_ms() + 60'000);
  store.restore("b", "2", now_ms() - 10);
  store.restore("c", "3", 0);
  CHECK(store.get_now("a") == "1");
  CHECK(store.get_now("b") == std::nullopt);
  CHECK(store.get_now("c") == "3");
}

TEST_CASE("lua api: postern.store.add creates a key once", "[store][lua]") {
  LuaHarness h;
  auto f = h.load(rule("mail", R"(
    local first = postern.store.add('k', 'one', 60)
    local second = postern.store.add('k', 'two', 60)
    return postern.reject(tostring(first) .. ':' .. tostring(second) .. ':' .. postern.store.get('k'))
  )"));
  CHECK(h.run(*f, Stage::kMail).text == "true:false:one");
}

TEST_CASE("lua api: a store that does not answer skips the rule under on_error = continue", "[store][lua]") {
  LuaHarness h;
  h.options.store = std::make_shared<UnreachableStore>();
  h.options.store_on_error = postern::LuaOptions::OnError::kContinue;
  auto f = h.load(rule("mail", "local n = postern.store.incr('rate:x', 1, 60)\nreturn postern.reject('counted ' .. n)"));
  auto v = h.run(*f, Stage::kMail);
  CHECK_FALSE(v.decisive());
  CHECK(h.logged("store-error rule=T stage=mail backend=redis policy=continue error=\"redis down\""));
}

TEST_CASE("lua api: a store that does not answer defers with 451 4.3.0 under on_error = tempfail", "[store][lua]") {
  LuaHarness h;
  h.options.store = std::make_shared<UnreachableStore>();
  h.options.store_on_error = postern::LuaOptions::OnError::kTempfail;
  // The rule's own on_error = continue does not apply: it never got an answer.
  auto f = h.load(rule("rcpt", "if postern.store.get('grey:x') then return end\nreturn postern.reject('unreached')"));
  auto v = h.run(*f, Stage::kRcpt);
  CHECK(v.action == postern::Verdict::Action::kTempfail);
  CHECK(v.code == 451);
  CHECK(v.enhanced == "4.3.0");
  CHECK(h.logged("policy=tempfail"));
}
