// The one model of a client session: what the connection, the dialogue and
// the filters established about it. Filled by the proxy, read by filters,
// Lua (ctx.client), XCLIENT/XFORWARD and the Received field alike, so a fact
// is a typed field, never text kept in notes and parsed back. STARTTLS
// replaces the whole struct with the connection's own facts (RFC 3207 §4.2).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace postern {

struct TlsFacts {
  bool active = false;
  std::string version;           // "TLSv1.3"
  std::string cipher;
  std::string peer_subject;      // client certificate, if presented
  std::string peer_fingerprint;  // SHA-256, hex
};

// A named rule hit with its score (the rspamd / SpamAssassin model).
struct Symbol {
  std::string name;
  double score = 0;
  std::string description;
};

// Connection-scoped facts.
struct SessionFacts {
  std::string id;           // the session's id, on every log line of it and its upstream
  std::string listener;
  std::string client_ip;    // the real client's (the PROXY header's, behind a load balancer)
  unsigned short client_port = 0;
  std::string client_name;  // verified (forward-confirmed) reverse DNS name, empty when none
  std::string helo;         // as accepted (printable, bounded)
  bool esmtp = false;
  TlsFacts tls;
  std::string auth_user;    // authenticated identity, empty when none
  // Symbols rules added before MAIL (connect, helo): each transaction of
  // the session takes them at MAIL; one per name.
  std::vector<Symbol> symbols;
  // The filter whose accept verdict before MAIL holds for the whole
  // session (the chain skips the rest); empty when none.
  std::string accepted_by;
  std::map<std::string, std::string> notes;  // connection-scoped notes of rules
  // State a filter keeps for the connection (a milter's socket), by filter
  // name; dies with the session.
  std::map<std::string, std::shared_ptr<void>> filter_state;
};

}  // namespace postern
