// Control socket server and client; see control.h for the protocol.
#include "proxy/control.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/read_until.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <vector>
#include <cstring>
#include <stdexcept>
#include <fmt/format.h>

#include "proxy/log.h"
#include "proxy/watchdog.h"

namespace postern::control {
namespace {
constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);
// A client that connects and says nothing is cut off after this.
constexpr std::chrono::seconds kCommandTimeout{5};
// Clients served at once (see ConnectionSlots): connections that never send
// cannot take every descriptor from the SMTP listeners.
constexpr std::size_t kMaxConnections = 16;

sockaddr_un address_of(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    throw std::runtime_error(fmt::format("control socket path too long: {}", path));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

// A connected descriptor, or -1 with errno.
int connect_to(const std::string& path) {
  sockaddr_un addr = address_of(path);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int saved = errno;
    ::close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

// A socket file at `path` from an earlier run: removed when nobody answers
// on it (the process died without cleaning up); an error when someone does.
void remove_stale(const std::string& path) {
  struct stat st{};
  if (::lstat(path.c_str(), &st) != 0) return;
  if (!S_ISSOCK(st.st_mode)) {
    throw std::runtime_error(fmt::format(
        "control.socket: \"{}\" exists and is not a socket; remove it or set [control] socket", path));
  }
  int fd = connect_to(path);
  if (fd >= 0) {
    ::close(fd);
    throw std::runtime_error(fmt::format(
        "control.socket: another process answers on \"{}\" (is postern already running?); "
        "stop it or set [control] socket to another path", path));
  }
  if (errno != ECONNREFUSED) {
    throw std::runtime_error(fmt::format("control.socket: cannot check \"{}\": {}", path, std::strerror(errno)));
  }
  ::unlink(path.c_str());
  log::info("control-stale-socket").kv("path", path).kv("action", "replaced");
}
}  // namespace

Server::Server(asio::io_context& context, std::string path, unsigned mode, Handlers handlers)
    : path_(std::move(path)),
      handlers_(std::move(handlers)),
      acceptor_(context),
      slots_(std::make_shared<ConnectionSlots<asio::local::stream_protocol::socket>>(kMaxConnections)) {
  remove_stale(path_);
  std::error_code ec;
  asio::local::stream_protocol::endpoint endpoint(path_);
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(16, ec);
  if (ec) throw std::runtime_error(fmt::format("control.socket: cannot listen on \"{}\": {}", path_, ec.message()));
  // Bound under umask 077 (0600); widened to 0660 only when configured.
  struct stat st{};
  if (::chmod(path_.c_str(), mode) != 0 || ::stat(path_.c_str(), &st) != 0) {
    throw std::runtime_error(fmt::format("control.socket: chmod \"{}\": {}", path_, std::strerror(errno)));
  }
  dev_ = st.st_dev;
  ino_ = st.st_ino;
}

Server::~Server() {
  close();
  struct stat st{};
  if (::stat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_) ::unlink(path_.c_str());
}

void Server::chown(uid_t uid, gid_t gid) {
  if (::chown(path_.c_str(), uid, gid) != 0) {
    log::warning("control-chown-failed").kv("path", path_).kv("error", std::strerror(errno));
  }
}

void Server::close() {
  std::error_code ignored;
  acceptor_.close(ignored);
}

asio::awaitable<void> Server::serve() {
  for (;;) {
    auto [ec, socket] = co_await acceptor_.async_accept(use_nothrow);
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
    if (ec) {
      log::warning("control-accept-error").kv("error", ec.message());
      asio::steady_timer pause(acceptor_.get_executor(), std::chrono::milliseconds(100));
      co_await pause.async_wait(use_nothrow);
      continue;
    }
    auto run = [this, s = std::move(socket)]() mutable { return answer(std::move(s)); };
    asio::co_spawn(acceptor_.get_executor(), std::move(run), asio::detached);
  }
}

asio::awaitable<void> Server::answer(asio::local::stream_protocol::socket socket) {
  auto slot = ConnectionSlots<asio::local::stream_protocol::socket>::take(slots_, socket);
  std::string line;
  // The watchdog forgets its action when it goes (with this frame): a timer
  // handler capturing &socket could run after the frame is freed.
  Watchdog watchdog(socket.get_executor(), [&socket] {
    std::error_code ignored;
    socket.cancel(ignored);
  });
  watchdog.arm(kCommandTimeout);
  auto buffer = asio::dynamic_buffer(line, kMaxCommand + 2);
  auto [ec, n] = co_await asio::async_read_until(socket, buffer, '\n', use_nothrow);
  watchdog.disarm();
  std::string reply;
  if (ec) {
    reply = ec == asio::error::not_found ? "error command too long\n" : "";
  } else {
    std::string command = line.substr(0, n);
    while (!command.empty() && (command.back() == '\n' || command.back() == '\r')) command.pop_back();
    log::info("control-command").kv("command", command);
    if (command == "reload") reply = handlers_.reload();
    else if (command == "status") reply = handlers_.status(false);
    else if (command == "status json") reply = handlers_.status(true);
    else reply = "error unknown command; expected reload, status or status json\n";
  }
  if (!reply.empty()) {
    watchdog.arm(kCommandTimeout);
    co_await asio::async_write(socket, asio::buffer(reply), use_nothrow);
    watchdog.disarm();
  }
  std::error_code ignored;
  socket.shutdown(asio::socket_base::shutdown_both, ignored);
  socket.close(ignored);
}

std::string listener_socket_name(unsigned short port) { return fmt::format("postern-control-{}.sock", port); }

std::string find_socket(unsigned short first_port) {
  std::error_code ec;
  if (first_port != 0 && std::filesystem::exists(listener_socket_name(first_port), ec)) {
    return listener_socket_name(first_port);
  }
  std::vector<std::string> found;
  for (const auto& entry : std::filesystem::directory_iterator(".", ec)) {
    std::string name = entry.path().filename().string();
    if (name.rfind("postern-control-", 0) == 0 && name.size() > 21 && name.ends_with(".sock")) found.push_back(name);
  }
  if (found.size() > 1) {
    std::sort(found.begin(), found.end());
    std::string names;
    for (const auto& n : found) names += (names.empty() ? "" : ", ") + n;
    throw std::runtime_error("several postern instances run in this directory (" + names + "): pass --socket PATH");
  }
  if (found.size() == 1) return found[0];
  if (std::filesystem::exists(kServiceSocket, ec)) return kServiceSocket;
  if (first_port != 0) return listener_socket_name(first_port);  // connecting says what is wrong
  throw std::runtime_error("no postern-control-PORT.sock in the working directory and no " +
                           std::string(kServiceSocket) + " (is postern running? pass --socket PATH)");
}

std::string request(const std::string& path, const std::string& command, std::chrono::seconds timeout) {
  int fd = connect_to(path);
  if (fd < 0) {
    int e = errno;
    std::string hint = e == ENOENT || e == ECONNREFUSED
                           ? " (is postern running? pass --socket PATH or -c CONFIG)"
                           : e == EACCES ? " (permission: run as the socket's owner or group, or as root)" : "";
    throw std::runtime_error(fmt::format("cannot connect to {}: {}{}", path, std::strerror(e), hint));
  }
  std::string out = command + "\n";
  std::string_view rest = out;
  while (!rest.empty()) {
    ssize_t n = ::send(fd, rest.data(), rest.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = errno;
      ::close(fd);
      throw std::runtime_error(fmt::format("cannot send to {}: {}", path, std::strerror(e)));
    }
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
  ::shutdown(fd, SHUT_WR);
  std::string answer;
  auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    int r = left.count() > 0 ? ::poll(&p, 1, static_cast<int>(left.count())) : 0;
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      ::close(fd);
      throw std::runtime_error(fmt::format("no answer from {} within {} s", path, timeout.count()));
    }
    char buf[4096];
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    answer.append(buf, static_cast<std::size_t>(n));
    if (answer.size() > (1u << 20)) break;  // a status is a few hundred octets
  }
  ::close(fd);
  if (answer.empty()) throw std::runtime_error(fmt::format("{} closed without an answer", path));
  return answer;
}

}  // namespace postern::control
