// IPv4-mapped normalisation (filters/net/ip_address.h).
#include "filters/net/ip_address.h"

namespace postern {

asio::ip::address unmap_v4(const asio::ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  return a;
}

std::string canonical_ip(std::string_view ip) {
  // make_address accepts a zone ("fe80::1%eth0"); a client address has none.
  if (ip.find('%') != std::string_view::npos) return {};
  std::error_code ec;
  asio::ip::address a = asio::ip::make_address(std::string(ip), ec);
  if (ec) return {};
  return unmap_v4(a).to_string();
}

}  // namespace postern
