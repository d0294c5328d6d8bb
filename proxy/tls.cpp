// Server TLS context and session facts; see tls.h.
#include "proxy/tls.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <array>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iterator>
#include <mutex>
#include <vector>

#include <fmt/format.h>

namespace postern {
namespace {

std::string openssl_error() {
  unsigned long e = ERR_get_error();
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

// Session ticket keys (RFC 5077 4 layout: 16 octets of name, then an HMAC
// key and an AES key of 32 octets each, as in nginx's ssl_session_ticket_key
// files).
struct TicketKey {
  std::array<unsigned char, 16> name{};
  std::array<unsigned char, 32> hmac{};
  std::array<unsigned char, 32> aes{};
  std::chrono::steady_clock::time_point born;
};

// 0: no such key (a full handshake and a new ticket); 1: the sealing key
// (the first); 2: an older one (the session resumes and gets a ticket under
// the sealing key).
int find_key(const std::vector<TicketKey>& keys, const unsigned char* name, TicketKey& out) {
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (std::memcmp(keys[i].name.data(), name, 16) == 0) {
      out = keys[i];
      return i == 0 ? 1 : 2;
    }
  }
  return 0;
}

TicketKey random_key() {
  TicketKey k;
  if (RAND_bytes(k.name.data(), 16) != 1 || RAND_bytes(k.hmac.data(), 32) != 1 ||
      RAND_bytes(k.aes.data(), 32) != 1) {
    throw ConfigError("tls: no random octets for a session ticket key: " + openssl_error());
  }
  k.born = std::chrono::steady_clock::now();
  return k;
}

// Without tls.ticket_key_file: process-random keys shared by every TLS
// context (a context is rebuilt on every reload, and tickets sealed before
// it must still open), a new one every session_lifetime, each opening
// tickets for one more lifetime.
class RandomTicketKeys {
 public:
  static RandomTicketKeys& instance() {
    static RandomTicketKeys keys;
    return keys;
  }

  // The first key; a ConfigError at start (or a reload) rather than in a handshake.
  void start() {
    std::lock_guard lock(mu_);
    if (keys_.empty()) keys_.push_back(random_key());
  }

  TicketKey current(std::chrono::steady_clock::duration lifetime) {
    std::lock_guard lock(mu_);
    rotate(lifetime);
    return keys_.front();
  }

  int find(const unsigned char* name, std::chrono::steady_clock::duration lifetime, TicketKey& out) {
    std::lock_guard lock(mu_);
    rotate(lifetime);
    return find_key(keys_, name, out);
  }

 private:
  // A new sealing key every lifetime; a key opens tickets until no ticket it
  // sealed can still be valid (its last use + lifetime).
  void rotate(std::chrono::steady_clock::duration lifetime) {
    const auto now = std::chrono::steady_clock::now();
    if (keys_.empty() || now - keys_.front().born >= lifetime) keys_.insert(keys_.begin(), random_key());
    while (keys_.size() > 1 && now - keys_[keys_.size() - 2].born >= 2 * lifetime) keys_.pop_back();
  }

  std::mutex mu_;
  std::vector<TicketKey> keys_;
};

// The keys of tls.ticket_key_file (the first seals, all open), 1 to 16.
std::vector<TicketKey> read_ticket_keys(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) throw ConfigError(fmt::format("{}: tls.ticket_key_file: cannot read it", file));
  if (data.empty() || data.size() % 80 != 0 || data.size() > 80 * 16) {
    throw ConfigError(fmt::format(
        "{}: tls.ticket_key_file: {} octets; expected 80 per key, 1 to 16 keys (openssl rand 80 > FILE)", file,
        data.size()));
  }
  std::vector<TicketKey> keys(data.size() / 80);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const char* p = data.data() + 80 * i;
    std::memcpy(keys[i].name.data(), p, 16);
    std::memcpy(keys[i].hmac.data(), p + 16, 32);
    std::memcpy(keys[i].aes.data(), p + 48, 32);
  }
  return keys;
}

// A file's keys belong to the context built from it (an SSL_CTX ex_data
// slot), not to the process: a reload refused after its context was built
// (a rule that does not compile) leaves the running context and its keys.
int file_keys_index() {
  static const int index = SSL_CTX_get_ex_new_index(
      0, nullptr, nullptr, nullptr,
      [](void*, void* keys, CRYPTO_EX_DATA*, int, long, void*) { delete static_cast<std::vector<TicketKey>*>(keys); });
  return index;
}

int ticket_key_callback(SSL* ssl, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                        EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac, int enc) {
  SSL_CTX* ctx = SSL_get_SSL_CTX(ssl);
  const auto* file = static_cast<const std::vector<TicketKey>*>(SSL_CTX_get_ex_data(ctx, file_keys_index()));
  const auto lifetime = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::seconds(SSL_CTX_get_timeout(ctx)));
  TicketKey key;
  int found = 1;
  if (enc) {
    key = file ? file->front() : RandomTicketKeys::instance().current(lifetime);
    std::memcpy(key_name, key.name.data(), 16);
    if (RAND_bytes(iv, 16) != 1) return -1;
  } else {
    found = file ? find_key(*file, key_name, key) : RandomTicketKeys::instance().find(key_name, lifetime, key);
    if (found == 0) return 0;
  }
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key.hmac.data(), key.hmac.size()),
                         OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0), OSSL_PARAM_construct_end()};
  if (EVP_MAC_CTX_set_params(mac, params) != 1) return -1;
  const int ok = enc ? EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), nullptr, key.aes.data(), iv)
                     : EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), nullptr, key.aes.data(), iv);
  if (ok != 1) return -1;
  // TLS 1.3: a resumed session gets a fresh ticket too (ClientConnection
  // issues it with its first write: num_tickets is 0), as clients use a
  // ticket once (RFC 8446 C.4) and OpenSSL-based ones drop a session after
  // resuming it. 2 ("renew") keeps OpenSSL from treating it as final.
  if (!enc && SSL_version(ssl) == TLS1_3_VERSION) return 2;
  return found;
}

// A ticket resumes only a session the running policy would make now (RFC
// 5077 3.3 leaves the decision to the server): its cipher still in
// tls.ciphers, its age under the current tls.session_lifetime (OpenSSL
// checks the lifetime the ticket was sealed with, which a reload may have
// shortened since). Otherwise a full handshake and a new ticket.
SSL_TICKET_RETURN ticket_opened(SSL* ssl, SSL_SESSION* session, const unsigned char*, size_t,
                                SSL_TICKET_STATUS status, void*) {
  switch (status) {
    case SSL_TICKET_SUCCESS: case SSL_TICKET_SUCCESS_RENEW: break;
    case SSL_TICKET_EMPTY: case SSL_TICKET_NO_DECRYPT: return SSL_TICKET_RETURN_IGNORE_RENEW;
    default: return SSL_TICKET_RETURN_ABORT;
  }
  const long age = static_cast<long>(std::time(nullptr)) - SSL_SESSION_get_time(session);
  if (age < 0 || age >= SSL_CTX_get_timeout(SSL_get_SSL_CTX(ssl))) return SSL_TICKET_RETURN_IGNORE_RENEW;
  const SSL_CIPHER* cipher = SSL_SESSION_get0_cipher(session);
  STACK_OF(SSL_CIPHER)* allowed = SSL_get_ciphers(ssl);
  bool cipher_allowed = false;
  for (int i = 0; cipher && i < sk_SSL_CIPHER_num(allowed) && !cipher_allowed; ++i) {
    cipher_allowed = SSL_CIPHER_get_id(sk_SSL_CIPHER_value(allowed, i)) == SSL_CIPHER_get_id(cipher);
  }
  if (!cipher_allowed) return SSL_TICKET_RETURN_IGNORE_RENEW;
  return status == SSL_TICKET_SUCCESS ? SSL_TICKET_RETURN_USE : SSL_TICKET_RETURN_USE_RENEW;
}

}  // namespace

std::shared_ptr<asio::ssl::context> make_server_tls_context(const Config::Tls& tls) {
  if (tls.cert_file.empty()) return nullptr;
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  SSL_CTX* raw = ctx->native_handle();
  // TLS 1.2+ (RFC 8996 deprecates older); no compression (CRIME); the
  // server's cipher order; renegotiation off (TLS 1.2 DoS).
  SSL_CTX_set_min_proto_version(raw, tls.min_version == "TLSv1.3" ? TLS1_3_VERSION : TLS1_2_VERSION);
  SSL_CTX_set_options(raw, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
  const std::string ciphers = tls.ciphers.empty()
                                  ? "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"
                                  : tls.ciphers;
  if (SSL_CTX_set_cipher_list(raw, ciphers.c_str()) != 1) {
    throw ConfigError(fmt::format("tls.ciphers: OpenSSL accepts none of \"{}\": {}", ciphers, openssl_error()));
  }
  if (SSL_CTX_use_certificate_chain_file(raw, tls.cert_file.c_str()) != 1) {
    throw ConfigError(fmt::format("{}: tls.cert_file: cannot load the certificate chain (PEM): {}",
                                  tls.cert_file, openssl_error()));
  }
  if (SSL_CTX_use_PrivateKey_file(raw, tls.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
      ERR_clear_error();
      throw ConfigError(fmt::format("{}: tls.key_file: the key does not match the certificate in {}",
                                    tls.key_file, tls.cert_file));
    }
    throw ConfigError(fmt::format("{}: tls.key_file: cannot load the private key (PEM): {}", tls.key_file,
                                  openssl_error()));
  }
  if (SSL_CTX_check_private_key(raw) != 1) {
    throw ConfigError(fmt::format("{}: tls.key_file: the key does not match the certificate in {}",
                                  tls.key_file, tls.cert_file));
  }
  // Ask for a client certificate, accept any (its facts reach filters; the
  // MTA world uses opportunistic TLS, RFC 7435).
  SSL_CTX_set_verify(raw, SSL_VERIFY_PEER, [](int, X509_STORE_CTX*) { return 1; });
  SSL_CTX_set_session_id_context(raw, reinterpret_cast<const unsigned char*>("postern"), 7);
  // Resumption: a returning MTA skips the certificate and key exchange
  // work. TLS 1.3 and 1.2 tickets sealed with the process's keys (they
  // survive reloads; tls.ticket_key_file shares them between hosts); TLS 1.2
  // session ids in this context's cache (lost at a reload). One TLS 1.3
  // ticket per handshake, full or resumed (an MTA offers one), issued by
  // ClientConnection with its first write (tls_ticket_with_next_write), so
  // that it shares a segment with that reply: num_tickets 0 here stops
  // OpenSSL from sending it alone right after the handshake.
  SSL_CTX_set_timeout(raw, static_cast<long>(tls.session_lifetime.count()));
  SSL_CTX_set_session_cache_mode(raw, SSL_SESS_CACHE_SERVER);
  SSL_CTX_sess_set_cache_size(raw, 20480);
  if (tls.session_tickets) {
    if (tls.ticket_key_file.empty()) {
      RandomTicketKeys::instance().start();
    } else {
      auto keys = std::make_unique<std::vector<TicketKey>>(read_ticket_keys(tls.ticket_key_file));
      if (SSL_CTX_set_ex_data(raw, file_keys_index(), keys.get()) != 1) {
        throw ConfigError("tls: cannot attach the session ticket keys: " + openssl_error());
      }
      keys.release();  // the context's now (file_keys_index frees it)
    }
    SSL_CTX_set_tlsext_ticket_key_evp_cb(raw, ticket_key_callback);
    SSL_CTX_set_session_ticket_cb(raw, nullptr, ticket_opened, nullptr);
  } else {
    SSL_CTX_set_options(raw, SSL_OP_NO_TICKET);  // TLS 1.3: stateful tickets from the cache
  }
  SSL_CTX_set_num_tickets(raw, 0);
  return ctx;
}

void tls_ticket_with_next_write(SSL* ssl) {
  // TLS 1.2 sent its ticket in the handshake; SSL_new_session_ticket is
  // TLS 1.3 only (and refuses otherwise).
  if (SSL_version(ssl) == TLS1_3_VERSION && SSL_new_session_ticket(ssl) != 1) ERR_clear_error();
}

TlsFacts tls_facts(SSL* ssl) {
  TlsFacts f;
  f.active = true;
  f.version = SSL_get_version(ssl);
  if (const SSL_CIPHER* c = SSL_get_current_cipher(ssl)) f.cipher = SSL_CIPHER_get_name(c);
  if (X509* peer = SSL_get1_peer_certificate(ssl)) {
    char subject[512];
    X509_NAME_oneline(X509_get_subject_name(peer), subject, sizeof subject);
    f.peer_subject = subject;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (X509_digest(peer, EVP_sha256(), md, &len) == 1) {
      for (unsigned i = 0; i < len; ++i) f.peer_fingerprint += fmt::format("{:02x}", md[i]);
    }
    X509_free(peer);
  }
  return f;
}

}  // namespace postern
