// The PROXY protocol, versions 1 (text) and 2 (binary), as HAProxy specifies
// it (doc/proxy-protocol.txt): the real client address that a load balancer
// in front of postern passes first on the connection. I/O-free; a listener
// that expects it refuses connections without a valid header, and one that
// does not expect it never parses one.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace postern {

struct ProxyHeader {
  enum class Outcome { kComplete, kIncomplete, kInvalid } outcome = Outcome::kIncomplete;
  std::size_t consumed = 0;  // header octets, for kComplete
  bool local = false;        // LOCAL / UNKNOWN: keep the socket's own addresses
  std::string source_ip;
  unsigned short source_port = 0;
  std::string error;         // for kInvalid, for the log
};

inline constexpr std::size_t kMaxProxyV1 = 107;        // with CRLF (spec §2.1)
inline constexpr std::size_t kMaxProxyV2 = 16 + 1024;  // header + address/TLV block we accept

ProxyHeader parse_proxy_header(std::string_view input);

}  // namespace postern
