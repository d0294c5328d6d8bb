// Fuzz target: load_config (proxy/config.h) on a configuration file, with
// toml++ compiled in and instrumented. The input is the file's TOML text;
// leading comment lines "#--set KEY=VALUE", "#--listen ADDR" and
// "#--upstream TARGET" are also passed as the command-line overrides, so
// seeds stay valid TOML files.
//
// Asserts:
//  - load_config either returns a configuration or throws ConfigError
//    (`postern config check` catches nothing else), whose message is
//    non-empty and starts with the file name or the override's flag;
//  - a returned configuration keeps every documented bound: at least one
//    listener, each with a numeric host; an SMTP upstream has a host and a
//    non-zero port, a Maildir upstream a directory; non-empty host name and
//    EHLO name; every limit and time-out within its range (no NaN);
//  - loading the same input twice gives the same result.
#include <arpa/inet.h>
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <typeinfo>

#include "fuzz_util.h"
#include "proxy/config.h"

using postern::Config;
using postern::ConfigError;
using postern::ConfigSource;
using postern::fuzz::escape;

namespace {

const std::string& config_path() {
  static const std::string path = [] {
    const char* t = std::getenv("TMPDIR");
    return std::string(t && *t ? t : "/tmp") + "/postern-fuzz-config-" + std::to_string(getpid()) + ".toml";
  }();
  static const bool cleanup = [] { return std::atexit([] { ::unlink(path.c_str()); }) == 0; }();
  (void)cleanup;
  return path;
}

struct Outcome {
  std::shared_ptr<const Config> config;
  std::string error;
};

Outcome load(const ConfigSource& source, std::string_view text) {
  Outcome o;
  try {
    o.config = postern::load_config(source);
  } catch (const ConfigError& e) {
    o.error = e.what();
    FUZZ_CHECK(!o.error.empty(), "empty ConfigError for \"" + escape(text) + "\"");
    bool named = o.error.rfind(source.path, 0) == 0 || o.error.rfind("--", 0) == 0;
    FUZZ_CHECK(named, "  ConfigError does not start with the file or flag\n  error: \"" + escape(o.error) +
                          "\"\n  text: \"" + escape(text) + "\"");
  } catch (const std::exception& e) {
    FUZZ_CHECK(false, std::string("  load_config threw ") + typeid(e).name() + " (not ConfigError): \"" +
                          escape(e.what()) + "\"\n  text: \"" + escape(text) + "\"");
  }
  return o;
}

bool numeric_host(const std::string& host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

bool seconds_in(postern::Seconds s, double lo, double hi) {
  double v = s.count();
  return std::isfinite(v) && v >= lo && v <= hi;
}

void check_config(const Config& c, std::string_view text) {
  const std::string where = "  text: \"" + escape(text) + "\"";
  FUZZ_CHECK(!c.listeners.empty(), where);
  for (const Config::Listener& l : c.listeners) {
    FUZZ_CHECK(!l.host.empty() && numeric_host(l.host), "listener host \"" + escape(l.host) + "\"\n" + where);
  }
  if (c.upstream.kind == Config::Upstream::Kind::kSmtp) {
    FUZZ_CHECK(!c.upstream.host.empty() && c.upstream.port != 0, "upstream \"" + escape(c.upstream.target) + "\"\n" + where);
  } else {
    FUZZ_CHECK(!c.upstream.maildir.empty(), "upstream \"" + escape(c.upstream.target) + "\"\n" + where);
  }
  FUZZ_CHECK(!c.server.hostname.empty() && !c.upstream.helo.empty(), where);
  FUZZ_CHECK(c.server.threads <= 256 && seconds_in(c.server.shutdown_timeout, 0, 86400), where);
  const Config::Limits& l = c.limits;
  FUZZ_CHECK(l.message_size >= 1 && l.message_size <= (std::size_t(1) << 40) && l.recipients >= 1 &&
                 l.recipients <= 100000 && l.messages_per_session >= 1 && l.messages_per_session <= 1000000 &&
                 l.errors >= 1 && l.errors <= 1000 && l.command_line >= 512 && l.command_line <= 65536 &&
                 l.text_line >= 1000 && l.text_line <= (1u << 20),
             "limits out of range\n" + where);
  const Config::Timeouts& t = c.timeouts;
  for (postern::Seconds s : {t.command, t.data, t.upstream_connect, t.upstream_greeting, t.upstream_mail,
                             t.upstream_rcpt, t.upstream_data_init, t.upstream_data_block, t.upstream_data_term}) {
    FUZZ_CHECK(seconds_in(s, 0.05, 86400), "time-out " + std::to_string(s.count()) + "\n" + where);
  }
  FUZZ_CHECK(c.data.spool_memory <= (std::size_t(1) << 32), where);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  ConfigSource source;
  source.path = config_path();
  // Overrides from leading "#--flag value" comment lines.
  for (std::string_view rest = text; rest.substr(0, 3) == "#--";) {
    std::size_t eol = rest.find('\n');
    std::string_view line = rest.substr(3, eol == std::string_view::npos ? std::string_view::npos : eol - 3);
    if (line.substr(0, 4) == "set ") source.sets.emplace_back(line.substr(4));
    else if (line.substr(0, 7) == "listen ") source.listen.emplace_back(line.substr(7));
    else if (line.substr(0, 9) == "upstream ") source.upstream = line.substr(9);
    if (eol == std::string_view::npos) break;
    rest.remove_prefix(eol + 1);
  }
  std::FILE* f = std::fopen(source.path.c_str(), "wb");
  FUZZ_CHECK(f != nullptr, "cannot write " + source.path);
  FUZZ_CHECK(std::fwrite(text.data(), 1, text.size(), f) == text.size() && std::fclose(f) == 0,
             "cannot write " + source.path);

  Outcome first = load(source, text);
  if (first.config) check_config(*first.config, text);
  // Determinism, on one input in eight (a load costs a file read and a parse).
  if (postern::fuzz::Choices(text).next() % 8 != 0) return 0;
  Outcome second = load(source, text);
  FUZZ_CHECK(first.error == second.error && (first.config != nullptr) == (second.config != nullptr),
             "  two loads differ\n  first: \"" + escape(first.error) + "\"\n  second: \"" + escape(second.error) +
                 "\"\n  text: \"" + escape(text) + "\"");
  return 0;
}
