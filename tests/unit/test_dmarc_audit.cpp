// The audit record and its rotated log.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "filters/auth/audit_log.h"
#include "filters/auth/auth_results.h"
#include "test_util.h"

using namespace postern;

TEST_CASE("audit record carries envelope, results, symbols and the queue id", "[audit]") {
  SessionFacts s;
  s.id = "S1";
  s.client_ip = "192.0.2.1";
  s.client_port = 40000;
  s.helo = "client\x01.example";
  s.tls.active = true;
  s.tls.version = "TLSv1.3";
  TransactionFacts t;
  t.id = "T1";
  t.reverse_path = Mailbox{"a", "example.com"};
  t.recipients = {Mailbox{"b", "example.net"}};
  SpfOutcome spf;
  spf.result = SpfResult::kPass;
  spf.identity = "mailfrom";
  spf.domain = "example.com";
  store(t, spf);
  DkimSignature sig;
  sig.result = DkimResult::kPass;
  sig.domain = "example.com";
  sig.selector = "s1";
  sig.algorithm = "rsa-sha256";
  store(t, std::vector<DkimSignature>{sig});
  DmarcOutcome d;
  d.result = DmarcResult::kPass;
  d.from_domain = "example.com";
  d.policy = "reject";
  store(t, d);
  t.add_symbol(Symbol{"SPF_PASS", 0, ""});
  std::string line = audit_json(AuditEntry{s, t, "relay", "250 2.0.0 Ok: queued as 4Xy7Zq"});
  INFO(line);
  CHECK(line.find("\"client\":{\"ip\":\"192.0.2.1\",\"port\":40000") != std::string::npos);
  CHECK(line.find("\"helo\":\"client\\u0001.example\"") != std::string::npos);
  CHECK(line.find("\"spf\":{\"result\":\"pass\"") != std::string::npos);
  CHECK(line.find("\"dkim\":[{\"domain\":\"example.com\",\"selector\":\"s1\",\"algorithm\":\"rsa-sha256\",\"result\":\"pass\"") !=
        std::string::npos);
  CHECK(line.find("\"dmarc\":{\"result\":\"pass\",\"policy\":\"reject\"") != std::string::npos);
  CHECK(line.find("\"queue_id\":\"4Xy7Zq\"") != std::string::npos);
  CHECK(line.find("\"rcpt_to\":[\"b@example.net\"]") != std::string::npos);
  CHECK(line.find('\n') == std::string::npos);
  CHECK(queue_id_from_reply("250 OK id=1abcDE-000123-XY") == "1abcDE-000123-XY");
  CHECK(queue_id_from_reply("250 2.0.0 ok") == "");
}

TEST_CASE("audit log rotates by size and keeps N files", "[audit]") {
  test::TempDir dir;
  const std::string path = dir.path() + "/audit.jsonl";
  {
    AuditLog log(path, 100, 2);
    for (int i = 0; i < 10; ++i) CHECK(log.write(std::string(40, 'a' + i)));
  }
  CHECK(std::filesystem::exists(path));
  CHECK(std::filesystem::exists(path + ".1"));
  CHECK(std::filesystem::exists(path + ".2"));
  CHECK_FALSE(std::filesystem::exists(path + ".3"));
  CHECK(std::filesystem::file_size(path) <= 100);
  std::ifstream in(path);
  std::string last;
  for (std::string l; std::getline(in, l);) last = l;
  CHECK(last == std::string(40, 'j'));
}
