// Delivery (proxy/delivery.h) driven with an in-process Upstream that records
// what it is asked and answers as scripted: relay, refusals, tempfail,
// discard, quarantine into a real Maildir, the envelope sent anew after a
// redirect, DKIM signing with a key made by the openssl CLI, and the one
// record (metrics, audit) of each Outcome.
#include <catch2/catch.hpp>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/use_future.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "config_test_util.h"
#include "fake_upstream.h"
#include "filters/audit/audit_log.h"
#include "proxy/delivery.h"
#include "proxy/metrics.h"
#include "test_util.h"

using namespace postern;
using postern::test::FakeUpstream;
using postern::test::run;

namespace {

Mailbox mailbox(const std::string& local, const std::string& domain) { return Mailbox{local, domain}; }

constexpr std::string_view kMessage =
    "From: Alice <alice@example.org>\r\n"
    "To: bob@example.net\r\n"
    "Subject: hello\r\n"
    "\r\n"
    "Hi Bob.\r\n";

// One transaction at its end of data: the facts, the spooled content, the fake MTA.
struct Fixture {
  std::shared_ptr<const Config> config;
  SessionFacts session;
  TransactionFacts transaction;
  std::vector<EsmtpParam> mail_params{{"BODY", "8BITMIME", true}};
  std::vector<std::vector<EsmtpParam>> rcpt_params{{}};  // bob's
  FakeUpstream upstream;
  Spool spool{1 << 20, ""};
  std::unique_ptr<Message> message;

  explicit Fixture(const std::string& toml = "") : config(test::load_config_text(toml)) {
    session.id = "0000ABCD000001";
    session.client_ip = "192.0.2.7";
    session.client_port = 40000;
    session.helo = "client.example";
    session.esmtp = true;
    transaction.id = session.id + ".1";
    transaction.reverse_path = mailbox("alice", "example.org");
    transaction.recipients = {mailbox("bob", "example.net")};
    REQUIRE(spool.append(kMessage));
    REQUIRE(spool.finish());
    message = std::make_unique<Message>(spool);
  }

  Delivery delivery() {
    return Delivery({*config, session, transaction, mail_params, rcpt_params, upstream, spool, spool.size(),
                     std::chrono::steady_clock::now(), std::chrono::steady_clock::now()});
  }
  Fate deliver(const Verdict& verdict = Verdict::proceed()) {
    Delivery d = delivery();
    return run(d.deliver(*message, verdict));
  }
};

Verdict verdict_of(Verdict::Action action, std::string reason = {}) {
  Verdict v;
  v.action = action;
  v.reason = std::move(reason);
  v.rule = "test_rule";
  return v;
}

std::uint64_t messages(Outcome o) { return metrics::registry().messages[static_cast<std::size_t>(o)].value(); }

}  // namespace

TEST_CASE("delivery: one name per outcome, the same for log, audit and metrics", "[delivery]") {
  CHECK(outcome_name(Outcome::kRelayed) == "relayed");
  CHECK(outcome_name(Outcome::kRedirected) == "redirected");
  CHECK(outcome_name(Outcome::kRejected) == "rejected");
  CHECK(outcome_name(Outcome::kTempfailed) == "tempfailed");
  CHECK(outcome_name(Outcome::kDiscarded) == "discarded");
  CHECK(outcome_name(Outcome::kQuarantined) == "quarantined");
  CHECK(outcome_of(Reply{250, "ok"}, false) == Outcome::kRelayed);
  CHECK(outcome_of(Reply{250, "ok"}, true) == Outcome::kRedirected);
  CHECK(outcome_of(Reply{451, "later"}, true) == Outcome::kTempfailed);
  CHECK(outcome_of(Reply{421, "bye"}, false) == Outcome::kTempfailed);
  CHECK(outcome_of(Reply{554, "no"}, false) == Outcome::kRejected);
  const std::string text = metrics::registry().render();
  for (std::string_view name : kOutcomeNames) {
    CHECK(text.find("postern_messages_total{action=\"" + std::string(name) + "\"}") != std::string::npos);
  }
}

TEST_CASE("delivery: relayed as received under postern's Received field, then RSET", "[delivery]") {
  Fixture f;
  const std::uint64_t before = messages(Outcome::kRelayed);
  const std::uint64_t bytes = metrics::registry().message_relayed_bytes.value();
  Delivery d = f.delivery();
  Fate fate = run(d.deliver(*f.message, Verdict::proceed()));
  CHECK(fate.outcome == Outcome::kRelayed);
  CHECK(fate.reply.reply.code == 250);
  CHECK_FALSE(fate.reply.local);
  CHECK_FALSE(fate.disconnect);
  CHECK_FALSE(fate.dkim_signed);
  CHECK(fate.verdict.empty());
  CHECK(f.upstream.calls == std::vector<std::string>{"DATA", "RSET"});
  CHECK(f.upstream.head.starts_with("Received: from client.example (unknown [192.0.2.7])\r\n\tby "));
  CHECK(f.upstream.head.find(" (postern) with ESMTP id 0000ABCD000001.1\r\n\tfor <bob@example.net>; ") !=
        std::string::npos);
  CHECK(f.upstream.content == kMessage);  // untouched: offset 0, the whole message after our field
  d.record(fate);
  CHECK(messages(Outcome::kRelayed) == before + 1);
  CHECK(metrics::registry().message_relayed_bytes.value() == bytes + f.upstream.head.size() + kMessage.size());
}

TEST_CASE("delivery: the Received field names TLS, AUTH, the verified name and IPv6", "[delivery]") {
  SessionFacts s;
  s.client_ip = "2001:db8::7";
  s.client_name = "mail.example.com";
  s.helo = "mail.example.com";
  s.esmtp = true;
  s.auth_user = "alice";
  s.tls.active = true;
  s.tls.version = "TLSv1.3";
  s.tls.cipher = "TLS_AES_256_GCM_SHA384";
  TransactionFacts t;
  t.id = "X.1";
  t.recipients = {mailbox("a", "example.net"), mailbox("b", "example.net")};
  std::string h = received_header("mx.example", s, t);
  CHECK(h.starts_with("Received: from mail.example.com (mail.example.com [IPv6:2001:db8::7])\r\n"
                      "\tby mx.example (postern) with ESMTPSA (TLSv1.3 TLS_AES_256_GCM_SHA384) id X.1\r\n\t; "));
  s.esmtp = false;
  s.tls = TlsFacts{};
  s.auth_user.clear();
  t.recipients.resize(1);
  h = received_header("mx.example", s, t);
  CHECK(h.find("with SMTP id X.1\r\n\tfor <a@example.net>; ") != std::string::npos);
}

TEST_CASE("delivery: the MTA's refusal and tempfail reach the client as the MTA said them", "[delivery]") {
  struct Case {
    Reply said;
    Outcome outcome;
  };
  for (const Case& c : {Case{Reply{554, "5.7.1 content refused"}, Outcome::kRejected},
                        Case{Reply{552, "5.3.4 too big"}, Outcome::kRejected},
                        Case{Reply{451, "4.3.0 try later"}, Outcome::kTempfailed},
                        Case{Reply{452, "4.3.1 disk full"}, Outcome::kTempfailed}}) {
    Fixture f;
    f.upstream.data_reply = UpstreamReply{c.said};
    const std::uint64_t before = messages(c.outcome);
    Delivery d = f.delivery();
    Fate fate = run(d.deliver(*f.message, Verdict::proceed()));
    CHECK(fate.outcome == c.outcome);
    CHECK(fate.reply.reply.code == c.said.code);
    CHECK(fate.reply.reply.text == c.said.text);
    CHECK_FALSE(fate.reply.local);
    CHECK(f.upstream.calls == std::vector<std::string>{"DATA", "RSET"});
    d.record(fate);
    CHECK(messages(c.outcome) == before + 1);
  }
}

TEST_CASE("delivery: a lost upstream gets no RSET; its 4xx tempfails the message", "[delivery]") {
  Fixture f;
  f.upstream.data_reply = UpstreamReply{Reply{451, "4.4.2 Error: upstream lost"}, true, true};
  Fate fate = f.deliver();
  CHECK(fate.outcome == Outcome::kTempfailed);
  CHECK(fate.reply.local);
  CHECK(f.upstream.calls == std::vector<std::string>{"DATA"});
}

TEST_CASE("delivery: a verdict's refusal is answered locally, nothing relayed", "[delivery]") {
  struct Case {
    Verdict::Action action;
    int code;
    Outcome outcome;
    bool disconnect;
  };
  for (const Case& c : {Case{Verdict::Action::kReject, 554, Outcome::kRejected, false},
                        Case{Verdict::Action::kTempfail, 451, Outcome::kTempfailed, false},
                        Case{Verdict::Action::kDisconnect, 421, Outcome::kTempfailed, true}}) {
    Fixture f;
    Fate fate = f.deliver(verdict_of(c.action, "spam"));
    CHECK(fate.reply.reply.code == c.code);
    CHECK(fate.reply.local);
    CHECK(fate.outcome == c.outcome);
    CHECK(fate.disconnect == c.disconnect);
    CHECK(fate.verdict == action_name(c.action));
    CHECK(fate.reason == "spam");
    CHECK(fate.rule == "test_rule");
    CHECK(f.upstream.calls == std::vector<std::string>{"RSET"});
  }
}

TEST_CASE("delivery: discard answers 250 and relays nothing", "[delivery]") {
  Fixture f;
  Fate fate = f.deliver(verdict_of(Verdict::Action::kDiscard));
  CHECK(fate.outcome == Outcome::kDiscarded);
  CHECK(fate.reply.reply.code == 250);
  CHECK(f.upstream.calls == std::vector<std::string>{"RSET"});
}

TEST_CASE("delivery: quarantine writes the message with its envelope into the Maildir", "[delivery]") {
  test::TempDir dir;
  Fixture f("[quarantine]\ndir = \"" + dir.path() + "/q\"\n");
  Fate fate = f.deliver(verdict_of(Verdict::Action::kQuarantine, "score 12.5"));
  CHECK(fate.outcome == Outcome::kQuarantined);
  CHECK(fate.reply.reply.code == 250);
  CHECK(fate.reply.reply.text.starts_with("2.0.0 Ok: quarantined as "));
  CHECK(f.upstream.calls == std::vector<std::string>{"RSET"});  // the MTA never sees it
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir.path() + "/q/new")) files.push_back(e.path());
  REQUIRE(files.size() == 1);
  std::ifstream in(files[0]);
  std::stringstream text;
  text << in.rdbuf();
  const std::string stored = text.str();
  INFO(test::escape(stored));
  // Folded as every field postern writes (the reason may be the client's text).
  CHECK(stored.starts_with("X-Postern-Quarantine: session=0000ABCD000001; client=192.0.2.7; reason=score\n 12.5\n"));
  CHECK(stored.find("X-Postern-Envelope-From: <alice@example.org>\n") != std::string::npos);
  CHECK(stored.find("X-Postern-Envelope-To: <bob@example.net>\n") != std::string::npos);
  CHECK(stored.find("Received: from client.example") != std::string::npos);
  CHECK(stored.find("Subject: hello\n\nHi Bob.\n") != std::string::npos);
}

TEST_CASE("delivery: a quarantine that cannot be written tempfails", "[delivery]") {
  test::TempDir dir;
  std::string blocked = dir.write("file", "not a directory");
  Fixture f("[quarantine]\ndir = \"" + blocked + "/q\"\n");
  Fate fate = f.deliver(verdict_of(Verdict::Action::kQuarantine));
  CHECK(fate.outcome == Outcome::kTempfailed);
  CHECK(fate.reply.reply.code == 451);
  CHECK(fate.reply.local);
}

TEST_CASE("delivery: a redirect sends the envelope anew to the new recipients", "[delivery]") {
  Fixture f;
  f.transaction.changes.redirect = std::vector<Mailbox>{mailbox("quarantine", "example.net"),
                                                         mailbox("abuse", "example.net")};
  const std::uint64_t before = messages(Outcome::kRedirected);
  Delivery d = f.delivery();
  Fate fate = run(d.deliver(*f.message, Verdict::proceed()));
  CHECK(fate.outcome == Outcome::kRedirected);
  CHECK(fate.reply.reply.code == 250);
  CHECK(f.upstream.calls == std::vector<std::string>{"RSET", "MAIL <alice@example.org> BODY=8BITMIME",
                                                     "RCPT <quarantine@example.net>", "RCPT <abuse@example.net>",
                                                     "DATA", "RSET"});
  CHECK(f.transaction.recipients.size() == 2);
  d.record(fate);
  CHECK(messages(Outcome::kRedirected) == before + 1);
}

TEST_CASE("delivery: added, removed recipients and a new reverse-path are relayed", "[delivery]") {
  Fixture f;
  f.transaction.recipients.push_back(mailbox("carol", "example.net"));
  f.transaction.changes.reverse_path = mailbox("bounces", "example.org");
  f.transaction.changes.add_recipients = {mailbox("archive", "example.net")};
  f.transaction.changes.remove_recipients = {mailbox("bob", "example.net")};
  Fate fate = f.deliver();
  CHECK(fate.outcome == Outcome::kRelayed);
  CHECK(f.upstream.calls == std::vector<std::string>{"RSET", "MAIL <bounces@example.org> BODY=8BITMIME",
                                                     "RCPT <carol@example.net>", "RCPT <archive@example.net>",
                                                     "DATA", "RSET"});
}

TEST_CASE("delivery: ESMTP parameters on an envelope sent anew", "[delivery][esmtp_param]") {
  SECTION("the client's own recipients keep the parameters they came with") {
    Fixture f;
    f.rcpt_params = {{{"NOTIFY", "SUCCESS,FAILURE", true}, {"ORCPT", "rfc822;bob@example.net", true}}};
    f.transaction.recipients.push_back(mailbox("carol", "example.net"));
    f.rcpt_params.push_back({{"NOTIFY", "NEVER", true}});
    f.transaction.changes.add_recipients = {mailbox("archive", "example.net")};
    f.deliver();
    CHECK(f.upstream.calls == std::vector<std::string>{"RSET", "MAIL <alice@example.org> BODY=8BITMIME",
                                                       "RCPT <bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net",
                                                       "RCPT <carol@example.net> NOTIFY=NEVER",
                                                       "RCPT <archive@example.net>", "DATA", "RSET"});
  }
  SECTION("a milter's recipient and sender parameters reach the MTA that offers their extension") {
    Fixture f;
    Changes& c = f.transaction.changes;
    c.add_recipients = {mailbox("archive", "example.net"), mailbox("plain", "example.net")};
    c.add_recipient_params = {{"archive@example.net", {{"NOTIFY", "NEVER", true}, {"ORCPT", "rfc822;x@example.net", true}}}};
    c.reverse_path = mailbox("bounces", "example.org");
    // RET is new, BODY replaces the client's (a milter's parameter wins).
    c.reverse_path_params = {{"RET", "HDRS", true}, {"BODY", "7BIT", true}, {"ENVID", "x", true}};
    f.deliver();
    CHECK(f.upstream.calls == std::vector<std::string>{
                                  "RSET", "MAIL <bounces@example.org> BODY=7BIT RET=HDRS ENVID=x",
                                  "RCPT <bob@example.net>", "RCPT <archive@example.net> NOTIFY=NEVER ORCPT=rfc822;x@example.net",
                                  "RCPT <plain@example.net>", "DATA", "RSET"});
  }
  SECTION("an MTA without DSN gets the addresses without the DSN parameters") {
    Fixture f;
    f.upstream.not_offered = {"DSN"};
    Changes& c = f.transaction.changes;
    c.add_recipients = {mailbox("archive", "example.net")};
    c.add_recipient_params = {{"archive@example.net", {{"NOTIFY", "NEVER", true}}}};
    c.reverse_path = mailbox("bounces", "example.org");
    c.reverse_path_params = {{"RET", "HDRS", true}, {"ENVID", "x", true}};
    Fate fate = f.deliver();
    CHECK(fate.outcome == Outcome::kRelayed);
    CHECK(f.upstream.calls == std::vector<std::string>{"RSET", "MAIL <bounces@example.org> BODY=8BITMIME",
                                                       "RCPT <bob@example.net>", "RCPT <archive@example.net>",
                                                       "DATA", "RSET"});
  }
  SECTION("unknown keywords, the wrong command, invalid values and unoffered extensions stay behind") {
    Fixture f;
    f.upstream.not_offered = {"8BITMIME", "SMTPUTF8"};
    Changes& c = f.transaction.changes;
    c.add_recipients = {mailbox("archive", "example.net")};
    c.add_recipient_params = {{"archive@example.net",
                               {{"RET", "FULL", true}, {"X-VENDOR", "1", true}, {"NOTIFY", "SOMETIMES", true},
                                {"ORCPT", "no-semicolon", true}, {"AUTH", "<>", true}, {"NOTIFY", "DELAY", true}}}};
    c.reverse_path = mailbox("bounces", "example.org");
    c.reverse_path_params = {{"NOTIFY", "NEVER", true}, {"BODY", "8BITMIME", true}, {"SMTPUTF8", "", false},
                             {"RET", "SOME", true}, {"SIZE", "99999999999999999", true}, {"ENVID", "a+zz", true}};
    f.deliver();
    CHECK(f.upstream.calls == std::vector<std::string>{"RSET", "MAIL <bounces@example.org> BODY=8BITMIME",
                                                       "RCPT <bob@example.net>", "RCPT <archive@example.net> NOTIFY=DELAY",
                                                       "DATA", "RSET"});
  }
}

TEST_CASE("delivery: a changed envelope the MTA refuses tempfails the whole message", "[delivery]") {
  SECTION("a new recipient refused") {
    Fixture f;
    f.transaction.changes.redirect = std::vector<Mailbox>{mailbox("gone", "example.net")};
    f.upstream.rcpt_replies["gone@example.net"] = UpstreamReply{Reply{550, "5.1.1 no such user"}};
    Fate fate = f.deliver();
    CHECK(fate.outcome == Outcome::kTempfailed);
    CHECK(fate.reply.reply.code == 451);
    CHECK(fate.reply.reply.text.starts_with("4.3.0 "));
    CHECK(std::find(f.upstream.calls.begin(), f.upstream.calls.end(), "DATA") == f.upstream.calls.end());
  }
  SECTION("MAIL refused: 5xx becomes 451 (the client heard 250 to MAIL)") {
    Fixture f;
    f.transaction.changes.reverse_path = mailbox("x", "example.org");
    f.upstream.mail_reply = Reply{553, "5.1.8 bad sender"};
    Fate fate = f.deliver();
    CHECK(fate.outcome == Outcome::kTempfailed);
    CHECK(fate.reply.reply.code == 451);
  }
  SECTION("the MTA's 421 behind RCPT is never a 250") {
    Fixture f;
    f.transaction.changes.add_recipients = {mailbox("x", "example.net")};
    UpstreamReply closing{Reply{250, "2.1.5 Ok"}};
    closing.closing = true;
    f.upstream.rcpt_replies["x@example.net"] = closing;
    Fate fate = f.deliver();
    CHECK(fate.reply.reply.code == 421);
    CHECK(fate.reply.closing);
    CHECK(fate.outcome == Outcome::kTempfailed);
  }
  SECTION("no recipient left: 250, nothing relayed (not even to the removed ones)") {
    Fixture f;
    f.transaction.recipients.push_back(mailbox("carol", "example.net"));
    f.transaction.changes.remove_recipients = {mailbox("bob", "example.net"), mailbox("carol", "example.net")};
    Fate fate = f.deliver();
    CHECK(fate.reply.reply.code == 250);
    CHECK(fate.outcome == Outcome::kDiscarded);
    CHECK(f.transaction.recipients.empty());
    // The MTA's transaction, open for the removed recipients, is closed unused.
    CHECK(f.upstream.calls == std::vector<std::string>{"RSET"});
  }
  SECTION("a redirect to nobody: the same") {
    Fixture f;
    f.transaction.changes.redirect = std::vector<Mailbox>{};
    Fate fate = f.deliver();
    CHECK(fate.reply.reply.code == 250);
    CHECK(fate.outcome == Outcome::kDiscarded);
    CHECK(f.upstream.calls == std::vector<std::string>{"RSET"});
  }
}

TEST_CASE("delivery: refused before the filters, the MTA's transaction is closed", "[delivery]") {
  Fixture f;
  Delivery d = f.delivery();
  Fate fate = run(d.refuse(replies::kSizeExceeded));
  CHECK(fate.outcome == Outcome::kRejected);
  CHECK(fate.reply.reply.code == replies::kSizeExceeded.code);
  CHECK(fate.reply.local);
  CHECK(f.upstream.calls == std::vector<std::string>{"RSET"});
  fate = run(d.refuse(replies::kSpoolFailed));
  CHECK(fate.outcome == Outcome::kTempfailed);
}

TEST_CASE("delivery: the audit record carries the outcome, the verdict and the reply", "[delivery]") {
  test::TempDir dir;
  auto audit = std::make_shared<AuditLog>(dir.path() + "/audit.jsonl", 0, 0);
  install_audit_log(audit);
  Fixture f;
  f.transaction.changes.redirect = std::vector<Mailbox>{mailbox("abuse", "example.net")};
  Delivery d = f.delivery();
  Fate fate = run(d.deliver(*f.message, Verdict::proceed()));
  CHECK(fate.message_id.empty());  // the message has none
  CHECK(fate.from_domain == "example.org");
  fate.message_id = "<id@example.org>";
  d.record(fate);
  Fixture g;
  Delivery e = g.delivery();
  Fate refused = run(e.deliver(*g.message, verdict_of(Verdict::Action::kReject, "bad")));
  e.record(refused);
  audit_mail_refusal(g.session, g.transaction, Reply{451, "4.7.1 later"}, verdict_of(Verdict::Action::kTempfail, "grey"));
  REQUIRE(audit->flush());
  install_audit_log(nullptr);
  std::ifstream in(dir.path() + "/audit.jsonl");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  REQUIRE(lines.size() == 3);
  CHECK(lines[0].find("\"action\":\"redirected\"") != std::string::npos);
  CHECK(lines[0].find("4QxYz") != std::string::npos);
  CHECK(lines[0].find("<id@example.org>") != std::string::npos);
  CHECK(lines[1].find("\"action\":\"rejected\"") != std::string::npos);
  CHECK(lines[1].find("\"test_rule\"") != std::string::npos);
  CHECK(lines[1].find("\"bad\"") != std::string::npos);
  CHECK(lines[2].find("\"action\":\"tempfailed\"") != std::string::npos);
  CHECK(lines[2].find("\"mail\"") != std::string::npos);
  CHECK(lines[2].find("\"grey\"") != std::string::npos);
}

TEST_CASE("delivery: postern's users' mail is DKIM-signed above the Received field", "[delivery][dkim]") {
  test::TempDir dir;
  const std::string key = dir.path() + "/rsa.key";
  REQUIRE(std::system(("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out " + key +
                       " >/dev/null 2>&1").c_str()) == 0);
  const std::string toml = "[dkim]\nsign_networks = [\"192.0.2.0/24\"]\n[[dkim.sign]]\ndomain = \"example.org\"\n"
                           "selector = \"s1\"\nkey_file = \"" + key + "\"\n";
  SECTION("from a signing network: signed") {
    Fixture f(toml);
    Fate fate = f.deliver();
    CHECK(fate.outcome == Outcome::kRelayed);
    CHECK(fate.dkim_signed);
    CHECK(f.upstream.head.starts_with("DKIM-Signature:"));
    CHECK(f.upstream.head.find("d=example.org") != std::string::npos);
    CHECK(f.upstream.head.find("s=s1") != std::string::npos);
    const std::size_t received = f.upstream.head.find("\r\nReceived: from client.example");
    const std::size_t from = f.upstream.head.find("\r\nFrom: Alice");
    CHECK(received != std::string::npos);
    CHECK(from > received);  // the message's own fields follow, rendered after our Received
    CHECK(f.upstream.content == "Hi Bob.\r\n");  // the body from its offset
  }
  SECTION("from elsewhere, unauthenticated: not signed") {
    Fixture f(toml);
    f.session.client_ip = "198.51.100.9";
    Fate fate = f.deliver();
    CHECK_FALSE(fate.dkim_signed);
    CHECK(f.upstream.head.starts_with("Received: "));
  }
  SECTION("authenticated: signed wherever it comes from") {
    Fixture f(toml);
    f.session.client_ip = "198.51.100.9";
    f.session.auth_user = "alice";
    Fate fate = f.deliver();
    CHECK(fate.dkim_signed);
  }
  SECTION("no key for the From domain: relayed unsigned") {
    Fixture f(toml);
    f.spool.clear();
    REQUIRE(f.spool.append("From: x@other.example\r\nSubject: s\r\n\r\nbody\r\n"));
    REQUIRE(f.spool.finish());
    f.message = std::make_unique<Message>(f.spool);
    Fate fate = f.deliver();
    CHECK(fate.outcome == Outcome::kRelayed);
    CHECK_FALSE(fate.dkim_signed);
    CHECK(f.upstream.head.find("DKIM-Signature") == std::string::npos);
  }
}
