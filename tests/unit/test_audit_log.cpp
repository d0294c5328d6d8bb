// The audit record (JSON, hostile text, queue ids) and its writer (rotation,
// reopen after logrotate, flush, the queue limit, many writing threads).
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <set>
#include <thread>
#include <vector>

#include "filters/audit/audit_log.h"
#include "filters/auth/auth_results.h"
#include "test_util.h"

using namespace postern;

namespace {

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

}  // namespace

TEST_CASE("audit record carries envelope, results, symbols and the queue id", "[audit]") {
  SessionFacts s;
  s.id = "S1";
  s.client_ip = "192.0.2.1";
  s.client_port = 40000;
  s.client_name = "mail.example.com";
  s.helo = "client\x01.example";
  s.tls.active = true;
  s.tls.version = "TLSv1.3";
  s.auth_user = "alice";
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
  d.spf_aligned = true;
  store(t, d);
  t.add_symbol(Symbol{"SPF_PASS", 0, ""});
  t.add_symbol(Symbol{"RULE_X", 1.5, ""});
  AuditEntry e{s, t, "relayed", "250 2.0.0 Ok: queued as 4Xy7Zq", "upstream", "eom", "", 1234, "<m1@example.com>", "", "", false};
  std::string line = audit_json(e);
  INFO(line);
  CHECK(line.find("\"session\":\"S1\",\"transaction\":\"T1\"") != std::string::npos);
  CHECK(line.find("\"client\":{\"ip\":\"192.0.2.1\",\"port\":40000,\"name\":\"mail.example.com\"}") != std::string::npos);
  CHECK(line.find("\"helo\":\"client\\u0001.example\"") != std::string::npos);
  CHECK(line.find("\"tls\":{\"active\":true,\"version\":\"TLSv1.3\"") != std::string::npos);
  CHECK(line.find("\"auth_user\":\"alice\"") != std::string::npos);
  CHECK(line.find("\"spf\":{\"result\":\"pass\"") != std::string::npos);
  CHECK(line.find("\"dkim\":[{\"domain\":\"example.com\",\"selector\":\"s1\",\"algorithm\":\"rsa-sha256\",\"result\":\"pass\"") !=
        std::string::npos);
  CHECK(line.find("\"dmarc\":{\"result\":\"pass\",\"policy\":\"reject\"") != std::string::npos);
  CHECK(line.find("\"spf_aligned\":true,\"dkim_aligned\":false") != std::string::npos);
  CHECK(line.find("\"from_domain\":\"example.com\"") != std::string::npos);  // from DMARC when not given
  CHECK(line.find("\"message_id\":\"<m1@example.com>\"") != std::string::npos);
  CHECK(line.find("{\"name\":\"RULE_X\",\"score\":1.5}") != std::string::npos);
  CHECK(line.find("\"score\":1.5,") != std::string::npos);
  CHECK(line.find("\"action\":\"relayed\"") != std::string::npos);
  CHECK(line.find("\"size\":1234") != std::string::npos);
  CHECK(line.find("\"queue_id\":\"4Xy7Zq\"") != std::string::npos);
  CHECK(line.find("\"rcpt_to\":[\"b@example.net\"]") != std::string::npos);
  CHECK(line.find('\n') == std::string::npos);
}

TEST_CASE("a reply postern wrote itself carries no queue id", "[audit]") {
  SessionFacts s;
  TransactionFacts t;
  AuditEntry e{s, t, "rejected", "550 5.7.1 queued as FAKE", "postern", "mail", "dmarc", 0, "", "", "", false};
  std::string line = audit_json(e);
  CHECK(line.find("\"signed\":false") != std::string::npos);
  CHECK(line.find("\"rule\"") == std::string::npos);
  e.rule = "dmarc";
  e.dkim_signed = true;
  line = audit_json(e);
  CHECK(line.find("\"reason\":\"dmarc\",\"rule\":\"dmarc\",\"signed\":true") != std::string::npos);
  CHECK(line.find("\"queue_id\":\"\"") != std::string::npos);
  CHECK(line.find("\"stage\":\"mail\"") != std::string::npos);
  CHECK(line.find("\"reason\":\"dmarc\"") != std::string::npos);
}

TEST_CASE("hostile text becomes valid, bounded JSON strings", "[audit]") {
  CHECK(json_string("a\"b\\c") == "\"a\\\"b\\\\c\"");
  CHECK(json_string(std::string("x\0y\r\n\x7f", 6)) == "\"x\\u0000y\\u000d\\u000a\\u007f\"");
  CHECK(json_string("caf\xc3\xa9") == "\"caf\xc3\xa9\"");                 // valid UTF-8 kept
  CHECK(json_string("\xf0\x9f\x93\xa7") == "\"\xf0\x9f\x93\xa7\"");        // 4-octet form
  CHECK(json_string("a\xc3") == "\"a\\ufffd\"");                          // cut sequence
  CHECK(json_string("\xc0\xaf") == "\"\\ufffd\\ufffd\"");                 // overlong '/'
  CHECK(json_string("\xe0\x80\xaf") == "\"\\ufffd\\ufffd\\ufffd\"");      // overlong, 3 octets
  CHECK(json_string("\xed\xa0\x80") == "\"\\ufffd\\ufffd\\ufffd\"");      // UTF-16 surrogate
  CHECK(json_string("\xf4\x90\x80\x80") == "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");  // past U+10FFFF
  CHECK(json_string("\xff\xfe") == "\"\\ufffd\\ufffd\"");
  std::string long_text(2000, 'a');
  CHECK(json_string(long_text).size() == 512 + 2);
  // Truncation never splits a character.
  std::string euros;
  for (int i = 0; i < 300; ++i) euros += "\xe2\x82\xac";
  std::string cut = json_string(euros, 10);
  CHECK(cut == "\"\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\"");
}

TEST_CASE("queue ids from the replies of common MTAs", "[audit]") {
  CHECK(queue_id_from_reply("250 2.0.0 Ok: queued as 4Xy7Zq") == "4Xy7Zq");
  CHECK(queue_id_from_reply("250 OK id=1abcDE-000123-XY") == "1abcDE-000123-XY");
  CHECK(queue_id_from_reply("250 2.0.0 u8TMp1Yd012345 Message accepted for delivery") == "u8TMp1Yd012345");
  CHECK(queue_id_from_reply("250 2.6.0 <a1@ex.example> [InternalId=12884901889, Hostname=EX1.contoso.com] "
                            "Queued mail for delivery") == "12884901889");
  CHECK(queue_id_from_reply("250 2.6.0 <a1@ex.example> Queued mail for delivery") == "a1@ex.example");
  CHECK(queue_id_from_reply("250 ok 1700000000 qp 4242") == "4242");
  CHECK(queue_id_from_reply("250 2.0.0 ok") == "");
  CHECK(queue_id_from_reply("") == "");
  CHECK(queue_id_from_reply("250 queued as ") == "");
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
  CHECK(std::filesystem::file_size(path + ".1") <= 100);
  auto lines = read_lines(path);
  REQUIRE_FALSE(lines.empty());
  CHECK(lines.back() == std::string(40, 'j'));
}

TEST_CASE("a line longer than rotate_size gets a file of its own", "[audit]") {
  test::TempDir dir;
  const std::string path = dir.path() + "/audit.jsonl";
  {
    AuditLog log(path, 100, 3);
    log.write("short");
    log.write(std::string(300, 'x'));
    log.write("after");
  }
  CHECK(read_lines(path) == std::vector<std::string>{"after"});
  CHECK(read_lines(path + ".1") == std::vector<std::string>{std::string(300, 'x')});
  CHECK(read_lines(path + ".2") == std::vector<std::string>{"short"});
}

TEST_CASE("reopen() after logrotate moved the file: new lines go to a new file", "[audit]") {
  test::TempDir dir;
  const std::string path = dir.path() + "/audit.jsonl";
  AuditLogOptions o;
  o.path = path;
  o.rotate_size = 0;  // logrotate's job
  o.fsync = AuditLogOptions::Fsync::kAlways;
  AuditLog log(o);
  log.write("one");
  REQUIRE(log.flush());
  std::filesystem::rename(path, path + ".rotated");
  log.write("two");  // still the open file: nothing lost between mv and HUP
  REQUIRE(log.flush());
  log.reopen();
  log.write("three");
  REQUIRE(log.flush());
  CHECK(read_lines(path + ".rotated") == std::vector<std::string>{"one", "two"});
  CHECK(read_lines(path) == std::vector<std::string>{"three"});
}

TEST_CASE("lines past queue_limit are dropped and counted, never blocking", "[audit]") {
  test::TempDir dir;
  const std::string path = dir.path() + "/audit.jsonl";
  AuditLogOptions o;
  o.path = path;
  o.queue_limit = 64;
  AuditLog log(o);
  CHECK_FALSE(log.write(std::string(100, 'z')));  // can never fit
  CHECK(log.dropped() == 1);
  CHECK(log.write("fits"));
  REQUIRE(log.flush());
  CHECK(read_lines(path) == std::vector<std::string>{"fits"});
}

TEST_CASE("many threads write whole lines, none lost or interleaved", "[audit]") {
  test::TempDir dir;
  const std::string path = dir.path() + "/audit.jsonl";
  constexpr int kThreads = 4, kLines = 2000;
  {
    AuditLogOptions o;
    o.path = path;
    o.rotate_size = 64 * 1024;
    o.rotate_keep = 100;
    AuditLog log(o);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&log, t] {
        for (int i = 0; i < kLines; ++i) {
          log.write("{\"thread\":" + std::to_string(t) + ",\"i\":" + std::to_string(i) + ",\"pad\":\"" +
                    std::string(40, 'p') + "\"}");
        }
      });
    }
    for (auto& th : threads) th.join();
  }
  std::set<std::string> seen;
  std::size_t total = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    for (const std::string& l : read_lines(entry.path().string())) {
      ++total;
      CHECK(l.size() > 40);
      CHECK(l.front() == '{');
      CHECK(l.back() == '}');
      seen.insert(l);
    }
    CHECK(std::filesystem::file_size(entry.path()) <= 64 * 1024);
  }
  CHECK(total == kThreads * kLines);
  CHECK(seen.size() == total);
}

TEST_CASE("the process's audit log is swapped atomically", "[audit]") {
  test::TempDir dir;
  CHECK_FALSE(current_audit_log());
  auto log = std::make_shared<AuditLog>(dir.path() + "/a.jsonl", 0, 0);
  install_audit_log(log);
  CHECK(current_audit_log() == log);
  install_audit_log(nullptr);
  CHECK_FALSE(current_audit_log());
}

TEST_CASE("an audit path that cannot be opened is an error at construction", "[audit]") {
  CHECK_THROWS_AS(AuditLog("/nonexistent-dir/x/audit.jsonl", 0, 0), std::runtime_error);
}
