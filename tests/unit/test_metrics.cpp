// The metrics registry and its Prometheus text exposition (format 0.0.4):
// label and HELP escaping, histogram buckets, reply counting by class and
// enhanced code, the bounded label tables, and the shape of the whole page.
#include <catch2/catch.hpp>

#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "filters/auth/auth_results.h"
#include "proxy/config.h"
#include "proxy/metrics.h"
#include "test_util.h"

namespace m = postern::metrics;

namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

bool has_line(const std::string& text, const std::string& line) {
  for (const auto& l : lines_of(text)) {
    if (l == line) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("label values and HELP text are escaped as the text format requires", "[metrics]") {
  CHECK(m::escape_label_value("plain") == "plain");
  CHECK(m::escape_label_value("a\"b") == "a\\\"b");
  CHECK(m::escape_label_value("a\\b") == "a\\\\b");
  CHECK(m::escape_label_value("a\nb") == "a\\nb");
  CHECK(m::escape_help("back\\slash\nnewline \"quotes\" stay") == "back\\\\slash\\nnewline \"quotes\" stay");
}

TEST_CASE("label values are cut and kept to printable ASCII", "[metrics]") {
  CHECK(m::clean_label_value("RULE_NAME") == "RULE_NAME");
  CHECK(m::clean_label_value(std::string("a\0b\x01\xff", 5)) == "a?b??");
  CHECK(m::clean_label_value(std::string(500, 'x')).size() == m::kMaxLabelValue);
  std::string scratch;
  std::string_view clean = "already.clean";
  CHECK(m::clean_label_value(clean, scratch).data() == clean.data());  // no copy
  CHECK(m::clean_label_value("tab\there", scratch) == "tab?here");
}

TEST_CASE("a histogram counts each observation in the first bucket whose bound holds it", "[metrics]") {
  m::Histogram h;
  h.observe(0.0005);  // exactly on the first bound: le="0.0005"
  h.observe(0.0006);
  h.observe(0.3);
  h.observe(1000);    // above every bound: +Inf only
  h.observe(-1);      // a clock step backwards counts as 0
  auto s = h.snapshot();
  CHECK(s.cumulative[0] == 2);  // 0.0005 and the clamped -1
  CHECK(s.cumulative[1] == 3);  // le=0.001
  CHECK(s.cumulative[8] == 3);  // le=0.25
  CHECK(s.cumulative[9] == 4);  // le=0.5
  CHECK(s.cumulative.back() == 4);
  CHECK(s.count == 5);
  CHECK(s.sum == Approx(0.0005 + 0.0006 + 0.3 + 1000));
  for (std::size_t i = 1; i < s.cumulative.size(); ++i) CHECK(s.cumulative[i] >= s.cumulative[i - 1]);
}

TEST_CASE("replies are counted by class and 4xx/5xx by their enhanced code", "[metrics]") {
  auto r = std::make_unique<m::Registry>();
  // As replies are written: code and text, lines joined by LF; a multi-line
  // reply counts once, by the enhanced code of its last line.
  const std::pair<int, std::string_view> replies[] = {
      {250, "mx.example\nPIPELINING\nSIZE 100"},
      {354, "End data with <CR><LF>.<CR><LF>"},
      {550, "5.7.1 refused"},
      {451, "4.7.9 first\n4.7.0 second"},
      {421, "4.3.2 Service shutting down"},
      {554, "no enhanced code"},
      {550, "5.9.99 outside the table"},
      {452, "4.5.3"},
      {221, "2.0.0 Bye"}};
  for (const auto& [code, text] : replies) m::count_reply(code, text, *r);
  CHECK(r->replies_by_class[2].value() == 2);
  CHECK(r->replies_by_class[3].value() == 1);
  CHECK(r->replies_by_class[4].value() == 3);
  CHECK(r->replies_by_class[5].value() == 3);
  CHECK(r->enhanced[1][7][1].value() == 1);
  CHECK(r->enhanced[0][7][0].value() == 1);
  CHECK(r->enhanced[0][3][2].value() == 1);
  CHECK(r->enhanced[0][5][3].value() == 1);
  CHECK(r->enhanced_none[1].value() == 1);
  CHECK(r->enhanced_other[1].value() == 1);
  const std::string page = r->render();
  CHECK(has_line(page, "postern_replies_total{class=\"4xx\"} 3"));
  CHECK(has_line(page, "postern_replies_enhanced_total{code=\"5.7.1\"} 1"));
  CHECK(has_line(page, "postern_replies_enhanced_total{code=\"4.5.3\"} 1"));
  CHECK(has_line(page, "postern_replies_enhanced_total{code=\"5.none\"} 1"));
  CHECK(has_line(page, "postern_replies_enhanced_total{code=\"5.other\"} 1"));
  CHECK_FALSE(has_line(page, "postern_replies_enhanced_total{code=\"2.0.0\"} 1"));  // 2xx: class only
}

TEST_CASE("a label table holds N keys and puts the rest on one overflow entry", "[metrics]") {
  m::LabelTable<m::Counter, 4> t;
  for (const char* k : {"a", "b", "c", "d", "e", "f", "a", "e"}) t.at(k).inc();
  std::map<std::string, std::uint64_t> seen;
  t.for_each([&](std::string_view k, const m::Counter& c) { seen[std::string(k)] = c.value(); });
  REQUIRE(seen.size() == 5);
  CHECK(seen.count(std::string(m::kOverflowKey)) == 1);
  std::uint64_t total = 0;
  for (const auto& [k, v] : seen) total += v;
  CHECK(total == 8);
  CHECK(seen["a"] == 2);
}

TEST_CASE("a label table inserts each key once when threads race for it", "[metrics]") {
  m::LabelTable<m::Counter, 64> t;
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&t] {
      for (int n = 0; n < 2000; ++n) t.at("key" + std::to_string(n % 20)).inc();
    });
  }
  for (auto& th : threads) th.join();
  std::map<std::string, std::uint64_t> seen;
  t.for_each([&](std::string_view k, const m::Counter& c) { seen[std::string(k)] += c.value(); });
  CHECK(seen.size() == 20);
  for (const auto& [k, v] : seen) CHECK(v == 400);
}

TEST_CASE("transaction results: symbols and SPF/DKIM/DMARC results", "[metrics]") {
  auto r = std::make_unique<m::Registry>();
  postern::TransactionFacts t;
  t.add_symbol({"SPF_PASS", 0, ""});
  t.add_symbol({std::string("we\"ird\\na\nme"), 1, ""});
  postern::SpfOutcome spf;
  spf.result = postern::SpfResult::kPass;
  postern::store(t, spf);
  postern::DkimSignature good, bad;
  good.result = postern::DkimResult::kPass;
  bad.result = postern::DkimResult::kFail;
  postern::store(t, std::vector<postern::DkimSignature>{good, bad});
  postern::DmarcOutcome dmarc;
  dmarc.result = postern::DmarcResult::kFail;
  postern::store(t, dmarc);
  m::transaction_done(t, *r);

  postern::TransactionFacts unsigned_message;
  postern::store(unsigned_message, std::vector<postern::DkimSignature>{});
  m::transaction_done(unsigned_message, *r);

  const std::string page = r->render();
  CHECK(has_line(page, "postern_symbols_total{symbol=\"SPF_PASS\"} 1"));
  CHECK(has_line(page, "postern_symbols_total{symbol=\"we\\\"ird\\\\na?me\"} 1"));
  CHECK(has_line(page, "postern_auth_results_total{method=\"spf\",result=\"pass\"} 1"));
  CHECK(has_line(page, "postern_auth_results_total{method=\"dkim\",result=\"pass\"} 1"));
  CHECK(has_line(page, "postern_auth_results_total{method=\"dkim\",result=\"fail\"} 1"));
  CHECK(has_line(page, "postern_auth_results_total{method=\"dkim\",result=\"none\"} 1"));
  CHECK(has_line(page, "postern_auth_results_total{method=\"dmarc\",result=\"fail\"} 1"));
  CHECK(has_line(page, "postern_auth_results_total{method=\"dmarc\",result=\"pass\"} 0"));
}

TEST_CASE("the page is well-formed: one HELP and TYPE per family, samples grouped after them", "[metrics]") {
  auto r = std::make_unique<m::Registry>();
  r->filter_duration[2].observe(0.003);
  r->upstream_reply_duration[0].observe(0.2);
  r->listeners.at("127.0.0.1:25").total.inc();
  m::count_reply(250, "2.0.0 Ok", *r);
  const std::string page = r->render();

  static const std::regex sample(
      R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*")(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*")*\})? ([-+]?[0-9.eE+-]+|\+Inf|NaN)$)");
  static const std::regex help(R"(^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .+$)");
  static const std::regex type(R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$)");
  std::map<std::string, std::string> types;
  std::set<std::string> helped, finished;
  std::string current;
  for (const std::string& line : lines_of(page)) {
    std::smatch mt;
    if (std::regex_match(line, mt, help)) {
      CHECK(helped.insert(mt[1]).second);
      continue;
    }
    if (std::regex_match(line, mt, type)) {
      INFO(line);
      CHECK(types.emplace(mt[1], mt[2]).second);
      CHECK(helped.count(mt[1]) == 1);
      if (!current.empty()) finished.insert(current);
      current = mt[1];
      CHECK(finished.count(current) == 0);
      if (mt[2] == "counter") CHECK(current.size() > 6);
      if (mt[2] == "counter") CHECK(current.substr(current.size() - 6) == "_total");
      if (mt[2] == "histogram") CHECK(current.substr(current.size() - 8) == "_seconds");
      continue;
    }
    INFO(line);
    REQUIRE(std::regex_match(line, mt, sample));
    std::string name = mt[1];
    std::string family = name;
    if (types[current] == "histogram") {
      for (const char* suffix : {"_bucket", "_sum", "_count"}) {
        std::string s = suffix;
        if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
          family = name.substr(0, name.size() - s.size());
        }
      }
    }
    CHECK(family == current);  // a sample of the family whose TYPE came last
  }
  CHECK(has_line(page, "postern_sessions_total{listener=\"127.0.0.1:25\"} 1"));
  CHECK(has_line(page, "postern_filter_duration_seconds_bucket{stage=\"mail\",le=\"0.0025\"} 0"));
  CHECK(has_line(page, "postern_filter_duration_seconds_bucket{stage=\"mail\",le=\"0.005\"} 1"));
  CHECK(has_line(page, "postern_filter_duration_seconds_bucket{stage=\"mail\",le=\"+Inf\"} 1"));
  CHECK(has_line(page, "postern_filter_duration_seconds_count{stage=\"mail\"} 1"));
  CHECK(has_line(page, "postern_upstream_reply_duration_seconds_count{command=\"greeting\"} 1"));
  CHECK(has_line(page, "postern_replies_total{class=\"2xx\"} 1"));
  CHECK(page.find("postern_build_info{version=\"") != std::string::npos);
}

TEST_CASE("upstream.probe_interval paces the probe behind /healthz", "[metrics]") {
  postern::test::TempDir dir;
  const std::string path = dir.write("p.toml", "[upstream]\ntarget = \"127.0.0.1:10025\"\nprobe_interval = 2.5\n");
  auto config = postern::load_config(postern::ConfigSource{path, {}, {}, {}});
  CHECK(config->upstream.probe_interval.count() == 2.5);
  CHECK(postern::load_config(postern::ConfigSource{dir.write("d.toml", "[metrics]\naddress = \"127.0.0.1:9425\"\n"),
                                                   {}, {}, {}})->upstream.probe_interval.count() == 300);
  const std::string bad = dir.write("b.toml", "[upstream]\ntarget = \"127.0.0.1:10025\"\nprobe_interval = 0\n");
  try {
    postern::load_config(postern::ConfigSource{bad, {}, {}, {}});
    FAIL("probe_interval = 0 was accepted");
  } catch (const postern::ConfigError& e) {
    CHECK_THAT(e.what(), Catch::Contains("b.toml:3") && Catch::Contains("upstream.probe_interval"));
  }
}
