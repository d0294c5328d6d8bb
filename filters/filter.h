// The filter interface and what a filter sees: the session's facts, the
// envelope, the message, and the changes and symbols it may add. A filter sees
// a message and a session's facts, never a socket (DESIGN "Layout").
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio/awaitable.hpp>

#include "filters/address.h"
#include "filters/auth/auth_types.h"
#include "filters/message.h"
#include "filters/verdict.h"

namespace postern {

struct TlsFacts {
  bool active = false;
  std::string version;           // "TLSv1.3"
  std::string cipher;
  std::string peer_subject;      // client certificate, if presented
  std::string peer_fingerprint;  // SHA-256, hex
};

// Connection-scoped facts; filled by the proxy, read by filters.
struct SessionFacts {
  std::string id;
  std::string listener;
  std::string client_ip;
  unsigned short client_port = 0;
  std::string client_name;  // reverse DNS name, empty when unknown
  std::string helo;
  bool esmtp = false;
  TlsFacts tls;
  std::string auth_user;    // authenticated identity, empty when none
  std::map<std::string, std::string> notes;  // connection-scoped notes of rules
  // State a filter keeps for the connection (a milter's socket), by filter
  // name; dies with the session.
  std::map<std::string, std::shared_ptr<void>> filter_state;
};

// A named rule hit with its score (the rspamd / SpamAssassin model).
struct Symbol {
  std::string name;
  double score = 0;
  std::string description;
};

// Header edits a filter asks for; applied when the message is relayed.
// kInsert is a milter's SMFIR_INSHEADER: before the message's field at
// 0-based position `index` (past the last field: after it).
struct HeaderEdit {
  enum class Kind { kAdd, kPrepend, kChange, kRemove, kInsert } kind;
  std::string name;
  std::string value;   // unfolded value without the leading space
  std::size_t index = 1;  // kChange/kRemove: 1-based occurrence, 0 = all; kInsert: position
};

// Changes accumulated over the stages of one transaction.
struct Changes {
  std::vector<HeaderEdit> headers;
  std::string subject_tag;                         // prefixed to Subject when non-empty
  std::optional<Mailbox> reverse_path;             // new MAIL FROM
  std::vector<Mailbox> add_recipients;
  std::vector<Mailbox> remove_recipients;
  std::optional<std::vector<Mailbox>> redirect;    // replaces all recipients
  // A new body (a milter's SMFIR_REPLBODY): CRLF lines, not dot-stuffed.
  std::optional<std::string> body;
  bool envelope_changed() const {
    return reverse_path || !add_recipients.empty() || !remove_recipients.empty() || redirect;
  }
};

// Transaction-scoped state a filter reads and adds to.
struct TransactionFacts {
  std::string id;
  Mailbox reverse_path;
  std::vector<Mailbox> recipients;        // accepted so far
  std::optional<Mailbox> current_rcpt;    // at kRcpt: the one being decided
  // ESMTP parameters as the client sent them, "KEYWORD[=value]": MAIL's,
  // and at kRcpt the current recipient's (a milter's SMFIC_MAIL / SMFIC_RCPT).
  std::vector<std::string> mail_parameters;
  std::vector<std::string> rcpt_parameters;
  const Message* message = nullptr;       // at kData and kEom
  Changes changes;
  std::vector<Symbol> symbols;
  double score = 0;
  std::map<std::string, std::string> notes;
  AuthResults auth;  // SPF, DKIM and DMARC, as their filters record them

  void add_symbol(Symbol s) {
    score += s.score;
    symbols.push_back(std::move(s));
  }
};

struct FilterContext {
  Stage stage;
  SessionFacts& session;
  TransactionFacts& transaction;  // empty before MAIL
};

class Filter {
 public:
  enum class OnError { kTempfail, kContinue };  // what a failure or time-out means

  virtual ~Filter() = default;
  virtual const std::string& name() const = 0;
  virtual bool wants(Stage stage) const = 0;
  // Never throws for expected failures: returns a verdict (tempfail per policy).
  virtual asio::awaitable<Verdict> run(FilterContext& ctx) = 0;
  // A filter that reads the content while it streams in returns a tap when
  // the content starts (DATA / first BDAT); the proxy adds it to the spool
  // and the filter finds it again at kEom in message->spool().taps().
  virtual std::shared_ptr<SpoolTap> content_tap(const FilterContext&) const { return nullptr; }
};

}  // namespace postern
