// The [dns], [spf], [dkim], [dmarc], [authentication_results] and [audit]
// sections of the configuration.
#include <catch2/catch.hpp>

#include "proxy/config.h"
#include "config_test_util.h"
#include "test_util.h"

using namespace postern;

namespace {

constexpr const char* kServer = "[server]\nhostname = \"mx.example.net\"\n";

std::shared_ptr<const Config> load(const std::string& text) { return test::load_config_text(kServer + text); }

std::string error_of(const std::string& text) { return test::config_error_of_text(kServer + text); }

}  // namespace

TEST_CASE("auth config: defaults", "[config][dns]") {
  auto c = load("");
  CHECK(c->dns.servers.empty());
  CHECK(c->dns.timeout == std::chrono::milliseconds(5000));
  CHECK_FALSE(c->auth.spf.enabled);  // off until [dns] and [spf] are configured
  CHECK_FALSE(c->auth.spf.reject_fail);
  CHECK(c->auth.dmarc.enforce == DmarcOptions::Enforce::kReport);
  CHECK(c->auth.authentication_results.authserv_id == "mx.example.net");
  CHECK(c->auth.hostname == "mx.example.net");
  CHECK(c->audit.path.empty());
}

TEST_CASE("auth config: every key", "[config][dns]") {
  auto c = load(
      "[dns]\nservers = [\"127.0.0.1@5353\", \"::1\"]\ntimeout = 1.5\nretries = 2\ncache_entries = 10\n"
      "negative_ttl = 30\nmax_ttl = 600\nworkers = 8\n"
      "[spf]\nreject_fail = true\ntempfail_temperror = true\nreceived_spf = false\ntimeout = 3\n"
      "max_dns_terms = 20\nmax_void_lookups = 3\nscore_fail = 5.5\n"
      "[dkim]\nmin_key_bits = 2048\nmax_signatures = 3\nscore_fail = 2\n"
      "[dmarc]\nenforce = \"reject\"\nhonor_pct = false\n"
      "[authentication_results]\nauthserv_id = \"auth.example.net\"\nremove_forged = false\n"
      "[audit]\npath = \"/var/log/postern/audit.jsonl\"\nrotate_size = 1048576\nrotate_keep = 3\n");
  CHECK(c->dns.servers == std::vector<std::string>{"127.0.0.1@5353", "::1"});
  CHECK(c->dns.timeout == std::chrono::milliseconds(1500));
  CHECK(c->dns.retries == 2);
  CHECK(c->dns.cache_entries == 10);
  CHECK(c->dns.negative_ttl == 30);
  CHECK(c->dns.max_ttl == 600);
  CHECK(c->auth.worker_threads == 8);
  CHECK(c->auth.spf.reject_fail);
  CHECK(c->auth.spf.tempfail_temperror);
  CHECK_FALSE(c->auth.spf.received_spf);
  CHECK(c->auth.spf.timeout == std::chrono::milliseconds(3000));
  CHECK(c->auth.spf.limits.dns_terms == 20);
  CHECK(c->auth.spf.limits.void_lookups == 3);
  CHECK(c->auth.spf.score_fail == 5.5);
  CHECK(c->auth.dkim.min_key_bits == 2048);
  CHECK(c->auth.dkim.max_signatures == 3);
  CHECK(c->auth.dmarc.enforce == DmarcOptions::Enforce::kReject);
  CHECK_FALSE(c->auth.dmarc.honor_pct);
  CHECK(c->auth.authentication_results.authserv_id == "auth.example.net");
  CHECK_FALSE(c->auth.authentication_results.remove_forged);
  CHECK(c->audit.path == "/var/log/postern/audit.jsonl");
  CHECK(c->audit.rotate_keep == 3);
}

TEST_CASE("auth config: errors name the key", "[config][dns]") {
  CHECK(error_of("[dns]\nservers = [\"localhost\"]\n").find("dns.servers") != std::string::npos);
  CHECK(error_of("[dns]\nservers = [\"127.0.0.1@99999\"]\n").find("dns.servers") != std::string::npos);
  CHECK(error_of("[dns]\ntimeout = 0\n").find("dns.timeout") != std::string::npos);
  CHECK(error_of("[spf]\nreject = true\n").find("unknown key") != std::string::npos);
  CHECK(error_of("[dmarc]\nenforce = \"yes\"\n").find("dmarc.enforce") != std::string::npos);
  CHECK(error_of("[authentication_results]\nauthserv_id = \"bad id\"\n").find("authserv_id") != std::string::npos);
}
