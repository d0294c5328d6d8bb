// A real DNS server for the tests: /usr/sbin/unbound started on a free
// loopback port, serving `local-data` records from a generated config, and a
// "black hole" UDP socket that never answers (for time-outs). No mocks.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace postern::test {

// A port free for both UDP and TCP on 127.0.0.1 at the time of the call.
inline unsigned short free_loopback_port() {
  for (int attempt = 0; attempt < 50; ++attempt) {
    int u = ::socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(u, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(u, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      ::close(u);
      continue;
    }
    int t = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(t, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    bool ok = ::bind(t, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(t);
    ::close(u);
    if (ok) return ntohs(a.sin_port);
  }
  throw std::runtime_error("no free loopback port");
}

class DnsTestServer {
 public:
  // `records` are unbound local-data lines: "name. 300 IN TXT \"v=spf1 -all\"".
  // `zones` are served authoritatively ("static": NXDOMAIN / NODATA for the rest).
  DnsTestServer(const std::vector<std::string>& records,
                const std::vector<std::string>& zones = {"example.com.", "example.org.", "example.net.", "co.uk."}) {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/postern-dns-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir_ = templ;
    port_ = free_loopback_port();
    std::ofstream conf(dir_ + "/unbound.conf");
    conf << "server:\n"
         << "  interface: 127.0.0.1\n  port: " << port_ << "\n"
         << "  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n"
         << "  directory: \"" << dir_ << "\"\n  pidfile: \"\"\n"
         << "  use-syslog: no\n  logfile: \"\"\n  verbosity: 0\n  do-ip6: no\n"
         << "  access-control: 127.0.0.0/8 allow\n  module-config: \"iterator\"\n"
         << "  num-threads: 1\n";
    for (const auto& z : zones) conf << "  local-zone: \"" << z << "\" static\n";
    for (const auto& r : records) conf << "  local-data: '" << r << "'\n";
    conf << "remote-control:\n  control-enable: no\n";
    conf.close();
    pid_ = ::fork();
    if (pid_ == 0) {
      int null = ::open("/dev/null", O_WRONLY);
      if (!std::getenv("POSTERN_TEST_DNS_VERBOSE")) ::dup2(null, 2);
      ::dup2(null, 1);
      std::string c = dir_ + "/unbound.conf";
      ::execl("/usr/sbin/unbound", "unbound", "-d", "-c", c.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    if (pid_ < 0) throw std::runtime_error("fork failed");
    // Ready when the TCP port accepts.
    for (int i = 0; i < 200; ++i) {
      int s = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(port_);
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      bool ok = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
      ::close(s);
      if (ok) return;
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("unbound exited; config in " + dir_);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    throw std::runtime_error("unbound did not start");
  }
  ~DnsTestServer() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  DnsTestServer(const DnsTestServer&) = delete;
  DnsTestServer& operator=(const DnsTestServer&) = delete;

  unsigned short port() const { return port_; }
  std::string address() const { return "127.0.0.1@" + std::to_string(port_); }

 private:
  std::string dir_;
  unsigned short port_ = 0;
  pid_t pid_ = -1;
};

// A UDP socket on loopback that reads nothing and answers nothing.
class BlackHoleDns {
 public:
  BlackHoleDns() {
    fd_ = ::socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      throw std::runtime_error("black hole bind failed");
    }
    port_ = ntohs(a.sin_port);
  }
  ~BlackHoleDns() { ::close(fd_); }
  std::string address() const { return "127.0.0.1@" + std::to_string(port_); }

 private:
  int fd_ = -1;
  unsigned short port_ = 0;
};

}  // namespace postern::test
