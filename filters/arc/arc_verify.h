// ARC chain validation (RFC 8617 §5.2) and the arc filter: the ARC sets of a
// received message, their keys looked up through postern's resolver like
// DKIM's (selector._domainkey.domain), the newest ARC-Message-Signature and
// every ARC-Seal verified with OpenSSL (arc_crypto.h), the older AMSs for
// header.oldest-pass. The result goes to TransactionFacts::auth.arc, and from
// there to Authentication-Results, Lua (ctx.arc), the audit log and `postern
// check`; a trusted sealer's results can override a DMARC failure
// (apply_arc_override, called by the dmarc filter).
//
// Why not libopenarc: Debian 12 packages no OpenARC (no openarc or
// libopenarc-dev in bookworm), and its last Trusted Domain Project release
// is a beta; building it from source would add an unpackaged C library to
// every install. ARC needs no more than DKIM's canonicalization, which is text
// (arc_chain.h), the body hash postern already computes (dkim_body_hash.h)
// and two signature checks per set in OpenSSL.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <asio/thread_pool.hpp>

#include "filters/arc/arc_chain.h"
#include "filters/arc/arc_options.h"
#include "filters/auth/auth_types.h"
#include "filters/dns/resolver.h"
#include "filters/filter.h"

namespace postern {

// Key records by "selector._domainkey.domain" (lower case).
using ArcKeys = std::unordered_map<std::string, DnsAnswer>;

// The key records the sets of `s` need, distinct, newest set first.
std::vector<std::string> arc_key_names(const ArcStructure& s);

// §5.2 over a valid structure (s.error empty, sets not empty): blocking (it
// reads the body from the spool for the AMS body hashes). Keys missing from
// `keys` fail their signature.
ArcOutcome verify_arc_chain(const std::vector<HeaderField>& headers, const ArcStructure& s, const Spool& spool,
                            std::size_t body_offset, const ArcKeys& keys, unsigned min_key_bits);

// Sets o.trusted_* when the chain passed and the newest set sealed by one of
// `trusted` (lower-case domains) whose AMS still verifies, or after which
// every set is sealed by a trusted domain, has an ARC-Authentication-Results
// saying dmarc=pass for an author domain, or dkim=pass / spf=pass with a
// domain aligned (relaxed) with every one of `authors`.
void find_trusted_sealer(ArcOutcome& o, const std::vector<std::string>& trusted,
                         const std::vector<std::string>& authors);

// The dmarc filter's hook: a DMARC fail whose transaction has a passing ARC
// chain from a trusted sealer (find_trusted_sealer) gets disposition none and
// override_type "local_policy", with the comment "arc=pass as=SEALER i=N
// SAW"; the symbol DMARC_ARC_OVERRIDE says so. True when it applied.
bool apply_arc_override(DmarcOutcome& o, TransactionFacts& t);

class ArcFilter final : public Filter {
 public:
  ArcFilter(ArcOptions options, std::shared_ptr<Resolver> resolver, std::shared_ptr<asio::thread_pool> pool);
  const std::string& name() const override { return name_; }
  bool wants(Stage stage) const override { return stage == Stage::kEom; }
  // Never decisive: DMARC (with the trusted sealers) and the rules decide.
  asio::awaitable<Verdict> run(FilterContext& ctx) override;

 private:
  std::string name_ = "arc";
  ArcOptions options_;
  std::shared_ptr<Resolver> resolver_;
  std::shared_ptr<asio::thread_pool> pool_;
};

}  // namespace postern
