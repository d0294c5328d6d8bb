// Options of ARC ([arc] of the configuration): chain validation, the trusted
// sealers whose results may override a DMARC failure, and sealing.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace postern {

class ArcSealer;

struct ArcOptions {
  bool enabled = false;  // verification; on only when configured: it needs [dns] servers that answer
  std::chrono::milliseconds timeout{10000};  // all key lookups of one message
  unsigned min_key_bits = 1024;              // RSA keys below fail (RFC 8301)
  // Sealer domains (ARC-Seal d=, lower case) whose ARC-Authentication-Results
  // are believed when the chain passes: a DMARC failure they saw authenticated
  // gets disposition none, override local_policy (RFC 8617 §7.2, RFC 7489 §7.2).
  std::vector<std::string> trusted_sealers;
  // [arc] seal / [[arc.sign]]: null = no sealing (filters/arc/arc_seal.h).
  std::shared_ptr<const ArcSealer> sealer;
};

}  // namespace postern
