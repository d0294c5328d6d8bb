// IP addresses as postern compares, logs and looks them up: an IPv4-mapped
// IPv6 address ("::ffff:192.0.2.1", what a dual-stack listener or a PROXY
// header may carry) is the IPv4 address it maps (RFC 4291 §2.5.5.2).
#pragma once

#include <string>
#include <string_view>

#include <asio/ip/address.hpp>

namespace postern {

// `a` with an IPv4-mapped IPv6 address turned into its IPv4 address.
asio::ip::address unmap_v4(const asio::ip::address& a);

// The text of `a`, as a.to_string() writes it; an IPv4 address without
// inet_ntop's sprintf (once or twice per accepted connection).
std::string address_text(const asio::ip::address& a);

// The canonical text of `ip` ("2001:db8::1", IPv4-mapped unmapped), or ""
// when `ip` is not an IP address.
std::string canonical_ip(std::string_view ip);

}  // namespace postern
