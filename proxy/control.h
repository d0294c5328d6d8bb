// The control socket: `postern reload` and `postern status` talk to the
// running process over a local Unix-domain stream socket. Protocol: the
// client sends one command line ("reload", "status" or "status json"), the
// server answers and closes. A reload answer's first line is "ok" or
// "error", followed by what happened (the error with its file:line).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <asio/awaitable.hpp>
#include <asio/io_context.hpp>
#include <asio/local/stream_protocol.hpp>
#include <sys/types.h>

#include "proxy/connection_slots.h"

namespace postern::control {

// Longest command line the server reads; anything longer is refused.
inline constexpr std::size_t kMaxCommand = 64;
// What a command may take, reload included (Lua scripts compile on it).
inline constexpr std::chrono::seconds kClientTimeout{60};

struct Handlers {
  std::function<std::string()> reload;        // "ok ..." or "error ..."
  std::function<std::string(bool json)> status;
};

class Server {
 public:
  // Binds `path` (mode `mode`, 0600 or 0660): a stale socket left by a dead
  // process is replaced; a live one (another postern answers) is an error,
  // thrown as std::runtime_error naming the path.
  Server(asio::io_context& context, std::string path, unsigned mode, Handlers handlers);
  // Removes the socket file if it is still the one this process made.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  const std::string& path() const { return path_; }
  // Hands the socket file to the user postern drops to (before the drop).
  void chown(uid_t uid, gid_t gid);
  // Accepts until close(); each connection is one command.
  asio::awaitable<void> serve();
  void close();

 private:
  asio::awaitable<void> answer(asio::local::stream_protocol::socket socket);

  std::string path_;
  Handlers handlers_;
  asio::local::stream_protocol::acceptor acceptor_;
  // At most kMaxConnections clients at once, the oldest cut off for a new one.
  std::shared_ptr<ConnectionSlots<asio::local::stream_protocol::socket>> slots_;
  dev_t dev_ = 0;  // identity of the socket file, so ~Server removes only ours
  ino_t ino_ = 0;
};

// The default socket's name when [control] socket is unset and there is no
// runtime directory: "postern-control-PORT.sock", PORT the first listener's
// bound port (relative: the working directory).
std::string listener_socket_name(unsigned short port);
// The socket of the packaged systemd service (RuntimeDirectory=postern), as
// seen from a shell, which has no $RUNTIME_DIRECTORY.
inline constexpr const char* kServiceSocket = "/run/postern/control.sock";
// Where `postern reload`/`status` look when the configuration leaves the
// socket per listener: listener_socket_name(first_port) when it exists;
// else the one "postern-control-*.sock" in the working directory; else
// kServiceSocket when it exists. Throws std::runtime_error naming the
// candidates when several instances run here or none is found.
std::string find_socket(unsigned short first_port);

// Client side: sends `command` to the socket at `path` and returns the
// answer. Throws std::runtime_error with a message for the user (no such
// socket, nobody listening, permission, time-out).
std::string request(const std::string& path, const std::string& command,
                    std::chrono::seconds timeout = kClientTimeout);

}  // namespace postern::control
