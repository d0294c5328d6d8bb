// Trusted client networks; see trusted_networks.h.
#include "filters/auth/trusted_networks.h"

#include <arpa/inet.h>

#include <cstring>

namespace postern {

namespace {

// The address of `text` ("IP"), IPv4-mapped IPv6 unmapped; family 0 when none.
int parse_address(std::string_view text, unsigned char* addr) {
  const std::string ip(text.substr(0, 64));
  if (inet_pton(AF_INET, ip.c_str(), addr) == 1) return AF_INET;
  if (inet_pton(AF_INET6, ip.c_str(), addr) != 1) return 0;
  static const unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
  if (std::memcmp(addr, kMapped, 12) == 0) {
    std::memmove(addr, addr + 12, 4);
    return AF_INET;
  }
  return AF_INET6;
}

bool prefix_equal(const unsigned char* a, const unsigned char* b, unsigned bits) {
  const unsigned bytes = bits / 8, rest = bits % 8;
  if (std::memcmp(a, b, bytes) != 0) return false;
  if (rest == 0) return true;
  const auto mask = static_cast<unsigned char>(0xFF << (8 - rest));
  return (a[bytes] & mask) == (b[bytes] & mask);
}

}  // namespace

bool TrustedNetworks::add(std::string_view text) {
  Network n{};
  const std::size_t slash = text.find('/');
  n.family = parse_address(text.substr(0, slash), n.addr);
  if (n.family == 0) return false;
  n.prefix = n.family == AF_INET ? 32 : 128;
  if (slash != std::string_view::npos) {
    const std::string_view p = text.substr(slash + 1);
    if (p.empty() || p.size() > 3 || p.find_first_not_of("0123456789") != std::string_view::npos) return false;
    const unsigned v = static_cast<unsigned>(std::stoul(std::string(p)));
    if (v > n.prefix) return false;
    n.prefix = v;
  }
  n.text = std::string(text);
  networks_.push_back(std::move(n));
  return true;
}

std::string TrustedNetworks::match(std::string_view client_ip) const {
  unsigned char addr[16];
  const int family = parse_address(client_ip, addr);
  if (family == 0) return {};
  for (const Network& n : networks_) {
    if (n.family == family && prefix_equal(addr, n.addr, n.prefix)) return n.text;
  }
  return {};
}

}  // namespace postern
