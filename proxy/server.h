// The process: listeners, one io_context per I/O thread, signals (SIGHUP
// reload, SIGTERM/SIGINT drain), and the shared configuration snapshot.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>

#include "proxy/config.h"

namespace postern {

class Server {
 public:
  explicit Server(ConfigSource source);
  ~Server();
  // Binds, serves until SIGTERM/SIGINT has drained the sessions; returns the exit code.
  int run();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace postern
