// TOML configuration loader: schema checks with file:line positions,
// "did you mean" for unknown keys, and command-line overrides.
#include "proxy/config.h"

#include <arpa/inet.h>
#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <filesystem>
#include <fstream>
#include <span>
#include <sstream>
#include <string_view>
#include <fmt/format.h>
#include <toml++/toml.h>

#include "default_config.h"
#include "filters/arc/arc_seal.h"
#include "filters/dkim/dkim_signer.h"
#include "filters/lua/toml_setting.h"
#include "filters/text/ascii.h"
#include "proxy/limits.h"

namespace postern {
namespace {

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string describe(const toml::node& n) {
  std::ostringstream out;
  if (n.is_string()) out << '"' << n.as_string()->get() << '"';
  else if (n.is_table()) out << "a table";
  else if (n.is_array()) out << "an array";
  else out << toml::node_view<const toml::node>(n);
  return out.str();
}

// Collects every problem with its position, then throws them together.
class Checker {
 public:
  explicit Checker(std::string file) : file_(std::move(file)) {}

  void error(const toml::node* n, std::string_view key, std::string_view what) {
    std::ostringstream out;
    const toml::source_region* where = n ? &n->source() : nullptr;
    if (where && where->path && *where->path == file_ && where->begin.line > 0) {
      out << file_ << ':' << where->begin.line << ':' << where->begin.column << ": ";
    } else if (where && where->path) {
      out << *where->path << ": ";  // a command-line override: "--set KEY=VALUE"
    } else {
      out << file_ << ": ";
    }
    out << "key '" << key << "': " << what;
    errors_.push_back(out.str());
  }

  // Unknown keys are errors, with the nearest known key suggested.
  void check_keys(const toml::table& t, std::string_view section,
                  std::initializer_list<std::string_view> known) {
    check_keys(t, section, std::span<const std::string_view>(known.begin(), known.size()));
  }
  void check_keys(const toml::table& t, std::string_view section, std::span<const std::string_view> known) {
    for (auto&& [k, v] : t) {
      std::string_view key = k.str();
      if (std::find(known.begin(), known.end(), key) != known.end()) continue;
      std::string full = section.empty() ? std::string(key) : std::string(section) + "." + std::string(key);
      std::string what = "unknown key";
      std::string_view best;
      std::size_t best_d = 3;
      for (std::string_view cand : known) {
        std::size_t d = edit_distance(key, cand);
        if (d < best_d) best_d = d, best = cand;
      }
      if (!best.empty()) what += "; did you mean '" + std::string(best) + "'?";
      else {
        what += "; allowed:";
        for (std::string_view cand : known) what += " " + std::string(cand);
      }
      error(&v, full, what);
    }
  }

  const toml::table* section(const toml::table& root, std::string_view name) {
    const toml::node* n = root.get(name);
    if (!n) return nullptr;
    if (!n->is_table()) {
      error(n, name, "expected a table [" + std::string(name) + "], got " + describe(*n));
      return nullptr;
    }
    return n->as_table();
  }

  void get_size(const toml::table* t, std::string_view section, std::string_view key,
                std::size_t min, std::size_t max, std::size_t& out) {
    const toml::node* n = t ? t->get(key) : nullptr;
    if (!n) return;
    auto v = n->value<int64_t>();
    if (!n->is_integer() || !v || *v < 0 || static_cast<uint64_t>(*v) < min || static_cast<uint64_t>(*v) > max) {
      error(n, full(section, key), "expected an integer from " + std::to_string(min) + " to " +
                                       std::to_string(max) + ", got " + describe(*n));
      return;
    }
    out = static_cast<std::size_t>(*v);
  }

  void get_seconds(const toml::table* t, std::string_view section, std::string_view key,
                   double min, double max, Seconds& out) {
    const toml::node* n = t ? t->get(key) : nullptr;
    if (!n) return;
    auto v = n->value<double>();
    if (!(n->is_integer() || n->is_floating_point()) || !v || !(*v >= min && *v <= max)) {  // NaN too
      std::ostringstream what;
      what << "expected a number of seconds from " << min << " to " << max << ", got " << describe(*n);
      error(n, full(section, key), what.str());
      return;
    }
    out = Seconds(*v);
  }

  const toml::node* get_string(const toml::table* t, std::string_view section,
                               std::string_view key, std::string& out) {
    const toml::node* n = t ? t->get(key) : nullptr;
    if (!n) return nullptr;
    if (!n->is_string()) {
      error(n, full(section, key), "expected a string, got " + describe(*n));
      return nullptr;
    }
    out = n->as_string()->get();
    return n;
  }

  void get_bool(const toml::table* t, std::string_view section, std::string_view key, bool& out) {
    const toml::node* n = t ? t->get(key) : nullptr;
    if (!n) return;
    if (!n->is_boolean()) {
      error(n, full(section, key), "expected true or false, got " + describe(*n));
      return;
    }
    out = n->as_boolean()->get();
  }

  // A duration in milliseconds, written in seconds.
  void get_ms(const toml::table* t, std::string_view section, std::string_view key, double min, double max,
              std::chrono::milliseconds& out) {
    Seconds v = std::chrono::duration_cast<Seconds>(out);
    get_seconds(t, section, key, min, max, v);
    out = std::chrono::milliseconds(static_cast<long long>(v.count() * 1000));
  }

  // A check's score (score_pass, score_fail...): negative rewards, positive penalises.
  void get_score(const toml::table* t, std::string_view section, std::string_view key, double& out) {
    const toml::node* n = t ? t->get(key) : nullptr;
    if (!n) return;
    auto v = n->value<double>();
    if (!(n->is_integer() || n->is_floating_point()) || !v || !(*v >= -1e6 && *v <= 1e6)) {
      error(n, full(section, key), "expected a score from -1000000 to 1000000, got " + describe(*n));
      return;
    }
    out = *v;
  }

  template <typename E>
  void get_enum(const toml::table* t, std::string_view section, std::string_view key,
                std::initializer_list<std::pair<std::string_view, E>> allowed, E& out) {
    std::string s;
    const toml::node* n = get_string(t, section, key, s);
    if (!n) return;
    std::string names;
    for (auto& [name, value] : allowed) {
      if (name == s) {
        out = value;
        return;
      }
      names += names.empty() ? "" : ", ";
      names += '"' + std::string(name) + '"';
    }
    error(n, full(section, key), "expected one of " + names + ", got \"" + s + '"');
  }

  void finish() {
    if (errors_.empty()) return;
    std::string all;
    for (auto& e : errors_) all += e + "\n";
    all.pop_back();
    throw ConfigError(all);
  }

 private:
  static std::string full(std::string_view section, std::string_view key) {
    return std::string(section) + "." + std::string(key);
  }

  std::string file_;
  std::vector<std::string> errors_;
};

// [[milter]] entries (docs/configuration.md "[[milter]]").
void parse_milters(Checker& check, const toml::table& root, Config& config) {
  const toml::node* n = root.get("milter");
  if (!n) return;
  const toml::array* arr = n->as_array();
  if (!arr || !arr->is_array_of_tables()) {
    check.error(n, "milter", "expected [[milter]] tables, got " + describe(*n));
    return;
  }
  auto ms = [](Seconds s) { return std::chrono::milliseconds(static_cast<long long>(s.count() * 1000)); };
  for (const toml::node& item : *arr) {
    const toml::table& t = *item.as_table();
    check.check_keys(t, "milter", {"name", "socket", "connect_timeout", "command_timeout", "eom_timeout",
                                   "on_error", "macros"});
    MilterOptions m;
    m.hostname = config.server.hostname;
    m.max_body = config.limits.message_size;
    const toml::node* name = check.get_string(&t, "milter", "name", m.name);
    if (!name) check.error(&item, "milter.name", "required");
    for (const MilterOptions& other : config.milters) {
      if (name && other.name == m.name) check.error(name, "milter.name", "duplicate name \"" + m.name + "\"");
    }
    const toml::node* socket = check.get_string(&t, "milter", "socket", m.socket);
    if (!socket) check.error(&item, "milter.socket", "required (inet:HOST:PORT or unix:PATH)");
    else if (std::string e = parse_milter_socket(m.socket, m); !e.empty()) check.error(socket, "milter.socket", e);
    Seconds connect(10), command(30), eom(120);
    check.get_seconds(&t, "milter", "connect_timeout", 0.1, 600, connect);
    check.get_seconds(&t, "milter", "command_timeout", 0.1, 3600, command);
    check.get_seconds(&t, "milter", "eom_timeout", 0.1, 3600, eom);
    m.connect_timeout = ms(connect), m.command_timeout = ms(command), m.eom_timeout = ms(eom);
    using E = MilterOptions::OnError;
    check.get_enum<E>(&t, "milter", "on_error", {{"tempfail", E::kTempfail}, {"accept", E::kAccept},
                                                 {"reject", E::kReject}}, m.on_error);
    m.macros = milter_known_macros();
    if (const toml::node* macros = t.get("macros")) {
      const toml::array* list = macros->as_array();
      m.macros.clear();
      if (!list) check.error(macros, "milter.macros", "expected an array of macro names");
      for (const toml::node& mn : list ? *list : toml::array{}) {
        const auto* s = mn.as_string();
        const auto& known = milter_known_macros();
        if (!s || std::find(known.begin(), known.end(), s->get()) == known.end()) {
          std::string all;
          for (const std::string& k : known) all += " " + k;
          check.error(&mn, "milter.macros", "unknown macro " + describe(mn) + "; known:" + all);
          continue;
        }
        m.macros.push_back(s->get());
      }
    }
    config.milters.push_back(std::move(m));
  }
}

// "ip:port" or "[ipv6]:port"; an empty host is refused.
bool parse_host_port(std::string_view text, std::string& host, unsigned short& port,
                     bool numeric_host) {
  std::string_view h, p;
  if (!text.empty() && text[0] == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') return false;
    h = text.substr(1, close - 1);
    p = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return false;
    h = text.substr(0, colon);
    p = text.substr(colon + 1);
    if (h.find(':') != std::string_view::npos) return false;  // IPv6 needs brackets
  }
  if (h.empty() || p.empty() || p.size() > 5) return false;
  unsigned long value = 0;
  for (char c : p) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<unsigned long>(c - '0');
  }
  if (value > 65535) return false;
  host.assign(h);
  port = static_cast<unsigned short>(value);
  unsigned char buf[16];
  if (inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1) return true;
  if (numeric_host) return false;
  for (char c : host) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.')) return false;
  }
  return true;
}

// Inserts `value` at "section.key" of `root`, creating the section.
void set_path(toml::table& root, std::string_view dotted, toml::node&& value) {
  auto dot = dotted.find('.');
  if (dot == std::string_view::npos) {
    root.insert_or_assign(dotted, std::move(value));
    return;
  }
  std::string section(dotted.substr(0, dot));
  toml::node* existing = root.get(section);
  if (!existing || !existing->is_table()) {
    root.insert_or_assign(section, toml::table{});
    existing = root.get(section);
  }
  set_path(*existing->as_table(), dotted.substr(dot + 1), std::move(value));
}

// A table {v = "text"} whose node remembers the flag it came from, so errors
// name the flag instead of a file position.
toml::table override_string(std::string_view text, const std::string& flag) {
  std::string quoted = "v = \"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      quoted.push_back('\\');
      quoted.push_back(static_cast<char>(c));
    } else if (c < 32 || c == 127) {
      quoted += fmt::format("\\u{:04X}", c);
    } else {
      quoted.push_back(static_cast<char>(c));
    }
  }
  quoted.push_back('"');
  return toml::parse(quoted, flag);
}

void apply_overrides(toml::table& root, const ConfigSource& source) {
  for (const std::string& set : source.sets) {
    auto eq = set.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw ConfigError("--set " + set + ": expected section.key=value");
    }
    std::string key = set.substr(0, eq);
    std::string value = set.substr(eq + 1);
    toml::table parsed;
    try {
      parsed = toml::parse("v = " + value, "--set " + set);
    } catch (const toml::parse_error&) {
      parsed = override_string(value, "--set " + set);  // a bare word is a string
    }
    set_path(root, key, std::move(*parsed.get("v")));
  }
  if (!source.listen.empty()) {
    toml::array listeners;
    for (const std::string& addr : source.listen) {
      toml::table t = override_string(addr, "--listen " + addr);
      toml::table listener;
      listener.insert("address", std::move(*t.get("v")));
      listeners.push_back(std::move(listener));
    }
    root.insert_or_assign("listener", std::move(listeners));
  }
  if (!source.upstream.empty()) {
    toml::table t = override_string(source.upstream, "--upstream " + source.upstream);
    set_path(root, "upstream.target", std::move(*t.get("v")));
  }
}

// The first directory of $RUNTIME_DIRECTORY (systemd lists several with ':'),
// or "" when postern does not run under a service manager that sets it.
std::string runtime_directory() {
  const char* env = std::getenv("RUNTIME_DIRECTORY");
  if (!env || !*env) return {};
  std::string dir(env);
  return dir.substr(0, dir.find(':'));
}

// [[listener]] proxy_protocol_from: the peers allowed to send a PROXY header.
void check_proxy_protocol_from(Checker& check, const toml::table& t, Config::Listener& l) {
  const toml::node* n = t.get("proxy_protocol_from");
  if (!n) return;
  const toml::array* arr = n->as_array();
  if (!arr) {
    check.error(n, "listener.proxy_protocol_from", "expected a list of \"IP/PREFIX\", got " + describe(*n));
    return;
  }
  if (!l.proxy_protocol) {
    check.error(n, "listener.proxy_protocol_from", "needs proxy_protocol = true on this listener");
  }
  l.proxy_protocol_from.clear();
  for (const toml::node& item : *arr) {
    if (!item.is_string() || !valid_network(item.as_string()->get())) {
      check.error(&item, "listener.proxy_protocol_from",
                  "expected \"IP/PREFIX\" or \"IP\" (e.g. \"10.0.0.5/32\"), got " + describe(item));
      continue;
    }
    l.proxy_protocol_from.push_back(item.as_string()->get());
  }
}

// [server] user/group, [log] format/output, [control]: how the process runs
// (docs/operations.md).
void parse_operations(Checker& check, const toml::table& root, Config& config) {
  const toml::table* server = root.get("server") ? root.get("server")->as_table() : nullptr;
  if (const toml::node* n = check.get_string(server, "server", "user", config.server.user)) {
    if (!config.server.user.empty() && !getpwnam(config.server.user.c_str())) {
      check.error(n, "server.user", "no such user \"" + config.server.user + "\" (getpwnam); create it or set \"\"");
    }
  }
  if (const toml::node* n = check.get_string(server, "server", "group", config.server.group)) {
    if (!config.server.group.empty() && !getgrnam(config.server.group.c_str())) {
      check.error(n, "server.group", "no such group \"" + config.server.group + "\" (getgrnam)");
    }
    if (!config.server.group.empty() && config.server.user.empty()) {
      check.error(n, "server.group", "needs server.user: postern changes group and user together");
    }
  }

  const toml::table* log = root.get("log") ? root.get("log")->as_table() : nullptr;
  check.get_enum<Config::Log::Format>(log, "log", "format",
                                      {{"text", Config::Log::Format::kText}, {"json", Config::Log::Format::kJson}},
                                      config.log.format);
  if (const toml::node* n = check.get_string(log, "log", "output", config.log.output)) {
    std::string& out = config.log.output;
    if (out.rfind("file:", 0) == 0 && out.size() > 5) {
      std::error_code ec;
      auto abs = std::filesystem::absolute(out.substr(5), ec);
      if (!ec) out = "file:" + abs.lexically_normal().string();
      auto dir = std::filesystem::path(out.substr(5)).parent_path();
      if (!std::filesystem::is_directory(dir, ec)) {
        check.error(n, "log.output", "no directory \"" + dir.string() + "\" for the log file");
      }
    } else if (out != "stderr" && out != "journald") {
      check.error(n, "log.output", "expected \"stderr\", \"journald\" or \"file:/path/to/postern.log\", got " +
                                       describe(*n));
    }
  }

  const toml::table* control = check.section(root, "control");
  if (control) check.check_keys(*control, "control", {"socket", "mode"});
  // The default: in the runtime directory the service manager made for this
  // unit ($RUNTIME_DIRECTORY, systemd's RuntimeDirectory=postern); otherwise
  // one per first listener port in the working directory (Config::Control),
  // named only once the port is bound.
  std::string socket;
  const toml::node* socket_node = check.get_string(control, "control", "socket", socket);
  std::error_code ec;
  if (!socket_node) {
    std::string runtime = runtime_directory();
    if (!runtime.empty()) socket = runtime + "/" + kRuntimeControlSocket;
    else config.control.per_listener = true;
  }
  // The per-listener default stays relative to the working directory (bound
  // there, found there by `postern status`), so a deep directory cannot make it too long.
  if (!socket.empty() && socket_node) {
    auto abs = std::filesystem::absolute(socket, ec);
    if (!ec) socket = abs.lexically_normal().string();
    if (socket.size() >= 100) {  // sockaddr_un.sun_path is 108 octets
      check.error(socket_node, "control.socket", "path longer than 100 octets: \"" + socket + '"');
    } else if (socket_node && !std::filesystem::is_directory(std::filesystem::path(socket).parent_path(), ec)) {
      check.error(socket_node, "control.socket",
                  "no directory \"" + std::filesystem::path(socket).parent_path().string() + "\" (or \"\" for no socket)");
    }
  }
  config.control.socket = socket;
  std::string mode = "0600";
  if (const toml::node* n = check.get_string(control, "control", "mode", mode)) {
    if (mode == "0600") config.control.mode = 0600;
    else if (mode == "0660") config.control.mode = 0660;
    else check.error(n, "control.mode", "expected \"0600\" (owner only) or \"0660\" (owner and group), got " + describe(*n));
  }
}

std::string system_hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

// [[dkim.sign]] and [[arc.sign]] tables (domain, selector, key_file): each
// key loaded; false when any table is wrong (each error reported).
bool parse_signing_keys(Checker& check, const toml::node& keys, const std::string& section, std::string_view role,
                        std::string_view selector_example, std::vector<DkimSigningKey>& out) {
  const toml::array* arr = keys.as_array();
  if (!arr || !arr->is_array_of_tables()) {
    check.error(&keys, section, "expected [[" + section + "]] tables with domain, selector and key_file");
    return false;
  }
  bool ok = true;
  for (const toml::node& item : *arr) {
    const toml::table& t = *item.as_table();
    check.check_keys(t, section, {"domain", "selector", "key_file"});
    DkimSigningKey key;
    const toml::node* d = check.get_string(&t, section, "domain", key.domain);
    const toml::node* s = check.get_string(&t, section, "selector", key.selector);
    const toml::node* f = check.get_string(&t, section, "key_file", key.key_file);
    if (!d || !dns_name_valid(key.domain) || key.domain.find('.') == std::string::npos) {
      check.error(d ? d : &item, section + ".domain",
                  fmt::format("expected the {} domain (d=), e.g. \"example.com\"", role));
      ok = false;
    }
    if (!s || key.selector.empty() || !dns_name_valid(key.selector + "._domainkey.example")) {
      check.error(s ? s : &item, section + ".selector",
                  fmt::format("expected a selector (s=), e.g. \"{}\"", selector_example));
      ok = false;
    }
    if (!f || key.key_file.empty()) {
      check.error(f ? f : &item, section + ".key_file", "expected the path of the PEM private key");
      ok = false;
      continue;
    }
    std::error_code ec;
    auto abs = std::filesystem::absolute(key.key_file, ec);
    if (!ec) key.key_file = abs.lexically_normal().string();
    if (std::string why = load_dkim_signing_key(key); !why.empty()) {
      check.error(f, section + ".key_file", why);
      ok = false;
      continue;
    }
    out.push_back(std::move(key));
  }
  return ok;
}

// [dkim] signing: [[dkim.sign]] tables (domain, selector, key_file) and the
// sign_* keys. Every key file is read and checked here, so `postern config
// check` names an unreadable or wrong key with its file:line.
void parse_dkim_signing(Checker& check, const toml::table* dkim, unsigned workers, DkimOptions& out) {
  DkimSignOptions sign;
  sign.worker_threads = std::max(1u, std::min(workers, 4u));
  check.get_bool(dkim, "dkim", "sign_authenticated", sign.sign_authenticated);
  auto get_list = [&](std::string_view key, std::vector<std::string>& list, auto valid, std::string_view expected) {
    const toml::node* n = dkim ? dkim->get(key) : nullptr;
    if (!n) return;
    const toml::array* arr = n->as_array();
    if (!arr) {
      check.error(n, "dkim." + std::string(key), "expected a list of " + std::string(expected) + ", got " + describe(*n));
      return;
    }
    for (const toml::node& item : *arr) {
      if (!item.is_string() || !valid(item.as_string()->get())) {
        check.error(&item, "dkim." + std::string(key), "expected " + std::string(expected) + ", got " + describe(item));
        continue;
      }
      list.push_back(item.as_string()->get());
    }
  };
  get_list("sign_networks", sign.sign_networks, [](const std::string& v) { return valid_network(v); },
           "networks (\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\")");
  get_list("sign_headers", sign.headers, [](const std::string& v) {
    return !v.empty() && v.size() <= 76 &&
           std::all_of(v.begin(), v.end(), [](unsigned char c) { return std::isalnum(c) || c == '-' || c == '_'; });
  }, "header field names (\"From\", \"Subject\")");
  std::string on_error = "tempfail";
  if (const toml::node* n = check.get_string(dkim, "dkim", "sign_on_error", on_error)) {
    if (on_error != "tempfail" && on_error != "relay") {
      check.error(n, "dkim.sign_on_error", "expected one of \"tempfail\", \"relay\", got " + describe(*n));
    }
  }
  sign.tempfail_on_error = on_error != "relay";
  const toml::node* keys = dkim ? dkim->get("sign") : nullptr;
  if (!keys) return;
  if (!parse_signing_keys(check, *keys, "dkim.sign", "signing", "mail2026", sign.keys) || sign.keys.empty()) return;
  try {
    out.signer = std::make_shared<const DkimSigner>(std::move(sign));
  } catch (const std::exception& e) {
    check.error(keys, "dkim.sign", e.what());
  }
}

// [server] hostname, threads, shutdown_timeout (user and group: parse_operations).
void parse_server(Checker& check, const toml::table& root, Config& config) {
  const toml::table* server = check.section(root, "server");
  if (server) check.check_keys(*server, "server", {"hostname", "threads", "shutdown_timeout", "user", "group"});
  check.get_string(server, "server", "hostname", config.server.hostname);
  std::size_t threads = 0;
  check.get_size(server, "server", "threads", 0, 256, threads);
  config.server.threads = static_cast<unsigned>(threads);
  check.get_seconds(server, "server", "shutdown_timeout", 0, 86400, config.server.shutdown_timeout);
  if (config.server.hostname.empty()) config.server.hostname = system_hostname();
}

// [tls]: the certificate STARTTLS and implicit-TLS listeners present.
void parse_tls(Checker& check, const toml::table& root, Config& config) {
  const toml::table* tls = check.section(root, "tls");
  if (tls) {
    check.check_keys(*tls, "tls", {"cert_file", "key_file", "min_version", "ciphers", "session_tickets",
                                   "ticket_key_file", "session_lifetime"});
  }
  check.get_bool(tls, "tls", "session_tickets", config.tls.session_tickets);
  const toml::node* ticket_node = check.get_string(tls, "tls", "ticket_key_file", config.tls.ticket_key_file);
  check.get_seconds(tls, "tls", "session_lifetime", 60, 7 * 86400, config.tls.session_lifetime);
  const toml::node* cert_node = check.get_string(tls, "tls", "cert_file", config.tls.cert_file);
  const toml::node* key_node = check.get_string(tls, "tls", "key_file", config.tls.key_file);
  check.get_enum<std::string>(tls, "tls", "min_version",
                              {{"TLSv1.2", "TLSv1.2"}, {"TLSv1.3", "TLSv1.3"}}, config.tls.min_version);
  check.get_string(tls, "tls", "ciphers", config.tls.ciphers);
  for (auto [node, file, key] : {std::tuple{cert_node, &config.tls.cert_file, "tls.cert_file"},
                                 std::tuple{key_node, &config.tls.key_file, "tls.key_file"},
                                 std::tuple{ticket_node, &config.tls.ticket_key_file, "tls.ticket_key_file"}}) {
    if (node && !file->empty() && access(file->c_str(), R_OK) != 0) {
      check.error(node, key, "cannot read \"" + *file + "\": " + std::strerror(errno));
    }
  }
  if (config.tls.cert_file.empty() != config.tls.key_file.empty()) {
    check.error(tls, "tls", "cert_file and key_file go together");
  }
}

// [[listener]]: the addresses postern accepts on; one on 127.0.0.1 when none is set.
void parse_listeners(Checker& check, const toml::table& root, Config& config) {
  const bool tls_configured = !config.tls.cert_file.empty() && !config.tls.key_file.empty();
  if (const toml::node* n = root.get("listener")) {
    const toml::array* arr = n->as_array();
    if (!arr || !arr->is_array_of_tables()) {
      check.error(n, "listener", "expected [[listener]] tables, got " + describe(*n));
    } else {
      for (const toml::node& item : *arr) {
        const toml::table& t = *item.as_table();
        check.check_keys(t, "listener", {"address", "tls", "require_tls", "proxy_protocol", "proxy_protocol_from",
                                         "auth", "policy"});
        Config::Listener l;
        const toml::node* a = check.get_string(&t, "listener", "address", l.address);
        l.tls = tls_configured ? Config::Listener::Tls::kStarttls : Config::Listener::Tls::kNone;
        check.get_enum<Config::Listener::Tls>(&t, "listener", "tls",
                                              {{"none", Config::Listener::Tls::kNone},
                                               {"starttls", Config::Listener::Tls::kStarttls},
                                               {"implicit", Config::Listener::Tls::kImplicit}},
                                              l.tls);
        if (l.tls != Config::Listener::Tls::kNone && !tls_configured) {
          check.error(t.get("tls"), "listener.tls",
                      "TLS needs a certificate: set [tls] cert_file and key_file, or tls = \"none\"");
        }
        check.get_bool(&t, "listener", "require_tls", l.require_tls);
        if (l.require_tls && l.tls == Config::Listener::Tls::kNone) {
          check.error(t.get("require_tls"), "listener.require_tls", "needs tls = \"starttls\" on this listener");
        }
        check.get_bool(&t, "listener", "proxy_protocol", l.proxy_protocol);
        check_proxy_protocol_from(check, t, l);
        check.get_enum<Config::Listener::Auth>(&t, "listener", "auth",
                                               {{"off", Config::Listener::Auth::kOff},
                                                {"passthrough", Config::Listener::Auth::kPassthrough}},
                                               l.auth);
        check.get_enum<Config::Listener::Policy>(&t, "listener", "policy",
                                                 {{"inbound", Config::Listener::Policy::kInbound},
                                                  {"submission", Config::Listener::Policy::kSubmission},
                                                  {"none", Config::Listener::Policy::kNone}},
                                                 l.policy);
        if (l.auth != Config::Listener::Auth::kOff && l.tls == Config::Listener::Tls::kNone) {
          check.error(t.get("auth"), "listener.auth", "AUTH is offered under TLS only: set tls on this listener");
        }
        if (a && !parse_host_port(l.address, l.host, l.port, true)) {
          check.error(a, "listener.address",
                      "expected \"IP:PORT\" or \"[IPv6]:PORT\" (port 0 = any free port), got \"" + l.address + '"');
        }
        if (!a) check.error(&t, "listener.address", "missing; every [[listener]] needs an address");
        config.listeners.push_back(std::move(l));
      }
    }
  }
  if (config.listeners.empty()) {
    Config::Listener l;
    l.host = "127.0.0.1";
    config.listeners.push_back(l);
  }
}

// [upstream]: the MTA (or Maildir) postern relays to.
void parse_upstream(Checker& check, const toml::table& root, Config& config) {
  const toml::table* upstream = check.section(root, "upstream");
  if (upstream) {
    check.check_keys(*upstream, "upstream", {"target", "helo", "client_identity", "tls", "ca_file", "tls_name",
                                             "probe_interval", "reuse", "reuse_pool_size", "reuse_idle_timeout",
                                             "reuse_max_messages", "chunking", "early_data"});
  }
  check.get_enum<Config::Upstream::Tls>(upstream, "upstream", "tls",
                                        {{"none", Config::Upstream::Tls::kNone},
                                         {"opportunistic", Config::Upstream::Tls::kOpportunistic},
                                         {"verify", Config::Upstream::Tls::kVerify}},
                                        config.upstream.tls);
  if (const toml::node* n = check.get_string(upstream, "upstream", "ca_file", config.upstream.ca_file)) {
    if (!config.upstream.ca_file.empty() && access(config.upstream.ca_file.c_str(), R_OK) != 0) {
      check.error(n, "upstream.ca_file", "cannot read \"" + config.upstream.ca_file + "\": " + std::strerror(errno));
    }
  }
  check.get_string(upstream, "upstream", "tls_name", config.upstream.tls_name);
  check.get_seconds(upstream, "upstream", "probe_interval", 0.1, 86400, config.upstream.probe_interval);
  check.get_string(upstream, "upstream", "helo", config.upstream.helo);
  check.get_bool(upstream, "upstream", "reuse", config.upstream.reuse);
  check.get_size(upstream, "upstream", "reuse_pool_size", 0, 10000, config.upstream.reuse_pool_size);
  check.get_seconds(upstream, "upstream", "reuse_idle_timeout", 0.1, 3600, config.upstream.reuse_idle_timeout);
  check.get_size(upstream, "upstream", "reuse_max_messages", 0, 1000000, config.upstream.reuse_max_messages);
  check.get_bool(upstream, "upstream", "chunking", config.upstream.chunking);
  check.get_bool(upstream, "upstream", "early_data", config.upstream.early_data);
  check.get_enum<Config::Upstream::ClientIdentity>(upstream, "upstream", "client_identity",
                                                   {{"auto", Config::Upstream::ClientIdentity::kAuto},
                                                    {"xclient", Config::Upstream::ClientIdentity::kXclient},
                                                    {"xforward", Config::Upstream::ClientIdentity::kXforward},
                                                    {"none", Config::Upstream::ClientIdentity::kNone}},
                                                   config.upstream.client_identity);
  auto& up = config.upstream;
  const toml::node* target = check.get_string(upstream, "upstream", "target", up.target);
  const toml::value<std::string> default_target("maildir:postern-mail");
  if (!target && !(upstream && upstream->get("target"))) {
    up.target = default_target.get();
    target = &default_target;
  }
  if (const toml::node* n = target) {
    if (up.target.rfind("maildir:", 0) == 0 && up.target.size() > 8) {
      up.kind = Config::Upstream::Kind::kMaildir;
      std::error_code ec;
      auto abs = std::filesystem::absolute(up.target.substr(8), ec);
      up.maildir = ec ? up.target.substr(8) : abs.lexically_normal().string();
    } else if (parse_host_port(up.target, up.host, up.port, false) && up.port != 0) {
      up.kind = Config::Upstream::Kind::kSmtp;
    } else {
      check.error(n, "upstream.target",
                  "expected \"HOST:PORT\" of the MTA or \"maildir:DIRECTORY\", got \"" + up.target + '"');
    }
  }
  if (up.helo.empty()) up.helo = config.server.hostname;
}

// [limits]: every bound on a client's input (proxy/limits.h).
void parse_limits(Checker& check, const toml::table& root, Config& config) {
  const toml::table* lim = check.section(root, "limits");
  if (lim) {
    check.check_keys(*lim, "limits", {"message_size", "recipients", "messages_per_session", "errors",
                                      "auth_failures", "auth_failure_delay",
                                      "command_line", "text_line", "sessions", "sessions_per_ip",
                                      "sessions_per_network", "network_prefix_v4", "network_prefix_v6",
                                      "sessions_exempt", "header_section_size", "header_fields"});
  }
  auto& l = config.limits;
  check.get_size(lim, "limits", "message_size", 1, std::size_t(1) << 40, l.message_size);
  check.get_size(lim, "limits", "recipients", 1, 100000, l.recipients);
  check.get_size(lim, "limits", "messages_per_session", 1, 1000000, l.messages_per_session);
  check.get_size(lim, "limits", "errors", 1, 1000, l.errors);
  check.get_size(lim, "limits", "auth_failures", 1, 100, l.auth_failures);
  check.get_seconds(lim, "limits", "auth_failure_delay", 0, 60, l.auth_failure_delay);
  check.get_size(lim, "limits", "command_line", limits::kMinCommandLine, 65536, l.command_line);
  check.get_size(lim, "limits", "text_line", 1000, 1 << 20, l.text_line);
  // The header section's bounds (issue 15): at least what RFC 5322 mail
  // needs, at most what one message may hold in memory while it is parsed.
  check.get_size(lim, "limits", "header_section_size", 64 * 1024, std::size_t(64) << 20, l.header_section_size);
  check.get_size(lim, "limits", "header_fields", 1000, 1000000, l.header_fields);
  check.get_size(lim, "limits", "sessions", 0, 1000000, l.sessions);
  check.get_size(lim, "limits", "sessions_per_ip", 0, 1000000, l.sessions_per_ip);
  check.get_size(lim, "limits", "sessions_per_network", 0, 1000000, l.sessions_per_network);
  check.get_size(lim, "limits", "network_prefix_v4", 8, 32, l.network_prefix_v4);
  check.get_size(lim, "limits", "network_prefix_v6", 16, 128, l.network_prefix_v6);
  if (const toml::node* n = lim ? lim->get("sessions_exempt") : nullptr) {
    l.sessions_exempt.clear();
    const toml::array* arr = n->as_array();
    if (!arr) check.error(n, "limits.sessions_exempt", "expected a list of \"IP/PREFIX\", got " + describe(*n));
    for (std::size_t i = 0; arr && i < arr->size(); ++i) {
      const toml::node& item = *arr->get(i);
      std::string text = item.is_string() ? item.as_string()->get() : "";
      std::string ip = text.substr(0, text.find('/'));
      std::string prefix = text.find('/') == std::string::npos ? "" : text.substr(text.find('/') + 1);
      unsigned char buf[16];
      bool v4 = inet_pton(AF_INET, ip.c_str(), buf) == 1;
      bool v6 = !v4 && inet_pton(AF_INET6, ip.c_str(), buf) == 1;
      bool ok = (v4 || v6) && (prefix.empty() || (prefix.size() <= 3 && prefix.find_first_not_of("0123456789") ==
                                                                            std::string::npos &&
                                                  std::stoul(prefix) <= (v4 ? 32u : 128u)));
      if (!ok) check.error(&item, "limits.sessions_exempt", "expected \"IP/PREFIX\" (e.g. \"10.0.0.0/8\"), got " + describe(item));
      else l.sessions_exempt.push_back(text);
    }
  }
}

// [timeouts]: the deadline of every wait on the client and the upstream.
void parse_timeouts(Checker& check, const toml::table& root, Config& config) {
  const toml::table* to = check.section(root, "timeouts");
  if (to) {
    check.check_keys(*to, "timeouts", {"command", "data", "upstream_connect", "upstream_greeting",
                                       "upstream_mail", "upstream_rcpt", "upstream_data_init",
                                       "upstream_data_block", "upstream_data_term", "greet_pause"});
  }
  auto& t = config.timeouts;
  const double kMaxTimeout = 86400;
  check.get_seconds(to, "timeouts", "command", 0.05, kMaxTimeout, t.command);
  check.get_seconds(to, "timeouts", "data", 0.05, kMaxTimeout, t.data);
  check.get_seconds(to, "timeouts", "upstream_connect", 0.05, kMaxTimeout, t.upstream_connect);
  check.get_seconds(to, "timeouts", "upstream_greeting", 0.05, kMaxTimeout, t.upstream_greeting);
  check.get_seconds(to, "timeouts", "upstream_mail", 0.05, kMaxTimeout, t.upstream_mail);
  check.get_seconds(to, "timeouts", "upstream_rcpt", 0.05, kMaxTimeout, t.upstream_rcpt);
  check.get_seconds(to, "timeouts", "upstream_data_init", 0.05, kMaxTimeout, t.upstream_data_init);
  check.get_seconds(to, "timeouts", "upstream_data_block", 0.05, kMaxTimeout, t.upstream_data_block);
  check.get_seconds(to, "timeouts", "upstream_data_term", 0.05, kMaxTimeout, t.upstream_data_term);
  check.get_seconds(to, "timeouts", "greet_pause", 0, 60, t.greet_pause);
}

// [data]: DATA/BDAT content and its spool.
void parse_data(Checker& check, const toml::table& root, Config& config) {
  const toml::table* data = check.section(root, "data");
  if (data) check.check_keys(*data, "data", {"bare_line_ending", "spool_memory", "spool_memory_total", "spool_dir"});
  check.get_enum<DataDecoder::BareLineEnding>(
      data, "data", "bare_line_ending",
      {{"reject", DataDecoder::BareLineEnding::kReject}, {"normalize", DataDecoder::BareLineEnding::kNormalize}},
      config.data.bare_line_ending);
  check.get_size(data, "data", "spool_memory", 0, std::size_t(1) << 32, config.data.spool_memory);
  check.get_size(data, "data", "spool_memory_total", 0, std::size_t(1) << 40, config.data.spool_memory_total);
  if (const toml::node* n = check.get_string(data, "data", "spool_dir", config.data.spool_dir)) {
    if (!config.data.spool_dir.empty() && access(config.data.spool_dir.c_str(), W_OK | X_OK) != 0) {
      check.error(n, "data.spool_dir", "directory \"" + config.data.spool_dir + "\" is not writable");
    }
  }
}

// [log] level (format and output: parse_operations).
void parse_log_level(Checker& check, const toml::table& root, Config& config) {
  const toml::table* log = check.section(root, "log");
  if (log) check.check_keys(*log, "log", {"level", "format", "output"});
  check.get_enum<Config::Log::Level>(log, "log", "level",
                                     {{"debug", Config::Log::Level::kDebug},
                                      {"info", Config::Log::Level::kInfo},
                                      {"warning", Config::Log::Level::kWarning},
                                      {"error", Config::Log::Level::kError}},
                                     config.log.level);
}

// [submission]: the rules and checks of policy = "submission" listeners.
void parse_submission(Checker& check, const toml::table& root, Config& config) {
  const toml::table* submission = check.section(root, "submission");
  if (submission) check.check_keys(*submission, "submission", {"scripts", "authenticity_checks"});
  if (const toml::node* n = submission ? submission->get("scripts") : nullptr) {
    const toml::array* arr = n->as_array();
    bool ok = arr != nullptr;
    if (arr) {
      for (const toml::node& item : *arr) {
        if (!item.is_string()) ok = false;
        else config.submission.scripts.push_back(item.as_string()->get());
      }
    }
    if (!ok) check.error(n, "submission.scripts", "expected an array of file or directory names, got " + describe(*n));
  }
  check.get_bool(submission, "submission", "authenticity_checks", config.submission.authenticity_checks);
}

// [metrics]: the Prometheus endpoint.
void parse_metrics(Checker& check, const toml::table& root, Config& config) {
  const toml::table* metrics = check.section(root, "metrics");
  if (metrics) check.check_keys(*metrics, "metrics", {"address"});
  if (const toml::node* n = check.get_string(metrics, "metrics", "address", config.metrics.address)) {
    if (!config.metrics.address.empty() &&
        !parse_host_port(config.metrics.address, config.metrics.host, config.metrics.port, true)) {
      check.error(n, "metrics.address", "expected \"IP:PORT\" (e.g. \"127.0.0.1:9425\") or \"\" for off, got \"" +
                                            config.metrics.address + '"');
    }
  }
}

// [quarantine]: where quarantined messages are written.
void parse_quarantine(Checker& check, const toml::table& root, Config& config) {
  const toml::table* quarantine = check.section(root, "quarantine");
  if (quarantine) check.check_keys(*quarantine, "quarantine", {"dir"});
  std::string qdir = "postern-quarantine";
  check.get_string(quarantine, "quarantine", "dir", qdir);
  {
    std::error_code ec;
    auto abs = std::filesystem::absolute(qdir, ec);
    config.quarantine.dir = ec ? qdir : abs.lexically_normal().string();
  }
}

// [lua]: the rule engine's scripts, budgets and [lua.settings].
void parse_lua(Checker& check, const toml::table& root, Config& config) {
  const toml::table* lua = check.section(root, "lua");
  if (lua) {
    check.check_keys(*lua, "lua", {"scripts", "module_path", "on_error", "instruction_budget", "timeout",
                                   "memory_limit", "pattern_subject_limit", "header_value_limit",
                                   "body_scan_limit", "text_part_limit", "text_parts_max",
                                   "store_max_entries", "settings", "log_rate", "log_burst",
                                   "busy_threshold", "structure_timeout", "regex_match_limit", "regex_depth_limit"});
  }
  LuaOptions& o = config.lua;
  // A path list: one string or an array of strings; each must exist.
  auto get_paths = [&](std::string_view key, bool directories_only, std::vector<std::string>& out) {
    const toml::node* n = lua ? lua->get(key) : nullptr;
    if (!n) return;
    std::vector<const toml::node*> items;
    if (const toml::array* arr = n->as_array()) {
      for (const toml::node& item : *arr) items.push_back(&item);
    } else {
      items.push_back(n);
    }
    for (const toml::node* item : items) {
      if (!item->is_string()) {
        check.error(item, "lua." + std::string(key), "expected a path or a list of paths, got " + describe(*item));
        continue;
      }
      std::string path = item->as_string()->get();
      std::error_code ec;
      auto abs = std::filesystem::absolute(path, ec);
      if (!ec) path = abs.lexically_normal().string();
      bool is_dir = std::filesystem::is_directory(path, ec);
      if (!is_dir && (directories_only || !std::filesystem::is_regular_file(path, ec))) {
        check.error(item, "lua." + std::string(key),
                    std::string(directories_only ? "no directory \"" : "no script file or directory \"") + path + '"');
        continue;
      }
      out.push_back(std::move(path));
    }
  };
  get_paths("scripts", false, o.scripts);
  get_paths("module_path", true, o.module_path);
  check.get_enum<LuaOptions::OnError>(lua, "lua", "on_error",
                                      {{"tempfail", LuaOptions::OnError::kTempfail},
                                       {"continue", LuaOptions::OnError::kContinue}},
                                      o.on_error);
  std::size_t budget = o.instruction_budget;
  check.get_size(lua, "lua", "instruction_budget", 10000, std::size_t(1) << 40, budget);
  o.instruction_budget = budget;
  Seconds timeout = std::chrono::duration_cast<Seconds>(o.timeout);
  check.get_seconds(lua, "lua", "timeout", 0.01, 600, timeout);
  o.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
  Seconds structure_timeout = std::chrono::duration_cast<Seconds>(o.structure_timeout);
  check.get_seconds(lua, "lua", "structure_timeout", 0.01, 3600, structure_timeout);
  o.structure_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(structure_timeout);
  check.get_size(lua, "lua", "memory_limit", 1u << 20, std::size_t(1) << 34, o.memory_limit);
  // Accepted for old configurations and ignored: pattern matching counts its
  // steps against lua.timeout instead of refusing long subjects (issue 17).
  std::size_t ignored_subject_limit = 0;
  check.get_size(lua, "lua", "pattern_subject_limit", 0, std::size_t(1) << 40, ignored_subject_limit);
  check.get_size(lua, "lua", "header_value_limit", 256, 1u << 20, o.header_value_limit);
  check.get_size(lua, "lua", "body_scan_limit", 1024, std::size_t(1) << 32, o.body_scan_limit);
  check.get_size(lua, "lua", "text_part_limit", 1024, std::size_t(1) << 30, o.text_part_limit);
  check.get_size(lua, "lua", "text_parts_max", 0, 10000, o.text_parts_max);
  check.get_size(lua, "lua", "store_max_entries", 1, std::size_t(1) << 32, o.store_max_entries);
  // Rule log output and the rule-call watchdog (issue 17).
  {
    std::size_t rate = static_cast<std::size_t>(o.log_rate);
    check.get_size(lua, "lua", "log_rate", 1, 1'000'000, rate);
    o.log_rate = static_cast<double>(rate);
    check.get_size(lua, "lua", "log_burst", 1, 1'000'000, o.log_burst);
    Seconds busy = std::chrono::duration_cast<Seconds>(o.busy_threshold);
    check.get_seconds(lua, "lua", "busy_threshold", 0, 3600, busy);
    o.busy_threshold = std::chrono::duration_cast<std::chrono::milliseconds>(busy);
    std::size_t match_limit = o.regex_match_limit, depth_limit = o.regex_depth_limit;
    check.get_size(lua, "lua", "regex_match_limit", 1000, 100'000'000, match_limit);
    check.get_size(lua, "lua", "regex_depth_limit", 100, 1'000'000, depth_limit);
    o.regex_match_limit = static_cast<std::uint32_t>(match_limit);
    o.regex_depth_limit = static_cast<std::uint32_t>(depth_limit);
  }
  // [lua.settings]: any TOML table, handed to scripts as postern.settings.
  if (const toml::node* n = lua ? lua->get("settings") : nullptr) {
    if (!n->is_table()) check.error(n, "lua.settings", "expected a table [lua.settings], got " + describe(*n));
    else o.settings = lua_setting_from_toml(*n);
  }
}

// [scores]: the score thresholds of the rules' verdicts.
void parse_scores(Checker& check, const toml::table& root, Config& config) {
  const toml::table* scores = check.section(root, "scores");
  if (scores) check.check_keys(*scores, "scores", {"add_header", "quarantine", "reject", "header"});
  ScoreThresholds& st = config.scores;
  auto get_threshold = [&](std::string_view key, double& out) {
    const toml::node* n = scores ? scores->get(key) : nullptr;
    if (!n) return;
    auto v = n->value<double>();
    if (!(n->is_integer() || n->is_floating_point()) || !v || !(*v >= 0 && *v <= 1e6)) {
      check.error(n, "scores." + std::string(key), "expected a score from 0 (off) to 1000000, got " + describe(*n));
      return;
    }
    out = *v;
  };
  get_threshold("add_header", st.add_header);
  get_threshold("quarantine", st.quarantine);
  get_threshold("reject", st.reject);
  if (const toml::node* n = check.get_string(scores, "scores", "header", st.header)) {
    bool ok = st.header.size() <= 76;
    for (unsigned char c : st.header) ok = ok && c >= 33 && c <= 126 && c != ':';
    if (!ok) check.error(n, "scores.header", "expected a header field name (or \"\" for none), got " + describe(*n));
  }
  if (st.quarantine > 0 && st.reject > 0 && st.quarantine >= st.reject) {
    check.error(scores ? scores->get("quarantine") : nullptr, "scores.quarantine",
                "must be below scores.reject, or no message would ever be quarantined");
  }
}

// [dns]: the caching resolver and the authenticity checks' worker pool.
void parse_dns(Checker& check, const toml::table& root, Config& config) {
  const toml::table* dns = check.section(root, "dns");
  if (dns) {
    check.check_keys(*dns, "dns", {"servers", "timeout", "retries", "cache_entries", "negative_ttl", "max_ttl",
                                   "workers", "client_name"});
  }
  DnsOptions& d = config.dns;
  if (const toml::node* n = dns ? dns->get("servers") : nullptr) {
    const toml::array* arr = n->as_array();
    if (!arr) {
      check.error(n, "dns.servers", "expected a list of \"IP\" or \"IP@PORT\", got " + describe(*n));
    } else {
      for (const toml::node& item : *arr) {
        std::string server = item.is_string() ? item.as_string()->get() : "";
        std::string ip = server.substr(0, server.find('@'));
        std::string port = server.find('@') == std::string::npos ? "53" : server.substr(server.find('@') + 1);
        unsigned char buf[16];
        bool ok = !ip.empty() && (inet_pton(AF_INET, ip.c_str(), buf) == 1 || inet_pton(AF_INET6, ip.c_str(), buf) == 1) &&
                  !port.empty() && port.size() <= 5 && port.find_first_not_of("0123456789") == std::string::npos &&
                  std::stoul(port) >= 1 && std::stoul(port) <= 65535;
        if (!ok) {
          check.error(&item, "dns.servers", "expected \"IP\" or \"IP@PORT\", got " + describe(item));
        } else {
          d.servers.push_back(server);
        }
      }
    }
  }
  check.get_ms(dns, "dns", "timeout", 0.05, 60, d.timeout);
  std::size_t retries = d.retries;
  check.get_size(dns, "dns", "retries", 0, 10, retries);
  d.retries = static_cast<unsigned>(retries);
  check.get_size(dns, "dns", "cache_entries", 0, 100000000, d.cache_entries);
  std::size_t negative_ttl = d.negative_ttl, max_ttl = d.max_ttl;
  check.get_size(dns, "dns", "negative_ttl", 0, 86400, negative_ttl);
  check.get_size(dns, "dns", "max_ttl", 0, 604800, max_ttl);
  d.negative_ttl = static_cast<std::uint32_t>(negative_ttl);
  d.max_ttl = static_cast<std::uint32_t>(max_ttl);
  check.get_bool(dns, "dns", "client_name", d.client_name);
  AuthOptions& a = config.auth;
  a.hostname = config.server.hostname;
  std::size_t workers = a.worker_threads;
  check.get_size(dns, "dns", "workers", 1, 256, workers);
  a.worker_threads = static_cast<unsigned>(workers);
}

// [spf] (RFC 7208).
void parse_spf(Checker& check, const toml::table& root, Config& config) {
  AuthOptions& a = config.auth;
  const toml::table* spf = check.section(root, "spf");
  if (spf) {
    check.check_keys(*spf, "spf", {"enabled", "timeout", "received_spf", "reject_fail", "tempfail_temperror", "check_helo",
                                   "max_dns_terms", "max_void_lookups", "score_pass", "score_fail",
                                   "score_softfail", "score_neutral", "score_none", "score_temperror",
                                   "score_permerror"});
  }
  SpfOptions& sp = a.spf;
  check.get_bool(spf, "spf", "enabled", sp.enabled);
  check.get_ms(spf, "spf", "timeout", 0.1, 600, sp.timeout);
  check.get_bool(spf, "spf", "received_spf", sp.received_spf);
  check.get_bool(spf, "spf", "reject_fail", sp.reject_fail);
  check.get_bool(spf, "spf", "tempfail_temperror", sp.tempfail_temperror);
  check.get_bool(spf, "spf", "check_helo", sp.check_helo);
  std::size_t terms = sp.limits.dns_terms, voids = sp.limits.void_lookups;
  check.get_size(spf, "spf", "max_dns_terms", 1, 100, terms);
  check.get_size(spf, "spf", "max_void_lookups", 0, 100, voids);
  sp.limits.dns_terms = static_cast<unsigned>(terms);
  sp.limits.void_lookups = static_cast<unsigned>(voids);
  check.get_score(spf, "spf", "score_pass", sp.score_pass);
  check.get_score(spf, "spf", "score_fail", sp.score_fail);
  check.get_score(spf, "spf", "score_softfail", sp.score_softfail);
  check.get_score(spf, "spf", "score_neutral", sp.score_neutral);
  check.get_score(spf, "spf", "score_none", sp.score_none);
  check.get_score(spf, "spf", "score_temperror", sp.score_temperror);
  check.get_score(spf, "spf", "score_permerror", sp.score_permerror);
}

// [dkim]: verification; signing in parse_dkim_signing.
void parse_dkim(Checker& check, const toml::table& root, Config& config) {
  AuthOptions& a = config.auth;
  const toml::table* dkim = check.section(root, "dkim");
  if (dkim) {
    check.check_keys(*dkim, "dkim", {"enabled", "timeout", "min_key_bits", "max_signatures", "score_pass",
                                     "score_fail", "score_weak_key", "sign", "sign_authenticated",
                                     "sign_networks", "sign_headers", "sign_on_error"});
  }
  DkimOptions& dk = a.dkim;
  check.get_bool(dkim, "dkim", "enabled", dk.enabled);
  check.get_ms(dkim, "dkim", "timeout", 0.1, 600, dk.timeout);
  std::size_t bits = dk.min_key_bits;
  check.get_size(dkim, "dkim", "min_key_bits", 512, 16384, bits);
  dk.min_key_bits = static_cast<unsigned>(bits);
  check.get_size(dkim, "dkim", "max_signatures", 1, 100, dk.max_signatures);
  check.get_score(dkim, "dkim", "score_pass", dk.score_pass);
  check.get_score(dkim, "dkim", "score_fail", dk.score_fail);
  check.get_score(dkim, "dkim", "score_weak_key", dk.score_weak_key);
  parse_dkim_signing(check, dkim, a.worker_threads, dk);
}

// [dmarc] (RFC 7489); enforcing needs [spf] and [dkim] enabled.
void parse_dmarc(Checker& check, const toml::table& root, Config& config) {
  const SpfOptions& sp = config.auth.spf;
  const DkimOptions& dk = config.auth.dkim;
  DmarcOptions& dm = config.auth.dmarc;
  const toml::table* dmarc = check.section(root, "dmarc");
  if (dmarc) {
    check.check_keys(*dmarc, "dmarc", {"enabled", "enforce", "honor_pct", "timeout", "score_pass", "score_fail",
                                       "unusable_from"});
  }
  check.get_bool(dmarc, "dmarc", "enabled", dm.enabled);
  check.get_enum<DmarcOptions::Enforce>(dmarc, "dmarc", "enforce",
                                        {{"report", DmarcOptions::Enforce::kReport},
                                         {"quarantine", DmarcOptions::Enforce::kQuarantine},
                                         {"reject", DmarcOptions::Enforce::kReject}},
                                        dm.enforce);
  check.get_bool(dmarc, "dmarc", "honor_pct", dm.honor_pct);
  check.get_ms(dmarc, "dmarc", "timeout", 0.1, 600, dm.timeout);
  check.get_score(dmarc, "dmarc", "score_pass", dm.score_pass);
  check.get_score(dmarc, "dmarc", "score_fail", dm.score_fail);
  // Issue 15: what a message without a usable From gets, and DMARC
  // enforcement only with both the checks it is made of.
  check.get_enum<DmarcOptions::UnusableFrom>(dmarc, "dmarc", "unusable_from",
                                             {{"none", DmarcOptions::UnusableFrom::kNone},
                                              {"quarantine", DmarcOptions::UnusableFrom::kQuarantine},
                                              {"reject", DmarcOptions::UnusableFrom::kReject}},
                                             dm.unusable_from);
  if (dm.enabled && dm.enforce != DmarcOptions::Enforce::kReport && (!sp.enabled || !dk.enabled)) {
    check.error(dmarc ? dmarc->get("enforce") : nullptr, "dmarc.enforce",
                std::string("enforcing DMARC needs both of its checks, but ") +
                    (!sp.enabled && !dk.enabled ? "[spf] and [dkim] are" : !sp.enabled ? "[spf] is" : "[dkim] is") +
                    " not enabled: every message would fail alignment and legitimate mail would be refused; "
                    "enable them (enabled = true) or set enforce = \"report\"");
  }
}

// [authenticity] trusted_networks (issue 15): clients whose mail skips
// SPF, DKIM and DMARC, listed; loopback is not trusted by itself.
void parse_authenticity(Checker& check, const toml::table& root, Config& config) {
  AuthOptions& a = config.auth;
  const toml::table* authenticity = check.section(root, "authenticity");
  if (authenticity) check.check_keys(*authenticity, "authenticity", {"trusted_networks"});
  if (const toml::node* n = authenticity ? authenticity->get("trusted_networks") : nullptr) {
    const toml::array* arr = n->as_array();
    if (!arr) check.error(n, "authenticity.trusted_networks", "expected a list of \"IP/PREFIX\", got " + describe(*n));
    for (std::size_t i = 0; arr && i < arr->size(); ++i) {
      const toml::node& item = *arr->get(i);
      if (!item.is_string() || !a.trusted.add(item.as_string()->get())) {
        check.error(&item, "authenticity.trusted_networks",
                    "expected \"IP/PREFIX\" or \"IP\" (e.g. \"10.0.0.0/8\"), got " + describe(item));
      }
    }
  }
}

// [authentication_results]: the A-R header postern adds (RFC 8601).
void parse_authentication_results(Checker& check, const toml::table& root, Config& config) {
  AuthOptions& a = config.auth;
  const toml::table* ar = check.section(root, "authentication_results");
  if (ar) check.check_keys(*ar, "authentication_results", {"enabled", "authserv_id", "remove_forged"});
  AuthResultsOptions& aro = a.authentication_results;
  check.get_bool(ar, "authentication_results", "enabled", aro.enabled);
  if (const toml::node* n = check.get_string(ar, "authentication_results", "authserv_id", aro.authserv_id)) {
    if (!aro.authserv_id.empty() &&
        (!dns_name_valid(aro.authserv_id) ||
         aro.authserv_id.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") !=
             std::string::npos)) {
      check.error(n, "authentication_results.authserv_id", "expected a host name, got \"" + aro.authserv_id + '"');
    }
  }
  if (aro.authserv_id.empty()) aro.authserv_id = config.server.hostname;
  check.get_bool(ar, "authentication_results", "remove_forged", aro.remove_forged);
}

// [arc] (issue 21): chain validation, trusted sealers and sealing with
// [[arc.sign]] tables (domain, selector, key_file) like [[dkim.sign]]. Needs
// [authentication_results] parsed (the sealer's authserv-id).
void parse_arc(Checker& check, const toml::table& root, Config& config) {
  AuthOptions& a = config.auth;
  const toml::table* arc = check.section(root, "arc");
  if (arc) {
    check.check_keys(*arc, "arc", {"enabled", "timeout", "min_key_bits", "trusted_sealers", "seal", "sign"});
  }
  ArcOptions& o = a.arc;
  check.get_bool(arc, "arc", "enabled", o.enabled);
  if (arc) {
    if (const toml::node* n = arc->get("timeout")) {
      if (auto v = n->value<double>(); v && *v >= 0.1 && *v <= 600) {
        o.timeout = std::chrono::milliseconds(static_cast<long>(*v * 1000));
      } else {
        check.error(n, "arc.timeout", "expected seconds between 0.1 and 600, got " + describe(*n));
      }
    }
  }
  std::size_t bits = o.min_key_bits;
  check.get_size(arc, "arc", "min_key_bits", 512, 16384, bits);
  o.min_key_bits = static_cast<unsigned>(bits);
  if (const toml::node* n = arc ? arc->get("trusted_sealers") : nullptr) {
    const toml::array* arr = n->as_array();
    if (!arr) check.error(n, "arc.trusted_sealers", "expected a list of sealer domains, got " + describe(*n));
    for (std::size_t i = 0; arr && i < arr->size(); ++i) {
      const toml::node& item = *arr->get(i);
      if (!item.is_string() || !dns_name_valid(item.as_string()->get()) ||
          item.as_string()->get().find('.') == std::string::npos) {
        check.error(&item, "arc.trusted_sealers", "expected a sealer domain (ARC-Seal d=), e.g. \"lists.example.org\", got " +
                                                      describe(item));
        continue;
      }
      o.trusted_sealers.push_back(ascii::to_lower(item.as_string()->get()));
    }
  }
  ArcSealOptions seal;
  seal.authserv_id = a.authentication_results.authserv_id.empty() ? a.hostname : a.authentication_results.authserv_id;
  check.get_enum<ArcSealMode>(arc, "arc", "seal",
                              {{"none", ArcSealMode::kNone}, {"modified", ArcSealMode::kModified},
                               {"all", ArcSealMode::kAll}},
                              seal.mode);
  const toml::node* keys = arc ? arc->get("sign") : nullptr;
  if (!keys) {
    if (seal.mode != ArcSealMode::kNone) {
      check.error(arc->get("seal"), "arc.seal", "sealing needs a key: add an [[arc.sign]] table (domain, selector, key_file)");
    }
    return;
  }
  if (!parse_signing_keys(check, *keys, "arc.sign", "sealing", "arc2026", seal.keys) || seal.keys.empty() ||
      seal.mode == ArcSealMode::kNone) {
    return;
  }
  try {
    o.sealer = std::make_shared<const ArcSealer>(std::move(seal));
  } catch (const std::exception& e) {
    check.error(keys, "arc.sign", e.what());
  }
}

// [audit]: the audit log of every message.
void parse_audit(Checker& check, const toml::table& root, Config& config) {
  const toml::table* audit = check.section(root, "audit");
  if (audit) {
    check.check_keys(*audit, "audit",
                     {"path", "rotate_size", "rotate_keep", "fsync", "fsync_interval", "queue_limit"});
  }
  check.get_string(audit, "audit", "path", config.audit.path);
  check.get_size(audit, "audit", "rotate_size", 0, std::size_t(1) << 40, config.audit.rotate_size);
  if (audit && config.audit.rotate_size > 0 && config.audit.rotate_size < 4096) {
    check.error(audit->get("rotate_size"), "audit.rotate_size",
                "expected 0 (no size rotation) or at least 4096 octets, got " +
                    std::to_string(config.audit.rotate_size));
  }
  check.get_size(audit, "audit", "rotate_keep", 0, 1000, config.audit.rotate_keep);
  check.get_enum<AuditLogOptions::Fsync>(audit, "audit", "fsync",
                                         {{"never", AuditLogOptions::Fsync::kNever},
                                          {"interval", AuditLogOptions::Fsync::kInterval},
                                          {"always", AuditLogOptions::Fsync::kAlways}},
                                         config.audit.fsync);
  check.get_seconds(audit, "audit", "fsync_interval", 0.01, 3600, config.audit.fsync_interval);
  check.get_size(audit, "audit", "queue_limit", 65536, std::size_t(1) << 34, config.audit.queue_limit);
}

// [store]: the backend of postern.store (filters/store/store_options.h).
void parse_store(Checker& check, const toml::table& root, Config& config) {
  const toml::table* store = check.section(root, "store");
  if (store) {
    check.check_keys(*store, "store", {"backend", "on_error", "persist", "persist_interval", "persist_map_size",
                                       "redis_address", "redis_prefix", "redis_timeout", "redis_password",
                                       "redis_database", "redis_reconnect_max", "max_value", "max_bytes"});
  }
  StoreOptions& so = config.store;
  so.max_entries = config.lua.store_max_entries;
  check.get_enum<StoreOptions::Backend>(store, "store", "backend",
                                        {{"memory", StoreOptions::Backend::kMemory},
                                         {"redis", StoreOptions::Backend::kRedis}},
                                        so.backend);
  check.get_enum<StoreOptions::OnError>(store, "store", "on_error",
                                        {{"continue", StoreOptions::OnError::kContinue},
                                         {"tempfail", StoreOptions::OnError::kTempfail}},
                                        so.on_error);
  config.lua.store_on_error = so.on_error == StoreOptions::OnError::kContinue ? LuaOptions::OnError::kContinue
                                                                                : LuaOptions::OnError::kTempfail;
  if (const toml::node* n = check.get_string(store, "store", "persist", so.persist)) {
    if (!so.persist.empty()) {
      std::error_code ec;
      auto abs = std::filesystem::absolute(so.persist, ec);
      if (!ec) so.persist = abs.lexically_normal().string();
      auto dir = std::filesystem::path(so.persist).parent_path();
      if (std::filesystem::is_directory(so.persist, ec)) {
        check.error(n, "store.persist", "\"" + so.persist + "\" is a directory; name the LMDB file, e.g. \"" +
                                            (std::filesystem::path(so.persist) / "store.lmdb").string() + '"');
      } else if (access(dir.c_str(), W_OK | X_OK) != 0) {
        check.error(n, "store.persist", "directory \"" + dir.string() + "\" is not writable: " + std::strerror(errno));
      }
      if (so.backend == StoreOptions::Backend::kRedis) {
        check.error(n, "store.persist", "applies to backend = \"memory\" only (Redis keeps its own data)");
      }
    }
  }
  Seconds interval = std::chrono::duration_cast<Seconds>(so.persist_interval);
  check.get_seconds(store, "store", "persist_interval", 0.01, 3600, interval);
  so.persist_interval = std::chrono::milliseconds(static_cast<long long>(interval.count() * 1000));
  check.get_size(store, "store", "persist_map_size", 1u << 20, std::size_t(1) << 40, so.persist_map_size);
  // Byte limits (issue 17): per value for every backend, in total for memory.
  check.get_size(store, "store", "max_value", 1, KeyValueStore::kMaxValue, so.max_value);
  check.get_size(store, "store", "max_bytes", 1u << 16, std::size_t(1) << 40, so.max_bytes);
  config.lua.store_max_value = so.max_value;
  if (const toml::node* n = check.get_string(store, "store", "redis_address", so.redis_address)) {
    if (!parse_host_port(so.redis_address, so.redis.host, so.redis.port, false) || so.redis.port == 0) {
      check.error(n, "store.redis_address", "expected \"HOST:PORT\" of the Redis server (e.g. \"127.0.0.1:6379\"), got \"" +
                                                so.redis_address + '"');
    }
  } else {
    parse_host_port(so.redis_address, so.redis.host, so.redis.port, false);
  }
  if (const toml::node* n = check.get_string(store, "store", "redis_prefix", so.redis_prefix)) {
    if (so.redis_prefix.size() > 64) check.error(n, "store.redis_prefix", "expected at most 64 characters");
  }
  Seconds redis_timeout = std::chrono::duration_cast<Seconds>(so.redis.timeout);
  check.get_seconds(store, "store", "redis_timeout", 0.01, 60, redis_timeout);
  so.redis.timeout = std::chrono::milliseconds(static_cast<long long>(redis_timeout.count() * 1000));
  check.get_string(store, "store", "redis_password", so.redis.password);
  std::size_t database = so.redis.database;
  check.get_size(store, "store", "redis_database", 0, 65535, database);
  so.redis.database = static_cast<unsigned>(database);
  Seconds reconnect_max = std::chrono::duration_cast<Seconds>(so.redis.reconnect_max);
  check.get_seconds(store, "store", "redis_reconnect_max", 0.1, 3600, reconnect_max);
  so.redis.reconnect_max = std::chrono::milliseconds(static_cast<long long>(reconnect_max.count() * 1000));
  so.redis.reconnect_min = std::min(so.redis.reconnect_min, so.redis.reconnect_max);
}

// [report] (docs/configuration.md "[report]"): the reports' identity and
// period, and the domains the HTML report shows by default.
void parse_report(Checker& check, const toml::table& root, Config& config) {
  // A host name (LDH labels): what a From domain or a report sender's domain is.
  auto host_name = [](const std::string& d) {
    return dns_name_valid(d) && d.find('.') != std::string::npos &&
           std::all_of(d.begin(), d.end(), [](unsigned char c) { return std::isalnum(c) || c == '-' || c == '.'; });
  };
  Config::Report& r = config.report;
  const toml::table* t = check.section(root, "report");
  if (t) check.check_keys(*t, "report", {"org_name", "email", "extra_contact_info", "interval", "domains"});
  check.get_string(t, "report", "org_name", r.org_name);
  if (r.org_name.empty()) r.org_name = config.server.hostname;
  if (const toml::node* n = check.get_string(t, "report", "email", r.email)) {
    auto at = r.email.rfind('@');
    if (at == std::string::npos || at == 0 || !host_name(r.email.substr(at + 1)) ||
        std::any_of(r.email.begin(), r.email.end(), [](unsigned char c) { return c <= 0x20 || c >= 0x7f || c == '<' || c == '>'; })) {
      check.error(n, "report.email", "expected the reports' sender address, e.g. \"dmarc-reports@example.net\", got " +
                                         describe(*n));
    }
  }
  check.get_string(t, "report", "extra_contact_info", r.extra_contact_info);
  check.get_seconds(t, "report", "interval", 3600, 7 * 86400, r.interval);
  if (const toml::node* n = t ? t->get("domains") : nullptr) {
    const toml::array* arr = n->as_array();
    if (!arr) check.error(n, "report.domains", "expected a list of domains, got " + describe(*n));
    for (const toml::node& item : arr ? *arr : toml::array{}) {
      if (!item.is_string() || !host_name(item.as_string()->get())) {
        check.error(&item, "report.domains", "expected a domain (\"example.com\"), got " + describe(item));
        continue;
      }
      r.domains.push_back(item.as_string()->get());
    }
  }
  if (r.domains.empty()) {  // else the domains postern signs for
    const toml::node* sign = root.at_path("dkim.sign").node();
    if (const toml::array* arr = sign ? sign->as_array() : nullptr) {
      for (const toml::node& item : *arr) {
        const toml::table* k = item.as_table();
        auto d = k ? (*k)["domain"].value<std::string>() : std::nullopt;
        if (d && dns_name_valid(*d) && std::find(r.domains.begin(), r.domains.end(), *d) == r.domains.end()) {
          r.domains.push_back(*d);
        }
      }
      r.domains_from_signing = !r.domains.empty();
    }
  }
}

// [milter_server] (docs/configuration.md "[milter_server]").
void parse_milter_server(Checker& check, const toml::table& root, Config& config) {
  const toml::table* t = check.section(root, "milter_server");
  if (!t) return;
  check.check_keys(*t, "milter_server", {"listen", "timeout", "socket_mode", "connections", "policy"});
  auto& ms = config.milter_server;
  if (const toml::node* n = t->get("listen")) {
    std::vector<const toml::node*> items;
    if (n->is_string()) items.push_back(n);
    else if (const toml::array* a = n->as_array()) for (const toml::node& i : *a) items.push_back(&i);
    else check.error(n, "milter_server.listen", "expected \"inet:HOST:PORT\", \"unix:PATH\" or an array of them");
    for (const toml::node* i : items) {
      const auto* s = i->as_string();
      MilterOptions parsed;
      std::string e = s ? parse_milter_socket(s->get(), parsed) : "expected a string, got " + describe(*i);
      if (!e.empty()) {
        check.error(i, "milter_server.listen", e);
        continue;
      }
      ms.listen.push_back({s->get(), parsed.unix_socket, parsed.path, parsed.host, parsed.port});
    }
  }
  check.get_seconds(t, "milter_server", "timeout", 1, 86400, ms.timeout);
  std::string mode;
  if (const toml::node* n = check.get_string(t, "milter_server", "socket_mode", mode)) {
    if (mode == "0600") ms.socket_mode = 0600;
    else if (mode == "0660") ms.socket_mode = 0660;
    else if (mode == "0666") ms.socket_mode = 0666;
    else check.error(n, "milter_server.socket_mode", "expected \"0600\", \"0660\" or \"0666\", got \"" + mode + "\"");
  }
  check.get_size(t, "milter_server", "connections", 0, 1000000, ms.connections);
  using P = Config::Listener::Policy;
  check.get_enum<P>(t, "milter_server", "policy", {{"inbound", P::kInbound}, {"submission", P::kSubmission}}, ms.policy);
}

// Every top-level key of postern.toml (the "allowed:" list of an unknown one).
constexpr std::string_view kTopLevelKeys[] = {
    "server", "listener", "upstream", "limits", "timeouts", "data", "log", "tls", "metrics", "submission", "lua",
    "scores", "quarantine", "dns", "spf", "dkim", "dmarc", "arc", "authentication_results", "audit", "control",
    "store", "authenticity", "milter", "milter_server", "report"};

// The sections in the order they are checked (errors are reported in this
// order). A section's parser may read what an earlier one set: [listener]
// the [tls] certificate, [dkim] the [dns] workers, [dmarc] [spf] and [dkim],
// [store] [lua]. A new section: add its key to kTopLevelKeys, its parse_X
// function above and its line here.
using SectionParser = void (*)(Checker&, const toml::table&, Config&);
constexpr SectionParser kSectionParsers[] = {
    parse_server,       parse_tls,         parse_listeners,  parse_upstream,
    parse_limits,       parse_timeouts,    parse_data,       parse_log_level,
    parse_operations,   parse_submission,  parse_metrics,    parse_quarantine,
    parse_lua,          parse_scores,      parse_dns,        parse_spf,
    parse_dkim,         parse_dmarc,       parse_authenticity, parse_authentication_results,
    parse_arc,          parse_audit,       parse_store,      parse_milters,
    parse_milter_server, parse_report,
};

}  // namespace

std::shared_ptr<const Config> load_config(const ConfigSource& source) {
  std::string file = source.path.empty() ? "(embedded default)" : source.path;
  std::string text;
  if (source.path.empty()) {
    text = kDefaultConfig;
  } else {
    std::ifstream in(source.path, std::ios::binary);
    if (!in) throw ConfigError(source.path + ": cannot read the configuration file");
    std::ostringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  toml::table root;
  try {
    root = toml::parse(text, file);
  } catch (const toml::parse_error& e) {
    std::ostringstream out;
    out << file << ':' << e.source().begin.line << ':' << e.source().begin.column
        << ": TOML syntax error: " << e.description();
    throw ConfigError(out.str());
  }
  apply_overrides(root, source);

  auto config = std::make_shared<Config>();
  Checker check(file);
  check.check_keys(root, "", kTopLevelKeys);
  for (SectionParser parse : kSectionParsers) parse(check, root, *config);
  check.finish();
  return config;
}

}  // namespace postern
