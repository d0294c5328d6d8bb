// DKIM verification (RFC 6376; Ed25519 per RFC 8463) with libopendkim. Keys
// come from postern's resolver through libopendkim's key-lookup hook, which
// blocks unless the keys were looked up beforehand: signatures are processed
// only in dkim_eom (DKIM_LIBFLAGS_DELAYSIGPROC), on a worker-pool thread or,
// with the keys at hand (DkimKeys), on the caller's. The header fields
// and the body can be fed before, on any thread, as the content streams in
// (DkimStream, dkim_stream.h); verify() does it all over a finished spool.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "filters/auth/auth_results.h"
#include "filters/dkim/dkim_body_hash.h"
#include "filters/dkim/dkim_tags.h"
#include "filters/dns/resolver.h"
#include "filters/message.h"

struct dkim_lib;
struct dkim;

namespace postern {

// Key records looked up before dkim_eom, by "selector._domainkey.domain"
// (lower case): with them finish() never waits.
using DkimKeys = std::unordered_map<std::string, DnsAnswer>;

struct DkimVerifyOptions {
  unsigned min_key_bits = 1024;   // RSA keys below: result "policy", weak_key (RFC 8301)
  std::size_t max_signatures = 10;
};

class DkimVerifier {
 public:
  // Throws std::runtime_error when libopendkim cannot start.
  DkimVerifier(std::shared_ptr<Resolver> resolver, DkimVerifyOptions options);
  ~DkimVerifier();
  DkimVerifier(const DkimVerifier&) = delete;
  DkimVerifier& operator=(const DkimVerifier&) = delete;

  // Blocking: worker-pool threads only. Every signature, in header order;
  // empty when the message has none.
  std::vector<DkimSignature> verify(const Message& message, std::chrono::milliseconds budget) const;

  // The steps of verify(), for DkimStream. begin(): a verification handle
  // (null when libopendkim cannot start one); no DNS. feed_header(): one
  // field without its final CRLF. finish(): blocking (pool): dkim_eom with
  // the key lookups when `eoh_status` allows, the results, and the handle
  // freed. `message` gives the signatures' header fields when libopendkim
  // gave up before listing them.
  struct dkim* begin() const;
  static int feed_header(struct dkim* dkim, std::string_view field);
  //
  // With `keys`, finish() never blocks (any thread): key records come from
  // `keys` or the resolver's cache, and one in neither is a temporary error.
  //
  // With `body`, no body was fed to libopendkim: every signature's body hash
  // is the one in `body` for its c= and a= (see body_spec()).
  std::vector<DkimSignature> finish(struct dkim* dkim, int eoh_status, const Message& message,
                                    std::chrono::milliseconds budget, const DkimKeys* keys = nullptr,
                                    const DkimBodyHashes* body = nullptr) const;
  // The key record name a DKIM-Signature field value points to
  // ("selector._domainkey.domain", lower case); empty without s= or d=.
  static std::string key_name(std::string_view signature_value);
  // The same from the value's tag-list parsed once (parse_dkim_tag_list;
  // nullopt: not a tag-list), for a caller that also asks body_spec().
  using TagList = std::optional<std::vector<DkimTag>>;
  static std::string key_name(const TagList& tags);
  // The body hash a DKIM-Signature field value asks for (its c= body part
  // and a= digest), when postern computes it itself (DkimBodyHashes):
  // nullopt for l= and for values libopendkim must judge.
  struct BodySpec {
    DkimBodyCanon canon;
    DkimHash hash;
  };
  static std::optional<BodySpec> body_spec(std::string_view signature_value);
  static std::optional<BodySpec> body_spec(const TagList& tags);
  std::size_t max_signatures() const { return options_.max_signatures; }
  // Whether dkim_body/dkim_eom are worth calling after this dkim_eoh status.
  static bool wants_body(int eoh_status);

 private:
  std::shared_ptr<Resolver> resolver_;
  DkimVerifyOptions options_;
  struct dkim_lib* lib_ = nullptr;
};

}  // namespace postern
