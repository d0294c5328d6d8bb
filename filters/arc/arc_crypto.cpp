// ARC signatures with OpenSSL; see arc_crypto.h.
#include "filters/arc/arc_crypto.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "filters/dkim/dkim_tags.h"

namespace postern {

namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;

std::string sha256(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<char*>(md), len);
}

}  // namespace

std::optional<std::string> base64_decode(std::string_view text) {
  std::string clean;
  for (char c : text) {
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
    clean += c;
  }
  if (clean.empty() || clean.size() % 4 != 0) return std::nullopt;
  std::string out(clean.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(clean.data()), static_cast<int>(clean.size()));
  if (n < 0) return std::nullopt;
  std::size_t pad = 0;
  if (clean.ends_with("==")) pad = 2;
  else if (clean.ends_with("=")) pad = 1;
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

std::string arc_verify_signature(std::string_view algorithm, std::string_view key_record, std::string_view data,
                                 std::string_view b64_signature, unsigned min_key_bits) {
  const bool ed25519 = algorithm == "ed25519-sha256";
  if (!ed25519 && algorithm != "rsa-sha256") return "unsupported algorithm a=" + std::string(algorithm);
  if (!parse_dkim_tag_list(key_record)) return "key record is not a tag-list";
  const std::string v = dkim_tag_value(key_record, "v");
  if (!v.empty() && v != "DKIM1") return "key record v= is not DKIM1";
  std::string k = dkim_tag_value(key_record, "k");
  if (k.empty()) k = "rsa";
  if ((ed25519 && k != "ed25519") || (!ed25519 && k != "rsa")) return "key type k=" + k + " does not match a=";
  const std::string p = dkim_tag_value(key_record, "p");
  if (p.empty()) return "key revoked (empty p=)";
  auto der = base64_decode(p);
  if (!der) return "key p= is not base64";
  auto sig = base64_decode(b64_signature);
  if (!sig) return "b= is not base64";
  Pkey key;
  if (ed25519) {
    key.reset(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr,
                                          reinterpret_cast<const unsigned char*>(der->data()), der->size()));
  } else {
    const unsigned char* in = reinterpret_cast<const unsigned char*>(der->data());
    key.reset(d2i_PUBKEY(nullptr, &in, static_cast<long>(der->size())));
    if (!key) {
      in = reinterpret_cast<const unsigned char*>(der->data());
      key.reset(d2i_PublicKey(EVP_PKEY_RSA, nullptr, &in, static_cast<long>(der->size())));
    }
    if (key && EVP_PKEY_base_id(key.get()) != EVP_PKEY_RSA) key.reset();
  }
  if (!key) return "key p= does not parse";
  if (!ed25519) {
    const int bits = EVP_PKEY_get_bits(key.get());
    if (bits < static_cast<int>(min_key_bits)) {
      return "RSA key of " + std::to_string(bits) + " bits is below " + std::to_string(min_key_bits);
    }
  }
  MdCtx ctx(EVP_MD_CTX_new());
  if (!ctx) return "out of memory";
  int ok;
  if (ed25519) {
    // RFC 8463 §3: Ed25519 over the SHA-256 of the data.
    const std::string digest = sha256(data);
    ok = EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) == 1 &&
         EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig->data()), sig->size(),
                          reinterpret_cast<const unsigned char*>(digest.data()), digest.size()) == 1;
  } else {
    ok = EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()) == 1 &&
         EVP_DigestVerifyUpdate(ctx.get(), data.data(), data.size()) == 1 &&
         EVP_DigestVerifyFinal(ctx.get(), reinterpret_cast<const unsigned char*>(sig->data()), sig->size()) == 1;
  }
  return ok ? "" : "signature does not verify";
}

std::unique_ptr<ArcSigningKey> ArcSigningKey::load(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (!bio) return nullptr;
  EVP_PKEY* k = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (!k) return nullptr;
  const int id = EVP_PKEY_base_id(k);
  if (id != EVP_PKEY_RSA && id != EVP_PKEY_ED25519) {
    EVP_PKEY_free(k);
    return nullptr;
  }
  std::unique_ptr<ArcSigningKey> out(new ArcSigningKey);
  out->key_ = k;
  out->ed25519_ = id == EVP_PKEY_ED25519;
  return out;
}

ArcSigningKey::~ArcSigningKey() { EVP_PKEY_free(key_); }

const char* ArcSigningKey::algorithm() const { return ed25519_ ? "ed25519-sha256" : "rsa-sha256"; }

std::optional<std::string> ArcSigningKey::sign(std::string_view data) const {
  MdCtx ctx(EVP_MD_CTX_new());
  if (!ctx) return std::nullopt;
  std::string digest;
  const EVP_MD* md = EVP_sha256();
  if (ed25519_) {
    digest = sha256(data);
    data = digest;
    md = nullptr;
  }
  std::size_t len = 0;
  if (EVP_DigestSignInit(ctx.get(), nullptr, md, nullptr, key_) != 1) return std::nullopt;
  if (EVP_DigestSign(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(data.data()), data.size()) != 1) {
    return std::nullopt;
  }
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(data.data()), data.size()) != 1) {
    return std::nullopt;
  }
  sig.resize(len);
  return base64_encode(sig);
}

}  // namespace postern
