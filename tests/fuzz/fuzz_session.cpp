// Whole-session fuzz target: the input is everything a client sends on one
// connection; a real Session (proxy/session.cpp) answers over a loopback TCP
// socket, and its upstream is the Maildir upstream in a temporary directory
// (no MTA needed, deterministic). The first input byte picks a few limits.
//
// Invariants:
//  - every octet postern writes is part of a well-formed reply line:
//    "NNN" with N in [2-5][0-9][0-9], then " " or "-" or CRLF, printable text,
//    CRLF; a multi-line reply keeps one code; the output ends at a reply end;
//  - the client is never acked a message the upstream did not take: the
//    number of "250 2.0.0 Ok: queued as" replies equals the number of files
//    the Maildir upstream delivered during the session.
#include <dirent.h>
#include <unistd.h>

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/write.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter_chain.h"
#include "fuzz_util.h"
#include "proxy/config.h"
#include "proxy/log.h"
#include "proxy/session.h"
#include "proxy/upstream.h"

namespace postern::fuzz {
void spawn_session(asio::io_context& io, std::shared_ptr<Session> session);  // fuzz_session_spawn.cpp
}

namespace {

using postern::fuzz::escape;

std::string make_maildir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/postern-fuzz-session-XXXXXX";
  if (!::mkdtemp(templ.data())) std::abort();
  return templ;
}

std::size_t count_files(const std::string& dir) {
  std::size_t n = 0;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') ++n;
    }
    ::closedir(d);
  }
  return n;
}

void remove_files(const std::string& dir) {
  if (DIR* d = ::opendir(dir.c_str())) {
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') names.push_back(dir + "/" + e->d_name);
    }
    ::closedir(d);
    for (const auto& n : names) ::unlink(n.c_str());
  }
}

struct World {
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor{io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)};
  std::string maildir = make_maildir();
  std::shared_ptr<const postern::FilterChain> chain =
      std::make_shared<const postern::FilterChain>(std::vector<std::shared_ptr<postern::Filter>>{},
                                                   postern::ScoreThresholds{});
  std::shared_ptr<postern::UpstreamCapabilities> caps = std::make_shared<postern::UpstreamCapabilities>();
  postern::SessionRegistry registry;
};

World& world() {
  static World* w = [] {
    postern::log::set_level(postern::log::Level::kError);
    return new World;
  }();
  return *w;
}

// The client side, with completion handlers rather than coroutines: this file
// is built with coverage instrumentation, which clang 14 cannot apply to
// coroutines (see CMakeLists.txt).
struct Client {
  asio::ip::tcp::socket socket;
  std::string_view in;
  std::string out;
  char buf[16384];

  // Reads what postern writes until it closes the connection.
  void read() {
    socket.async_read_some(asio::buffer(buf), [this](std::error_code ec, std::size_t n) {
      out.append(buf, n);
      if (!ec) read();
    });
  }
  // Sends the input, then half-closes: the session sees EOF after the last octet.
  void write() {
    asio::async_write(socket, asio::buffer(in.data(), in.size()), [this](std::error_code ec, std::size_t) {
      std::error_code ignored;
      if (!ec) socket.shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
    });
  }
};

void check_replies(std::string_view out, std::string_view in) {
  std::size_t pos = 0;
  int open_code = -1;  // code of an unfinished multi-line reply
  while (pos < out.size()) {
    std::size_t eol = out.find("\r\n", pos);
    FUZZ_CHECK(eol != std::string_view::npos,
               "output ends inside a line: \"" + escape(out.substr(pos)) + "\"\n  input: \"" + escape(in) + "\"");
    std::string_view line = out.substr(pos, eol - pos);
    bool ok = line.size() >= 3 && line[0] >= '2' && line[0] <= '5' && line[1] >= '0' && line[1] <= '9' &&
              line[2] >= '0' && line[2] <= '9' && (line.size() == 3 || line[3] == ' ' || line[3] == '-');
    for (std::size_t i = 3; ok && i < line.size(); ++i) {
      unsigned char c = line[i];
      ok = (c >= 32 && c < 127) || c == '\t';
    }
    FUZZ_CHECK(ok, "malformed reply line \"" + escape(line) + "\"\n  input: \"" + escape(in) + "\"");
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    FUZZ_CHECK(open_code < 0 || open_code == code,
               "code changed inside a multi-line reply at \"" + escape(line) + "\"\n  input: \"" + escape(in) + "\"");
    open_code = line.size() > 3 && line[3] == '-' ? code : -1;
    pos = eol + 2;
  }
  FUZZ_CHECK(open_code < 0, "output ends inside a multi-line reply\n  input: \"" + escape(in) + "\"");
}

std::size_t count_acks(std::string_view out) {
  std::size_t n = 0;
  for (std::size_t pos = 0; (pos = out.find("250 2.0.0 Ok: queued as ", pos)) != std::string_view::npos; ++pos) {
    if (pos == 0 || out[pos - 1] == '\n') ++n;
  }
  return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  World& w = world();
  const std::uint8_t knobs = data[0];
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);

  auto config = std::make_shared<postern::Config>();
  config->server.hostname = "mx.fuzz.test";
  config->upstream.kind = postern::Config::Upstream::Kind::kMaildir;
  config->upstream.target = "maildir:" + w.maildir;
  config->upstream.maildir = w.maildir;
  config->limits.message_size = (knobs & 1) ? 300 : 65536;
  config->limits.recipients = (knobs & 2) ? 2 : 100;
  config->limits.errors = (knobs & 4) ? 3 : 50;
  config->limits.command_line = 512;
  config->limits.text_line = (knobs & 8) ? 1000 : 2000;
  config->data.bare_line_ending = (knobs & 16) ? postern::DataDecoder::BareLineEnding::kNormalize
                                               : postern::DataDecoder::BareLineEnding::kReject;
  config->data.spool_memory = (knobs & 32) ? 64 : 1 << 20;
  config->data.spool_dir = w.maildir;
  config->timeouts.command = postern::Seconds(5);
  config->timeouts.data = postern::Seconds(5);
  postern::Config::Listener listener;
  listener.address = "127.0.0.1:0";
  listener.proxy_protocol = (knobs & 64) != 0;

  std::string delivered = w.maildir + "/new";
  std::size_t before = count_files(delivered);

  Client client{asio::ip::tcp::socket(w.io), in, {}, {}};
  // Connect and accept asynchronously: a signal (libFuzzer's timers) that
  // interrupts a blocking connect() leaves that connection in the backlog,
  // and retrying on a new socket made the session serve the stale one while
  // this client waited forever (a 12 s "timeout" of the target).
  std::error_code connect_ec = asio::error::would_block;
  std::error_code accept_ec = asio::error::would_block;
  asio::ip::tcp::socket server(w.io);
  client.socket.async_connect(w.acceptor.local_endpoint(), [&](std::error_code ec) { connect_ec = ec; });
  w.acceptor.async_accept(server, [&](std::error_code ec) { accept_ec = ec; });
  w.io.run();
  w.io.restart();
  if (connect_ec || accept_ec) return 0;
  {
    // As proxy/server.cpp makes one: the peer from accept, the listener's
    // local end asked per session (its text left empty), TCP_NODELAY not set.
    std::error_code peer_ec;
    const asio::ip::tcp::endpoint peer = server.remote_endpoint(peer_ec);
    if (peer_ec) return 0;
    auto info = std::make_shared<const postern::ListenerInfo>(postern::ListenerInfo{listener, {}});
    auto session = std::make_shared<postern::Session>(std::move(server), peer, false, config, std::move(info), nullptr,
                                                      w.chain, w.chain, w.caps, w.registry);
    postern::fuzz::spawn_session(w.io, std::move(session));
  }
  client.write();
  client.read();
  w.io.run();
  w.io.restart();
  std::string& out = client.out;

  if (std::getenv("POSTERN_FUZZ_VERBOSE")) {  // to read a reproducer's session
    std::fprintf(stderr, "in:  %s\nout: %s\ndelivered: %zu\n", escape(in, 4096).c_str(), escape(out, 4096).c_str(),
                 count_files(delivered) - before);
  }
  check_replies(out, in);
  std::size_t files = count_files(delivered) - before;
  FUZZ_CHECK(count_acks(out) == files, "acked " + std::to_string(count_acks(out)) + " message(s), the upstream took " +
                                           std::to_string(files) + "\n  input: \"" + escape(in) + "\"\n  output: \"" +
                                           escape(out, 2000) + "\"");
  remove_files(delivered);
  remove_files(w.maildir + "/tmp");
  return 0;
}
