// [upstream] reuse, chunking and early_data keys (issue 23): defaults, values, bounds.
#include <catch2/catch.hpp>

#include "config_test_util.h"
#include "proxy/config.h"

using Catch::Matchers::Contains;
using postern::test::config_error_of_text;
using postern::test::load_config_text;

namespace {
const std::string kTarget = "[upstream]\ntarget = \"127.0.0.1:10025\"\n";
}

TEST_CASE("upstream reuse: defaults", "[config][upstream]") {
  auto config = load_config_text(kTarget);
  CHECK(config->upstream.reuse);
  CHECK(config->upstream.reuse_pool_size == 16);
  CHECK(config->upstream.reuse_idle_timeout.count() == 5);
  CHECK(config->upstream.reuse_max_messages == 100);
  CHECK(config->upstream.chunking);
  CHECK(config->upstream.early_data);
}

TEST_CASE("upstream reuse: values", "[config][upstream]") {
  auto config = load_config_text(kTarget + "reuse = false\nreuse_pool_size = 0\nreuse_idle_timeout = 0.5\n"
                                           "reuse_max_messages = 0\nchunking = false\nearly_data = false\n");
  CHECK_FALSE(config->upstream.reuse);
  CHECK(config->upstream.reuse_pool_size == 0);
  CHECK(config->upstream.reuse_idle_timeout.count() == 0.5);
  CHECK(config->upstream.reuse_max_messages == 0);
  CHECK_FALSE(config->upstream.chunking);
  CHECK_FALSE(config->upstream.early_data);
}

TEST_CASE("upstream reuse: out of bounds or of the wrong type", "[config][upstream]") {
  CHECK_THAT(config_error_of_text(kTarget + "reuse = \"yes\"\n"), Contains("upstream.reuse") && Contains("true or false"));
  CHECK_THAT(config_error_of_text(kTarget + "reuse_pool_size = -1\n"), Contains("upstream.reuse_pool_size"));
  CHECK_THAT(config_error_of_text(kTarget + "reuse_pool_size = 10001\n"), Contains("upstream.reuse_pool_size"));
  CHECK_THAT(config_error_of_text(kTarget + "reuse_idle_timeout = 0\n"), Contains("upstream.reuse_idle_timeout"));
  CHECK_THAT(config_error_of_text(kTarget + "reuse_idle_timeout = 3601\n"), Contains("upstream.reuse_idle_timeout"));
  CHECK_THAT(config_error_of_text(kTarget + "reuse_max_messages = 1.5\n"), Contains("upstream.reuse_max_messages"));
  CHECK_THAT(config_error_of_text(kTarget + "chunking = 1\n"), Contains("upstream.chunking"));
  CHECK_THAT(config_error_of_text(kTarget + "early_data = \"auto\"\n"), Contains("upstream.early_data"));
  CHECK_THAT(config_error_of_text(kTarget + "early_date = true\n"), Contains("early_data"));  // did you mean
  CHECK_THAT(config_error_of_text(kTarget + "reuse_idle = 5\n"), Contains("reuse_idle_timeout"));  // did you mean
}
