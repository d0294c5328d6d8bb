// A cache of decoded DKIM public keys, in front of libopendkim.
//
// Why: libopendkim decodes the signer's RSA key from DER with d2i_PUBKEY_bio
// for every signature it verifies. With OpenSSL 3.0 that decode goes through
// the provider decoder framework (OSSL_DECODER_CTX_new_for_pkey and friends),
// which costs more than the RSA verification itself (bench/README.md). A mail
// stream brings the same few keys again and again.
//
// How: this file defines d2i_PUBKEY_bio in the postern executable, which
// interposes libcrypto's definition for libopendkim (the dynamic linker looks
// in the executable first). A call with a memory BIO and no reuse pointer is
// answered from a cache keyed by the DER octets: the cached EVP_PKEY gets one
// more reference (libopendkim frees its reference as before). Everything else
// goes to libcrypto's d2i_PUBKEY_bio unchanged, found with dlsym(RTLD_NEXT).
//
// Contract: the result is the same key libcrypto would decode (keyed by the
// exact octets, so a rotated key is a new entry; nothing goes stale). OpenSSL
// 3 EVP_PKEY objects may be shared across threads for public-key operations
// (the legacy RSA view libopendkim asks for is created under the key's lock).
// Bounded: at most kMaxEntries keys of at most kMaxDer octets; when full, the
// cache is emptied. The mem BIO is not advanced on a hit (libopendkim frees it
// without reading further). Linked into the postern executable only.

#include <dlfcn.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <mutex>
#include <string>
#include <unordered_map>

namespace {

constexpr std::size_t kMaxEntries = 4096;
constexpr long kMaxDer = 16384;  // an RSA-8192 SubjectPublicKeyInfo is ~1.1 KB

using D2iPubkeyBio = EVP_PKEY* (*)(BIO*, EVP_PKEY**);

D2iPubkeyBio real_d2i() {
  static const D2iPubkeyBio real = reinterpret_cast<D2iPubkeyBio>(dlsym(RTLD_NEXT, "d2i_PUBKEY_bio"));
  return real;
}

struct Cache {
  std::mutex mu;
  std::unordered_map<std::string, EVP_PKEY*> keys;
};

Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: keys may be in use at exit
  return *c;
}

}  // namespace

extern "C" EVP_PKEY* d2i_PUBKEY_bio(BIO* bp, EVP_PKEY** a) {
  D2iPubkeyBio real = real_d2i();
  if (real == nullptr) return nullptr;  // cannot happen when libcrypto is linked
  char* data = nullptr;
  long len = (a == nullptr && bp != nullptr && BIO_method_type(bp) == BIO_TYPE_MEM) ? BIO_get_mem_data(bp, &data) : 0;
  if (len <= 0 || len > kMaxDer || data == nullptr) return real(bp, a);
  std::string der(data, static_cast<std::size_t>(len));
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.keys.find(der);
    if (it != c.keys.end() && EVP_PKEY_up_ref(it->second) == 1) return it->second;
  }
  EVP_PKEY* key = real(bp, nullptr);
  if (key == nullptr || EVP_PKEY_up_ref(key) != 1) return key;
  std::lock_guard<std::mutex> lock(c.mu);
  if (c.keys.size() >= kMaxEntries) {
    for (auto& [_, k] : c.keys) EVP_PKEY_free(k);
    c.keys.clear();
  }
  auto [it, inserted] = c.keys.emplace(std::move(der), key);
  if (!inserted) EVP_PKEY_free(key);  // another thread cached the same key first
  return key;
}
