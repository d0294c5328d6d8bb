// Clients whose mail skips SPF, DKIM verification and DMARC ([authenticity]
// trusted_networks): a local relay, a host of one's own that submits
// without AUTH. Listed, never implied: a loopback address is not trusted by
// itself (libspf2's "localhost is always allowed" is bypassed, issue 15).
// Authentication-Results and the audit log say the checks were skipped and
// why.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace postern {

class TrustedNetworks {
 public:
  // Adds "IP/PREFIX" or "IP"; false when it is neither.
  bool add(std::string_view network);
  bool empty() const { return networks_.empty(); }
  // The entry `client_ip` is in ("" when none). IPv4-mapped IPv6 counts as IPv4.
  std::string match(std::string_view client_ip) const;

 private:
  struct Network {
    unsigned char addr[16];
    int family;
    unsigned prefix;
    std::string text;
  };
  std::vector<Network> networks_;
};

}  // namespace postern
