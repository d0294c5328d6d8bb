// The [audit] section: defaults, every key, and errors that name the key.
#include <catch2/catch.hpp>

#include "proxy/config.h"
#include "config_test_util.h"
#include "test_util.h"

using namespace postern;

namespace {

std::shared_ptr<const Config> load(const std::string& text) { return test::load_config_text(text); }

std::string error_of(const std::string& text) { return test::config_error_of_text(text); }

}  // namespace

TEST_CASE("audit config: defaults", "[config][audit]") {
  auto c = load("");
  CHECK(c->audit.path.empty());
  CHECK(c->audit.rotate_size == 100u * 1024 * 1024);
  CHECK(c->audit.rotate_keep == 10);
  CHECK(c->audit.fsync == AuditLogOptions::Fsync::kInterval);
  CHECK(c->audit.fsync_interval == Seconds(1));
  CHECK(c->audit.queue_limit == 64u * 1024 * 1024);
}

TEST_CASE("audit config: every key", "[config][audit]") {
  auto c = load("[audit]\npath = \"/var/log/postern/audit.jsonl\"\nrotate_size = 0\nrotate_keep = 0\n"
                "fsync = \"always\"\nfsync_interval = 0.25\nqueue_limit = 1048576\n");
  CHECK(c->audit.path == "/var/log/postern/audit.jsonl");
  CHECK(c->audit.rotate_size == 0);  // logrotate's job
  CHECK(c->audit.rotate_keep == 0);
  CHECK(c->audit.fsync == AuditLogOptions::Fsync::kAlways);
  CHECK(c->audit.fsync_interval == Seconds(0.25));
  CHECK(c->audit.queue_limit == 1048576);
  CHECK(load("[audit]\nfsync = \"never\"\n")->audit.fsync == AuditLogOptions::Fsync::kNever);
}

TEST_CASE("audit config: bad values name the key and what is allowed", "[config][audit]") {
  std::string e = error_of("[audit]\nrotate_size = 100\n");
  CHECK(e.find(":2:") != std::string::npos);
  CHECK(e.find("audit.rotate_size") != std::string::npos);
  CHECK(e.find("at least 4096") != std::string::npos);
  e = error_of("[audit]\nfsync = \"sometimes\"\n");
  CHECK(e.find("audit.fsync") != std::string::npos);
  CHECK(e.find("\"never\", \"interval\", \"always\"") != std::string::npos);
  CHECK(error_of("[audit]\nfsync_interval = 0\n").find("audit.fsync_interval") != std::string::npos);
  CHECK(error_of("[audit]\nqueue_limit = 10\n").find("audit.queue_limit") != std::string::npos);
  CHECK(error_of("[audit]\nfsink = \"always\"\n").find("did you mean 'fsync'") != std::string::npos);
}
