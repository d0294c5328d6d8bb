// `postern report`: the JSON reader, the per-domain tallies, malformed lines,
// the --domain filter, and both renderings (hostile text escaped).
#include <catch2/catch.hpp>

#include <random>
#include <sstream>

#include "filters/audit/audit_log.h"
#include "filters/audit/audit_report.h"
#include "filters/audit/json_reader.h"

using namespace postern;

TEST_CASE("json reader: values, escapes, and bad input as errors", "[report]") {
  JsonParse p = parse_json(R"( {"a":[1,-2.5e1,true,false,null],"s":"x\"\u00e9\ud83d\udce7\n","o":{}} )");
  REQUIRE(p.ok);
  const JsonValue* a = p.value.get("a");
  REQUIRE(a);
  REQUIRE(a->array.size() == 5);
  CHECK(a->array[1].number == -25);
  CHECK(a->array[2].boolean);
  CHECK(p.value.str("s") == "x\"\xc3\xa9\xf0\x9f\x93\xa7\n");
  CHECK(p.value.get("o")->type == JsonValue::Type::kObject);
  CHECK(parse_json(R"("\ud800")").value.string == "\xef\xbf\xbd");  // a lone surrogate
  CHECK(parse_json(R"("\ud800\u0041")").value.string == "\xef\xbf\xbd" "A");  // and the escape after it kept
  CHECK(parse_json(R"("\ud800\ud800\udc00")").value.string == "\xef\xbf\xbd\xf0\x90\x80\x80");
  for (const char* bad : {"", "{", "{\"a\":}", "[1,]", "\"abc", "{\"a\" 1}", "tru", "01x", "\"\x01\"", "{} x",
                          "-", "1.", "1e", "\"\\q\"", "\"\\u12\""}) {
    INFO(bad);
    CHECK_FALSE(parse_json(bad).ok);
  }
  std::string deep(100, '[');
  CHECK_FALSE(parse_json(deep + std::string(100, ']')).ok);
  CHECK(parse_json(std::string(20, '[') + std::string(20, ']')).ok);
}

namespace {

const char* kLog = R"({"time":"2026-11-24T05:00:00.000Z","client":{"ip":"203.0.113.5","port":1,"name":""},"helo":"evil.example","from_domain":"Example.com","spf":{"result":"fail"},"dkim":[],"dmarc":{"result":"fail","spf_aligned":false,"dkim_aligned":false},"action":"rejected"}
{"time":"2026-11-24T05:01:00.000Z","client":{"ip":"198.51.100.1","port":1,"name":"mx.example.com"},"helo":"mx","from_domain":"example.com","spf":{"result":"pass"},"dkim":[{"result":"fail"},{"result":"pass"}],"dmarc":{"result":"pass","spf_aligned":true,"dkim_aligned":true},"action":"relayed"}
{"time":"2026-11-24T05:02:00.000Z","client":{"ip":"203.0.113.5","port":2,"name":""},"helo":"evil.example","from_domain":"example.com","spf":{"result":"softfail"},"dmarc":{"result":"fail"},"action":"quarantined"}
{"time":"2026-11-24T04:59:00.000Z","client":{"ip":"192.0.2.9","port":1,"name":""},"helo":"h","from_domain":"news.example.com","spf":{"result":"pass"},"action":"relayed"}
{"time":"2026-11-24T05:03:00.000Z","client":{"ip":"192.0.2.7","port":1,"name":""},"helo":"<b>","from_domain":"<script>alert(1)</script>.example.org","spf":{"result":"fail"},"action":"relayed"}
this is not json
{"no":"action"}

[1,2]
)";

}  // namespace

TEST_CASE("report tallies per From domain and names malformed lines", "[report]") {
  AuditReportBuilder b;
  std::istringstream in(kLog);
  b.add_stream("audit.jsonl", in);
  AuditReport r = b.finish();
  CHECK(r.files == 1);
  CHECK(r.records == 5);
  CHECK(r.malformed == 3);
  REQUIRE(r.malformed_examples.size() == 3);
  CHECK(r.malformed_examples[0].rfind("audit.jsonl:6: not JSON", 0) == 0);
  CHECK(r.malformed_examples[1].rfind("audit.jsonl:7: not an audit record", 0) == 0);
  CHECK(r.malformed_examples[2].rfind("audit.jsonl:9:", 0) == 0);  // the empty line 8 is skipped
  CHECK(r.first_time == "2026-11-24T04:59:00.000Z");
  CHECK(r.last_time == "2026-11-24T05:03:00.000Z");
  REQUIRE(r.domains.size() == 3);
  const DomainReport& d = r.domains[0];
  CHECK(d.domain == "example.com");  // lower-cased, so both spellings count together
  CHECK(d.messages == 3);
  CHECK(d.spf_checked == 3);
  CHECK(d.spf_pass == 1);
  CHECK(d.dkim_checked == 2);
  CHECK(d.dkim_pass == 1);  // one passing signature is enough
  CHECK(d.dmarc_checked == 3);
  CHECK(d.dmarc_pass == 1);
  CHECK(d.spf_aligned == 1);
  CHECK(d.failing == 2);
  CHECK(d.actions.at("rejected") == 1);
  CHECK(d.actions.at("relayed") == 1);
  CHECK(d.actions.at("quarantined") == 1);
  REQUIRE(d.sources.size() == 1);
  CHECK(d.sources[0].ip == "203.0.113.5");
  CHECK(d.sources[0].count == 2);
  CHECK(d.sources[0].name == "evil.example");  // the HELO without a reverse name
  CHECK(d.sources[0].results == "spf=softfail dkim=none dmarc=fail");
  CHECK(percent(1, 3) == "33.3%");
  CHECK(percent(0, 0) == "-");
}

TEST_CASE("--domain keeps the domain and its subdomains", "[report]") {
  AuditReportBuilder b({"EXAMPLE.com"});
  std::istringstream in(kLog);
  b.add_stream("a", in);
  AuditReport r = b.finish();
  REQUIRE(r.domains.size() == 2);
  CHECK(r.domains[0].domain == "example.com");
  CHECK(r.domains[1].domain == "news.example.com");
  CHECK(r.skipped == 1);
  AuditReportBuilder none({"xample.com"});  // a suffix that is not a parent domain
  std::istringstream in2(kLog);
  none.add_stream("a", in2);
  CHECK(none.finish().domains.empty());
}

namespace {

// The report of `log` (audit lines) as the terminal and the browser get it.
struct Rendered {
  std::string text, html;
};

Rendered render(const std::string& log) {
  AuditReportBuilder b;
  std::istringstream in(log);
  b.add_stream("a", in);
  AuditReport r = b.finish();
  std::ostringstream text, html;
  print_report_text(r, text);
  write_report_html(r, html);
  return {text.str(), html.str()};
}

}  // namespace

TEST_CASE("text and HTML renderings escape what came from the log", "[report]") {
  const Rendered out = render(std::string(kLog) +
                              "{\"client\":{\"ip\":\"1.2.3.4\"},\"from_domain\":\"a\\u001b[31mred.example\",\"action\":\"relayed\"}\n");
  INFO(out.text);
  CHECK(out.text.find("example.com") != std::string::npos);
  CHECK(out.text.find("33.3%") != std::string::npos);
  CHECK(out.text.find('\x1b') == std::string::npos);
  CHECK(out.text.find("a?[31mred.example") != std::string::npos);
  CHECK(out.text.find("malformed lines (3)") != std::string::npos);
  const std::string& page = out.html;
  CHECK(page.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(page.find("<script") == std::string::npos);
  CHECK(page.find("&lt;script&gt;alert(1)&lt;/script&gt;.example.org") != std::string::npos);
  CHECK(page.find("http://") == std::string::npos);
  CHECK(page.find("https://") == std::string::npos);
  CHECK(page.find("<svg") != std::string::npos);
  CHECK(page.find('\x1b') == std::string::npos);
}

TEST_CASE("text and HTML renderings replace a C1 control octet by octet", "[report]") {
  // U+0085 (NEL) is well-formed UTF-8 (C2 85) but a control: the terminal
  // sees one '?' and the page one U+FFFD per octet; U+00A0 is no control.
  const Rendered out =
      render("{\"client\":{\"ip\":\"1.2.3.4\"},\"from_domain\":\"c1\\u0085x\\u00a0y.example\",\"action\":\"relayed\"}\n");
  INFO(out.text);
  CHECK(out.text.find("c1??x\xc2\xa0y.example") != std::string::npos);
  CHECK(out.html.find("c1&#xfffd;&#xfffd;x\xc2\xa0y.example") != std::string::npos);
}

TEST_CASE("any octets through json_string parse back as well-formed UTF-8", "[report][audit]") {
  std::mt19937 rng(20261124);
  for (int round = 0; round < 2000; ++round) {
    std::string raw(rng() % 64, '\0');
    for (char& c : raw) c = static_cast<char>(rng() % 256);
    std::string literal = json_string(raw, 40);
    JsonParse p = parse_json(literal);
    INFO(round);
    REQUIRE(p.ok);
    REQUIRE(p.value.type == JsonValue::Type::kString);
    const std::string& s = p.value.string;
    CHECK(s.size() <= 3 * 40);  // cut after 40 octets of input; a U+FFFD is 3 octets for 1
    for (std::size_t i = 0; i < s.size();) {
      unsigned char c = static_cast<unsigned char>(s[i]);
      std::size_t len = c < 0x80 ? 1 : utf8_sequence_length(s, i);
      REQUIRE(len > 0);
      i += len;
    }
  }
}

TEST_CASE("report: over-long lines are skipped within the bound, a last line without LF counts", "[report]") {
  const std::string good = R"({"client":{"ip":"192.0.2.1"},"from_domain":"example.com","action":"relayed"})";
  std::istringstream in(good + "\n" + std::string(kJsonMaxInput + 10, 'x') + "\n" + good + "\n" + good);
  AuditReportBuilder b;
  b.add_stream("f", in);
  AuditReport r = b.finish();
  CHECK(r.records == 3);
  CHECK(r.lines == 4);
  REQUIRE(r.malformed_examples.size() == 1);
  CHECK(r.malformed_examples[0] == "f:2: line longer than " + std::to_string(kJsonMaxInput) + " octets");
}

TEST_CASE("report: the table shows control and bidi characters as '?'", "[report]") {
  AuditReportBuilder b;
  b.add_line("f", 1, R"({"client":{"ip":"192.0.2.1"},"helo":"h\u202eelo\u2066\u200b\u2028","from_domain":"a\u001b[2J\r\u009b.example","spf":{"result":"fail"},"action":"relayed\u0007"})");
  std::ostringstream out;
  print_report_text(b.finish(), out);
  const std::string text = out.str();
  for (const char* bad : {"\x1b", "\r", "\x07", "\xc2\x9b", "\xe2\x80\xae", "\xe2\x81\xa6", "\xe2\x80\x8b", "\xe2\x80\xa8"}) {
    CAPTURE(bad);
    CHECK(text.find(bad) == std::string::npos);
  }
  CHECK(text.find("a?[2j???.example") != std::string::npos);
  CHECK(text.find("h?elo???") != std::string::npos);
  CHECK(text.find("relayed?=1") != std::string::npos);
}
