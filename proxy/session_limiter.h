// Concurrent-session limits: in all, per client address and per client
// network (IPv4 /24, IPv6 /64 by default), checked from accept, before any
// octet is read: behind a PROXY listener the total at accept and the real
// client's address once the header names it. One process-wide table,
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
    bool counts_total_ = false;
    std::string address_;
    std::string network_;
  };

  // What refused a session, for the log line.
  enum class Refusal { kNone, kTotal, kAddress, kNetwork };

  static SessionLimiter& instance();

  // What one admit() counts: all three limits; `sessions` only (at accept
  // on a PROXY listener, whose peer is the proxy); or the address and
  // network only (the real client the PROXY header names, already counted
  // in all).
  enum class Scope { kAll, kTotal, kClient };

  // Admits a session from `address` (textual IP) under `limits`, filling
  // `ticket`; otherwise returns what refused it and leaves `ticket` empty.
  Refusal admit(std::string_view address, const Config::Limits& limits, Ticket& ticket, Scope scope = Scope::kAll);
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
  std::unordered_map<std::string, std::size_t> by_network_;  // keyed in binary (session_limiter.cpp network_key)
};

// The reply for a refusal (421 4.7.0 for address and network, 421 4.3.2 in all).
const replies::Def& refusal_reply(SessionLimiter::Refusal refusal);
const char* refusal_name(SessionLimiter::Refusal refusal);

}  // namespace postern
