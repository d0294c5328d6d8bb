// Concurrent-session counting; see session_limiter.h.
#include "proxy/session_limiter.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstring>

#include <fmt/format.h>

namespace postern {

SessionLimiter::Ticket::~Ticket() {
  if (owner_) owner_->release(*this);
}

SessionLimiter& SessionLimiter::instance() {
  static SessionLimiter limiter;
  return limiter;
}

namespace {
// `text` as an address: its family and octets (4 or 16); false when it is none.
bool parse_address(std::string_view text, int& family, unsigned char (&octets)[16]) {
  char z[INET6_ADDRSTRLEN + 1];
  if (text.size() >= sizeof z) return false;
  std::memcpy(z, text.data(), text.size());
  z[text.size()] = '\0';
  if (inet_pton(AF_INET, z, octets) == 1) {
    family = AF_INET;
    return true;
  }
  if (inet_pton(AF_INET6, z, octets) == 1) {
    family = AF_INET6;
    return true;
  }
  return false;
}

// The first `bits` bits of `a` and `b` are the same.
bool same_prefix(const unsigned char* a, const unsigned char* b, std::size_t bits) {
  const std::size_t whole = bits / 8;
  if (std::memcmp(a, b, whole) != 0) return false;
  if (bits % 8 == 0) return true;
  const auto mask = static_cast<unsigned char>(0xff << (8 - bits % 8));
  return (a[whole] & mask) == (b[whole] & mask);
}

// `octets` (4 or 16 of `family`) masked to the family's prefix; the prefix used.
std::size_t mask_to_prefix(int family, unsigned char (&octets)[16], std::size_t prefix_v4, std::size_t prefix_v6) {
  const std::size_t bytes = family == AF_INET ? 4 : 16;
  const std::size_t prefix = std::min(family == AF_INET ? prefix_v4 : prefix_v6, bytes * 8);
  for (std::size_t i = 0; i < bytes; ++i) {
    std::size_t keep = prefix > i * 8 ? std::min<std::size_t>(8, prefix - i * 8) : 0;
    octets[i] &= static_cast<unsigned char>(keep == 0 ? 0 : 0xff << (8 - keep));
  }
  return prefix;
}

// The key `address`'s network is counted under: the family, the prefix and
// the masked octets in binary, which group addresses as network_of()'s text
// does without formatting it (once per session: issue 23); the text itself,
// marked, when it is no address.
std::string network_key(std::string_view address, std::size_t prefix_v4, std::size_t prefix_v6) {
  int family = 0;
  unsigned char octets[16] = {};
  if (!parse_address(address, family, octets)) return "t" + std::string(address);
  const std::size_t bytes = family == AF_INET ? 4 : 16;
  const std::size_t prefix = mask_to_prefix(family, octets, prefix_v4, prefix_v6);
  std::string key(2 + bytes, '\0');
  key[0] = family == AF_INET ? '4' : '6';
  key[1] = static_cast<char>(prefix);
  std::memcpy(key.data() + 2, octets, bytes);
  return key;
}
}  // namespace

std::string SessionLimiter::network_of(std::string_view address, std::size_t prefix_v4, std::size_t prefix_v6) {
  int family = 0;
  unsigned char octets[16] = {};
  if (!parse_address(address, family, octets)) return std::string(address);
  const std::size_t prefix = mask_to_prefix(family, octets, prefix_v4, prefix_v6);
  char out[INET6_ADDRSTRLEN] = {};
  inet_ntop(family, octets, out, sizeof out);
  return fmt::format("{}/{}", out, prefix);
}

// The same answer as comparing network_of() of both with the network's
// prefix, without formatting either (once per session at accept, for each
// exempt network: bench/README.md).
bool SessionLimiter::in_networks(std::string_view address, const std::vector<std::string>& networks) {
  if (networks.empty()) return false;
  int family = 0;
  unsigned char octets[16] = {};
  const bool is_address = parse_address(address, family, octets);
  for (const std::string& net : networks) {
    const std::size_t slash = net.find('/');
    const std::string_view ip = std::string_view(net).substr(0, slash);
    const bool v4 = ip.find(':') == std::string_view::npos;
    std::size_t prefix = v4 ? 32 : 128;
    if (slash != std::string::npos) {
      const std::string_view digits = std::string_view(net).substr(slash + 1);
      auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), prefix);
      if (ec != std::errc() || end != digits.data() + digits.size()) continue;
    }
    if (!is_address) {
      // Text that is no address (network_of leaves it as written): the texts decide.
      if (address == network_of(ip, prefix, prefix)) return true;
      continue;
    }
    int net_family = 0;
    unsigned char net_octets[16] = {};
    if (!parse_address(ip, net_family, net_octets) || family != net_family) continue;
    if (same_prefix(octets, net_octets, std::min<std::size_t>(prefix, family == AF_INET ? 32 : 128))) return true;
  }
  return false;
}

SessionLimiter::Refusal SessionLimiter::admit(std::string_view address, const Config::Limits& limits,
                                              Ticket& ticket, Scope scope) {
  const bool exempt = scope == Scope::kTotal || in_networks(address, limits.sessions_exempt);
  // An exempt session counts in all only: its network is not needed.
  std::string network = exempt ? std::string() : network_key(address, limits.network_prefix_v4,
                                                             limits.network_prefix_v6);
  std::string key = exempt ? std::string() : std::string(address);
  const bool total = scope != Scope::kClient;
  std::lock_guard lock(mutex_);
  if (total && limits.sessions && total_ >= limits.sessions) return Refusal::kTotal;
  if (exempt) {
    if (total) ++total_;
    ticket.owner_ = this;  // counted in all only: address and network stay empty
    ticket.counts_total_ = total;
    return Refusal::kNone;
  }
  auto a = by_address_.find(key);
  if (limits.sessions_per_ip && a != by_address_.end() && a->second >= limits.sessions_per_ip) {
    return Refusal::kAddress;
  }
  auto n = by_network_.find(network);
  if (limits.sessions_per_network && n != by_network_.end() && n->second >= limits.sessions_per_network) {
    return Refusal::kNetwork;
  }
  if (total) ++total_;
  if (a == by_address_.end()) a = by_address_.emplace(key, 0).first;
  ++a->second;
  if (n == by_network_.end()) n = by_network_.emplace(network, 0).first;
  ++n->second;
  ticket.owner_ = this;
  ticket.counts_total_ = total;
  ticket.address_ = std::move(key);
  ticket.network_ = std::move(network);
  return Refusal::kNone;
}

void SessionLimiter::release(Ticket& ticket) {
  std::lock_guard lock(mutex_);
  if (ticket.counts_total_) --total_;
  ticket.owner_ = nullptr;
  if (ticket.address_.empty()) return;  // exempt
  if (auto a = by_address_.find(ticket.address_); a != by_address_.end() && --a->second == 0) by_address_.erase(a);
  if (auto n = by_network_.find(ticket.network_); n != by_network_.end() && --n->second == 0) by_network_.erase(n);
}

std::size_t SessionLimiter::open() const {
  std::lock_guard lock(mutex_);
  return total_;
}

const replies::Def& refusal_reply(SessionLimiter::Refusal refusal) {
  switch (refusal) {
    case SessionLimiter::Refusal::kAddress: return replies::kTooManySessionsFromAddress;
    case SessionLimiter::Refusal::kNetwork: return replies::kTooManySessionsFromNetwork;
    default: return replies::kTooManySessions;
  }
}

const char* refusal_name(SessionLimiter::Refusal refusal) {
  switch (refusal) {
    case SessionLimiter::Refusal::kAddress: return "limits.sessions_per_ip";
    case SessionLimiter::Refusal::kNetwork: return "limits.sessions_per_network";
    case SessionLimiter::Refusal::kTotal: return "limits.sessions";
    default: return "none";
  }
}

}  // namespace postern
