// postern-bench-load: the load and latency client of bench/run.
//
// Sends one prepared message file (e.g. a DKIM-signed message) M times over N
// parallel SMTP sessions, persistent or one message per connection, and
// measures each message's latency: from writing the pipelined
// MAIL/RCPT/DATA (RFC 2920; one by one when the server does not offer PIPELINING) to reading the reply to the final ".". Prints one
// JSON object on stdout: messages, wall time, latency percentiles.
//
// Contract: every reply must be the expected one (220, 250, 354, 250, 221);
// anything else, a connection failure or a time-out ends the run with exit
// status 1 and the reply on stderr. Every read and write has a deadline
// (SO_RCVTIMEO/SO_SNDTIMEO). TCP_NODELAY on every socket; each message's
// content and the final "." go out in one write.
//
// --starttls: after EHLO, STARTTLS (RFC 3207), the TLS handshake (any
// certificate: the bench measures, it does not authenticate), EHLO again.
// --tls-resume: each session thread offers the session (TLS 1.3 ticket, or
// TLS 1.2 ticket / session id) it got on its previous connection, as a
// returning MTA would; the output counts handshakes and resumed ones.
//
// One blocking thread per session: simple, and cheap enough at <= a few
// hundred sessions; the client is the same for every path measured.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string host = "127.0.0.1";
  int port = 25;
  std::string bind_addr;  // source address; "" = any
  int sessions = 1;
  long messages = 1;
  bool per_conn = false;
  std::string file;
  std::string from = "bench@example.com";
  std::string to = "sink@example.com";
  std::string helo = "bench.example.com";
  int timeout = 60;
  bool starttls = false;
  bool tls_resume = false;
  std::string tls_version;  // "" (highest), "1.2" or "1.3"
};

const char kUsage[] =
    "usage: postern-bench-load --port P --file MSG [options]\n"
    "  --host IP          server address (default 127.0.0.1)\n"
    "  --port P           server port\n"
    "  --bind IP          client source address (default: any)\n"
    "  --sessions N       parallel sessions (default 1)\n"
    "  --messages M       messages in all (default 1)\n"
    "  --per-conn         one message per connection (default: persistent sessions)\n"
    "  --file MSG         message to send: header and body with CRLF line ends,\n"
    "                     without the final '.'; dot-stuffed by this tool\n"
    "  --from ADDR --to ADDR --helo NAME   envelope and EHLO name\n"
    "  --timeout S        deadline of every read and write, seconds (default 60)\n"
    "  --starttls         STARTTLS after EHLO, then EHLO again (any certificate)\n"
    "  --tls-resume       offer each thread's last TLS session on its next connection\n"
    "  --tls-version V    1.2 or 1.3 only (default: the highest both offer)\n"
    "Output: one JSON object on stdout. Exit 0 when every message got 250.\n";

struct Shared {
  const Options* opt;
  std::string payload;  // dot-stuffed content + "\r\n.\r\n"
  std::atomic<long> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  std::vector<double> latencies_us;
  std::string error;
  long connections = 0;
  SSL_CTX* tls = nullptr;
  std::atomic<long> handshakes{0};
  std::atomic<long> resumed{0};
};

// The newest session a connection's server issued (TLS 1.3 sends its tickets
// after the handshake), kept per session thread for --tls-resume.
thread_local SSL_SESSION* tls_last_session = nullptr;

int on_new_session(SSL*, SSL_SESSION* s) {
  if (tls_last_session) SSL_SESSION_free(tls_last_session);
  tls_last_session = s;
  return 1;  // we keep the reference
}

void fail(Shared& sh, const std::string& what) {
  std::lock_guard<std::mutex> lock(sh.mu);
  if (!sh.failed.exchange(true)) sh.error = what;
}

class Conn {
 public:
  explicit Conn(Shared& sh) : sh_(sh) {}
  ~Conn() { close(); }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  bool open() {
    const Options& o = *sh_.opt;
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return err("socket");
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    timeval tv{o.timeout, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (!o.bind_addr.empty()) {
      sockaddr_in b{};
      b.sin_family = AF_INET;
      if (::inet_pton(AF_INET, o.bind_addr.c_str(), &b.sin_addr) != 1) return err("bad --bind");
      // The port is chosen at connect(), unique per destination, not by
      // bind(): bind() with port 0 takes a port of the source address for
      // every destination, and the client side's TIME_WAIT sockets then
      // fill the ephemeral range after ~28,000 one-message connections,
      // every further bind() scanning it (a whole core, every side slowed).
      ::setsockopt(fd_, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
      if (::bind(fd_, reinterpret_cast<sockaddr*>(&b), sizeof b) != 0) return err("bind");
    }
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(o.port));
    if (::inet_pton(AF_INET, o.host.c_str(), &a.sin_addr) != 1) return err("bad --host");
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return err("connect");
    buf_.clear();
    if (!expect("220", "greeting")) return false;
    std::string ehlo = "EHLO " + o.helo + "\r\n";
    if (!send_all(ehlo)) return false;
    if (!expect("250", "EHLO")) return false;
    if (o.starttls) {
      if (last_reply_.find("STARTTLS") == std::string::npos) {
        fail(sh_, "the server does not offer STARTTLS");
        return false;
      }
      if (!send_all("STARTTLS\r\n") || !expect("220", "STARTTLS")) return false;
      if (!handshake()) return false;
      if (!send_all(ehlo) || !expect("250", "EHLO after STARTTLS")) return false;
    }
    pipelining_ = last_reply_.find("PIPELINING") != std::string::npos;
    return true;
  }

  // One transaction, pipelined: MAIL, RCPT, DATA in one write, then the
  // content and "." in one write. Returns the latency in microseconds, or < 0.
  double transaction() {
    const Options& o = *sh_.opt;
    std::string mail = "MAIL FROM:<" + o.from + ">\r\n";
    std::string rcpt = "RCPT TO:<" + o.to + ">\r\n";
    std::string data = "DATA\r\n";
    auto t0 = Clock::now();
    if (pipelining_) {
      if (!send_all(mail + rcpt + data)) return -1;
      if (!expect("250", "MAIL") || !expect("250", "RCPT") || !expect("354", "DATA")) return -1;
    } else {  // a server without PIPELINING gets one command at a time (RFC 2920)
      if (!send_all(mail) || !expect("250", "MAIL") || !send_all(rcpt) || !expect("250", "RCPT") ||
          !send_all(data) || !expect("354", "DATA"))
        return -1;
    }
    if (!send_all(sh_.payload)) return -1;
    if (!expect("250", "end of data")) return -1;
    return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
  }

  bool quit() {
    if (!send_all("QUIT\r\n")) return false;
    return expect("221", "QUIT");
  }

  void close() {
    if (ssl_) {
      // After QUIT/221 the server closes; no close_notify exchange, but the
      // session stays resumable (SSL_free marks it not resumable otherwise).
      SSL_set_shutdown(ssl_, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
      SSL_free(ssl_);
      ssl_ = nullptr;
    }
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  bool handshake() {
    if (!buf_.empty()) {
      fail(sh_, "data after the 220 to STARTTLS (RFC 3207 forbids it)");
      return false;
    }
    ssl_ = SSL_new(sh_.tls);
    if (!ssl_ || SSL_set_fd(ssl_, fd_) != 1) {
      fail(sh_, "SSL_new failed");
      return false;
    }
    // A copy, as an MTA keeps its sessions serialized (Postfix's tlsmgr
    // cache): OpenSSL marks a TLS 1.3 session it resumed as used up, and a
    // server that sends no new ticket on resumption would get every other
    // connection as a full handshake.
    if (sh_.opt->tls_resume && tls_last_session) {
      SSL_SESSION* copy = SSL_SESSION_dup(tls_last_session);
      SSL_set_session(ssl_, copy);
      SSL_SESSION_free(copy);
    }
    if (SSL_connect(ssl_) != 1) {
      char e[256];
      ERR_error_string_n(ERR_get_error(), e, sizeof e);
      fail(sh_, std::string("TLS handshake failed: ") + e);
      return false;
    }
    ++sh_.handshakes;
    if (SSL_session_reused(ssl_)) ++sh_.resumed;
    return true;
  }

  bool err(const char* what) {
    fail(sh_, std::string(what) + ": " + std::strerror(errno));
    return false;
  }

  bool send_all(const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n;
      if (ssl_) {
        int w = SSL_write(ssl_, s.data() + off, static_cast<int>(s.size() - off));
        if (w <= 0) {
          fail(sh_, "TLS write failed");
          return false;
        }
        n = w;
      } else {
        n = ::send(fd_, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        return err("send");
      }
      off += static_cast<size_t>(n);
    }
    return true;
  }

  // Reads one (possibly multi-line) reply; true when its code is `code`.
  bool expect(const char* code, const char* after) {
    std::string reply;
    for (;;) {
      size_t eol;
      while ((eol = buf_.find("\r\n")) == std::string::npos) {
        if (buf_.size() > 65536) {
          fail(sh_, std::string("over-long reply after ") + after);
          return false;
        }
        char tmp[4096];
        ssize_t n;
        if (ssl_) {
          int r = SSL_read(ssl_, tmp, sizeof tmp);
          n = r > 0 ? r : (SSL_get_error(ssl_, r) == SSL_ERROR_ZERO_RETURN ? 0 : -1);
        } else {
          n = ::recv(fd_, tmp, sizeof tmp, 0);
        }
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          fail(sh_, std::string("connection ") + (n == 0 ? "closed" : std::strerror(errno)) +
                        " waiting for the reply to " + after);
          return false;
        }
        buf_.append(tmp, static_cast<size_t>(n));
      }
      std::string line = buf_.substr(0, eol);
      buf_.erase(0, eol + 2);
      reply += line + "\n";
      if (line.size() < 4 || line[3] != '-') break;
    }
    last_reply_ = reply;
    if (reply.compare(0, 3, code) != 0) {
      fail(sh_, std::string("unexpected reply to ") + after + ": " + reply.substr(0, reply.size() - 1));
      return false;
    }
    return true;
  }

  Shared& sh_;
  int fd_ = -1;
  std::string buf_;
  std::string last_reply_;
  bool pipelining_ = false;
  SSL* ssl_ = nullptr;
};

void session(Shared& sh) {
  std::vector<double> lat;
  long conns = 0;
  Conn c(sh);
  bool open = false;
  while (!sh.failed.load()) {
    if (sh.next.fetch_add(1) >= sh.opt->messages) break;
    if (!open) {
      if (!c.open()) break;
      open = true;
      ++conns;
    }
    double us = c.transaction();
    if (us < 0) break;
    lat.push_back(us);
    if (sh.opt->per_conn) {
      if (!c.quit()) break;
      c.close();
      open = false;
    }
  }
  if (open && !sh.failed.load()) c.quit();
  c.close();
  if (tls_last_session) {
    SSL_SESSION_free(tls_last_session);
    tls_last_session = nullptr;
  }
  std::lock_guard<std::mutex> lock(sh.mu);
  sh.latencies_us.insert(sh.latencies_us.end(), lat.begin(), lat.end());
  sh.connections += conns;
}

double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t i = static_cast<size_t>(p / 100.0 * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)];
}

bool parse(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "--host") o.host = val();
    else if (a == "--port") o.port = std::stoi(val());
    else if (a == "--bind") o.bind_addr = val();
    else if (a == "--sessions") o.sessions = std::stoi(val());
    else if (a == "--messages") o.messages = std::stol(val());
    else if (a == "--per-conn") o.per_conn = true;
    else if (a == "--file") o.file = val();
    else if (a == "--from") o.from = val();
    else if (a == "--to") o.to = val();
    else if (a == "--helo") o.helo = val();
    else if (a == "--timeout") o.timeout = std::stoi(val());
    else if (a == "--starttls") o.starttls = true;
    else if (a == "--tls-resume") o.tls_resume = true;
    else if (a == "--tls-version") o.tls_version = val();
    else throw std::runtime_error("unknown option " + a);
  }
  if (o.file.empty() || o.port <= 0 || o.sessions < 1 || o.sessions > 20000 || o.messages < 1 ||
      o.timeout < 1)
    throw std::runtime_error("--port and --file are required; --sessions, --messages, --timeout >= 1");
  if (!o.tls_version.empty() && o.tls_version != "1.2" && o.tls_version != "1.3")
    throw std::runtime_error("--tls-version: 1.2 or 1.3");
  if (o.tls_resume && !o.starttls) throw std::runtime_error("--tls-resume needs --starttls");
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    parse(argc, argv, o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "postern-bench-load: %s\n%s", e.what(), kUsage);
    return 2;
  }
  std::ifstream in(o.file, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "postern-bench-load: cannot read %s\n", o.file.c_str());
    return 2;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string raw = ss.str();
  if (raw.size() < 2 || raw.compare(raw.size() - 2, 2, "\r\n") != 0) raw += "\r\n";
  // Dot-stuffing (RFC 5321 4.5.2), done once.
  Shared sh;
  sh.opt = &o;
  sh.payload.reserve(raw.size() + raw.size() / 64 + 8);
  bool bol = true;
  for (char ch : raw) {
    if (bol && ch == '.') sh.payload += '.';
    sh.payload += ch;
    bol = ch == '\n';
  }
  sh.payload += ".\r\n";
  if (o.starttls) {
    sh.tls = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(sh.tls, SSL_VERIFY_NONE, nullptr);
    if (o.tls_version == "1.2") SSL_CTX_set_max_proto_version(sh.tls, TLS1_2_VERSION);
    if (o.tls_version == "1.3") SSL_CTX_set_min_proto_version(sh.tls, TLS1_3_VERSION);
    // Sessions to offer again are kept by the new-session callback, not the
    // context's cache (one per thread, like one MTA per session).
    SSL_CTX_set_session_cache_mode(sh.tls, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(sh.tls, on_new_session);
  }

  auto t0 = Clock::now();
  std::vector<std::thread> threads;
  int n = static_cast<int>(std::min<long>(o.sessions, o.messages));
  threads.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) threads.emplace_back(session, std::ref(sh));
  for (auto& t : threads) t.join();
  double wall = std::chrono::duration<double>(Clock::now() - t0).count();

  std::sort(sh.latencies_us.begin(), sh.latencies_us.end());
  std::printf(
      "{\"messages\": %zu, \"connections\": %ld, \"wall_s\": %.6f, \"message_octets\": %zu, "
      "\"lat_p50_us\": %.1f, \"lat_p90_us\": %.1f, \"lat_p99_us\": %.1f, \"lat_max_us\": %.1f, "
      "\"tls_handshakes\": %ld, \"tls_resumed\": %ld, \"ok\": %s}\n",
      sh.latencies_us.size(), sh.connections, wall, raw.size(), percentile(sh.latencies_us, 50),
      percentile(sh.latencies_us, 90), percentile(sh.latencies_us, 99),
      sh.latencies_us.empty() ? 0.0 : sh.latencies_us.back(), sh.handshakes.load(), sh.resumed.load(),
      sh.failed ? "false" : "true");
  if (sh.failed) {
    std::fprintf(stderr, "postern-bench-load: %s\n", sh.error.c_str());
    return 1;
  }
  return 0;
}
