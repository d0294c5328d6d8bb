// DKIM signing (RFC 6376, RSA-SHA256 per RFC 8301; Ed25519 keys are refused:
// libopendkim 2.11 leaks each Ed25519 signing key) of the mail postern's own users send: authenticated sessions and
// clients in the configured internal networks. The signature covers the
// header section exactly as it is relayed (after every filter's edits,
// without postern's Received trace field) and the spooled body; the relay
// writes the DKIM-Signature field above the Received field. Pure CPU and
// spool reads, no DNS: it runs on the signer's own small worker pool.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <asio/awaitable.hpp>
#include <asio/thread_pool.hpp>

#include "filters/spool.h"

struct dkim_lib;

namespace postern {

// One [[dkim.sign]] table: a domain's key under a selector.
struct DkimSigningKey {
  std::string domain;    // d=, lower case
  std::string selector;  // s=
  std::string key_file;  // PEM private key (RSA >= 1024 bits)
  std::string key_pem;   // the file's content, read at configuration load
  bool ed25519 = false;
  unsigned bits = 0;     // RSA modulus size
};

struct DkimSignOptions {
  std::vector<DkimSigningKey> keys;       // signing is off when empty
  bool sign_authenticated = true;         // sessions that passed AUTH
  std::vector<std::string> sign_networks; // CIDR ("10.0.0.0/8", "2001:db8::/32", or a bare address)
  std::vector<std::string> headers;       // h= candidates; empty = kDefaultSignedHeaders
  bool tempfail_on_error = true;          // false: relay unsigned, with a warning
  unsigned worker_threads = 2;
};

// RFC 6376 §5.4.1's recommended fields plus the MIME and identity fields a
// replay or a content swap would change. From is always signed and
// oversigned (listed once more than present, so no From can be added).
extern const std::vector<std::string> kDefaultSignedHeaders;

// Reads and checks a PEM private key file; fills key_pem, ed25519 and bits.
// Returns "" or why the key cannot be used.
std::string load_dkim_signing_key(DkimSigningKey& key);
// The TXT record to publish at <selector>._domainkey.<domain> for `key`
// ("v=DKIM1; k=rsa; p=..."); empty when the key does not load.
std::string dkim_public_record(const DkimSigningKey& key);
// True when `text` is an address or an address/prefix of the same family.
bool valid_network(std::string_view text);

struct DkimSignOutcome {
  enum class Status { kSigned, kSkipped, kError } status = Status::kSkipped;
  std::string field;   // kSigned: "DKIM-Signature: ...\r\n" (folded with CRLF)
  std::string domain;  // d= chosen (kSigned), or the From domain
  std::string selector;
  std::string reason;  // kSkipped / kError: why, for the log
};

class DkimSigner {
 public:
  // Keys must have been loaded with load_dkim_signing_key(). Throws
  // std::runtime_error when libopendkim cannot start or a network is invalid.
  explicit DkimSigner(DkimSignOptions options);
  ~DkimSigner();
  DkimSigner(const DkimSigner&) = delete;
  DkimSigner& operator=(const DkimSigner&) = delete;

  const DkimSignOptions& options() const { return options_; }
  // Whether mail of this session is postern's own users' to sign.
  bool wants(std::string_view client_ip, std::string_view auth_user) const;
  // The key for a From domain: its own, else the nearest parent domain's
  // (relaxed DMARC alignment, RFC 7489 §3.1.1); null when none.
  const DkimSigningKey* key_for(std::string_view from_domain) const;

  // Blocking (CPU and spool reads). `header_block` is the header section as
  // relayed, without the trace field, ending with the empty line when a body
  // follows; the body is `spool` from `body_offset`.
  DkimSignOutcome sign(std::string_view header_block, const Spool& spool, std::size_t body_offset) const;
  // sign() on the signer's worker pool; resumes on the caller's executor.
  // The signer, the block and the spool must outlive the call.
  asio::awaitable<DkimSignOutcome> sign_async(const std::string& header_block, const Spool& spool,
                                              std::size_t body_offset) const;

 private:
  struct Network {
    unsigned char addr[16];
    int family;  // AF_INET or AF_INET6
    unsigned prefix;
  };
  DkimSignOptions options_;
  std::vector<Network> networks_;
  struct dkim_lib* lib_ = nullptr;
  std::unique_ptr<asio::thread_pool> pool_;
};

// The domain of the single From mailbox of a header block ("" when there is
// not exactly one From field with one mailbox), lower case.
std::string header_block_from_domain(std::string_view header_block);

}  // namespace postern
