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
#include "filters/message.h"
#include "filters/session_facts.h"
#include "filters/typed_slots.h"
#include "filters/verdict.h"

namespace postern {

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
  std::string accepted_by;              // the filter whose accept verdict holds for this transaction
  bool session_symbols_taken = false;   // SessionFacts::symbols joined `symbols` (at MAIL)
  // What specific checks record for later stages and the audit, by type:
  // SPF, DKIM and DMARC their AuthResults (filters/auth/auth_results.h).
  TypedSlots results;

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
