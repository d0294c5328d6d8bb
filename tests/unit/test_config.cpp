// Configuration loader: the embedded default, files, schema errors with
// file:line, "did you mean", several errors at once, and --set overrides.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "proxy/config.h"
#include "config_test_util.h"
#include "test_util.h"

using Catch::Matchers::Contains;
using postern::Config;
using postern::ConfigError;
using postern::ConfigSource;
using postern::DataDecoder;
using postern::load_config;
using postern::test::TempDir;
using postern::test::config_error;

namespace {


std::size_t count_lines(const std::string& s) {
  std::size_t n = 1;
  for (char c : s) n += c == '\n';
  return n;
}

// The smallest valid file: everything else takes its default.
const std::string kMinimal = "[upstream]\ntarget = \"127.0.0.1:10025\"\n";

}  // namespace

TEST_CASE("load_config: the embedded default", "[config]") {
  auto config = load_config(ConfigSource{});
  REQUIRE(config);
  REQUIRE(config->listeners.size() == 1);
  CHECK(config->listeners[0].address == "127.0.0.1:2525");
  CHECK(config->listeners[0].host == "127.0.0.1");
  CHECK(config->listeners[0].port == 2525);
  CHECK(config->upstream.kind == Config::Upstream::Kind::kMaildir);
  CHECK(config->upstream.target == "maildir:postern-mail");
  CHECK(config->upstream.maildir.front() == '/');  // made absolute
  CHECK_THAT(config->upstream.maildir, Catch::EndsWith("/postern-mail"));
  CHECK_FALSE(config->server.hostname.empty());     // the system host name
  CHECK(config->upstream.helo == config->server.hostname);
  CHECK(config->server.threads == 0);
  CHECK(config->server.shutdown_timeout.count() == 30);
  CHECK(config->limits.message_size == 52428800);
  CHECK(config->limits.recipients == 1000);
  CHECK(config->limits.messages_per_session == 10000);
  CHECK(config->limits.errors == 10);
  CHECK(config->limits.command_line == 2048);
  CHECK(config->limits.text_line == 1000);
  CHECK(config->timeouts.command.count() == 300);
  CHECK(config->timeouts.data.count() == 300);
  CHECK(config->timeouts.upstream_connect.count() == 30);
  CHECK(config->timeouts.upstream_data_init.count() == 120);
  CHECK(config->timeouts.upstream_data_block.count() == 180);
  CHECK(config->timeouts.upstream_data_term.count() == 600);
  CHECK(config->data.bare_line_ending == DataDecoder::BareLineEnding::kReject);
  CHECK(config->data.spool_memory == 1048576);
  CHECK(config->data.spool_dir.empty());
  CHECK(config->log.level == Config::Log::Level::kInfo);
}

TEST_CASE("load_config: a valid file", "[config]") {
  TempDir dir;
  const std::string path = dir.write("postern.toml",
                                     "# comment\n"
                                     "[server]\n"
                                     "hostname = \"relay.example\"\n"
                                     "threads = 4\n"
                                     "shutdown_timeout = 2.5\n"
                                     "\n"
                                     "[[listener]]\n"
                                     "address = \"127.0.0.1:0\"\n"
                                     "[[listener]]\n"
                                     "address = \"[::1]:2526\"\n"
                                     "\n"
                                     "[upstream]\n"
                                     "target = \"mx.example:10025\"\n"
                                     "helo = \"proxy.example\"\n"
                                     "\n"
                                     "[limits]\n"
                                     "message_size = 1000000\n"
                                     "recipients = 5\n"
                                     "messages_per_session = 7\n"
                                     "errors = 3\n"
                                     "command_line = 512\n"
                                     "text_line = 2000\n"
                                     "\n"
                                     "[timeouts]\n"
                                     "command = 0.05\n"
                                     "data = 10\n"
                                     "upstream_data_term = 86400\n"
                                     "\n"
                                     "[data]\n"
                                     "bare_line_ending = \"normalize\"\n"
                                     "spool_memory = 0\n"
                                     "spool_dir = \"" + dir.path() + "\"\n"
                                     "\n"
                                     "[log]\n"
                                     "level = \"debug\"\n");
  auto config = load_config(ConfigSource{path, {}, {}, {}});
  CHECK(config->server.hostname == "relay.example");
  CHECK(config->server.threads == 4);
  CHECK(config->server.shutdown_timeout.count() == 2.5);
  REQUIRE(config->listeners.size() == 2);
  CHECK(config->listeners[0].host == "127.0.0.1");
  CHECK(config->listeners[0].port == 0);
  CHECK(config->listeners[1].address == "[::1]:2526");
  CHECK(config->listeners[1].host == "::1");
  CHECK(config->listeners[1].port == 2526);
  CHECK(config->upstream.kind == Config::Upstream::Kind::kSmtp);
  CHECK(config->upstream.host == "mx.example");
  CHECK(config->upstream.port == 10025);
  CHECK(config->upstream.helo == "proxy.example");
  CHECK(config->limits.message_size == 1000000);
  CHECK(config->limits.recipients == 5);
  CHECK(config->limits.messages_per_session == 7);
  CHECK(config->limits.errors == 3);
  CHECK(config->limits.command_line == 512);
  CHECK(config->limits.text_line == 2000);
  CHECK(config->timeouts.command.count() == 0.05);
  CHECK(config->timeouts.data.count() == 10);
  CHECK(config->timeouts.upstream_data_term.count() == 86400);
  CHECK(config->timeouts.upstream_connect.count() == 30);  // default kept
  CHECK(config->data.bare_line_ending == DataDecoder::BareLineEnding::kNormalize);
  CHECK(config->data.spool_memory == 0);
  CHECK(config->data.spool_dir == dir.path());
  CHECK(config->log.level == Config::Log::Level::kDebug);
}

TEST_CASE("load_config: upstream targets", "[config]") {
  TempDir dir;
  SECTION("accepted") {
    struct Case {
      std::string target;
      Config::Upstream::Kind kind;
      std::string host;
      unsigned short port;
      std::string maildir;
    };
    const std::vector<Case> cases{
        {"127.0.0.1:25", Config::Upstream::Kind::kSmtp, "127.0.0.1", 25, ""},
        {"mx.example:587", Config::Upstream::Kind::kSmtp, "mx.example", 587, ""},
        {"[::1]:10025", Config::Upstream::Kind::kSmtp, "::1", 10025, ""},
        {"localhost:65535", Config::Upstream::Kind::kSmtp, "localhost", 65535, ""},
        {"maildir:/var/mail/postern", Config::Upstream::Kind::kMaildir, "", 25, "/var/mail/postern"},
        {"maildir:/var/mail/../mail/x/", Config::Upstream::Kind::kMaildir, "", 25, "/var/mail/x/"},
    };
    for (const Case& c : cases) {
      INFO("target: " << c.target);
      std::string path = dir.write("c.toml", "[upstream]\ntarget = \"" + c.target + "\"\n");
      auto config = load_config(ConfigSource{path, {}, {}, {}});
      CHECK(config->upstream.target == c.target);
      CHECK(config->upstream.kind == c.kind);
      if (c.kind == Config::Upstream::Kind::kSmtp) {
        CHECK(config->upstream.host == c.host);
        CHECK(config->upstream.port == c.port);
      } else {
        CHECK(config->upstream.maildir == c.maildir);
      }
    }
  }
  SECTION("refused, naming the line") {
    for (const std::string target : {"mx.example", "mx.example:", "mx.example:0", "mx.example:65536",
                                     "mx.example:25x", ":25", "maildir:", "mx example:25", "::1:25",
                                     "[::1]25", "[::1:25", "mx_example:25", "smtp://mx.example:25", ""}) {
      INFO("target: " << target);
      std::string path = dir.write("c.toml", "[upstream]\n\ntarget = \"" + target + "\"\n");
      std::string msg = config_error(ConfigSource{path, {}, {}, {}});
      CHECK_THAT(msg, Contains(path + ":3:"));
      CHECK_THAT(msg, Contains("key 'upstream.target'"));
      CHECK_THAT(msg, Contains("expected \"HOST:PORT\" of the MTA or \"maildir:DIRECTORY\", got \"" +
                               target + "\""));
      CHECK(count_lines(msg) == 1);
    }
  }
}

TEST_CASE("load_config: listener addresses", "[config]") {
  TempDir dir;
  SECTION("accepted") {
    for (const std::string address : {"0.0.0.0:25", "127.0.0.1:0", "[::]:2525", "[::1]:65535",
                                      "[2001:db8::1]:25"}) {
      INFO("address: " << address);
      std::string path =
          dir.write("l.toml", kMinimal + "[[listener]]\naddress = \"" + address + "\"\n");
      auto config = load_config(ConfigSource{path, {}, {}, {}});
      REQUIRE(config->listeners.size() == 1);
      CHECK(config->listeners[0].address == address);
    }
  }
  SECTION("refused, naming the line") {
    for (const std::string address : {"localhost:25", "127.0.0.1", "127.0.0.1:", "127.0.0.1:70000",
                                      "127.0.0.1:-1", "::1:25", "[::1]25", "[::1]:", "[]:25",
                                      "256.0.0.1:25", "127.0.0.1:25 ", "", "*:25"}) {
      INFO("address: " << address);
      std::string path =
          dir.write("l.toml", kMinimal + "[[listener]]\naddress = \"" + address + "\"\n");
      std::string msg = config_error(ConfigSource{path, {}, {}, {}});
      CHECK_THAT(msg, Contains(path + ":4:"));
      CHECK_THAT(msg, Contains("key 'listener.address'"));
      CHECK_THAT(msg, Contains("got \"" + address + "\""));
    }
  }
  SECTION("not an array of tables") {
    std::string path = dir.write("l.toml", "listener = \"127.0.0.1:25\"\n" + kMinimal);
    std::string msg = config_error(ConfigSource{path, {}, {}, {}});
    CHECK_THAT(msg, Contains(path + ":1:"));
    CHECK_THAT(msg, Contains("key 'listener': expected [[listener]] tables"));
  }
  SECTION("a listener without an address") {
    std::string path = dir.write("l.toml", kMinimal + "[[listener]]\nadress = \"127.0.0.1:25\"\n");
    std::string msg = config_error(ConfigSource{path, {}, {}, {}});
    CHECK_THAT(msg, Contains(path + ":4:"));
    CHECK_THAT(msg, Contains("key 'listener.adress': unknown key; did you mean 'address'?"));
    CHECK_THAT(msg, Contains("key 'listener.address': missing"));
  }
}

TEST_CASE("load_config: unknown keys suggest the nearest known key", "[config]") {
  TempDir dir;
  struct Case {
    std::string text;
    int line;
    std::string expected;
  };
  const std::vector<Case> cases{
      {kMinimal + "[limits]\nmesage_size = 10\n", 4,
       "key 'limits.mesage_size': unknown key; did you mean 'message_size'?"},
      {kMinimal + "[limits]\nrecipient = 10\n", 4, "key 'limits.recipient': unknown key; did you mean 'recipients'?"},
      {kMinimal + "[timeouts]\n\ncomand = 10\n", 5, "key 'timeouts.comand': unknown key; did you mean 'command'?"},
      {kMinimal + "[limit]\nerrors = 3\n", 3, "key 'limit': unknown key; did you mean 'limits'?"},
      {kMinimal + "[data]\nbare_line_endings = \"reject\"\n", 4,
       "key 'data.bare_line_endings': unknown key; did you mean 'bare_line_ending'?"},
      {kMinimal + "[log]\nlevle = \"info\"\n", 4, "key 'log.levle': unknown key; did you mean 'level'?"},
      {"[upstream]\ntarget = \"127.0.0.1:25\"\nhelo_name = \"x\"\n", 3,
       "key 'upstream.helo_name': unknown key; allowed: target helo"},
      {kMinimal + "[log]\nverbosity = 3\n", 4, "key 'log.verbosity': unknown key; allowed: level"},
  };
  for (const Case& c : cases) {
    INFO(c.text);
    std::string path = dir.write("u.toml", c.text);
    std::string msg = config_error(ConfigSource{path, {}, {}, {}});
    CHECK_THAT(msg, Contains(path + ":" + std::to_string(c.line) + ":"));
    CHECK_THAT(msg, Contains(c.expected));
    CHECK(count_lines(msg) == 1);
  }
}

TEST_CASE("load_config: wrong types and out-of-range values", "[config]") {
  TempDir dir;
  struct Case {
    std::string section;
    std::string line;
    std::string expected;
  };
  const std::vector<Case> cases{
      // Wrong type.
      {"limits", "errors = \"ten\"", "key 'limits.errors': expected an integer from 1 to 1000, got \"ten\""},
      {"limits", "errors = 5.0", "key 'limits.errors': expected an integer from 1 to 1000, got 5.0"},
      {"limits", "errors = true", "key 'limits.errors': expected an integer from 1 to 1000, got true"},
      {"limits", "errors = [1]", "key 'limits.errors': expected an integer from 1 to 1000, got an array"},
      {"timeouts", "command = \"fast\"",
       "key 'timeouts.command': expected a number of seconds from 0.05 to 86400, got \"fast\""},
      {"server", "hostname = 5", "key 'server.hostname': expected a string, got 5"},
      {"server", "hostname = { a = 1 }", "key 'server.hostname': expected a string, got a table"},
      {"data", "bare_line_ending = \"strip\"",
       "key 'data.bare_line_ending': expected one of \"reject\", \"normalize\", got \"strip\""},
      {"data", "bare_line_ending = \"Reject\"",
       "key 'data.bare_line_ending': expected one of \"reject\", \"normalize\", got \"Reject\""},
      {"log", "level = \"verbose\"",
       "key 'log.level': expected one of \"debug\", \"info\", \"warning\", \"error\", got \"verbose\""},
      // Out of range.
      {"limits", "errors = 0", "key 'limits.errors': expected an integer from 1 to 1000, got 0"},
      {"limits", "errors = 1001", "key 'limits.errors': expected an integer from 1 to 1000, got 1001"},
      {"limits", "message_size = -1", "key 'limits.message_size': expected an integer from 1 to 1099511627776, got -1"},
      {"limits", "command_line = 511", "key 'limits.command_line': expected an integer from 512 to 65536, got 511"},
      {"limits", "command_line = 65537", "key 'limits.command_line': expected an integer from 512 to 65536, got 65537"},
      {"limits", "text_line = 999", "key 'limits.text_line': expected an integer from 1000 to 1048576, got 999"},
      {"limits", "recipients = 100001", "key 'limits.recipients': expected an integer from 1 to 100000, got 100001"},
      {"server", "threads = 257", "key 'server.threads': expected an integer from 0 to 256, got 257"},
      {"server", "shutdown_timeout = -1", "key 'server.shutdown_timeout': expected a number of seconds from 0 to 86400, got -1"},
      {"timeouts", "command = 0.01", "key 'timeouts.command': expected a number of seconds from 0.05 to 86400, got 0.01"},
      {"timeouts", "data = 86401", "key 'timeouts.data': expected a number of seconds from 0.05 to 86400, got 86401"},
      {"timeouts", "upstream_rcpt = 0", "key 'timeouts.upstream_rcpt': expected a number of seconds from 0.05 to 86400, got 0"},
      {"timeouts", "data = inf", "key 'timeouts.data': expected a number of seconds from 0.05 to 86400, got inf"},
      {"data", "spool_memory = 4294967297",
       "key 'data.spool_memory': expected an integer from 0 to 4294967296, got 4294967297"},
      {"data", "spool_dir = \"/nonexistent/postern\"", "key 'data.spool_dir': directory \"/nonexistent/postern\" is not writable"},
  };
  for (const Case& c : cases) {
    INFO("[" << c.section << "] " << c.line);
    // The bad key is on line 5.
    std::string path = dir.write("t.toml", kMinimal + "[" + c.section + "]\n\n" + c.line + "\n");
    std::string msg = config_error(ConfigSource{path, {}, {}, {}});
    CHECK_THAT(msg, Contains(path + ":5:"));
    CHECK_THAT(msg, Contains(c.expected));
    CHECK(count_lines(msg) == 1);
  }
  SECTION("a section that is not a table") {
    std::string path = dir.write("t.toml", "\nlimits = 5\n" + kMinimal);
    std::string msg = config_error(ConfigSource{path, {}, {}, {}});
    CHECK_THAT(msg, Contains(path + ":2:"));
    CHECK_THAT(msg, Contains("key 'limits': expected a table [limits], got 5"));
  }
}

TEST_CASE("load_config: NaN is not a number of seconds in range", "[config][regression]") {
  // TOML allows nan; every comparison with NaN is false, so a range check
  // written as "v < min || v > max" lets it through as a timeout.
  TempDir dir;
  for (const std::string line : {"[timeouts]\ndata = nan", "[timeouts]\ncommand = -nan",
                                 "[server]\nshutdown_timeout = nan"}) {
    INFO(line);
    std::string path = dir.write("nan.toml", kMinimal + line + "\n");
    std::string msg = config_error(ConfigSource{path, {}, {}, {}});
    CHECK_THAT(msg, Contains(path + ":4:") && Contains("expected a number of seconds from"));
  }
  CHECK_THAT(config_error(ConfigSource{"", {}, {}, {"timeouts.data=nan"}}),
             Contains("key 'timeouts.data': expected a number of seconds from 0.05 to 86400, got nan"));
}

TEST_CASE("load_config: an omitted key takes the embedded default's value", "[config]") {
  // config/postern.toml documents the defaults; a file that leaves a key out
  // must get the same value as running with no file at all.
  TempDir dir;
  auto embedded = load_config(ConfigSource{});
  auto minimal = load_config(ConfigSource{dir.write("m.toml", kMinimal), {}, {}, {}});
  CHECK(minimal->server.threads == embedded->server.threads);
  CHECK(minimal->server.shutdown_timeout.count() == embedded->server.shutdown_timeout.count());
  CHECK(minimal->server.hostname == embedded->server.hostname);
  REQUIRE(minimal->listeners.size() == embedded->listeners.size());
  CHECK(minimal->listeners[0].host == embedded->listeners[0].host);
  CHECK(minimal->listeners[0].port == embedded->listeners[0].port);
  CHECK(minimal->limits.message_size == embedded->limits.message_size);
  CHECK(minimal->limits.recipients == embedded->limits.recipients);
  CHECK(minimal->limits.messages_per_session == embedded->limits.messages_per_session);
  CHECK(minimal->limits.errors == embedded->limits.errors);
  CHECK(minimal->limits.command_line == embedded->limits.command_line);
  CHECK(minimal->limits.text_line == embedded->limits.text_line);
  CHECK(minimal->timeouts.command.count() == embedded->timeouts.command.count());
  CHECK(minimal->timeouts.data.count() == embedded->timeouts.data.count());
  CHECK(minimal->timeouts.upstream_connect.count() == embedded->timeouts.upstream_connect.count());
  CHECK(minimal->timeouts.upstream_greeting.count() == embedded->timeouts.upstream_greeting.count());
  CHECK(minimal->timeouts.upstream_mail.count() == embedded->timeouts.upstream_mail.count());
  CHECK(minimal->timeouts.upstream_rcpt.count() == embedded->timeouts.upstream_rcpt.count());
  CHECK(minimal->timeouts.upstream_data_init.count() == embedded->timeouts.upstream_data_init.count());
  CHECK(minimal->timeouts.upstream_data_block.count() == embedded->timeouts.upstream_data_block.count());
  CHECK(minimal->timeouts.upstream_data_term.count() == embedded->timeouts.upstream_data_term.count());
  CHECK(minimal->data.bare_line_ending == embedded->data.bare_line_ending);
  CHECK(minimal->data.spool_memory == embedded->data.spool_memory);
  CHECK(minimal->data.spool_dir == embedded->data.spool_dir);
  CHECK(minimal->log.level == embedded->log.level);
}

TEST_CASE("load_config: several errors are reported together", "[config]") {
  TempDir dir;
  std::string path = dir.write("m.toml",
                               "[server]\n"                      // 1
                               "threads = -2\n"                  // 2
                               "\n"                              // 3
                               "[[listener]]\n"                  // 4
                               "address = \"nowhere\"\n"         // 5
                               "\n"                              // 6
                               "[upstream]\n"                    // 7
                               "target = \"mx.example\"\n"       // 8
                               "[limits]\n"                      // 9
                               "erors = 3\n"                     // 10
                               "[log]\n"                         // 11
                               "level = 4\n");                   // 12
  std::string msg = config_error(ConfigSource{path, {}, {}, {}});
  CHECK(count_lines(msg) == 5);
  CHECK_THAT(msg, Contains(path + ":2:") && Contains("key 'server.threads'"));
  CHECK_THAT(msg, Contains(path + ":5:") && Contains("key 'listener.address'"));
  CHECK_THAT(msg, Contains(path + ":8:") && Contains("key 'upstream.target'"));
  CHECK_THAT(msg, Contains(path + ":10:") && Contains("did you mean 'errors'?"));
  CHECK_THAT(msg, Contains(path + ":12:") && Contains("key 'log.level': expected a string, got 4"));
  // Each message names its own line.
  std::vector<std::string> lines;
  std::size_t start = 0;
  for (std::size_t nl; (nl = msg.find('\n', start)) != std::string::npos; start = nl + 1) {
    lines.push_back(msg.substr(start, nl - start));
  }
  lines.push_back(msg.substr(start));
  for (const auto& [line, key] : std::vector<std::pair<int, std::string>>{
           {2, "server.threads"}, {5, "listener.address"}, {8, "upstream.target"},
           {10, "limits.erors"}, {12, "log.level"}}) {
    bool found = false;
    for (const std::string& l : lines) {
      if (l.rfind(path + ":" + std::to_string(line) + ":", 0) == 0 && l.find("'" + key + "'") != std::string::npos) {
        found = true;
      }
    }
    INFO("line " << line << " key " << key << "\n" << msg);
    CHECK(found);
  }
}

TEST_CASE("load_config: unreadable file and TOML syntax errors", "[config]") {
  TempDir dir;
  SECTION("missing file") {
    std::string path = dir.path() + "/absent.toml";
    CHECK_THAT(config_error(ConfigSource{path, {}, {}, {}}),
               Contains(path) && Contains("cannot read the configuration file"));
  }
  SECTION("syntax error names the line") {
    std::string path = dir.write("s.toml", kMinimal + "[limits\nerrors = 3\n");
    std::string msg = config_error(ConfigSource{path, {}, {}, {}});
    CHECK_THAT(msg, Contains(path + ":3:"));
    CHECK_THAT(msg, Contains("TOML syntax error"));
  }
  SECTION("duplicate key") {
    std::string path = dir.write("s.toml", kMinimal + "[limits]\nerrors = 3\nerrors = 4\n");
    std::string msg = config_error(ConfigSource{path, {}, {}, {}});
    CHECK_THAT(msg, Contains(path + ":5:"));
    CHECK_THAT(msg, Contains("TOML syntax error"));
  }
}

TEST_CASE("load_config: a file without [upstream] gets the default Maildir target", "[config]") {
  // Every key is optional (docs/configuration.md): no target means the
  // embedded default's "maildir:postern-mail", relative to the working directory.
  TempDir dir;
  std::string path = dir.write("n.toml", "[limits]\nerrors = 3\n");
  auto config = load_config(ConfigSource{path, {}, {}, {}});
  CHECK(config->upstream.kind == Config::Upstream::Kind::kMaildir);
  CHECK(config->upstream.target == "maildir:postern-mail");
  CHECK(config->upstream.maildir.size() > std::string("/postern-mail").size());
  CHECK(config->upstream.maildir.front() == '/');
  CHECK(config->limits.errors == 3);
}

TEST_CASE("load_config: --set overrides", "[config]") {
  TempDir dir;
  const std::string path = dir.write("o.toml", kMinimal + "[limits]\nerrors = 3\n[timeouts]\ncommand = 10\n");
  SECTION("integer, float seconds, bare and quoted strings") {
    ConfigSource source{path, {}, {}, {"limits.errors=7", "timeouts.command=2.5", "timeouts.data=1",
                                       "server.hostname=mail.example", "upstream.helo=\"helo.example\"",
                                       "data.bare_line_ending=normalize", "limits.recipients=12"}};
    auto config = load_config(source);
    CHECK(config->limits.errors == 7);  // the override wins over the file
    CHECK(config->timeouts.command.count() == 2.5);
    CHECK(config->timeouts.data.count() == 1);
    CHECK(config->server.hostname == "mail.example");
    CHECK(config->upstream.helo == "helo.example");
    CHECK(config->data.bare_line_ending == DataDecoder::BareLineEnding::kNormalize);
    CHECK(config->limits.recipients == 12);
    CHECK(config->upstream.host == "127.0.0.1");  // untouched
  }
  SECTION("on the embedded default") {
    auto config = load_config(ConfigSource{"", {}, {}, {"upstream.target=127.0.0.1:2526", "log.level=error"}});
    CHECK(config->upstream.kind == Config::Upstream::Kind::kSmtp);
    CHECK(config->upstream.port == 2526);
    CHECK(config->log.level == Config::Log::Level::kError);
    CHECK(config->limits.errors == 10);
  }
  SECTION("the last of two overrides wins") {
    auto config = load_config(ConfigSource{path, {}, {}, {"limits.errors=7", "limits.errors=8"}});
    CHECK(config->limits.errors == 8);
  }
  SECTION("--listen and --upstream") {
    auto config = load_config(ConfigSource{path, {"127.0.0.1:0", "[::1]:2600"}, "maildir:/srv/mail", {}});
    REQUIRE(config->listeners.size() == 2);
    CHECK(config->listeners[1].port == 2600);
    CHECK(config->upstream.kind == Config::Upstream::Kind::kMaildir);
    CHECK(config->upstream.maildir == "/srv/mail");
    CHECK_THAT(config_error(ConfigSource{path, {"localhost:25"}, "", {}}),
               Contains("key 'listener.address'") && Contains("--listen localhost:25: "));
  }
  SECTION("malformed --set") {
    for (const std::string set : {"limits.errors", "=5", ""}) {
      INFO("--set " << set);
      CHECK_THAT(config_error(ConfigSource{path, {}, {}, {set}}),
                 Contains("--set " + set + ": expected section.key=value"));
    }
  }
  SECTION("unknown key") {
    CHECK_THAT(config_error(ConfigSource{path, {}, {}, {"limits.eror=5"}}),
               Contains("key 'limits.eror': unknown key; did you mean 'errors'?"));
    CHECK_THAT(config_error(ConfigSource{path, {}, {}, {"nokey=5"}}), Contains("key 'nokey': unknown key"));
    CHECK_THAT(config_error(ConfigSource{path, {}, {}, {"limits=5"}}),
               Contains("key 'limits': expected a table [limits], got 5"));
  }
  SECTION("bad values") {
    CHECK_THAT(config_error(ConfigSource{path, {}, {}, {"timeouts.command=0.01"}}),
               Contains("key 'timeouts.command': expected a number of seconds from 0.05 to 86400, got 0.01"));
    CHECK_THAT(config_error(ConfigSource{path, {}, {}, {"limits.errors=many"}}),
               Contains("key 'limits.errors': expected an integer from 1 to 1000, got \"many\""));
    CHECK_THAT(config_error(ConfigSource{path, {}, {}, {"data.bare_line_ending=strip"}}),
               Contains("expected one of \"reject\", \"normalize\", got \"strip\""));
  }
}

TEST_CASE("load_config: an error in a --set value does not point into the file", "[config]") {
  // The value of --set is parsed as "v = VALUE": its position (1:5) is not a
  // position in the configuration file and must not be reported as one.
  TempDir dir;
  const std::string path = dir.write("o.toml", kMinimal);
  std::string msg = config_error(ConfigSource{path, {}, {}, {"limits.errors=0"}});
  CHECK_THAT(msg, Contains("key 'limits.errors': expected an integer from 1 to 1000, got 0"));
  CHECK_THAT(msg, !Contains(path + ":1:"));
  CHECK_THAT(msg, Contains("--set limits.errors=0: "));
}

TEST_CASE("load_config: TLS resumption keys (issue 23)", "[config][tls]") {
  TempDir dir;
  SECTION("defaults: tickets on, process-random keys, two hours") {
    auto config = load_config(ConfigSource{dir.write("m.toml", kMinimal), {}, {}, {}});
    CHECK(config->tls.session_tickets);
    CHECK(config->tls.ticket_key_file.empty());
    CHECK(config->tls.session_lifetime.count() == 7200);
  }
  SECTION("values") {
    std::string keys = dir.write("t.keys", std::string(80, 'k'));
    auto config = load_config(ConfigSource{
        dir.write("t.toml", kMinimal + "[tls]\nsession_tickets = false\nticket_key_file = \"" + keys +
                                "\"\nsession_lifetime = 600\n"),
        {}, {}, {}});
    CHECK_FALSE(config->tls.session_tickets);
    CHECK(config->tls.ticket_key_file == keys);
    CHECK(config->tls.session_lifetime.count() == 600);
  }
  SECTION("bad values name the key") {
    for (auto [line, expected] : std::vector<std::pair<std::string, std::string>>{
             {"session_lifetime = 59", "key 'tls.session_lifetime': expected a number of seconds from 60 to 604800"},
             {"session_lifetime = 604801", "key 'tls.session_lifetime': expected a number of seconds from 60 to 604800"},
             {"session_lifetime = nan", "key 'tls.session_lifetime': expected a number of seconds"},
             {"session_tickets = \"yes\"", "key 'tls.session_tickets'"},
             {"ticket_key_file = \"/nonexistent/ticket.keys\"", "cannot read \"/nonexistent/ticket.keys\""},
         }) {
      INFO(line);
      std::string path = dir.write("bad.toml", kMinimal + "[tls]\n" + line + "\n");
      CHECK_THAT(config_error(ConfigSource{path, {}, {}, {}}), Contains(path + ":4:") && Contains(expected));
    }
  }
}
