// DKIM verification (RFC 6376; Ed25519 per RFC 8463) with libopendkim. Keys
// come from postern's resolver through libopendkim's key-lookup hook; the
// whole verification runs on a worker-pool thread (libopendkim is
// synchronous), over the complete spooled message at end of message.
// TODO(perf): feed dkim_header/dkim_body while DATA streams in, so the body
// is hashed without a second pass over the spool (DESIGN "Content").
#pragma once

#include <chrono>
#include <memory>
#include <vector>

#include "filters/auth/auth_results.h"
#include "filters/dns/unbound_resolver.h"
#include "filters/message.h"

struct dkim_lib;

namespace postern {

struct DkimVerifyOptions {
  unsigned min_key_bits = 1024;   // RSA keys below: result "policy", weak_key (RFC 8301)
  std::size_t max_signatures = 10;
};

class DkimVerifier {
 public:
  // Throws std::runtime_error when libopendkim cannot start.
  DkimVerifier(std::shared_ptr<UnboundResolver> resolver, DkimVerifyOptions options);
  ~DkimVerifier();
  DkimVerifier(const DkimVerifier&) = delete;
  DkimVerifier& operator=(const DkimVerifier&) = delete;

  // Blocking: worker-pool threads only. Every signature, in header order;
  // empty when the message has none.
  std::vector<DkimSignature> verify(const Message& message, std::chrono::milliseconds budget) const;

 private:
  std::shared_ptr<UnboundResolver> resolver_;
  DkimVerifyOptions options_;
  struct dkim_lib* lib_ = nullptr;
};

}  // namespace postern
