#include "proxy/delivery.h"

#include <algorithm>
#include <ctime>
#include <iterator>
#include <memory>
#include <string_view>

#include <fmt/format.h>

#include "filters/arc/arc_seal.h"
#include "filters/audit/audit_log.h"
#include "filters/dkim/dkim_signer.h"
#include "filters/text/time_format.h"
#include "proxy/log.h"
#include "proxy/maildir_upstream.h"
#include "proxy/metrics.h"
#include "proxy/verdict_reply.h"

namespace postern {
namespace {

// Formatted once a second per thread (bench/README.md).
std::string rfc5322_date() {
  thread_local std::time_t cached_at = -1;
  thread_local std::string cached;
  std::time_t t = std::time(nullptr);
  if (t != cached_at) {
    cached = format_rfc5322_date(t);
    cached_at = t;
  }
  return cached;
}

long long elapsed_ms(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - since).count();
}

// The MTA's 421 behind a reply: never a 250 for the message.
UpstreamReply closing_reply(UpstreamReply r) {
  if (r.reply.code != 421) r.reply = local_reply(replies::kUpstreamClosing).reply;
  return r;
}

void write_audit(const SessionFacts& session, const TransactionFacts& transaction, Outcome outcome,
                 const UpstreamReply& result, std::string_view stage, const std::string& reason,
                 const std::string& rule, std::uint64_t size, const AuditHeaders& headers, bool dkim_signed) {
  std::shared_ptr<AuditLog> audit = current_audit_log();
  if (!audit) return;
  std::string reply = fmt::format("{} {}", result.reply.code, result.reply.text);
  std::replace(reply.begin(), reply.end(), '\n', ' ');
  AuditEntry entry{session, transaction, std::string(outcome_name(outcome)), std::move(reply),
                   result.local ? "postern" : "upstream", std::string(stage), reason, size,
                   headers.message_id, headers.from_domain, rule, dkim_signed};
  if (!audit->write(audit_json(entry))) {
    log::warning("audit-dropped").kv("session", session.id).kv("id", transaction.id).kv("queued_limit", "full");
  }
}

}  // namespace

Outcome outcome_of(const Reply& reply, bool redirected) {
  if (reply.positive()) return redirected ? Outcome::kRedirected : Outcome::kRelayed;
  return reply.klass() == 4 ? Outcome::kTempfailed : Outcome::kRejected;
}

UpstreamReply local_reply(const replies::Def& def) {
  return UpstreamReply{Reply{def.code, std::string(def.text)}, true};
}

std::string received_header(const std::string& hostname, const SessionFacts& session,
                            const TransactionFacts& transaction) {
  const std::string& address = session.client_ip;
  std::string ip = address.find(':') != std::string::npos ? "IPv6:" + address : address;
  // RFC 3848: ESMTPS when the session is under TLS; the protocol and cipher
  // go in a comment, as Postfix writes them.
  std::string with = session.esmtp ? "ESMTP" : "SMTP";
  if (session.tls.active) with += "S";
  if (!session.auth_user.empty()) with += "A";
  if (session.tls.active) with += fmt::format(" ({} {})", session.tls.version, session.tls.cipher);
  // The name is the verified one (forward-confirmed, Postfix's "unknown"
  // otherwise). Three lines as Postfix writes them, each folded further only when the
  // client made it long (a HELO name or a recipient near the command line
  // limit): no line over 998 octets (RFC 5322 §2.1.1, issue 15).
  constexpr std::size_t kLine = 990;
  std::string header = fold_header_field(
      "Received",
      fmt::format("from {} ({} [{}])", session.helo, session.client_name.empty() ? "unknown" : session.client_name, ip),
      kLine);
  header.reserve(header.size() + 256);
  // A continuation line: the folded text without its ": ", after a tab.
  auto continued = [&header](std::string_view text) {
    header.append("\t").append(std::string_view(fold_header_field("", text, kLine)).substr(2));
  };
  continued(fmt::format("by {} (postern) with {} id {}", hostname, with, transaction.id));
  if (transaction.recipients.size() == 1) {
    continued(fmt::format("for <{}>; {}", transaction.recipients[0].str(), rfc5322_date()));
  } else {
    continued(fmt::format("; {}", rfc5322_date()));
  }
  return header;
}

std::string Delivery::received() const {
  return received_header(ctx_.config.server.hostname, ctx_.session, ctx_.transaction);
}

asio::awaitable<Fate> Delivery::deliver(const Message& message, const Verdict& verdict) {
  Fate fate;
  fate.reason = verdict.reason;
  fate.rule = verdict.rule;
  if (verdict.decisive()) fate.verdict = action_name(verdict.action);
  bool named = false;  // the verdict names the outcome; else the reply does
  switch (verdict.action) {
    case Verdict::Action::kContinue:
    case Verdict::Action::kAccept:
      fate.reply = co_await relay(message, fate.dkim_signed);
      break;
    case Verdict::Action::kDiscard:
      // The client hears 250 and the message goes nowhere, by policy.
      fate.reply = UpstreamReply{Reply{250, "2.0.0 Ok: discarded"}, true};
      fate.outcome = Outcome::kDiscarded;
      named = true;
      break;
    case Verdict::Action::kQuarantine:
      fate.reply = quarantine(message, verdict);
      if (fate.reply.reply.positive()) {
        fate.outcome = Outcome::kQuarantined;
        named = true;
      }
      break;
    default:  // reject, tempfail, disconnect
      fate.reply = UpstreamReply{verdict_reply(verdict, Stage::kEom), true};
      fate.disconnect = verdict.action == Verdict::Action::kDisconnect;
      break;
  }
  if (!named && fate.reply.reply.positive() && ctx_.transaction.recipients.empty()) {
    fate.outcome = Outcome::kDiscarded;  // the filters removed every recipient
    named = true;
  }
  if (!named) fate.outcome = outcome_of(fate.reply.reply, ctx_.transaction.changes.redirect.has_value());
  if (current_audit_log()) {
    AuditHeaders headers = audit_message_headers(message);
    fate.message_id = std::move(headers.message_id);
    fate.from_domain = std::move(headers.from_domain);
  }
  if (!fate.reply.connection_lost) co_await ctx_.upstream.reset();
  co_return fate;
}

asio::awaitable<Fate> Delivery::refuse(const replies::Def& def, std::string reason) {
  Fate fate;
  fate.reply = local_reply(def);
  fate.outcome = outcome_of(fate.reply.reply, false);
  fate.reason = std::move(reason);
  co_await ctx_.upstream.reset();
  co_return fate;
}

void Delivery::record(const Fate& fate) const {
  const SessionFacts& s = ctx_.session;
  const TransactionFacts& t = ctx_.transaction;
  metrics::message_done(fate.outcome, ctx_.size, metrics::seconds_since(ctx_.content_end),
                        metrics::seconds_since(ctx_.started));
  // The line's values are built only when info lines are written
  // (bench/README.md).
  if (log::enabled(log::Level::kInfo)) {
    std::string to;
    for (const Mailbox& m : t.recipients) {
      if (!to.empty()) to.push_back(',');
      to.append("<").append(m.str()).append(">");
    }
    std::string symbols;
    for (const Symbol& sym : t.symbols) {
      if (!symbols.empty()) symbols.push_back(',');
      symbols.append(sym.name).append(fmt::format("({:.2f})", sym.score));
    }
    const UpstreamReply& r = fate.reply;
    log::Line line = log::info("message");
    line.kv("session", s.id).kv("id", t.id)
        .kv("client", s.client_ip).kv("from", "<" + t.reverse_path.str() + ">").kv("to", to)
        .kv("size", ctx_.size).kv("result", outcome_name(fate.outcome)).kv("by", r.local ? "postern" : "upstream")
        .kv("upstream", fmt::format("{} {}", r.reply.code, r.reply.first_line()));
    if (!symbols.empty()) line.kv("score", fmt::format("{:.2f}", t.score)).kv("symbols", symbols);
    if (!fate.verdict.empty()) line.kv("verdict", fate.verdict).kv("reason", fate.reason);
    line.kv("duration_ms", elapsed_ms(ctx_.started));
  }
  write_audit(s, t, fate.outcome, fate.reply, "eom", fate.reason, fate.rule, ctx_.size,
              AuditHeaders{fate.message_id, fate.from_domain}, fate.dkim_signed);
}

void audit_mail_refusal(const SessionFacts& session, const TransactionFacts& transaction, const Reply& reply,
                        const Verdict& verdict) {
  write_audit(session, transaction, outcome_of(reply, false), UpstreamReply{reply, true}, "mail", verdict.reason,
              verdict.rule, 0, AuditHeaders{}, false);
}

// Relays the message with the filters' changes: a changed envelope is sent
// again (RSET, MAIL, RCPT...), a changed header section is rendered anew.
asio::awaitable<UpstreamReply> Delivery::relay(const Message& message, bool& dkim_signed) {
  const Changes& changes = ctx_.transaction.changes;
  if (changes.envelope_changed()) {
    UpstreamReply redo = co_await redo_envelope();
    // Refused, or nobody left to relay to: the MTA's transaction (still
    // open for the old recipients when none are left) takes no content.
    if (!redo.reply.positive() || ctx_.transaction.recipients.empty()) co_return redo;
  }
  const Config& config = ctx_.config;
  const DkimSigner* signer = config.auth.dkim.signer.get();
  const bool sign = signer && signer->wants(ctx_.session.client_ip, ctx_.session.auth_user);
  // A milter's new body (SMFIR_REPLBODY) is relayed, and signed, instead of the received one.
  std::optional<RelayBody> chosen = relay_body(config, changes, message);
  if (!chosen) co_return local_reply(replies::kSpoolFailed);
  const Spool& body = *chosen->spool;
  const std::size_t body_offset = chosen->offset;
  const bool as_received = !sign && !chosen->replaced && changes.headers.empty() && changes.subject_tag.empty() &&
                           !message.body_would_fold();
  std::string head = as_received ? received() : render_header_block(message, changes, received());
  chosen->separate(head);
  const std::size_t offset = as_received ? 0 : body_offset;
  if (sign) {
    // The DKIM-Signature field goes above our Received.
    DkimSignOutcome signed_ =
        co_await sign_as_relayed(*signer, message, changes, *chosen, ctx_.session.id, ctx_.transaction.id);
    if (signed_.status == DkimSignOutcome::Status::kError && signer->options().tempfail_on_error) {
      co_return local_reply(replies::kDkimSignFailed);
    }
    head = signed_.field + head;
    dkim_signed = signed_.status == DkimSignOutcome::Status::kSigned;
  }
  if (const ArcSealer* sealer = config.auth.arc.sealer.get()) {
    // ARC (filters/arc/arc_seal.h): the next hop can believe our A-R.
    ArcSealOutcome sealed = co_await sealer->seal_relayed(message, ctx_.transaction, body, body_offset);
    log::Line(sealed.status == ArcSealOutcome::Status::kError ? log::Level::kWarning
              : sealed.routine                                 ? log::Level::kDebug
                                                               : log::Level::kInfo, "arc-seal")
        .kv("session", ctx_.session.id).kv("id", ctx_.transaction.id).kv("domain", sealed.domain)
        .kv("i", sealed.instance).kv("cv", sealed.cv)
        .kv("result", sealed.status == ArcSealOutcome::Status::kSealed ? "sealed"
                      : sealed.status == ArcSealOutcome::Status::kError ? "error" : "skipped")
        .kv("reason", sealed.reason);
    head = sealed.fields + head;
  }
  UpstreamReply r = co_await ctx_.upstream.data(head, body, offset, ctx_.transaction.reverse_path);
  if (r.unsent && !changes.envelope_changed()) {
    // DATA went ahead (upstream.early_data) and the MTA gave up waiting for
    // the content: none of it reached the MTA, the message goes once more
    // over a new connection rather than tempfail a slow client every time.
    log::info("upstream-data-retry").kv("session", ctx_.session.id).kv("id", ctx_.transaction.id)
        .kv("reply", fmt::format("{} {}", r.reply.code, r.reply.first_line()));
    UpstreamReply redo = co_await redo_envelope();
    if (!redo.reply.positive() || ctx_.transaction.recipients.empty()) co_return redo;
    r = co_await ctx_.upstream.data(head, body, offset, ctx_.transaction.reverse_path);
  }
  if (r.reply.positive()) {
    metrics::registry().message_relayed_bytes.inc(head.size() + body.size() - std::min(offset, body.size()));
  }
  co_return r;
}

// A filter's ESMTP parameters (validated in filters/esmtp_param.cpp) that may
// go on MAIL (`rcpt` false) or RCPT to this MTA: a keyword postern knows, on
// its command, its extension offered in the MTA's EHLO, a value the client's
// own checks accept. Every other one is dropped with a log line.
std::vector<EsmtpParam> Delivery::sendable(const std::vector<EsmtpParam>& params, bool rcpt,
                                           const Mailbox& address) const {
  std::vector<EsmtpParam> out;
  const Upstream& upstream = ctx_.upstream;
  const EsmtpOffer offer{true, true, true, ctx_.config.limits.message_size};
  for (const EsmtpParam& p : params) {
    const std::string_view extension = esmtp_param_extension(p.keyword);
    std::string why;
    if (extension.empty()) why = "unknown keyword";
    else if (esmtp_rcpt_param(p.keyword) != rcpt) why = rcpt ? "not a RCPT parameter" : "not a MAIL parameter";
    else if (!upstream.offers(extension)) why = fmt::format("the MTA does not offer {}", extension);
    else if ((rcpt ? check_rcpt_param(p, offer) : check_mail_param(p, offer)) != nullptr) why = "invalid value";
    if (why.empty()) {
      out.push_back(p);
      continue;
    }
    log::warning("esmtp-param-dropped").kv("session", ctx_.session.id).kv("id", ctx_.transaction.id)
        .kv(rcpt ? "to" : "from", "<" + address.str() + ">").kv("param", p.text()).kv("reason", why);
  }
  return out;
}

// The envelope after the filters' changes, mirrored to the upstream anew. A
// recipient the MTA refuses now cannot be refused to the client one by one
// any more, so any refusal tempfails the whole message: nothing is lost.
// The client's own MAIL and RCPT parameters go again as it sent them; a
// milter's (SMFIR_CHGFROM, SMFIR_ADDRCPT_PAR) go where sendable() lets them.
asio::awaitable<UpstreamReply> Delivery::redo_envelope() {
  TransactionFacts& t = ctx_.transaction;
  const Changes& c = t.changes;
  for (const std::string& dropped : c.dropped_params) {
    log::warning("esmtp-param-dropped").kv("session", ctx_.session.id).kv("id", t.id).kv("reason", dropped);
  }
  std::vector<EsmtpParam> mail_params = ctx_.mail_params;
  if (c.reverse_path) {
    t.reverse_path = *c.reverse_path;
    // A milter's parameter replaces the client's of the same keyword (Sendmail's smfi_chgfrom).
    for (EsmtpParam& p : sendable(c.reverse_path_params, false, t.reverse_path)) {
      auto same = std::find_if(mail_params.begin(), mail_params.end(),
                               [&](const EsmtpParam& q) { return q.keyword == p.keyword; });
      if (same != mail_params.end()) *same = std::move(p);
      else mail_params.push_back(std::move(p));
    }
  }
  struct Rcpt {
    Mailbox mailbox;
    std::vector<EsmtpParam> params;
  };
  // A recipient the client gave keeps its parameters; an added one has its
  // filter's; a redirect's have none.
  auto params_of = [&](const Mailbox& m) -> std::vector<EsmtpParam> {
    if (c.redirect) return {};
    for (std::size_t i = 0; i < t.recipients.size() && i < ctx_.rcpt_params.size(); ++i) {
      if (t.recipients[i].str() == m.str()) return ctx_.rcpt_params[i];
    }
    return sendable(c.params_of_added(m), true, m);
  };
  std::vector<Rcpt> rcpts;
  for (Mailbox& m : c.recipients_after(t.recipients)) {
    std::vector<EsmtpParam> params = params_of(m);
    rcpts.push_back({std::move(m), std::move(params)});
  }
  t.recipients.clear();
  for (const Rcpt& r : rcpts) t.recipients.push_back(r.mailbox);
  if (rcpts.empty()) co_return UpstreamReply{Reply{250, "2.0.0 Ok: no recipients left after filtering"}, true};
  Upstream& upstream = ctx_.upstream;
  co_await upstream.reset();
  if (log::enabled(log::Level::kInfo)) {  // what goes to the MTA (parameters it does not offer stay behind)
    std::string to;
    for (const Rcpt& r : rcpts) {
      if (!to.empty()) to.push_back(',');
      to += "<" + r.mailbox.str() + ">";
      if (!r.params.empty()) to += " " + esmtp_params_text(r.params);
    }
    log::info("envelope-redo").kv("session", ctx_.session.id).kv("id", t.id)
        .kv("from", "<" + t.reverse_path.str() + ">").kv("mail_params", esmtp_params_text(mail_params)).kv("to", to);
  }
  UpstreamReply r = co_await upstream.mail(t.reverse_path, mail_params, false);
  if (!r.reply.positive() || r.closing) {
    if (r.reply.klass() == 5) r.reply.code = 451;  // the client was already told 250 to MAIL
    if (r.closing) r = closing_reply(std::move(r));  // MAIL's 250, then the MTA's 421
    co_return r;
  }
  for (const Rcpt& rcpt : rcpts) {
    UpstreamReply rr = co_await upstream.rcpt(rcpt.mailbox, rcpt.params, false);
    if (rr.closing) co_return closing_reply(std::move(rr));
    if (!rr.reply.positive()) {
      log::warning("redo-rcpt-refused").kv("session", ctx_.session.id).kv("to", "<" + rcpt.mailbox.str() + ">")
          .kv("reply", fmt::format("{} {}", rr.reply.code, rr.reply.first_line()));
      co_return UpstreamReply{Reply{451, "4.3.0 Error: changed recipient refused upstream, try again later"}, true,
                              rr.connection_lost};
    }
  }
  co_return UpstreamReply{Reply{250, "2.0.0 Ok"}, true};
}

namespace {

// The fields by which the quarantine records a message's envelope and reason.
constexpr std::string_view kQuarantineFields[] = {"X-Postern-Quarantine", "X-Postern-Envelope-From",
                                                  "X-Postern-Envelope-To"};

// The header edits of the quarantine copy: the filters' changes, less any
// field of kQuarantineFields they add, and every such field of the content
// removed, so that the record on top is the only one (a client's forged
// X-Postern-Envelope-To would otherwise stand beside it for whoever
// releases the message).
Changes quarantine_header_changes(const Changes& changes) {
  Changes out;
  out.subject_tag = changes.subject_tag;
  auto ours = [](std::string_view name) {
    return std::any_of(std::begin(kQuarantineFields), std::end(kQuarantineFields),
                       [&](std::string_view f) { return header_name_equals(f, name); });
  };
  for (const HeaderEdit& e : changes.headers) {
    if (!ours(e.name)) out.headers.push_back(e);
  }
  for (std::string_view f : kQuarantineFields) {
    out.headers.push_back(HeaderEdit{HeaderEdit::Kind::kRemove, std::string(f), {}, 0});
  }
  return out;
}

}  // namespace

// Writes the message to the quarantine Maildir with its reason and the
// envelope it would have been relayed with: the filters' new sender and
// recipients (as redo_envelope() sends them), only recipients the MTA took.
UpstreamReply Delivery::quarantine(const Message& message, const Verdict& verdict) {
  TransactionFacts& t = ctx_.transaction;
  const Changes& c = t.changes;
  if (c.reverse_path) t.reverse_path = *c.reverse_path;
  if (c.envelope_changed()) t.recipients = c.recipients_after(t.recipients);
  // Folded like every field postern writes: the reason may carry what the
  // client sent (issue 15).
  std::string head = fold_header_field(
      "X-Postern-Quarantine",
      fmt::format("session={}; client={}; reason={}", ctx_.session.id, ctx_.session.client_ip,
                  log::sanitize(verdict.reason.empty() ? "policy" : verdict.reason)));
  head += fold_header_field("X-Postern-Envelope-From", fmt::format("<{}>", t.reverse_path.str()));
  for (const Mailbox& m : t.recipients) head += fold_header_field("X-Postern-Envelope-To", fmt::format("<{}>", m.str()));
  head += render_header_block(message, quarantine_header_changes(c), received());
  // The copy is what would have been relayed: a milter's new body included.
  std::optional<RelayBody> body = relay_body(ctx_.config, t.changes, message);
  if (!body) return local_reply(replies::kSpoolFailed);
  body->separate(head);
  std::string file = deliver_to_maildir(ctx_.config.quarantine.dir, ctx_.config.server.hostname, head, *body->spool,
                                        body->offset);
  if (file.empty()) return local_reply(replies::kSpoolFailed);
  return UpstreamReply{Reply{250, "2.0.0 Ok: quarantined as " + file}, true};
}

std::optional<RelayBody> relay_body(const Config& config, const Changes& changes, const Message& message) {
  RelayBody b;
  if (const auto& replacement = changes.body) {
    b.replaced = std::make_unique<Spool>(config.data.spool_memory, config.data.spool_dir);
    if (!b.replaced->append(*replacement) || !b.replaced->finish()) return std::nullopt;
    b.spool = b.replaced.get();
    return b;
  }
  b.spool = &message.spool();
  b.offset = message.body_offset();
  return b;
}

asio::awaitable<DkimSignOutcome> sign_as_relayed(const DkimSigner& signer, const Message& message,
                                                 const Changes& changes, const RelayBody& body,
                                                 std::string_view session, std::string_view id) {
  std::string fields = render_header_block(message, changes, "");
  body.separate(fields);
  DkimSignOutcome signed_ = co_await signer.sign_async(fields, *body.spool, body.offset);
  log::Line line(signed_.status == DkimSignOutcome::Status::kError ? log::Level::kWarning : log::Level::kInfo,
                 "dkim-sign");
  line.kv("session", session).kv("id", id).kv("domain", signed_.domain).kv("selector", signed_.selector)
      .kv("result", signed_.status == DkimSignOutcome::Status::kSigned ? "signed"
                    : signed_.status == DkimSignOutcome::Status::kError ? "error" : "skipped");
  if (!signed_.reason.empty()) line.kv("reason", signed_.reason);
  co_return signed_;
}

}  // namespace postern
