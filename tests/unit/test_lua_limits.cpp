// The rule limits of issue 17 besides the C built-ins: postern.regex (PCRE2
// under match and depth limits), the byte limits of postern.store, the rate
// limit of rule log output, hits counted on symbols, log lines carrying the
// session and transaction ids, and the rule-call watchdog.
#include <catch2/catch.hpp>

#include <mutex>
#include <string>
#include <thread>

#include "filters/filter_stats.h"
#include "filters/lua/busy_watch.h"
#include "test_lua_util.h"

using postern::FilterStats;
using postern::LuaLogLevel;
using postern::MemoryStore;
using postern::Stage;
using postern::Verdict;
using postern::test::LuaHarness;

namespace {

std::string probe(const std::string& body, const char* on_error = "tempfail") {
  return std::string("postern.rule{name='PROBE', stage='helo', on_error='") + on_error +
         "', fn=function(ctx)\n" + body + "\nend}\n";
}

// Counts what the Lua engine reports, by kind.
struct CountingStats final : FilterStats {
  std::mutex mutex;
  int runs = 0, hits = 0, dropped = 0, busy = 0;
  void dns_answer(postern::DnsStatus, bool, double) override {}
  void lua_rule_run(std::string_view, bool hit, double) override {
    std::lock_guard lock(mutex);
    ++runs;
    hits += hit;
  }
  void lua_rule_failed(std::string_view, std::string_view, RuleFailure) override {}
  void lua_log_dropped(std::string_view) override {
    std::lock_guard lock(mutex);
    ++dropped;
  }
  void lua_thread_busy(std::string_view) override {
    std::lock_guard lock(mutex);
    ++busy;
  }
};

struct StatsScope {
  CountingStats stats;
  StatsScope() { postern::set_filter_stats(&stats); }
  ~StatsScope() { postern::set_filter_stats(nullptr); }
};

}  // namespace

TEST_CASE("lua regex: PCRE2 matches, finds, captures and iterates", "[lua][regex]") {
  LuaHarness h;
  auto f = h.load(probe(R"(
    local out = {}
    local re = postern.regex([[(\w+)@(\w+)\.example]], 'i')
    local user, dom = re:match('Mail: Alice@Mail.EXAMPLE.net')
    out[#out + 1] = user .. '/' .. dom
    local s, e = postern.regex('lottery', 'i'):find('You won the LOTTERY!')
    out[#out + 1] = s .. '-' .. e
    out[#out + 1] = tostring(postern.regex([[^\d{3}-\d{4}$]]):test('555-1234'))
    out[#out + 1] = tostring(postern.regex([[^\d{3}-\d{4}$]]):test('555-12345'))
    local words = {}
    for w in postern.regex([[\b[a-z]+\b]]):gmatch('one two, three') do words[#words + 1] = w end
    out[#out + 1] = table.concat(words, '+')
    local a, b = postern.regex('(x)?(y)'):match('y')
    out[#out + 1] = tostring(a) .. ',' .. b
    out[#out + 1] = tostring(postern.regex('a'):match('bbb'))
    out[#out + 1] = tostring(postern.regex('caf\u{e9}', 'iu'):test('CAF\u{c9}'))
    out[#out + 1] = tostring(postern.regex('x') == postern.regex('x'))
    return postern.reject(table.concat(out, ' '))
  )"));
  CHECK(h.run(*f, Stage::kHelo).text == "Alice/Mail 13-19 true false one+two+three false,y nil true true");
}

TEST_CASE("lua regex: a bad pattern and catastrophic backtracking are rule errors", "[lua][regex]") {
  LuaHarness h;
  auto bad = h.load(probe("postern.regex('(unclosed')"));
  CHECK(h.run(*bad, Stage::kHelo).action == Verdict::Action::kTempfail);
  CHECK(h.logged("postern.regex: missing closing parenthesis"));
  auto flag = h.load(probe("postern.regex('a', 'q')"));
  CHECK(h.run(*flag, Stage::kHelo).action == Verdict::Action::kTempfail);
  CHECK(h.logged("unknown flag"));
  for (const char* pattern : {"(a+)+b", "(a|a)*b", "(a*)*b", "^(\\\\w+\\\\s?)*$"}) {
    LuaHarness g;
    auto f = g.load(probe(std::string("local s = ('a'):rep(60000) .. '!' return postern.reject(tostring(postern.regex('") +
                          pattern + "'):test(s)))"));
    auto start = std::chrono::steady_clock::now();
    Verdict v = g.run(*f, Stage::kHelo);
    INFO(pattern);
    // Either PCRE2 sees through it (JIT auto-possessification) or a limit stops it.
    CHECK((v.text == "false" || g.logged("match limit exceeded")));
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(1));
  }
  LuaHarness g;
  g.options.regex_match_limit = 1000;
  auto f = g.load(probe("return postern.regex('^(a|aa)*$'):test(('a'):rep(40) .. 'b')"));
  CHECK(g.run(*f, Stage::kHelo).action == Verdict::Action::kTempfail);
  CHECK(g.logged("match limit exceeded"));
}

TEST_CASE("store limits: values past store.max_value are refused, the total stays under max_bytes", "[lua][store]") {
  MemoryStore store(1'000'000, 1u << 20);
  std::string value(64 * 1024, 'v');
  for (int i = 0; i < 4000; ++i) store.set_now("k" + std::to_string(i), value, {});
  CHECK(store.bytes() <= (1u << 20));
  CHECK(store.size() < 20);
  CHECK(store.get_now("k3999") == value);  // the newest is kept, older ones were evicted
  store.del_now("k3999");
  store.incr_now("n", 5, {});
  store.add_now("a", "x", {});
  CHECK(store.bytes() <= (1u << 20));
  std::size_t before = store.bytes();
  store.set_now("a", std::string(1000, 'y'), {});
  CHECK(store.bytes() == before + 999);
  store.del_now("a");
  store.del_now("n");
  for (int i = 0; i < 4000; ++i) store.del_now("k" + std::to_string(i));
  CHECK(store.bytes() == 0);

  LuaHarness h;
  h.options.store_max_value = 100;
  auto f = h.load(probe("postern.store.set('k', ('x'):rep(101))"));
  CHECK(h.run(*f, Stage::kHelo).action == Verdict::Action::kTempfail);
  CHECK(h.logged("postern.store.set: value longer than 100 octets (store.max_value)"));
  // store.add has the same bound and names itself; both refuse a table value.
  auto add = h.load(probe("postern.store.add('k2', ('x'):rep(101))"));
  CHECK(h.run(*add, Stage::kHelo).action == Verdict::Action::kTempfail);
  CHECK(h.logged("postern.store.add: value longer than 100 octets (store.max_value)"));
  for (const char* fn : {"set", "add"}) {
    auto table = h.load(probe(std::string("postern.store.") + fn + "('k3', {})"));
    CHECK(h.run(*table, Stage::kHelo).action == Verdict::Action::kTempfail);
    CHECK(h.logged(std::string("postern.store.") + fn + ": the value must be a string or a number"));
  }
  auto ok = h.load(probe("postern.store.set('k', ('x'):rep(100)) return postern.reject(tostring(#postern.store.get('k')))"));
  CHECK(h.run(*ok, Stage::kHelo).text == "100");
}

TEST_CASE("lua log: rule output is rate-limited, drops counted, lines carry the ids", "[lua][log]") {
  StatsScope scope;
  LuaHarness h;
  struct Line {
    std::string session, id, text;
  };
  std::vector<Line> lines;
  h.options.rule_log = [&](LuaLogLevel, std::string_view session, std::string_view id, std::string_view text) {
    lines.push_back({std::string(session), std::string(id), std::string(text)});
  };
  h.options.log_rate = 10;
  h.options.log_burst = 50;
  h.txn.id = "T42";
  // One state for both calls: the bucket and the count of dropped lines are per state.
  // (A global a rule updates is created at the top level: a rule call cannot create one.)
  auto f = h.load("calls = 0\n" + probe("calls = calls + 1 if calls > 1 then print('again') return end "
                                        "for i = 1, 10000 do print('line', i) postern.log('info', 'x') end"));
  const auto started = std::chrono::steady_clock::now();
  CHECK(h.run(*f, Stage::kHelo).action == Verdict::Action::kContinue);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  // The burst, and what the rate refilled while the loop ran (on a slow or
  // loaded machine a refill may let a line through mid-loop, and a notice of
  // the lines dropped before it goes first).
  std::size_t emitted = 0, noticed = 0;
  for (const auto& line : lines) {
    if (line.text.rfind("lua-log-dropped lines=", 0) == 0) {
      noticed += std::stoul(line.text.substr(std::string_view("lua-log-dropped lines=").size()));
    } else {
      ++emitted;
    }
  }
  CHECK(emitted >= 50);
  CHECK(static_cast<double>(emitted) <= 50 + 10 * took + 1);
  CHECK(lines[0].session == "S1");
  CHECK(lines[0].id == "T42");
  CHECK(lines[0].text == "lua-print line\t1");
  CHECK(lines[1].text.find("lua-log rule=PROBE") == 0);
  const std::size_t dropped = 20000 - emitted;
  CHECK(scope.stats.dropped == static_cast<int>(dropped));
  const std::size_t unnoticed = dropped - noticed;  // 0 only if the loop's last line got a token
  // After a pause the bucket refills, and the first line says how many went.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  lines.clear();
  h.run(*f, Stage::kHelo);
  REQUIRE(lines.size() == (unnoticed ? 2u : 1u));
  if (unnoticed) CHECK(lines[0].text.find("lua-log-dropped lines=" + std::to_string(unnoticed) + " ") == 0);
  CHECK(lines.back().text == "lua-print again");
}

TEST_CASE("lua metrics: a rule that adds a symbol counts as a hit", "[lua][metrics]") {
  StatsScope scope;
  LuaHarness h;
  auto f = h.load(R"(
    postern.rule{name='SYM', stage='helo', score=1, fn=function(ctx) ctx:symbol('SYM_EXTRA', 2) end}
    postern.rule{name='NOTHING', stage='helo', fn=function(ctx) end}
    postern.rule{name='TRUE', stage='helo', fn=function(ctx) return true end}
  )");
  h.run(*f, Stage::kHelo);
  CHECK(scope.stats.runs == 3);
  CHECK(scope.stats.hits == 2);
}

TEST_CASE("lua watchdog: a rule call holding the thread past busy_threshold is logged and counted",
          "[lua][watchdog]") {
  StatsScope scope;
  LuaHarness h;
  std::mutex mutex;
  std::vector<std::string> warnings;
  h.options.log = [&](LuaLogLevel, std::string_view line) {
    std::lock_guard lock(mutex);
    warnings.emplace_back(line);
  };
  h.options.busy_threshold = std::chrono::milliseconds(50);
  h.options.timeout = std::chrono::milliseconds(400);
  h.options.instruction_budget = UINT64_MAX / 2;
  auto reports = postern::busy_reports();
  auto f = h.load(probe("while true do end", "continue"));
  CHECK(h.run(*f, Stage::kHelo).action == Verdict::Action::kContinue);
  CHECK(postern::busy_reports() == reports + 1);
  CHECK(scope.stats.busy == 1);
  std::lock_guard lock(mutex);
  bool named = false, ended = false;
  for (const auto& w : warnings) {
    named = named || w.find("io-thread-busy rule=PROBE") == 0;
    ended = ended || w.find("io-thread-busy-end rule=PROBE") == 0;
  }
  CHECK(named);
  CHECK(ended);
  // A short rule is not reported.
  auto quick = h.load(probe("return nil"));
  h.run(*quick, Stage::kHelo);
  CHECK(postern::busy_reports() == reports + 1);
}
