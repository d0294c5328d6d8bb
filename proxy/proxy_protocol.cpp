// PROXY protocol v1/v2 parser; see proxy_protocol.h.
#include "proxy/proxy_protocol.h"

#include <arpa/inet.h>

#include <cctype>
#include <cstring>

namespace postern {
namespace {

constexpr unsigned char kV2Signature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                            0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

ProxyHeader invalid(std::string why) {
  ProxyHeader h;
  h.outcome = ProxyHeader::Outcome::kInvalid;
  h.error = std::move(why);
  return h;
}

bool parse_port(std::string_view s, unsigned short& port) {
  if (s.empty() || s.size() > 5 || (s.size() > 1 && s[0] == '0')) return false;
  unsigned long v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned long>(c - '0');
  }
  if (v > 65535) return false;
  port = static_cast<unsigned short>(v);
  return true;
}

// "PROXY TCP4 1.2.3.4 5.6.7.8 1111 25\r\n" (spec §2.1).
ProxyHeader parse_v1(std::string_view in) {
  std::size_t crlf = in.find("\r\n");
  if (crlf == std::string_view::npos) {
    if (in.size() >= kMaxProxyV1) return invalid("v1 header without CRLF in 107 octets");
    return {};
  }
  if (crlf + 2 > kMaxProxyV1) return invalid("v1 header longer than 107 octets");
  std::string_view line = in.substr(0, crlf);
  ProxyHeader h;
  h.consumed = crlf + 2;
  std::string_view fields[6];
  std::size_t n = 0;
  while (!line.empty() && n < 6) {
    std::size_t sp = line.find(' ');
    fields[n++] = line.substr(0, sp);
    line = sp == std::string_view::npos ? std::string_view{} : line.substr(sp + 1);
  }
  if (n >= 2 && fields[1] == "UNKNOWN") {
    h.outcome = ProxyHeader::Outcome::kComplete;
    h.local = true;
    return h;
  }
  if (n != 6 || !line.empty()) return invalid("v1 header needs 6 fields");
  int family = fields[1] == "TCP4" ? AF_INET : fields[1] == "TCP6" ? AF_INET6 : 0;
  if (!family) return invalid("v1 protocol must be TCP4, TCP6 or UNKNOWN");
  unsigned char buf[16];
  for (std::string_view a : {fields[2], fields[3]}) {
    // Checked before inet_pton, which would stop at a NUL.
    for (char c : a) {
      if (!std::isxdigit(static_cast<unsigned char>(c)) && c != '.' && c != ':') return invalid("v1 bad address");
    }
  }
  std::string src(fields[2]), dst(fields[3]);
  if (inet_pton(family, src.c_str(), buf) != 1 || inet_pton(family, dst.c_str(), buf) != 1) {
    return invalid("v1 address does not match its protocol");
  }
  unsigned short dport = 0;
  if (!parse_port(fields[4], h.source_port) || !parse_port(fields[5], dport)) return invalid("v1 bad port");
  h.source_ip = src;
  h.outcome = ProxyHeader::Outcome::kComplete;
  return h;
}

ProxyHeader parse_v2(std::string_view in) {
  if (in.size() < 16) return {};
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  if ((p[12] >> 4) != 2) return invalid("v2 version is not 2");
  unsigned command = p[12] & 0x0F;
  std::size_t len = (static_cast<std::size_t>(p[14]) << 8) | p[15];
  if (16 + len > kMaxProxyV2) return invalid("v2 header too long");
  if (in.size() < 16 + len) return {};
  ProxyHeader h;
  h.consumed = 16 + len;
  if (command == 0x0) {  // LOCAL: health checks from the proxy itself
    h.local = true;
    h.outcome = ProxyHeader::Outcome::kComplete;
    return h;
  }
  if (command != 0x1) return invalid("v2 command is neither LOCAL nor PROXY");
  unsigned family = p[13] >> 4, transport = p[13] & 0x0F;
  const unsigned char* a = p + 16;
  char text[INET6_ADDRSTRLEN];
  if (family == 0x1 && transport == 0x1) {  // TCP over IPv4
    if (len < 12) return invalid("v2 IPv4 address block too short");
    inet_ntop(AF_INET, a, text, sizeof text);
    h.source_port = static_cast<unsigned short>((a[8] << 8) | a[9]);
  } else if (family == 0x2 && transport == 0x1) {  // TCP over IPv6
    if (len < 36) return invalid("v2 IPv6 address block too short");
    inet_ntop(AF_INET6, a, text, sizeof text);
    h.source_port = static_cast<unsigned short>((a[32] << 8) | a[33]);
  } else if (family == 0x0) {  // UNSPEC
    h.local = true;
    h.outcome = ProxyHeader::Outcome::kComplete;
    return h;
  } else {
    return invalid("v2 family/transport is not TCP over IPv4/IPv6");
  }
  h.source_ip = text;
  h.outcome = ProxyHeader::Outcome::kComplete;
  return h;
}

}  // namespace

ProxyHeader parse_proxy_header(std::string_view in) {
  std::size_t n = std::min(in.size(), sizeof kV2Signature);
  if (std::memcmp(in.data(), kV2Signature, n) == 0) {
    return n < sizeof kV2Signature ? ProxyHeader{} : parse_v2(in);
  }
  std::string_view v1 = "PROXY ";
  std::size_t m = std::min(in.size(), v1.size());
  if (in.substr(0, m) == v1.substr(0, m)) return m < v1.size() ? ProxyHeader{} : parse_v1(in);
  return invalid("no PROXY protocol header");
}

}  // namespace postern
