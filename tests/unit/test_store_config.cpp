// The [store] configuration section: defaults, values, and errors with
// file:line and the fix.
#include <catch2/catch.hpp>

#include <string>

#include "proxy/config.h"
#include "config_test_util.h"
#include "test_util.h"

using Catch::Matchers::Contains;
using postern::ConfigError;
using postern::ConfigSource;
using postern::LuaOptions;
using postern::StoreOptions;
using postern::load_config;
using postern::test::TempDir;

namespace {
}  // namespace

TEST_CASE("store config: defaults are the in-process store, continue on error", "[config][store]") {
  auto config = load_config(ConfigSource{});
  const StoreOptions& s = config->store;
  CHECK(s.backend == StoreOptions::Backend::kMemory);
  CHECK(s.on_error == StoreOptions::OnError::kContinue);
  CHECK(config->lua.store_on_error == LuaOptions::OnError::kContinue);
  CHECK(s.persist.empty());
  CHECK(s.persist_interval == std::chrono::milliseconds(1000));
  CHECK(s.redis.host == "127.0.0.1");
  CHECK(s.redis.port == 6379);
  CHECK(s.redis_prefix == "postern:");
  CHECK(s.redis.timeout == std::chrono::milliseconds(500));
  CHECK(s.max_entries == config->lua.store_max_entries);
}

TEST_CASE("store config: redis and persistence keys", "[config][store]") {
  TempDir dir;
  SECTION("redis") {
    std::string path = dir.write("r.toml",
                                 "[store]\nbackend = \"redis\"\nredis_address = \"redis.internal:6380\"\n"
                                 "on_error = \"tempfail\"\nredis_timeout = 0.25\nredis_prefix = \"mx1:\"\n"
                                 "redis_password = \"pw\"\nredis_database = 3\nredis_reconnect_max = 2\n");
    auto config = load_config(ConfigSource{path, {}, {}, {}});
    const StoreOptions& s = config->store;
    CHECK(s.backend == StoreOptions::Backend::kRedis);
    CHECK(s.redis.host == "redis.internal");
    CHECK(s.redis.port == 6380);
    CHECK(s.on_error == StoreOptions::OnError::kTempfail);
    CHECK(config->lua.store_on_error == LuaOptions::OnError::kTempfail);
    CHECK(s.redis.timeout == std::chrono::milliseconds(250));
    CHECK(s.redis_prefix == "mx1:");
    CHECK(s.redis.password == "pw");
    CHECK(s.redis.database == 3);
    CHECK(s.redis.reconnect_max == std::chrono::milliseconds(2000));
  }
  SECTION("persist") {
    std::string path = dir.write("p.toml", "[store]\npersist = \"" + dir.path() +
                                               "/store.lmdb\"\npersist_interval = 0.2\n");
    auto config = load_config(ConfigSource{path, {}, {}, {}});
    CHECK(config->store.persist == dir.path() + "/store.lmdb");
    CHECK(config->store.persist_interval == std::chrono::milliseconds(200));
  }
}

TEST_CASE("store config: errors name the line and what is allowed", "[config][store]") {
  TempDir dir;
  CHECK_THAT(postern::test::config_error_at(dir.write("a.toml", "[store]\nbackend = \"memcached\"\n")),
             Contains("a.toml:2:11: key 'store.backend': expected one of \"memory\", \"redis\", got \"memcached\""));
  CHECK_THAT(postern::test::config_error_at(dir.write("b.toml", "[store]\nbackend = \"redis\"\nredis_address = \"localhost\"\n")),
             Contains("b.toml:3:17: key 'store.redis_address': expected \"HOST:PORT\""));
  CHECK_THAT(postern::test::config_error_at(dir.write("c.toml", "[store]\npersist = \"/nonexistent-dir/x/store.lmdb\"\n")),
             Contains("c.toml:2:11: key 'store.persist': directory \"/nonexistent-dir/x\" is not writable"));
  CHECK_THAT(postern::test::config_error_at(dir.write("d.toml", "[store]\npersist = \"" + dir.path() + "\"\n")),
             Contains("is a directory; name the LMDB file"));
  CHECK_THAT(postern::test::config_error_at(dir.write("e.toml", "[store]\nbackend = \"redis\"\npersist = \"" + dir.path() + "/s.lmdb\"\n")),
             Contains("key 'store.persist': applies to backend = \"memory\" only"));
  CHECK_THAT(postern::test::config_error_at(dir.write("f.toml", "[store]\nredis_timout = 1\n")),
             Contains("key 'store.redis_timout': unknown key; did you mean 'redis_timeout'?"));
  CHECK_THAT(postern::test::config_error_at(dir.write("g.toml", "[store]\non_error = \"accept\"\n")),
             Contains("key 'store.on_error': expected one of \"continue\", \"tempfail\""));
}
