// DKIM signing with libopendkim's signing API; see dkim_signer.h.
#include "filters/dkim/dkim_signer.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <asio/co_spawn.hpp>
#include <asio/use_awaitable.hpp>

#include "filters/auth/c_api.h"
#include "filters/dmarc/dmarc.h"
#include "filters/message.h"
#include "filters/text/ascii.h"
#include "filters/text/base64.h"

namespace postern {

const std::vector<std::string> kDefaultSignedHeaders = {
    "From", "Sender", "Reply-To", "Subject", "Date", "Message-ID", "To", "Cc", "In-Reply-To", "References",
    "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Resent-Date",
    "Resent-From", "Resent-Sender", "Resent-To", "Resent-Cc", "List-Id", "List-Help", "List-Unsubscribe",
    "List-Unsubscribe-Post", "List-Subscribe", "List-Post", "List-Owner", "List-Archive"};

namespace {

// Largest key file read: a 16384-bit RSA key in PEM is about 12 KB.
constexpr std::size_t kMaxKeyFile = 64 * 1024;

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

Pkey parse_private_key(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (!bio) return nullptr;
  EVP_PKEY* k = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, const_cast<char*>(""));
  BIO_free(bio);
  return Pkey(k);
}

std::string base64(const unsigned char* data, std::size_t len) {
  return base64_encode(std::string_view(reinterpret_cast<const char*>(data), len));
}

bool parse_network(std::string_view text, unsigned char* addr, int& family, unsigned& prefix) {
  std::string s(text.substr(0, 64));
  std::string host = s.substr(0, s.find('/'));
  if (inet_pton(AF_INET, host.c_str(), addr) == 1) family = AF_INET, prefix = 32;
  else if (inet_pton(AF_INET6, host.c_str(), addr) == 1) family = AF_INET6, prefix = 128;
  else return false;
  if (auto slash = s.find('/'); slash != std::string::npos) {
    std::string p = s.substr(slash + 1);
    if (p.empty() || p.size() > 3 || p.find_first_not_of("0123456789") != std::string::npos) return false;
    unsigned v = static_cast<unsigned>(std::stoul(p));
    if (v > prefix) return false;
    prefix = v;
  }
  return true;
}

bool prefix_equal(const unsigned char* a, const unsigned char* b, unsigned bits) {
  unsigned bytes = bits / 8, rest = bits % 8;
  if (std::memcmp(a, b, bytes) != 0) return false;
  if (rest == 0) return true;
  unsigned char mask = static_cast<unsigned char>(0xFF << (8 - rest));
  return (a[bytes] & mask) == (b[bytes] & mask);
}

asio::awaitable<DkimSignOutcome> sign_on_pool(const DkimSigner* signer, const std::string* block, const Spool* spool,
                                              std::size_t body_offset) {
  co_return signer->sign(*block, *spool, body_offset);
}

}  // namespace

std::string load_dkim_signing_key(DkimSigningKey& key) {
  std::ifstream in(key.key_file, std::ios::binary);
  if (!in) return "cannot read key file \"" + key.key_file + "\": " + std::strerror(errno);
  std::string pem(kMaxKeyFile + 1, '\0');
  in.read(pem.data(), static_cast<std::streamsize>(pem.size()));
  pem.resize(static_cast<std::size_t>(in.gcount()));
  if (pem.size() > kMaxKeyFile) return "key file \"" + key.key_file + "\" is larger than a private key";
  Pkey pkey = parse_private_key(pem);
  if (!pkey) return "\"" + key.key_file + "\" holds no PEM private key (generate one with: openssl genpkey)";
  const int type = EVP_PKEY_get_base_id(pkey.get());
  if (type == EVP_PKEY_RSA) {
    key.ed25519 = false;
    key.bits = static_cast<unsigned>(EVP_PKEY_get_bits(pkey.get()));
    // RFC 8301 §3.2: signers MUST use keys of at least 1024 bits.
    if (key.bits < 1024) {
      return "\"" + key.key_file + "\" is a " + std::to_string(key.bits) +
             "-bit RSA key; DKIM needs at least 1024 bits (RFC 8301), 2048 recommended";
    }
  } else if (type == EVP_PKEY_ED25519) {
    // libopendkim 2.11 (Debian 12) signs with Ed25519 but never frees the
    // key it loads for it: about 1.3 KB lost per signed message (LeakSanitizer
    // in dkim_privkey_load). Refused until the library is fixed.
    return "\"" + key.key_file + "\" is an Ed25519 key; libopendkim 2.11 leaks memory on every Ed25519 "
           "signature, so postern signs with RSA keys only (2048 bits: openssl genpkey -algorithm RSA "
           "-pkeyopt rsa_keygen_bits:2048)";
  } else {
    return "\"" + key.key_file + "\" is neither an RSA nor an Ed25519 private key";
  }
  key.key_pem = std::move(pem);
  return {};
}

std::string dkim_public_record(const DkimSigningKey& key) {
  Pkey pkey = parse_private_key(key.key_pem);
  if (!pkey) return {};
  if (EVP_PKEY_get_base_id(pkey.get()) == EVP_PKEY_ED25519) {
    // RFC 8463 §4.2: p= is the raw 32-octet public key.
    unsigned char raw[32];
    std::size_t len = sizeof raw;
    if (EVP_PKEY_get_raw_public_key(pkey.get(), raw, &len) != 1) return {};
    return "v=DKIM1; k=ed25519; p=" + base64(raw, len);
  }
  // RFC 6376 §3.6.1: p= is the DER SubjectPublicKeyInfo.
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(pkey.get(), &der);
  if (len <= 0) return {};
  std::string record = "v=DKIM1; k=rsa; p=" + base64(der, static_cast<std::size_t>(len));
  OPENSSL_free(der);
  return record;
}

bool valid_network(std::string_view text) {
  unsigned char addr[16];
  int family = 0;
  unsigned prefix = 0;
  return parse_network(text, addr, family, prefix);
}

std::string header_block_from_domain(std::string_view header_block) {
  Spool spool(header_block.size() + 1, "");
  spool.append(header_block);
  spool.finish();
  Message message(spool, HeaderLimits::unbounded());
  return from_domain(message).value_or("");
}

DkimSigner::DkimSigner(DkimSignOptions options) : options_(std::move(options)) {
  for (const std::string& n : options_.sign_networks) {
    Network net{};
    if (!parse_network(n, net.addr, net.family, net.prefix)) throw std::runtime_error("dkim: bad network " + n);
    networks_.push_back(net);
  }
  for (DkimSigningKey& k : options_.keys) k.domain = ascii::to_lower(k.domain);
  if (options_.headers.empty()) options_.headers = kDefaultSignedHeaders;
  if (std::none_of(options_.headers.begin(), options_.headers.end(),
                   [](const std::string& h) { return ascii::to_lower(h) == "from"; })) {
    options_.headers.insert(options_.headers.begin(), "From");  // RFC 6376 §5.4: From MUST be signed
  }
  lib_ = dkim_init(nullptr, nullptr);
  if (!lib_) throw std::runtime_error("dkim: dkim_init failed");
  // libopendkim matches these as regular expressions: keep only field-name
  // octets (RFC 5322 §3.6.8 ftext minus the regex metacharacters we use).
  std::vector<std::string> names;
  for (const std::string& h : options_.headers) {
    std::string n;
    for (char c : h) {
      if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') n.push_back(c);
    }
    if (!n.empty()) names.push_back(ascii::to_lower(n));
  }
  std::vector<const char*> sign_list;
  for (const std::string& n : names) sign_list.push_back(n.c_str());
  sign_list.push_back(nullptr);
  const char* oversign[] = {"From", nullptr};
  // List options take the list pointer and sizeof(pointer); libopendkim copies them.
  if (dkim_options(lib_, DKIM_OP_SETOPT, DKIM_OPTS_SIGNHDRS, sign_list.data(), sizeof(const char**)) !=
          DKIM_STAT_OK ||
      dkim_options(lib_, DKIM_OP_SETOPT, DKIM_OPTS_OVERSIGNHDRS, oversign, sizeof(const char**)) != DKIM_STAT_OK) {
    dkim_close(lib_);
    throw std::runtime_error("dkim: cannot set the signed header list");
  }
  pool_ = std::make_unique<asio::thread_pool>(options_.worker_threads ? options_.worker_threads : 1);
}

DkimSigner::~DkimSigner() {
  if (pool_) pool_->join();
  if (lib_) dkim_close(lib_);
}

bool DkimSigner::wants(std::string_view client_ip, std::string_view auth_user) const {
  if (options_.keys.empty()) return false;
  if (options_.sign_authenticated && !auth_user.empty()) return true;
  std::string ip(client_ip.substr(0, 64));
  unsigned char addr[16];
  int family = 0;
  if (inet_pton(AF_INET, ip.c_str(), addr) == 1) family = AF_INET;
  else if (inet_pton(AF_INET6, ip.c_str(), addr) == 1) family = AF_INET6;
  else return false;
  // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
  static const unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
  if (family == AF_INET6 && std::memcmp(addr, kMapped, 12) == 0) {
    std::memmove(addr, addr + 12, 4);
    family = AF_INET;
  }
  for (const Network& n : networks_) {
    if (n.family == family && prefix_equal(addr, n.addr, n.prefix)) return true;
  }
  return false;
}

const DkimSigningKey* DkimSigner::key_for(std::string_view from_domain) const {
  std::string d = ascii::to_lower(from_domain);
  while (!d.empty()) {
    for (const DkimSigningKey& k : options_.keys) {
      if (k.domain == d) return &k;
    }
    auto dot = d.find('.');
    if (dot == std::string::npos) break;
    d.erase(0, dot + 1);
  }
  return nullptr;
}

DkimSignOutcome DkimSigner::sign(std::string_view header_block, const Spool& spool, std::size_t body_offset) const {
  using S = DkimSignOutcome::Status;
  DkimSignOutcome out;
  // Split the block into its fields as Message parses received content.
  Spool block_spool(header_block.size() + 1, "");
  block_spool.append(header_block);
  block_spool.finish();
  Message block(block_spool, HeaderLimits::unbounded());
  // A body must follow the empty line, or a verifier splits the message
  // elsewhere than we signed it (a header section postern did not parse
  // whole, a body that starts without one).
  const bool has_body = body_offset < spool.size();
  const bool empty_line = header_block == "\r\n" || header_block.ends_with("\r\n\r\n");
  if (block.headers_truncated() || (has_body && (!empty_line || block.body_offset() != header_block.size()))) {
    out.reason = "header section not signable (no empty line before the body, or too large)";
    return out;
  }
  auto from = from_domain(block);
  if (!from) {
    out.reason = "not exactly one From mailbox";
    return out;
  }
  out.domain = *from;
  const DkimSigningKey* key = key_for(*from);
  if (!key) {
    out.reason = "no signing key for the From domain";
    return out;
  }
  out.domain = key->domain;
  out.selector = key->selector;

  static std::atomic<unsigned long> job_counter{0};
  const std::string job = "postern-sign-" + std::to_string(++job_counter);
  DKIM_STAT status = DKIM_STAT_OK;
  DKIM* dkim = dkim_sign(lib_, reinterpret_cast<const unsigned char*>(job.c_str()), nullptr,
                         reinterpret_cast<unsigned char*>(const_cast<char*>(key->key_pem.c_str())),
                         reinterpret_cast<const unsigned char*>(key->selector.c_str()),
                         reinterpret_cast<const unsigned char*>(key->domain.c_str()), DKIM_CANON_RELAXED,
                         DKIM_CANON_RELAXED, key->ed25519 ? DKIM_SIGN_ED25519SHA256 : DKIM_SIGN_RSASHA256, -1,
                         &status);
  if (!dkim) {
    out.status = S::kError;
    out.reason = std::string("libopendkim: ") + dkim_getresultstr(status);
    return out;
  }
  auto fail = [&](const char* step, DKIM_STAT st) {
    out.status = S::kError;
    const char* detail = dkim_geterror(dkim);
    out.reason = std::string("libopendkim ") + step + ": " + dkim_getresultstr(st) +
                 (detail && *detail ? std::string(" (") + detail + ")" : "");
    dkim_free(dkim);
    return out;
  };
  for (const HeaderField& h : block.headers()) {
    std::string_view raw = h.raw;
    if (raw.size() >= 2 && raw.substr(raw.size() - 2) == "\r\n") raw.remove_suffix(2);
    DKIM_STAT st = dkim_header(dkim, reinterpret_cast<u_char*>(const_cast<char*>(raw.data())), raw.size());
    if (st != DKIM_STAT_OK) return fail("header", st);
  }
  if (DKIM_STAT st = dkim_eoh(dkim); st != DKIM_STAT_OK) return fail("eoh", st);
  std::size_t offset = body_offset;
  char buf[65536];
  for (;;) {
    long n = spool.read(offset, buf, sizeof buf);
    if (n < 0) {
      out.status = S::kError;
      out.reason = std::string("spool read: ") + std::strerror(errno);
      dkim_free(dkim);
      return out;
    }
    if (n == 0) break;
    offset += static_cast<std::size_t>(n);
    if (DKIM_STAT st = dkim_body(dkim, reinterpret_cast<u_char*>(buf), static_cast<size_t>(n)); st != DKIM_STAT_OK) {
      return fail("body", st);
    }
  }
  if (DKIM_STAT st = dkim_eom(dkim, nullptr); st != DKIM_STAT_OK) return fail("eom", st);
  static constexpr std::string_view kName = "DKIM-Signature: ";
  u_char* value = nullptr;
  size_t len = 0;
  if (DKIM_STAT st = dkim_getsighdr_d(dkim, kName.size(), &value, &len); st != DKIM_STAT_OK || !value) {
    return fail("getsighdr", st);
  }
  out.field.assign(kName).append(reinterpret_cast<const char*>(value), len).append("\r\n");
  out.status = S::kSigned;
  dkim_free(dkim);
  return out;
}

asio::awaitable<DkimSignOutcome> DkimSigner::sign_async(const std::string& header_block, const Spool& spool,
                                                        std::size_t body_offset) const {
  auto task = sign_on_pool(this, &header_block, &spool, body_offset);
  co_return co_await asio::co_spawn(pool_->get_executor(), std::move(task), asio::use_awaitable);
}

}  // namespace postern
