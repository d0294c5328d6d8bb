// TLS with OpenSSL 3 through asio::ssl: the server context built from the
// configuration (certificate chain, key, TLS 1.2+ and a sane cipher policy),
// and the facts of an established session for filters, logs and Received.
#pragma once

#include <memory>

#include <asio/ssl.hpp>

#include "filters/filter.h"
#include "proxy/config.h"

namespace postern {

// Null when no certificate is configured. Throws ConfigError naming the file
// when the certificate or key cannot be loaded or do not match.
std::shared_ptr<asio::ssl::context> make_server_tls_context(const Config::Tls& tls);

// Queues this TLS 1.3 session's ticket (one per handshake, full or resumed):
// OpenSSL writes it in front of the next application data, one segment with
// it. Call right before the first write after the handshake (a read first
// would flush it alone).
void tls_ticket_with_next_write(SSL* ssl);

// Protocol, cipher and client certificate of an established TLS session.
TlsFacts tls_facts(SSL* ssl);

}  // namespace postern
