#include "filters/dns/reverse_name.h"

#include <arpa/inet.h>

#include "filters/net/ip_address.h"

#include <cstdio>

namespace postern {

std::string reverse_ip(std::string_view ip) {
  std::string text(ip.substr(0, 64));
  unsigned char buf[16];
  if (inet_pton(AF_INET, text.c_str(), buf) == 1) {
    char out[32];
    std::snprintf(out, sizeof out, "%u.%u.%u.%u", buf[3], buf[2], buf[1], buf[0]);
    return out;
  }
  if (inet_pton(AF_INET6, text.c_str(), buf) == 1) {
    static const char kHex[] = "0123456789abcdef";
    std::string out;
    for (int i = 15; i >= 0; --i) {
      out.push_back(kHex[buf[i] & 0xF]);
      out.push_back('.');
      out.push_back(kHex[buf[i] >> 4]);
      if (i) out.push_back('.');
    }
    return out;
  }
  return {};
}

std::string reverse_name(std::string_view text) {
  std::string ip = canonical_ip(text);
  std::string reversed = reverse_ip(ip);
  if (reversed.empty()) return {};
  return reversed + (ip.find(':') != std::string::npos ? ".ip6.arpa" : ".in-addr.arpa");
}

}  // namespace postern
