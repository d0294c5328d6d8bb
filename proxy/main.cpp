// postern's command line: run, config check, --help, --version.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include <fstream>
#include <sstream>

#include "filters/audit/audit_report.h"
#include "filters/audit/offline_check.h"
#include "proxy/check_runner.h"
#include "proxy/report_dmarc.h"
#include "filters/lua/lua_filter.h"
#include "filters/lua/rule_test.h"
#include "proxy/config.h"
#include "proxy/control.h"
#include "proxy/filter_setup.h"
#include "proxy/tls.h"
#include "proxy/process.h"
#include "proxy/server.h"
#include "revision.h"
#include "version.h"

namespace {

constexpr const char* kUsage = R"(postern - a filtering SMTP proxy in front of your MTA

Usage:
  postern run [--config FILE] [--listen ADDR:PORT]... [--upstream HOST:PORT | --upstream maildir:DIR]
              [--set SECTION.KEY=VALUE]...
  postern config check FILE
  postern reload [--socket PATH | -c CONFIG]
  postern status [--json] [--socket PATH | -c CONFIG]
  postern test [--config FILE] [-v] FIXTURE.toml|DIR...
  postern check --client-ip IP --helo NAME --mail-from ADDR [--dns-server IP@PORT]...
                [--config FILE --rcpt ADDR...] [--rules FILE]... MESSAGE.eml
  postern report [html] AUDIT.jsonl... [--html OUT.html] [--domain D]... [--all] [--config FILE] [--top N]
  postern report dmarc [AUDIT.jsonl...] [--from DATE --to DATE] [--config FILE] [--out DIR] [--send]
  postern --help | --version

Commands:
  run            Listen for SMTP and relay accepted mail to the upstream.
                 Without --config, the embedded default (config/postern.toml) is used:
                 listen on 127.0.0.1:2525 and deliver into ./postern-mail (a Maildir).
  config check   Validate a configuration file; print each problem as FILE:LINE:COLUMN.
  reload         Make the running postern reload its configuration, rules and
                 certificates (as SIGHUP does) and report the result; exit 1
                 when the new configuration is refused (the old one keeps running).
  status         Print the running postern's version, uptime, sessions, messages,
                 last reload and upstream health (--json: one JSON object).
  test           Run Lua rules offline against .eml fixtures (docs/first-rule.md);
                 exit 0 when every fixture passes, 1 when one fails, 2 on bad input.
  check          The verdict for one message file, offline: SPF, DKIM, DMARC,
                 Authentication-Results and the rules, printed as one JSON object.
                 With --config: the configuration's whole filter chain, every stage
                 (connect, helo, mail, each --rcpt, data, eom) as the live proxy runs
                 it, with the reply the client would hear and the deciding rule.
  report         Summarize audit logs per From domain: SPF/DKIM/DMARC pass rates,
                 alignment, actions, top failing sources; a table, and an HTML page.
                 `report dmarc`: RFC 7489 DMARC aggregate reports (rua=), written as
                 .xml.gz files and, with --send, mailed through the upstream.

Options of run:
  --config FILE          TOML configuration file (see docs/configuration.md)
  --listen ADDR:PORT     listen here instead of the file's [[listener]]s (repeatable;
                         port 0 picks a free port, logged as "listening address=...")
  --upstream TARGET      "HOST:PORT" of the MTA, or "maildir:DIR"
  --set KEY=VALUE        override one key, e.g. --set limits.recipients=100
  -h, --help             show this help

Signals: SIGHUP reloads (and reopens a log file) the configuration for new sessions; SIGTERM/SIGINT stop
accepting, drain open sessions (up to server.shutdown_timeout) and exit.

Examples:
  postern run
  postern run --listen 0.0.0.0:25 --upstream 127.0.0.1:10025
  postern config check /etc/postern/postern.toml
)";

int usage_error(const std::string& what) {
  std::cerr << "postern: " << what << "\nTry 'postern --help'.\n";
  return 2;
}

bool is_help(std::string_view arg) { return arg == "-h" || arg == "--help" || arg == "help"; }

int cmd_run(const std::vector<std::string>& args) {
  postern::process::defer_hangup();  // a SIGHUP before the server listens must not end it
  postern::ConfigSource source;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (is_help(a)) {
      std::cout << kUsage;
      return 0;
    }
    auto value = [&](const char* flag) -> const std::string* {
      if (i + 1 >= args.size()) return nullptr;
      (void)flag;
      return &args[++i];
    };
    const std::string* v = nullptr;
    if (a == "--config") {
      if (!(v = value("--config"))) return usage_error("--config needs a FILE");
      source.path = *v;
    } else if (a == "--listen") {
      if (!(v = value("--listen"))) return usage_error("--listen needs ADDR:PORT");
      source.listen.push_back(*v);
    } else if (a == "--upstream") {
      if (!(v = value("--upstream"))) return usage_error("--upstream needs HOST:PORT or maildir:DIR");
      source.upstream = *v;
    } else if (a == "--set") {
      if (!(v = value("--set"))) return usage_error("--set needs SECTION.KEY=VALUE");
      source.sets.push_back(*v);
    } else {
      return usage_error("unknown option '" + a + "' for run");
    }
  }
  try {
    postern::Server server(std::move(source));
    return server.run();
  } catch (const postern::ConfigError& e) {
    std::cerr << "postern: configuration error:\n" << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "postern: " << e.what() << "\n";
    return 1;
  }
}

constexpr const char* kConfigUsage = R"(Usage: postern config check FILE

Validate a configuration file the way `postern run` would and print every
problem with FILE:LINE:COLUMN: keys, types and ranges, files that must exist,
the TLS certificate against its key, and every Lua rule script (the [lua] and
[submission] sets) compiled. Nothing is started and no DNS is asked.

Exit status: 0 valid, 1 problems found, 2 bad usage.
)";

int cmd_config(const std::vector<std::string>& args) {
  if (args.empty() || is_help(args[0])) {
    std::cout << kConfigUsage;
    return args.empty() ? 2 : 0;
  }
  if (args[0] != "check") return usage_error("unknown config command '" + args[0] + "'");
  if (args.size() != 2) return usage_error("config check needs exactly one FILE");
  if (is_help(args[1])) {
    std::cout << kConfigUsage;
    return 0;
  }
  postern::ConfigSource source;
  source.path = args[1];
  std::shared_ptr<const postern::Config> config;
  try {
    config = postern::load_config(source);
  } catch (const postern::ConfigError& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  // What start-up would refuse beyond the file itself: the certificate and
  // its key, and every rule script (both policies) compiled as `run` would.
  // Nothing is started: no resolver, no store, no socket.
  int problems = 0;
  auto report = [&](const std::exception& e) {
    std::cerr << args[1] << ": " << e.what() << "\n";
    ++problems;
  };
  if (!config->tls.cert_file.empty()) {
    try {
      postern::make_server_tls_context(config->tls);
    } catch (const std::exception& e) {
      report(e);
    }
  }
  postern::FilterResources offline;
  for (bool submission : {false, true}) {
    try {
      postern::build_filter_chain(*config, offline, submission);
    } catch (const std::exception& e) {
      report(e);
    }
  }
  if (problems) return 1;
  std::cout << args[1] << ": ok\n";
  return 0;
}

postern::ConfigSource source_from(const std::string& path) {
  postern::ConfigSource source;
  source.path = path;
  return source;
}

int cmd_test(const std::vector<std::string>& args) {
  std::string config_path;
  postern::RuleTestOptions options;
  std::vector<std::string> fixtures;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (is_help(args[i])) {
      std::cout << "Usage: postern test [--config FILE] [-v] FIXTURE.toml|DIR...\n"
                   "Runs the configured (or each fixture's) Lua rules offline against .eml fixtures.\n"
                   "\n"
                   "Options:\n"
                   "  --config FILE   the configuration whose [lua] rules run (else each fixture's)\n"
                   "  -v, --verbose   print every fixture's verdict and symbols, not only failures\n";
      return 0;
    }
    if (args[i] == "--config" && i + 1 < args.size()) config_path = args[++i];
    else if (args[i] == "-v" || args[i] == "--verbose") options.verbose = true;
    else fixtures.push_back(args[i]);
  }
  if (fixtures.empty()) return usage_error("test needs at least one fixture file or directory");
  try {
    auto config = postern::load_config(source_from(config_path));
    options.lua = config->lua;
    options.scores = config->scores;
    options.auth = config->auth;
    if (options.auth.hostname.empty()) options.auth.hostname = config->server.hostname;
  } catch (const postern::ConfigError& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
  return postern::run_rule_tests(fixtures, options, std::cout);
}

int cmd_check(const std::vector<std::string>& args) {
  postern::OfflineCheck check;
  std::string config_path, message_path;
  std::vector<std::string> rules, servers, rcpts;
  bool auth_only = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto next = [&](const char* flag) -> const std::string* {
      if (i + 1 >= args.size()) {
        usage_error(std::string(flag) + " needs a value");
        return nullptr;
      }
      return &args[++i];
    };
    const std::string* v = nullptr;
    if (is_help(a)) {
      std::cout << "Usage: postern check --client-ip IP --helo NAME --mail-from ADDR [--dns-server IP@PORT]...\n"
                   "                     [--config FILE --rcpt ADDR... | --config FILE --auth-only] [--rules FILE]...\n"
                   "                     MESSAGE.eml\n"
                   "  --config FILE --rcpt ADDR  every stage as the live proxy runs it (verdict, reply, rule)\n"
                   "  --auth-only                only SPF, DKIM, DMARC (and --rules) of any identity, with\n"
                   "                             the [dns]/[spf] settings of --config; the default without --config\n";
      return 0;
    } else if (a == "--client-ip") { if (!(v = next("--client-ip"))) return 2; check.client_ip = *v; }
    else if (a == "--helo") { if (!(v = next("--helo"))) return 2; check.helo = *v; }
    else if (a == "--mail-from") { if (!(v = next("--mail-from"))) return 2; check.mail_from = *v; }
    else if (a == "--dns-server") { if (!(v = next("--dns-server"))) return 2; servers.push_back(*v); }
    else if (a == "--config") { if (!(v = next("--config"))) return 2; config_path = *v; }
    else if (a == "--rules") { if (!(v = next("--rules"))) return 2; rules.push_back(*v); }
    else if (a == "--rcpt") { if (!(v = next("--rcpt"))) return 2; rcpts.push_back(*v); }
    else if (a == "--auth-only") auth_only = true;
    else if (!a.empty() && a[0] == '-') return usage_error("unknown option '" + a + "' for check");
    else message_path = a;
  }
  if (check.client_ip.empty() || message_path.empty()) {
    return usage_error("check needs --client-ip and a MESSAGE file");
  }
  std::ifstream in(message_path, std::ios::binary);
  if (!in) return usage_error("cannot read " + message_path);
  std::ostringstream text;
  text << in.rdbuf();
  check.message = text.str();
  if (auth_only && !rcpts.empty()) return usage_error("check --auth-only runs no recipient: drop --rcpt");
  const bool live_run = !config_path.empty() && !auth_only;
  if (live_run && rcpts.empty()) return usage_error("check --config needs at least one --rcpt (or --auth-only)");
  try {
    auto config = postern::load_config(source_from(config_path));
    if (live_run) {  // every stage, as the live proxy runs it
      postern::Config live = *config;
      if (!servers.empty()) live.dns.servers = servers;
      if (!rules.empty()) live.lua.scripts = rules;
      postern::LiveCheck lc{check.client_ip, 0, check.helo, check.mail_from, rcpts, check.message};
      std::cout << postern::run_live_check(live, lc) << "\n";
      return 0;
    }
    check.auth = config->auth;
    if (check.auth.hostname.empty()) check.auth.hostname = config->server.hostname;
    check.dns = config->dns;
    if (!servers.empty()) check.dns.servers = servers;
    check.thresholds = config->scores;
    postern::LuaOptions lua = config->lua;
    if (!rules.empty()) lua.scripts = rules;
    if (!lua.scripts.empty()) check.rules.push_back(postern::make_lua_filter(lua, nullptr));
    std::cout << postern::run_offline_check(check) << "\n";
  } catch (const postern::ConfigError& e) {
    std::cerr << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "postern check: " << e.what() << "\n";
    return 2;
  }
  return 0;
}

constexpr const char* kControlUsage = R"(Usage:
  postern reload [--socket PATH | -c CONFIG]
  postern status [--json] [--socket PATH | -c CONFIG]

Talk to the running postern over its control socket ([control] socket).

  reload   Reload the configuration, the Lua rules and the TLS certificates,
           exactly as SIGHUP does, and reopen a log file. Prints "reloaded" and
           exits 0, or prints why the new configuration was refused (FILE:LINE)
           and exits 1; the running configuration then stays.
  status   Version, pid, uptime, configuration file, workers, open sessions,
           messages since start, the last reload's result, upstream health.

Options:
  --socket PATH      the control socket
  -c, --config FILE  the configuration postern runs with; its [control] socket is
                     used. Unset: $RUNTIME_DIRECTORY/control.sock (systemd), else
                     ./postern-control-PORT.sock (PORT the first listener's; the
                     only one in the directory), else /run/postern/control.sock
  --json             status: one JSON object
  -h, --help         show this help

Exit status: 0 done, 1 refused or postern not reachable, 2 bad usage.
)";

int cmd_control(const std::string& command, const std::vector<std::string>& args) {
  std::string socket, config_path;
  bool json = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (is_help(a)) {
      std::cout << kControlUsage;
      return 0;
    }
    if (a == "--socket" && i + 1 < args.size()) socket = args[++i];
    else if ((a == "-c" || a == "--config") && i + 1 < args.size()) config_path = args[++i];
    else if (a == "--json" && command == "status") json = true;
    else return usage_error("unknown option '" + a + "' for " + command);
  }
  if (!socket.empty() && !config_path.empty()) return usage_error("--socket and -c exclude each other");
  if (socket.empty()) {
    bool per_listener = false;
    try {
      auto config = postern::load_config(source_from(config_path));
      socket = config->control.socket;
      per_listener = config->control.per_listener;
      if (per_listener) socket = postern::control::find_socket(config->listeners[0].port);
    } catch (const postern::ConfigError& e) {
      std::cerr << e.what() << "\n";
      return 1;
    } catch (const std::runtime_error& e) {
      std::cerr << "postern " << command << ": " << e.what() << "\n";
      return 1;
    }
    if (socket.empty()) {
      std::cerr << "postern " << command << ": the control socket is off in "
                << (config_path.empty() ? "the embedded default" : config_path) << " ([control] socket = \"\")\n";
      return 1;
    }
  }
  std::string answer;
  try {
    answer = postern::control::request(socket, command == "status" && json ? "status json" : command);
  } catch (const std::exception& e) {
    std::cerr << "postern " << command << ": " << e.what() << "\n";
    return 1;
  }
  if (command == "reload") {
    bool ok = answer.rfind("ok", 0) == 0;
    // "ok reloaded FILE" / "error reload refused...\nFILE:LINE: ..."
    (ok ? std::cout : std::cerr) << (ok ? answer.substr(3) : answer.substr(6));
    return ok ? 0 : 1;
  }
  if (answer.rfind("error ", 0) == 0) {
    std::cerr << "postern " << command << ": " << answer.substr(6);
    return 1;
  }
  std::cout << answer;
  return 0;
}

constexpr const char* kReportUsage = R"(Usage: postern report [html] AUDIT.jsonl... [--html OUT.html] [--domain D]... [--all]
                      [--config FILE] [--top N]
       postern report dmarc ...   (DMARC aggregate reports; postern report dmarc --help)

Summarizes postern audit logs ([audit] path, rotated files too) per sending
domain (the RFC5322.From domain): messages, SPF / DKIM / DMARC pass rates,
DMARC alignment, actions taken, and the client addresses whose messages
failed. Prints an aligned table; --html also writes one self-contained page
(inline CSS and SVG charts, no scripts, nothing loaded from elsewhere).

Options:
  html              write the HTML page to standard output (as --html -)
  --html OUT.html   write the HTML report there ("-" = standard output, then no table)
  --domain D        only these From domains and their subdomains (repeatable); default:
                    [report] domains, else the [[dkim.sign]] domains of --config
  --all             every From domain, whatever the configuration says
  --config FILE     the configuration the domain default comes from
  --top N           failing sources listed per domain (default 10)
  -h, --help        show this help

Malformed lines are counted and named in the report; they do not stop it.
Exit status: 0 done, 2 bad usage or an unreadable file.

Examples:
  postern report /var/log/postern/audit.jsonl
  postern report /var/log/postern/audit.jsonl* --domain example.com --html report.html
)";

int cmd_report(std::vector<std::string> args) {
  // Subcommands (documented under `postern report`): dmarc, html.
  if (!args.empty() && args.front() == "dmarc") return postern::cmd_report_dmarc({args.begin() + 1, args.end()});
  std::vector<std::string> files, domains;
  std::string html, config_path;
  bool all = false;
  std::size_t top = 10;
  if (!args.empty() && args.front() == "html") {
    args.erase(args.begin());
    html.assign(1, '-');  // not = "-": GCC 12 -Wrestrict false positive (PR 105329)
  }
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (is_help(a)) {
      std::cout << kReportUsage;
      return 0;
    }
    if (a == "--all") {
      all = true;
    } else if (a == "--html" || a == "--domain" || a == "--top" || a == "--config") {
      if (i + 1 >= args.size()) return usage_error(a + " needs a value");
      const std::string& v = args[++i];
      if (a == "--config") {
        config_path = v;
      } else if (a == "--html") {
        html = v;
      } else if (a == "--domain") {
        domains.push_back(v);
      } else {
        if (v.empty() || v.size() > 6 || v.find_first_not_of("0123456789") != std::string::npos) {
          return usage_error("--top needs a number");
        }
        top = std::stoul(v);
      }
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error("unknown option '" + a + "' for report");
    } else {
      files.push_back(a);
    }
  }
  if (files.empty()) return usage_error("report needs at least one AUDIT.jsonl file");
  bool from_signing = false;
  if (!config_path.empty() && domains.empty() && !all) {  // the configured domains by default
    try {
      auto config = postern::load_config(postern::ConfigSource{config_path, {}, {}, {}});
      domains = config->report.domains;
      from_signing = config->report.domains_from_signing;
    } catch (const std::exception& e) {
      std::cerr << "postern report: configuration error:\n" << e.what() << "\n";
      return 2;
    }
  }
  postern::AuditReportBuilder builder(domains, top);
  builder.set_domains_from_signing(from_signing);
  for (const std::string& f : files) {
    if (f == "-") {
      builder.add_stream("(stdin)", std::cin);
      continue;
    }
    std::ifstream in(f, std::ios::binary);
    if (!in) {
      std::cerr << "postern report: cannot read " << f << ": " << std::strerror(errno) << "\n";
      return 2;
    }
    builder.add_stream(f, in);
  }
  postern::AuditReport report = builder.finish();
  if (html == "-") {
    postern::write_report_html(report, std::cout);
    return 0;
  }
  postern::print_report_text(report, std::cout);
  if (!html.empty()) {
    std::ofstream out(html, std::ios::binary | std::ios::trunc);
    if (out) postern::write_report_html(report, out);
    if (!out || !out.flush()) {
      std::cerr << "postern report: cannot write " << html << "\n";
      return 2;
    }
    std::cout << "\nHTML report: " << html << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    std::cerr << kUsage;
    return 2;
  }
  if (is_help(args[0])) {
    std::cout << kUsage;
    return 0;
  }
  if (args[0] == "--version" || args[0] == "version") {
    // The version is CMakeLists.txt's project(VERSION); the revision is git's, when built from git.
    std::cout << "postern " << postern::kVersion;
    if (*postern::kRevision) std::cout << " (git " << postern::kRevision << ")";
    std::cout << "\n";
    return 0;
  }
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "run") return cmd_run(rest);
  if (args[0] == "config") return cmd_config(rest);
  if (args[0] == "test") return cmd_test(rest);
  if (args[0] == "check") return cmd_check(rest);
  if (args[0] == "reload" || args[0] == "status") return cmd_control(args[0], rest);
  if (args[0] == "report") return cmd_report(rest);
  return usage_error("unknown command '" + args[0] + "'");
}
