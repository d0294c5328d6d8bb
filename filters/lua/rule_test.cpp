// The offline rule runner behind `postern test`; see rule_test.h and
// docs/first-rule.md for the fixture format.
#include "filters/lua/rule_test.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <toml++/toml.h>

#include "filters/auth/auth_filters.h"
#include "filters/dns/resolver.h"
#include "filters/dns/unbound_resolver.h"
#include "filters/lua/lua_filter.h"
#include "filters/lua/toml_setting.h"
#include "filters/store/kv_store.h"
#include "filters/spool.h"
#include "filters/text/ascii.h"

namespace postern {
namespace {

namespace fs = std::filesystem;

// DNS answers given by the fixture; anything else is NXDOMAIN.
class StaticResolver final : public Resolver {
 public:
  void add(std::string name, DnsType type, DnsAnswer answer) {
    if (!name.empty() && name.back() == '.') name.pop_back();
    answers_[{ascii::to_lower(name), type}] = std::move(answer);
  }
  asio::awaitable<DnsAnswer> query(std::string name, DnsType type) override {
    queries_.push_back(name);
    auto it = answers_.find({ascii::to_lower(name), type});
    if (it != answers_.end()) co_return it->second;
    DnsAnswer nx;
    nx.status = DnsStatus::kNxDomain;
    co_return nx;
  }
  const std::vector<std::string>& queries() const { return queries_; }

 private:
  std::map<std::pair<std::string, DnsType>, DnsAnswer> answers_;
  std::vector<std::string> queries_;
};

struct FixtureError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string where(const toml::node& n) {
  std::ostringstream out;
  if (n.source().path) out << *n.source().path << ':' << n.source().begin.line << ": ";
  return out.str();
}

std::string get_string(const toml::table& t, std::string_view key, std::string fallback = "") {
  const toml::node* n = t.get(key);
  if (!n) return fallback;
  if (!n->is_string()) throw FixtureError(where(*n) + "'" + std::string(key) + "' must be a string");
  return n->as_string()->get();
}

std::vector<std::string> get_strings(const toml::table& t, std::string_view key) {
  std::vector<std::string> out;
  const toml::node* n = t.get(key);
  if (!n) return out;
  if (n->is_string()) return {n->as_string()->get()};
  const toml::array* arr = n->as_array();
  if (!arr) throw FixtureError(where(*n) + "'" + std::string(key) + "' must be a string or a list of strings");
  for (const toml::node& item : *arr) {
    if (!item.is_string()) throw FixtureError(where(item) + "'" + std::string(key) + "' must hold strings");
    out.push_back(item.as_string()->get());
  }
  return out;
}

Mailbox mailbox(const std::string& text, bool allow_null) {
  if (allow_null && (text.empty() || text == "<>")) return {};
  std::string path = !text.empty() && text.front() == '<' ? text : "<" + text + ">";
  PathParse p = parse_path(path, allow_null, true);
  if (p.error != PathError::kNone) throw FixtureError("not an address: \"" + text + "\"");
  return p.mailbox;
}

DnsType dns_type(const std::string& name, const toml::node& at) {
  static const std::pair<const char*, DnsType> kTypes[] = {{"A", DnsType::kA},     {"AAAA", DnsType::kAaaa},
                                                           {"MX", DnsType::kMx},   {"TXT", DnsType::kTxt},
                                                           {"PTR", DnsType::kPtr}, {"NS", DnsType::kNs},
                                                           {"CNAME", DnsType::kCname}};
  for (auto& [n, t] : kTypes) {
    if (name == n) return t;
  }
  throw FixtureError(where(at) + "unknown DNS type \"" + name + "\"");
}

DnsStatus dns_status(const std::string& name, const toml::node& at) {
  static const std::pair<const char*, DnsStatus> kStatus[] = {{"ok", DnsStatus::kOk},
                                                              {"nxdomain", DnsStatus::kNxDomain},
                                                              {"nodata", DnsStatus::kNoData},
                                                              {"servfail", DnsStatus::kServFail},
                                                              {"timeout", DnsStatus::kTimeout}};
  for (auto& [n, s] : kStatus) {
    if (name == n) return s;
  }
  throw FixtureError(where(at) + "unknown DNS status \"" + name + "\"");
}

// What one run of a session through the rules produced.
struct Outcome {
  std::string verdict = "accept";  // relayed when no rule decided
  std::string stage;
  Verdict decided;
  TransactionFacts txn;
  std::vector<std::string> rcpt_refused;
};

// A [[dns]] record as libunbound local data: "name. 300 IN TYPE rdata", a
// TXT value quoted in strings of at most 255 octets (RFC 1035 §3.3.14).
std::string local_record(std::string name, const std::string& type, const std::string& value) {
  if (name.empty() || name.back() != '.') name += '.';
  std::string rdata = value;
  if (type == "TXT") {
    rdata.clear();
    std::size_t i = 0;
    do {
      std::string quoted = "\"";
      for (char c : value.substr(i, 255)) {
        if (c == '"' || c == '\\') quoted += '\\';
        quoted += c;
      }
      rdata += (rdata.empty() ? "" : " ") + quoted + "\"";
      i += 255;
    } while (i < value.size());
  }
  return name + " 300 IN " + type + " " + rdata;
}

struct Fixture {
  std::string path;
  std::string eml;  // message content with CRLF line ends; empty = no DATA
  SessionFacts session;
  Mailbox from;
  std::vector<Mailbox> rcpts;
  std::vector<const toml::table*> expects;
};

asio::awaitable<Verdict> run_stage(const FilterChain& chain, SessionFacts& session, TransactionFacts& txn, Stage s) {
  FilterContext ctx{s, session, txn};
  co_return co_await chain.run(ctx);
}

asio::awaitable<void> run_session(const FilterChain& chain, const Fixture& fx, Outcome& out) {
  // As the session does: content taps (DKIM body hashing) see the content
  // as it is spooled.
  Spool spool(fx.eml.size() + 1, "");
  SessionFacts session = fx.session;
  TransactionFacts txn;
  auto decide = [&](Stage s, const Verdict& v) {
    if (s < Stage::kMail) {  // no transaction yet: report the session's symbols
      for (const Symbol& sym : session.symbols) txn.add_symbol(sym);
    }
    out.decided = v;
    out.stage = stage_name(s);
    out.verdict = action_name(v.action);
  };
  for (Stage s : {Stage::kConnect, Stage::kHelo}) {
    Verdict v = co_await run_stage(chain, session, txn, s);
    if (v.decisive()) {
      decide(s, v);
      out.txn = txn;
      co_return;
    }
  }
  txn.id = "T1";
  txn.reverse_path = fx.from;
  Verdict v = co_await run_stage(chain, session, txn, Stage::kMail);
  if (v.decisive()) {
    decide(Stage::kMail, v);
    out.txn = txn;
    co_return;
  }
  for (const Mailbox& rcpt : fx.rcpts) {
    txn.current_rcpt = rcpt;
    Verdict r = co_await run_stage(chain, session, txn, Stage::kRcpt);
    txn.current_rcpt.reset();
    if (r.action == Verdict::Action::kReject || r.action == Verdict::Action::kTempfail) {
      out.rcpt_refused.push_back(rcpt.str());
      decide(Stage::kRcpt, r);  // stands only when every recipient is refused
      continue;
    }
    if (r.decisive()) {
      decide(Stage::kRcpt, r);
      out.txn = txn;
      co_return;
    }
    txn.recipients.push_back(rcpt);
  }
  if (txn.recipients.empty()) {
    out.txn = txn;
    co_return;
  }
  out.verdict = "accept";
  out.stage.clear();
  if (!fx.eml.empty()) {
    chain.add_content_taps(FilterContext{Stage::kData, session, txn}, spool);
    spool.append(fx.eml);
    spool.finish();
    Message message(spool);
    txn.message = &message;
    Verdict d = co_await run_stage(chain, session, txn, Stage::kData);
    if (d.decisive()) decide(Stage::kData, d);
    else if (Verdict e = co_await run_stage(chain, session, txn, Stage::kEom); e.decisive()) decide(Stage::kEom, e);
    txn.message = nullptr;
  }
  co_await run_stage(chain, session, txn, Stage::kClose);
  out.txn = std::move(txn);
}

// Compares `out` with one [expect] table; returns the mismatches.
std::vector<std::string> compare(const toml::table& expect, const Outcome& out) {
  std::vector<std::string> bad;
  std::string want = get_string(expect, "verdict", "");
  if (!want.empty() && want != out.verdict) bad.push_back("verdict " + want + ", got " + out.verdict);
  std::string stage = get_string(expect, "stage", "");
  if (!stage.empty() && stage != out.stage) bad.push_back("decided at " + stage + ", got " + (out.stage.empty() ? "none" : out.stage));
  if (const toml::node* n = expect.get("code")) {
    if (n->value<int64_t>().value_or(-1) != out.decided.code) bad.push_back("code " + std::to_string(n->value<int64_t>().value_or(-1)) + ", got " + std::to_string(out.decided.code));
  }
  std::string text = get_string(expect, "text_contains", "");
  if (!text.empty() && out.decided.text.find(text) == std::string::npos) bad.push_back("text containing \"" + text + "\", got \"" + out.decided.text + "\"");
  auto has_symbol = [&](const std::string& name) {
    return std::any_of(out.txn.symbols.begin(), out.txn.symbols.end(), [&](const Symbol& s) { return s.name == name; });
  };
  for (const std::string& s : get_strings(expect, "symbols")) {
    if (!has_symbol(s)) bad.push_back("symbol " + s);
  }
  for (const std::string& s : get_strings(expect, "no_symbols")) {
    if (has_symbol(s)) bad.push_back("no symbol " + s);
  }
  if (auto v = expect["score_min"].value<double>(); v && out.txn.score < *v) bad.push_back("score >= " + std::to_string(*v));
  if (auto v = expect["score_max"].value<double>(); v && out.txn.score > *v) bad.push_back("score <= " + std::to_string(*v));
  for (const std::string& h : get_strings(expect, "added_headers")) {
    bool found = std::any_of(out.txn.changes.headers.begin(), out.txn.changes.headers.end(), [&](const HeaderEdit& e) {
      return (e.kind == HeaderEdit::Kind::kAdd || e.kind == HeaderEdit::Kind::kPrepend ||
              e.kind == HeaderEdit::Kind::kInsert) && ascii::to_lower(e.name) == ascii::to_lower(h);
    });
    if (!found) bad.push_back("added header " + h);
  }
  if (const toml::node* n = expect.get("subject_tag")) {
    std::string tag = n->value<std::string>().value_or("");
    if (tag != out.txn.changes.subject_tag) bad.push_back("subject tag \"" + tag + "\", got \"" + out.txn.changes.subject_tag + "\"");
  }
  for (const std::string& r : get_strings(expect, "added_rcpts")) {
    bool found = std::any_of(out.txn.changes.add_recipients.begin(), out.txn.changes.add_recipients.end(),
                             [&](const Mailbox& m) { return m.str() == r; });
    if (!found) bad.push_back("added recipient " + r);
  }
  for (const std::string& r : get_strings(expect, "refused_rcpts")) {
    if (std::find(out.rcpt_refused.begin(), out.rcpt_refused.end(), r) == out.rcpt_refused.end()) bad.push_back("refused recipient " + r);
  }
  return bad;
}

std::string describe(const Outcome& out) {
  std::string s = out.verdict + (out.stage.empty() ? "" : " at " + out.stage);
  if (out.decided.code) s += " " + std::to_string(out.decided.code);
  if (!out.decided.text.empty()) s += " \"" + out.decided.text + "\"";
  char score[32];
  std::snprintf(score, sizeof score, "%.2f", out.txn.score);
  s += std::string("; score ") + score + "; symbols:";
  for (const Symbol& sym : out.txn.symbols) s += " " + sym.name;
  return s;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FixtureError(path.string() + ": cannot read");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A message file as spooled content: CRLF line ends, nothing unstuffed.
std::string to_crlf(const std::string& text) {
  std::string out;
  out.reserve(text.size() + text.size() / 32);
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\n' && (i == 0 || text[i - 1] != '\r')) out.push_back('\r');
    out.push_back(text[i]);
  }
  if (!out.empty() && out.back() != '\n') out += "\r\n";
  return out;
}

// Runs one fixture; returns 0 pass, 1 fail, 2 error.
int run_fixture(const std::string& path, const RuleTestOptions& options, std::ostream& out) {
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    out << "ERROR " << path << ":" << e.source().begin.line << ": " << e.description() << "\n";
    return 2;
  }
  fs::path base = fs::path(path).parent_path();
  auto resolve = [&](const std::string& p) { return fs::path(p).is_absolute() ? p : (base / p).lexically_normal().string(); };
  std::vector<std::string> logs;
  try {
    Fixture fx;
    fx.path = path;
    LuaOptions lua = options.lua;
    std::vector<std::string> scripts = get_strings(root, "scripts");
    if (!scripts.empty()) {
      lua.scripts.clear();
      for (const std::string& s : scripts) lua.scripts.push_back(resolve(s));
    }
    for (const std::string& s : get_strings(root, "module_path")) lua.module_path.push_back(resolve(s));
    if (const toml::node* n = root.get("settings")) lua.settings = lua_setting_from_toml(*n);
    lua.log = [&logs](LuaLogLevel, std::string_view line) { logs.emplace_back(line); };
    auto store = std::make_shared<MemoryStore>(lua.store_max_entries);
    lua.store = store;

    std::string eml = get_string(root, "eml");
    if (!eml.empty()) fx.eml = to_crlf(read_file(resolve(eml)));
    if (const toml::table* c = root["client"].as_table()) {
      fx.session.client_ip = get_string(*c, "ip", "192.0.2.1");
      fx.session.client_port = static_cast<unsigned short>((*c)["port"].value<int64_t>().value_or(40000));
      fx.session.client_name = get_string(*c, "name");
      fx.session.helo = get_string(*c, "helo", "client.example.org");
      fx.session.auth_user = get_string(*c, "auth_user");
      fx.session.tls.active = (*c)["tls"].value<bool>().value_or(false);
      if (fx.session.tls.active) fx.session.tls.version = "TLSv1.3";
    } else {
      fx.session.client_ip = "192.0.2.1";
      fx.session.helo = "client.example.org";
    }
    fx.session.esmtp = true;
    fx.session.id = "test";
    if (const toml::table* e = root["envelope"].as_table()) {
      fx.from = mailbox(get_string(*e, "from"), true);
      for (const std::string& r : get_strings(*e, "rcpts")) fx.rcpts.push_back(mailbox(r, false));
    }
    if (fx.rcpts.empty()) fx.rcpts.push_back(Mailbox{"postmaster", "example.com"});

    StaticResolver dns;
    std::vector<std::string> local_data;  // the same records for the authenticity checks
    if (const toml::array* records = root["dns"].as_array()) {
      for (const toml::node& item : *records) {
        const toml::table* t = item.as_table();
        if (!t) throw FixtureError(where(item) + "[[dns]] entries are tables");
        DnsAnswer answer;
        answer.records = get_strings(*t, "records");
        answer.status = dns_status(get_string(*t, "status", "ok"), item);
        answer.ttl = 300;
        std::string type = get_string(*t, "type", "A");
        dns.add(get_string(*t, "name"), dns_type(type, item), answer);
        if (answer.status == DnsStatus::kOk) {
          for (const std::string& r : answer.records) local_data.push_back(local_record(get_string(*t, "name"), type, r));
        }
      }
    }

    if (const toml::node* n = root.get("expect")) {
      if (const toml::table* t = n->as_table()) fx.expects.push_back(t);
      else if (const toml::array* arr = n->as_array()) {
        for (const toml::node& item : *arr) {
          if (!item.as_table()) throw FixtureError(where(item) + "[[expect]] entries are tables");
          fx.expects.push_back(item.as_table());
        }
      }
    }
    if (fx.expects.empty()) throw FixtureError(path + ": no [expect] table");

    ScoreThresholds scores = options.scores;
    if (const toml::table* s = root["scores"].as_table()) {
      scores.add_header = (*s)["add_header"].value<double>().value_or(scores.add_header);
      scores.quarantine = (*s)["quarantine"].value<double>().value_or(scores.quarantine);
      scores.reject = (*s)["reject"].value<double>().value_or(scores.reject);
    }

    std::shared_ptr<Filter> filter;
    try {
      filter = make_lua_filter(lua, &dns);
    } catch (const LuaLoadError& e) {
      out << "ERROR " << path << ": " << e.what() << "\n";
      return 2;
    }
    // authenticity = true: the real checks first, as in the proxy's chain.
    std::vector<std::shared_ptr<Filter>> filters;
    std::shared_ptr<Resolver> auth_dns;
    if (root["authenticity"].value<bool>().value_or(false)) {
      DnsOptions dns_options;
      dns_options.local_data = local_data;
      if (local_data.empty()) dns_options.local_data.push_back("postern.invalid. 300 IN A 192.0.2.1");
      dns_options.timeout = std::chrono::milliseconds(2000);
      dns_options.client_name = false;
      auth_dns = make_resolver(dns_options, {});
      AuthOptions auth = options.auth;
      auth.spf.enabled = auth.dkim.enabled = auth.dmarc.enabled = auth.authentication_results.enabled = true;
      if (auth.hostname.empty()) auth.hostname = "postern.test";
      filters = make_auth_filters(auth, auth_dns);
    }
    filters.push_back(filter);
    FilterChain chain(std::move(filters), scores);
    std::vector<std::string> failures;
    for (std::size_t run = 0; run < fx.expects.size(); ++run) {
      Outcome outcome;
      asio::io_context io;
      std::exception_ptr error;
      asio::co_spawn(io, run_session(chain, fx, outcome), [&](std::exception_ptr e) { error = e; });
      io.run();
      if (error) std::rethrow_exception(error);
      std::string label = fx.expects.size() > 1 ? "run " + std::to_string(run + 1) + ": " : "";
      for (const std::string& miss : compare(*fx.expects[run], outcome)) {
        failures.push_back(label + "expected " + miss);
      }
      if (options.verbose || !failures.empty()) {
        failures.push_back(label + "outcome: " + describe(outcome));
        if (failures.size() == 1) {  // verbose and passing: not a failure
          out << "  " << path << ": " << failures.back() << "\n";
          failures.clear();
        }
      }
    }
    std::string description = get_string(root, "description");
    if (failures.empty()) {
      out << "PASS " << path << (description.empty() ? "" : " (" + description + ")") << "\n";
      return 0;
    }
    out << "FAIL " << path << (description.empty() ? "" : " (" + description + ")") << "\n";
    for (const std::string& f : failures) out << "  " << f << "\n";
    for (const std::string& l : logs) out << "  log: " << l << "\n";
    return 1;
  } catch (const std::exception& e) {
    out << "ERROR " << path << ": " << e.what() << "\n";
    return 2;
  }
}

}  // namespace

int run_rule_tests(const std::vector<std::string>& fixtures, const RuleTestOptions& options, std::ostream& out) {
  std::vector<std::string> files;
  for (const std::string& f : fixtures) {
    std::error_code ec;
    if (fs::is_directory(f, ec)) {
      std::vector<std::string> found;
      for (const auto& de : fs::directory_iterator(f, ec)) {
        if (de.path().extension() == ".toml") found.push_back(de.path().string());
      }
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else {
      files.push_back(f);
    }
  }
  int passed = 0, failed = 0, errors = 0;
  for (const std::string& f : files) {
    int r = run_fixture(f, options, out);
    (r == 0 ? passed : r == 1 ? failed : errors)++;
  }
  out << passed << " passed, " << failed << " failed, " << errors << " errors\n";
  if (errors) return 2;
  return failed ? 1 : 0;
}

}  // namespace postern
