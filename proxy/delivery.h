// A message's fate once its content is checked: relayed upstream (the
// envelope sent anew when filters changed it, DKIM-signed for postern's own
// users, postern's Received on top), discarded, quarantined or refused; then
// recorded once — metrics, the "message" log line, the audit record — from
// one typed Outcome. The session keeps the dialogue and calls this.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <asio/awaitable.hpp>

#include "filters/dkim/dkim_signer.h"
#include "filters/filter.h"
#include "filters/message.h"
#include "filters/spool.h"
#include "filters/verdict.h"
#include "proxy/config.h"
#include "proxy/outcome.h"
#include "proxy/replies.h"
#include "proxy/smtp_command.h"
#include "proxy/upstream.h"

namespace postern {

// The outcome a reply means when no verdict named one: 2xx relayed
// (redirected when a rule replaced the recipients), 4xx tempfailed, else rejected.
Outcome outcome_of(const Reply& reply, bool redirected);

// The reply the client hears for its message, and what it means.
struct Fate {
  Outcome outcome = Outcome::kRejected;
  UpstreamReply reply;
  bool disconnect = false;   // the verdict ends the session
  bool dkim_signed = false;  // postern's DKIM-Signature went with the relayed message
  std::string reason;        // the deciding verdict's reason and rule, "" when none
  std::string rule;
  std::string verdict;       // the deciding verdict's action name, "" when none decided
  // For the audit record, read while the message existed (when an audit log is on).
  std::string message_id;
  std::string from_domain;
};

// A reply postern makes up itself.
UpstreamReply local_reply(const replies::Def& def);

// RFC 5321 §4.4 trace field for the transaction (RFC 3848 "with").
std::string received_header(const std::string& hostname, const SessionFacts& session,
                            const TransactionFacts& transaction);

// One message at its end of data. Everything it is given outlives it.
class Delivery {
 public:
  struct Context {
    const Config& config;
    const SessionFacts& session;
    TransactionFacts& transaction;
    const std::vector<EsmtpParam>& mail_params;  // MAIL's, for an envelope sent anew
    // Each accepted recipient's RCPT parameters, in transaction.recipients' order.
    const std::vector<std::vector<EsmtpParam>>& rcpt_params;
    Upstream& upstream;
    const Spool& spool;
    std::uint64_t size = 0;                              // content octets received
    std::chrono::steady_clock::time_point started;       // MAIL
    std::chrono::steady_clock::time_point content_end;   // the final dot / BDAT LAST
  };

  explicit Delivery(Context ctx) : ctx_(ctx) {}

  // The fate `verdict` gives the message; the upstream's transaction is
  // closed (RSET) afterwards unless its connection is gone.
  asio::awaitable<Fate> deliver(const Message& message, const Verdict& verdict);
  // Refused before any filter saw it (size, bare line ending, NUL, spool):
  // nothing relayed, the upstream's transaction closed.
  asio::awaitable<Fate> refuse(const replies::Def& def, std::string reason = {});

  // Counts, logs and audits the fate: once per message, after the client's reply.
  void record(const Fate& fate) const;

 private:
  asio::awaitable<UpstreamReply> relay(const Message& message, bool& dkim_signed);
  asio::awaitable<UpstreamReply> redo_envelope();
  std::vector<EsmtpParam> sendable(const std::vector<EsmtpParam>& params, bool rcpt, const Mailbox& address) const;
  UpstreamReply quarantine(const Message& message, const Verdict& verdict);
  std::string received() const;

  Context ctx_;
};

// The body that goes on, for the proxy and the milter server alike: a
// milter's replacement (SMFIR_REPLBODY) spooled anew, or the received one;
// nullopt when the replacement cannot be spooled.
struct RelayBody {
  std::unique_ptr<Spool> replaced;
  const Spool* spool = nullptr;
  std::size_t offset = 0;  // where the body starts in *spool
  // A message received without an empty line gets one before its new body.
  void separate(std::string& head) const {
    if (replaced && replaced->size() > 0 && !head.ends_with("\r\n\r\n")) head += "\r\n";
  }
};
std::optional<RelayBody> relay_body(const Config& config, const Changes& changes, const Message& message);

// DKIM-signs a message as it will be relayed: its fields with `changes`
// applied and no trace field of ours (RFC 6376 §5.4), and `body`; logs the
// dkim-sign line. The proxy's relay and the milter server both sign here.
asio::awaitable<DkimSignOutcome> sign_as_relayed(const DkimSigner& signer, const Message& message,
                                                 const Changes& changes, const RelayBody& body,
                                                 std::string_view session, std::string_view id);

// The audit record of a transaction refused at MAIL (no content, no metrics
// of a message: the "mail-refused" log line is the session's).
void audit_mail_refusal(const SessionFacts& session, const TransactionFacts& transaction, const Reply& reply,
                        const Verdict& verdict);

}  // namespace postern
