// postern as a milter ([milter_server], docs/milter.md): Postfix's
// smtpd_milters / non_smtpd_milters (or Sendmail's INPUT_MAIL_FILTER)
// connect to these sockets, and postern's decision side — SPF, DKIM verify
// and sign, DMARC, Authentication-Results, the Lua rules — runs on what the
// MTA tells it (milter_dialogue.h). This file is the sockets: inet and unix
// listeners, one coroutine per MTA connection on an I/O thread, bounded
// reads with a time-out, and shutdown.
#pragma once

#include <atomic>
#include <functional>
#include <memory>

#include <asio/io_context.hpp>

#include "filters/filter_chain.h"
#include "proxy/config.h"

namespace postern {

class MilterServer {
 public:
  // Where a new connection runs: an I/O thread's context and its chains,
  // read on that thread only (they change there on a reload).
  struct Worker {
    asio::io_context* context = nullptr;
    // The worker's configuration, replaced with its chains by a reload: a
    // connection takes the three together.
    const std::shared_ptr<const Config>* config = nullptr;
    const std::shared_ptr<const FilterChain>* chain = nullptr;
    const std::shared_ptr<const FilterChain>* submission_chain = nullptr;
  };

  // `accept_on`: the context of the accept loops; `pick`: the next worker;
  // `snapshot`: the current configuration; `open`: the process's count of
  // open sessions, which shutdown waits for.
  MilterServer(asio::io_context& accept_on, std::function<Worker()> pick,
               std::function<std::shared_ptr<const Config>()> snapshot, std::atomic<long>& open);
  ~MilterServer();

  // Binds every [milter_server] listen address; false (logged) when one cannot be.
  bool bind(const Config& config);
  // Before the privilege drop: unix sockets go to server.user / group, so
  // that socket_mode 0660 lets that group's MTA in.
  void chown(unsigned uid, unsigned gid);
  void start();
  // Shutdown: stop accepting; a connection between two messages closes, one
  // in a message finishes it first.
  void drain();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace postern
