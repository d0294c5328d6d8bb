// Concurrent-session limits: in all, per client address and per client
// network (IPv4 /24, IPv6 /64 by default), checked when a session starts,
// after the PROXY header named the real client. One process-wide table,
// shared by every I/O thread under one mutex (two map updates a session).
#pragma once

#include <cstddef>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "proxy/config.h"
#include "proxy/replies.h"

namespace postern {

class SessionLimiter {
 public:
  // Holds one admitted session's place; gives it back when destroyed.
  class Ticket {
   public:
    Ticket() = default;
    ~Ticket();
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;

   private:
    friend class SessionLimiter;
    SessionLimiter* owner_ = nullptr;
    std::string address_;
    std::string network_;
  };

  // What refused a session, for the log line.
  enum class Refusal { kNone, kTotal, kAddress, kNetwork };

  static SessionLimiter& instance();

  // Admits a session from `address` (textual IP) under `limits`, filling
  // `ticket`; otherwise returns what refused it and leaves `ticket` empty.
  Refusal admit(std::string_view address, const Config::Limits& limits, Ticket& ticket);
  std::size_t open() const;

  // "a.b.c.0/24", "2001:db8::/64": the network `address` counts against;
  // the address itself when it is not an IP.
  static std::string network_of(std::string_view address, std::size_t prefix_v4, std::size_t prefix_v6);
  // True when `address` lies in one of `networks` ("IP/PREFIX", checked by the config).
  static bool in_networks(std::string_view address, const std::vector<std::string>& networks);

 private:
  void release(Ticket& ticket);

  mutable std::mutex mutex_;
  std::size_t total_ = 0;
  std::unordered_map<std::string, std::size_t> by_address_;
  std::unordered_map<std::string, std::size_t> by_network_;
};

// The reply for a refusal (421 4.7.0 for address and network, 421 4.3.2 in all).
const replies::Def& refusal_reply(SessionLimiter::Refusal refusal);
const char* refusal_name(SessionLimiter::Refusal refusal);

}  // namespace postern
