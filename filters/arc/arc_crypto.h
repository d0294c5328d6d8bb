// The signatures of ARC (RFC 8617 §4.1.2-4.1.3): rsa-sha256 (RFC 8301 key
// sizes) and ed25519-sha256 (RFC 8463) with OpenSSL, over the octets
// arc_chain.h composes; keys in DKIM key records (RFC 6376 §3.6.1).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "filters/text/base64.h"  // base64_encode

struct evp_pkey_st;  // OpenSSL's EVP_PKEY

namespace postern {

// "" when `b64_signature` is the `algorithm` signature of `data` under the
// key of `key_record` ("v=DKIM1; k=rsa; p=..."), else why not ("key
// revoked", "RSA key of 512 bits is below 1024", "signature does not
// verify").
std::string arc_verify_signature(std::string_view algorithm, std::string_view key_record, std::string_view data,
                                 std::string_view b64_signature, unsigned min_key_bits);

// A private key for sealing, loaded once.
class ArcSigningKey {
 public:
  // nullptr when `pem` is not an RSA or Ed25519 private key.
  static std::unique_ptr<ArcSigningKey> load(const std::string& pem);
  ~ArcSigningKey();
  ArcSigningKey(const ArcSigningKey&) = delete;
  ArcSigningKey& operator=(const ArcSigningKey&) = delete;
  // "rsa-sha256" or "ed25519-sha256".
  const char* algorithm() const;
  // The base64 signature of `data`; nullopt when OpenSSL fails.
  std::optional<std::string> sign(std::string_view data) const;

 private:
  ArcSigningKey() = default;
  ::evp_pkey_st* key_ = nullptr;
  bool ed25519_ = false;
};

// Base64 with white space ignored; nullopt when not base64.
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace postern
