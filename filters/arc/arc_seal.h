// ARC sealing (RFC 8617 §5.1) of the mail postern relays, so that the next
// hop can believe postern's Authentication-Results after postern changed the
// message (a subject tag, a milter's new body, edited fields): one ARC set
// with i = the incoming chain's count + 1 -- ARC-Authentication-Results =
// postern's Authentication-Results, ARC-Message-Signature (relaxed/relaxed,
// rsa-sha256) over the header section as relayed and the body, ARC-Seal over
// the whole chain with cv= the incoming chain's validation (arc_verify.h).
// Pure CPU and spool reads, no DNS: on the sealer's own small pool.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <asio/awaitable.hpp>
#include <asio/thread_pool.hpp>

#include "filters/arc/arc_crypto.h"
#include "filters/auth/auth_types.h"
#include "filters/dkim/dkim_signer.h"
#include "filters/filter.h"

namespace postern {

// [arc] seal: which relayed messages get an ARC set.
//  kModified: those postern changed in a way that can break a DKIM signature
//    or an earlier AMS -- a subject tag, a new body, a header field changed
//    or removed (the fields postern prepends, Authentication-Results among
//    them, break nothing: they are not signed upstream of postern).
//  kAll: every relayed message with a usable incoming chain (or none).
enum class ArcSealMode { kNone, kModified, kAll };

struct ArcSealOptions {
  ArcSealMode mode = ArcSealMode::kNone;
  // [[arc.sign]]: the sealing domain's key(s); the one whose domain is the
  // (first) recipient's or its parent is used, else the first.
  std::vector<DkimSigningKey> keys;
  std::string authserv_id;  // of the ARC-Authentication-Results (postern's A-R's)
};

struct ArcSealOutcome {
  enum class Status { kSealed, kSkipped, kError } status = Status::kSkipped;
  std::string fields;  // kSealed: ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results, each folded, CRLF
  unsigned instance = 0;
  std::string cv;
  std::string domain, selector;
  std::string reason;  // why skipped / the error
  bool routine = false;  // skipped because sealing is off or the message unmodified (log at debug)
};

class ArcSealer {
 public:
  // Keys must have been loaded (load_dkim_signing_key); throws
  // std::runtime_error when one is not an RSA or Ed25519 private key.
  explicit ArcSealer(ArcSealOptions options);
  ~ArcSealer();
  const ArcSealOptions& options() const { return options_; }

  // Blocking. `header_block`: the fields as relayed (without postern's
  // Received), `body` from `body_offset`; `auth` holds the incoming chain's
  // validation (auth.arc) and the A-R results; `modified` whether postern
  // changed the message (kModified). `now` is t=.
  ArcSealOutcome seal(const std::string& header_block, const Spool& body, std::size_t body_offset,
                      const AuthResults& auth, const std::string& rcpt_domain, bool modified, long now) const;

  // The relay's hook: seal() on the sealer's pool for this transaction's
  // message as relayed (with `changes`); resumes on the caller's executor.
  asio::awaitable<ArcSealOutcome> seal_relayed(const Message& message, const TransactionFacts& t,
                                               const Spool& body, std::size_t body_offset) const;

 private:
  ArcSealOptions options_;
  std::vector<std::unique_ptr<ArcSigningKey>> keys_;
  std::unique_ptr<asio::thread_pool> pool_;
};

// Whether `changes` can break a signature made before postern (kModified).
bool arc_message_modified(const Changes& changes);

}  // namespace postern
