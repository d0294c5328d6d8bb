// Names of the reverse DNS tree (RFC 1035 §3.5, RFC 3596 §2.5) for an IP
// address, shared by postern.dns.ptr / DNSBL lookups and the client name.
#pragma once

#include <string>
#include <string_view>

namespace postern {

// "192.0.2.1" -> "1.2.0.192"; IPv6 -> its 32 nibbles; empty when `ip` is
// not an address.
std::string reverse_ip(std::string_view ip);

// The PTR owner name: "1.2.0.192.in-addr.arpa" or "....ip6.arpa". An
// IPv4-mapped IPv6 address ("::ffff:192.0.2.1") is looked up as IPv4.
// Empty when `ip` is not an address.
std::string reverse_name(std::string_view ip);

}  // namespace postern
