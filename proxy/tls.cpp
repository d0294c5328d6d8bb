// Server TLS context and session facts; see tls.h.
#include "proxy/tls.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

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
  return ctx;
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
