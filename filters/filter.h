// The filter interface and what a filter sees: the session's facts, the
// envelope, the message, and the changes and symbols it may add. A filter sees
// a message and a session's facts, never a socket (DESIGN "Layout").
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <asio/awaitable.hpp>

#include "filters/address.h"
#include "filters/esmtp_param.h"
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
  // With reverse_path: the parameters a milter gave it (SMFIR_CHGFROM),
  // validated (esmtp_param.h); each replaces the client's of its keyword.
  std::vector<EsmtpParam> reverse_path_params;
  std::vector<Mailbox> add_recipients;
  // The parameters a milter gave an added recipient (SMFIR_ADDRCPT_PAR), by
  // its forward-path (Mailbox::str()), validated.
  std::vector<std::pair<std::string, std::vector<EsmtpParam>>> add_recipient_params;
  // A filter's parameters refused before they reached the envelope: "why:
  // what", logged when the envelope is sent anew (esmtp-param-dropped).
  std::vector<std::string> dropped_params;
  std::vector<Mailbox> remove_recipients;
  std::optional<std::vector<Mailbox>> redirect;    // replaces all recipients
  // A new body (a milter's SMFIR_REPLBODY): CRLF lines, not dot-stuffed.
  std::optional<std::string> body;
  // The parameters of an added recipient (none when it has none).
  const std::vector<EsmtpParam>& params_of_added(const Mailbox& rcpt) const {
    static const std::vector<EsmtpParam> none;
    for (const auto& [forward_path, params] : add_recipient_params) {
      if (forward_path == rcpt.str()) return params;
    }
    return none;
  }
  // The recipients after these changes: the redirect's, else `recipients`
  // and the added ones, less every removed address; each forward-path once,
  // so that a rule naming a recipient twice (add_rcpt of one already there,
  // a redirect list with repeats) cannot have the MTA deliver it twice. One
  // computation for the relayed envelope (Delivery) and the milter server's
  // modifications.
  std::vector<Mailbox> recipients_after(const std::vector<Mailbox>& recipients) const {
    auto named = [](const std::vector<Mailbox>& list, const Mailbox& m) {
      for (const Mailbox& r : list) {
        if (r.str() == m.str()) return true;
      }
      return false;
    };
    std::vector<Mailbox> out;
    auto take = [&](const std::vector<Mailbox>& from, bool removable) {
      for (const Mailbox& m : from) {
        if (!named(out, m) && !(removable && named(remove_recipients, m))) out.push_back(m);
      }
    };
    if (redirect) {
      take(*redirect, false);
    } else {
      take(recipients, true);
      take(add_recipients, true);
    }
    return out;
  }
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
