// DMARC aggregate reports from audit lines (filters/audit/dmarc_aggregate.h)
// and the [report] configuration block. The XML's schema validity is tested
// end to end with xmllint (tests/e2e/test_dmarc_report.py).
#include <zlib.h>

#include <catch2/catch.hpp>
#include <map>

#include "config_test_util.h"
#include "filters/audit/dmarc_aggregate.h"

using namespace postern;

namespace {

std::string gunzip(const std::string& gz) {
  z_stream z{};
  REQUIRE(inflateInit2(&z, 15 + 16) == Z_OK);
  std::string out(1 << 20, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(gz.data()));
  z.avail_in = static_cast<uInt>(gz.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  int rc = inflate(&z, Z_FINISH);
  out.resize(out.size() - z.avail_out);
  inflateEnd(&z);
  REQUIRE(rc == Z_STREAM_END);
  return out;
}

std::string line(const std::string& time, const std::string& ip, const std::string& extra_dmarc = "",
                 const std::string& dkim = "[]", const std::string& action = "rejected") {
  return R"({"time":")" + time + R"(","client":{"ip":")" + ip + R"(","name":""},"mail_from":"a@example.com",)"
         R"("from_domain":"example.com","action":")" + action + R"(","dkim":)" + dkim +
         R"(,"spf":{"result":"pass","identity":"mailfrom","domain":"example.com"},)"
         R"("dmarc":{"result":"fail","disposition":"reject","from_domain":"example.com","record_domain":"example.com",)"
         R"("spf_aligned":false,"dkim_aligned":false,"published":{"p":"reject","sp":"reject","adkim":"r","aspf":"r","pct":100})" +
         extra_dmarc + "}}";
}

}  // namespace

TEST_CASE("rua= destinations: mailto only, size suffixes, percent-escapes, bounds", "[dmarc_report]") {
  auto rua = parse_dmarc_rua("v=DMARC1; p=reject; rua=mailto:a@example.com,mailto:b@x.example!10m, "
                             "MAILTO:c@y.example!500, mailto:d@z.example!2k,mailto:e%2Bf@example.com,"
                             "https://example.com/r, mailto:bad, mailto:g@h.example!10x, mailto:i@j.example!");
  REQUIRE(rua.size() == 5);
  CHECK(rua[0].address == "a@example.com");
  CHECK(rua[0].limit == 0);
  CHECK(rua[1].address == "b@x.example");
  CHECK(rua[1].limit == 10u * 1024 * 1024);
  CHECK(rua[2].address == "c@y.example");
  CHECK(rua[2].limit == 500);
  CHECK(rua[3].limit == 2048);
  CHECK(rua[4].address == "e+f@example.com");
  // Not a DMARC record (v= first), or no rua=: nothing.
  CHECK(parse_dmarc_rua("p=reject; v=DMARC1; rua=mailto:a@example.com").empty());
  CHECK(parse_dmarc_rua("v=DMARC1; p=none").empty());
  CHECK(parse_dmarc_rua("v=DMARC1; ruf=mailto:a@example.com").empty());
  // Hostile addresses are dropped; at most 10 are used.
  CHECK(parse_dmarc_rua("v=DMARC1; rua=mailto:a<b>@example.com,mailto:a%0d%0aRCPT@example.com,mailto:@x").empty());
  std::string many = "v=DMARC1; rua=";
  for (int i = 0; i < 30; ++i) many += "mailto:r" + std::to_string(i) + "@example.com,";
  CHECK(parse_dmarc_rua(many).size() == 10);
}

TEST_CASE("rua= mailboxes from hostile DNS: one '@', dot-atom local part, host name, each once", "[dmarc_report]") {
  auto rua = parse_dmarc_rua(
      "v=DMARC1; rua=mailto:a@example.com,mailto:a@EXAMPLE.com!5k,mailto:b@example.com?subject=x%0d%0aBcc:%20c@evil,"
      "mailto:v@evil.example@example.com,mailto:v%40evil.example@example.com,mailto:%22q%22@example.com,"
      "mailto:q%20q@example.com,mailto:x@[192.0.2.1],mailto:.x@example.com,mailto:x..y@example.com,"
      "mailto:x@example,mailto:x@-%0a.example.com,mailto:big@example.com!999999999999t,mailto:U@Example.NET");
  REQUIRE(rua.size() == 4);
  CHECK(rua[0].address == "a@example.com");
  CHECK(rua[0].limit == 0);  // the first of the two kept
  CHECK(rua[1].address == "b@example.com");  // its header fields are not taken
  CHECK(rua[2].address == "big@example.com");
  CHECK(rua[2].limit == UINT64_MAX);  // past 2^64 octets: saturated, not wrapped to a small limit
  CHECK(rua[3].address == "U@example.net");  // the domain lowered, the local part as published
}

TEST_CASE("fo= for policy_published: valid option lists, else 0", "[dmarc_report]") {
  CHECK(parse_dmarc_fo("v=DMARC1; p=none") == "0");
  CHECK(parse_dmarc_fo("v=DMARC1; p=none; fo=1") == "1");
  CHECK(parse_dmarc_fo("v=DMARC1; p=none; FO = d:S") == "d:s");
  CHECK(parse_dmarc_fo("v=DMARC1; fo=0:1:d:s; p=none") == "0:1:d:s");
  for (const char* bad : {"v=DMARC1; fo=", "v=DMARC1; fo=x", "v=DMARC1; fo=1:", "v=DMARC1; fo=<a>", "v=DMARC1; fo=11"}) {
    CAPTURE(bad);
    CHECK(parse_dmarc_fo(bad) == "0");
  }
}

TEST_CASE("source IPs are written in the form the schema's IPAddress accepts", "[dmarc_report]") {
  CHECK(schema_ip("192.0.2.1") == "192.0.2.1");
  CHECK(schema_ip("2001:db8::1") == "2001:db8:0:0:0:0:0:1");
  CHECK(schema_ip("::") == "0:0:0:0:0:0:0:0");
  CHECK(schema_ip("::ffff:198.51.100.7") == "198.51.100.7");
  CHECK(schema_ip("fe80::1%eth0").empty());
  CHECK(schema_ip("").empty());
  CHECK(schema_ip("192.0.2.256").empty());
  CHECK(schema_ip("<script>").empty());
}

TEST_CASE("report dates: days, times with zones, epoch seconds", "[dmarc_report]") {
  CHECK(parse_report_time("2026-11-20") == 1795132800);
  CHECK(parse_report_time("2026-11-20T01:00:00Z") == 1795132800 + 3600);
  CHECK(parse_report_time("2026-11-20T01:00:00.123Z") == 1795132800 + 3600);
  CHECK(parse_report_time("2026-11-20T03:00:00+02:00") == 1795132800 + 3600);
  CHECK(parse_report_time("1795132800") == 1795132800);
  for (const char* bad : {"", "yesterday", "2026-13-01", "2026-11-20T25:00:00Z", "2026-11-20T01:00:00+2",
                          "2026-11-20X", "99999999999999999"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_report_time(bad));
  }
}

TEST_CASE("records group by source, results and overrides; the window and the record are required", "[dmarc_report]") {
  DmarcAggregateBuilder b(1795132800, 1795132800 + 86399);
  b.add_line(line("2026-11-20T10:00:00.000Z", "192.0.2.1"));
  b.add_line(line("2026-11-20T11:00:00.000Z", "192.0.2.1"));
  b.add_line(line("2026-11-20T12:00:00.000Z", "192.0.2.2"));
  b.add_line(line("2026-11-20T12:00:01.000Z", "192.0.2.1", R"(,"override":{"type":"local_policy","comment":"arc"})"));
  b.add_line(line("2026-11-20T12:00:02.000Z", "192.0.2.1", "",
                  R"([{"domain":"esp.example","selector":"s<1>","result":"pass"}])"));
  b.add_line(line("2026-11-21T00:00:00.000Z", "192.0.2.1"));  // after the window
  b.add_line(line("2026-11-19T23:59:59.999Z", "192.0.2.1"));  // before it
  b.add_line("{\"broken");
  auto reports = b.finish();
  REQUIRE(reports.size() == 1);
  const auto& r = reports[0];
  CHECK(r.domain == "example.com");
  CHECK(r.messages == 5);
  REQUIRE(r.rows.size() == 4);
  CHECK(r.rows[0].count == 2);
  CHECK(r.rows[0].source_ip == "192.0.2.1");
  CHECK(b.malformed() == 1);
  CHECK(b.in_range() == 5);

  DmarcReportMeta meta{"Org & Co", "r@reporter.test", "", "reporter.test", 1795132800, 1795132800 + 86399};
  const std::string id = dmarc_report_id(meta, r.domain);
  CHECK(id == "example.com.1795132800.1795219199@reporter.test");
  CHECK(dmarc_report_filename(meta, r.domain) == "reporter.test!example.com!1795132800!1795219199.xml.gz");
  std::string xml = dmarc_report_xml(r, meta, id);
  CHECK(xml.find("<org_name>Org &amp; Co</org_name>") != std::string::npos);
  CHECK(xml.find("<selector>s&lt;1&gt;</selector>") != std::string::npos);
  CHECK(xml.find("<type>local_policy</type>") != std::string::npos);
  CHECK(xml.find("<extra_contact_info>") == std::string::npos);
  CHECK(xml.find("<disposition>reject</disposition>") != std::string::npos);
  CHECK(xml.find("<disposition>none</disposition>") == std::string::npos);
  // gzip round trip, with the member's file name.
  std::string gz = gzip_compress(xml, "x.xml");
  REQUIRE(gz.size() > 18);
  CHECK(static_cast<unsigned char>(gz[0]) == 0x1f);
  CHECK(static_cast<unsigned char>(gz[1]) == 0x8b);
  CHECK(gz.find(std::string("x.xml\0", 6)) != std::string::npos);
  CHECK(gunzip(gz) == xml);
}

TEST_CASE("text outside XML 1.0's Char production is dropped from the report", "[dmarc_report]") {
  // XML 1.0 §2.2: no C0 control but TAB/LF/CR, no U+FFFE or U+FFFF; an XML
  // parser refuses the whole report for one of them.
  DmarcAggregateReport r;
  r.domain = "example.com";
  DmarcReportRow row;
  row.source_ip = "192.0.2.1";
  row.count = 1;
  // a, U+0001, b, U+FFFE, c, U+FFFF, d, U+FFFD, e, U+1F4E7, f
  row.header_from = "a\x01" "b\xef\xbf\xbe" "c\xef\xbf\xbf" "d\xef\xbf\xbd" "e\xf0\x9f\x93\xa7" "f";
  r.rows.push_back(row);
  DmarcReportMeta meta{"Org", "r@reporter.test", "", "reporter.test", 0, 1};
  std::string xml = dmarc_report_xml(r, meta, "id");
  CHECK(xml.find("<header_from>abcd\xef\xbf\xbd" "e\xf0\x9f\x93\xa7" "f</header_from>") != std::string::npos);
}

TEST_CASE("a policy postern did not carry out is reported as what it did", "[dmarc_report]") {
  DmarcAggregateBuilder b(0, 4000000000);
  for (const char* action : {"relayed", "quarantined", "rejected", "discarded", "tempfailed", "redirected"}) {
    b.add_line(line("2026-11-20T10:00:00.000Z", "192.0.2.1", "", "[]", action));
  }
  auto reports = b.finish();
  REQUIRE(reports.size() == 1);
  std::map<std::string, std::size_t> by;
  for (const auto& row : reports[0].rows) {
    by[row.disposition + (row.reasons.empty() ? "" : " " + row.reasons[0].first)] += row.count;
  }
  CHECK(by == std::map<std::string, std::size_t>{{"none local_policy", 2}, {"quarantine local_policy", 1},
                                                 {"reject", 3}});
}

TEST_CASE("a policy domain that is not a host name is not reported", "[dmarc_report]") {
  // It would become a file name, a DNS query and a Subject.
  for (const char* bad : {"../../etc/passwd", "a/b.example", "evil\\r\\nBcc: x@y.example", ".example.com",
                          "example..com", "<script>.example", "nodot", "a b.example"}) {
    CAPTURE(bad);
    DmarcAggregateBuilder b(0, 4000000000);
    std::string l = line("2026-11-20T10:00:00.000Z", "192.0.2.1");
    l.replace(l.find(R"("record_domain":"example.com")"), 29, std::string(R"("record_domain":")") + bad + "\"");
    b.add_line(l);
    CHECK(b.finish().empty());
    CHECK(b.malformed() == 1);
  }
}

TEST_CASE("a domain filter and records without a DMARC record", "[dmarc_report]") {
  DmarcAggregateBuilder b(0, 4000000000, {"other.example"});
  b.add_line(line("2026-11-20T10:00:00.000Z", "192.0.2.1"));
  CHECK(b.finish().empty());
  DmarcAggregateBuilder all(0, 4000000000);
  std::string no_record = line("2026-11-20T10:00:00.000Z", "192.0.2.1");
  no_record.replace(no_record.find(R"("record_domain":"example.com")"), 29, R"("record_domain":"")");
  all.add_line(no_record);
  CHECK(all.finish().empty());
  CHECK(all.without_record() == 1);
}

TEST_CASE("[report] keys are checked; domains default to the signing domains", "[dmarc_report][config]") {
  using postern::test::config_error_of_text;
  using postern::test::load_config_text;
  auto c = load_config_text("[report]\norg_name = \"Org\"\nemail = \"r@example.net\"\ninterval = 3600\n"
                            "domains = [\"example.com\"]\n");
  CHECK(c->report.org_name == "Org");
  CHECK(c->report.email == "r@example.net");
  CHECK(c->report.interval.count() == 3600);
  CHECK(c->report.domains == std::vector<std::string>{"example.com"});
  CHECK_FALSE(c->report.domains_from_signing);
  auto d = load_config_text("[server]\nhostname = \"mx.example.org\"\n");
  CHECK(d->report.org_name == "mx.example.org");
  CHECK(d->report.domains.empty());
  CHECK_THAT(config_error_of_text("[report]\nemail = \"no-at-sign\"\n"), Catch::Contains("report.email"));
  CHECK_THAT(config_error_of_text("[report]\nemail = \"a <b>@example.com\"\n"), Catch::Contains("report.email"));
  CHECK_THAT(config_error_of_text("[report]\ninterval = 60\n"), Catch::Contains("report.interval"));
  CHECK_THAT(config_error_of_text("[report]\ndomains = \"example.com\"\n"), Catch::Contains("report.domains"));
  CHECK_THAT(config_error_of_text("[report]\ndomains = [\"<script>\"]\n"), Catch::Contains("report.domains"));
  CHECK_THAT(config_error_of_text("[report]\nemial = \"x\"\n"), Catch::Contains("did you mean 'email'"));
}
