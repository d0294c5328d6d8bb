// IPv4-mapped normalisation (filters/net/ip_address.h).
#include "filters/net/ip_address.h"

namespace postern {

asio::ip::address unmap_v4(const asio::ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  return a;
}

std::string address_text(const asio::ip::address& a) {
  if (!a.is_v4()) return a.to_string();
  const asio::ip::address_v4::bytes_type b = a.to_v4().to_bytes();
  char text[16];  // "255.255.255.255"
  char* p = text;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (i > 0) *p++ = '.';
    const unsigned v = b[i];
    if (v >= 100) *p++ = static_cast<char>('0' + v / 100);
    if (v >= 10) *p++ = static_cast<char>('0' + v / 10 % 10);
    *p++ = static_cast<char>('0' + v % 10);
  }
  return std::string(text, static_cast<std::size_t>(p - text));
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
