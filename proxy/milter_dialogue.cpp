// The milter server's dialogue with one MTA connection; see milter_dialogue.h.
#include "proxy/milter_dialogue.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>

#include <fmt/format.h>

#include "filters/address.h"
#include "filters/audit/audit_log.h"
#include "filters/dkim/dkim_signer.h"
#include "filters/message.h"
#include "filters/net/ip_address.h"
#include "proxy/delivery.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/milter_changes.h"
#include "proxy/replies.h"
#include "proxy/verdict_reply.h"

namespace postern {
namespace {

namespace m = milter;

// The actions postern may need (SMFIF_*): header fields, recipients, the
// sender, the body, quarantine. Never SETSYMLIST: the MTA's own macro lists
// (Postfix's milter_*_macros) decide what it sends.
constexpr std::uint32_t kWantedActions = m::action::kAddHdrs | m::action::kChgBody | m::action::kAddRcpt |
                                         m::action::kDelRcpt | m::action::kChgHdrs | m::action::kQuarantine |
                                         m::action::kChgFrom;
// The steps postern skips or does not answer, when the MTA offers to: DATA
// and unknown commands (no stage of postern's), no reply to each header,
// the end of the header and each body chunk (they only feed the spool); the
// header value as sent, leading space included, so DKIM verifies the bytes
// the client wrote.
constexpr std::uint32_t kWantedSteps = m::step::kNoData | m::step::kNoUnknown | m::step::kNrHdr | m::step::kNrEoh |
                                       m::step::kNrBody | m::step::kHdrLeadSpc;
// Macros kept per connection; Postfix sends a few dozen at most. A name
// longer than any Sendmail or Postfix macro's ("{cert_fingerprint}") is not
// kept: 256 names of up to a packet (1 MiB) each would hold 256 MiB.
constexpr std::size_t kMaxMacros = 256;
constexpr std::size_t kMaxMacroName = 64;

std::string next_id() {
  static std::atomic<unsigned long> counter{0};
  static const unsigned long start = static_cast<unsigned long>(std::time(nullptr));
  return fmt::format("M{:08X}{:05X}", start & 0xffffffff, ++counter & 0xfffff);
}

long long elapsed_ms(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - since).count();
}

// Header field names the MTA sends must be field names (RFC 5322 §3.6.8):
// anything else is not a header Postfix would have parsed.
bool valid_field_name(std::string_view name) {
  if (name.empty() || name.size() > 998) return false;
  for (unsigned char c : name) {
    if (c <= 32 || c >= 127 || c == ':') return false;
  }
  return true;
}

// A header value as the MTA sends it: its line breaks (LF or CRLF) are
// folds, each followed by WSP (RFC 5322 §2.2.3). Any other would end the
// field (two in a row: the header section) in postern's copy where the MTA
// holds one field: the two would judge different messages.
bool valid_field_value(std::string_view value) {
  for (std::size_t i = value.find('\n'); i != std::string_view::npos; i = value.find('\n', i + 1)) {
    if (i + 1 == value.size() || (value[i + 1] != ' ' && value[i + 1] != '\t')) return false;
  }
  return true;
}

// A header value as the MTA sends it (folds as LF or CRLF, then WSP) as the
// octets of the field: folds become CRLF.
std::string field_value_octets(std::string_view value) {
  std::string out;
  out.reserve(value.size() + 8);
  for (std::size_t i = 0; i < value.size(); ++i) {
    if (value[i] == '\r' && i + 1 < value.size() && value[i + 1] == '\n') continue;
    if (value[i] == '\n') out.push_back('\r');
    out.push_back(value[i]);
  }
  return out;
}

const char* command_name(char c) {
  switch (c) {
    case m::cmd::kAbort: return "abort";
    case m::cmd::kBody: return "body";
    case m::cmd::kConnect: return "connect";
    case m::cmd::kMacro: return "macro";
    case m::cmd::kBodyEob: return "eom";
    case m::cmd::kHelo: return "helo";
    case m::cmd::kQuitNc: return "quit_nc";
    case m::cmd::kHeader: return "header";
    case m::cmd::kMail: return "mail";
    case m::cmd::kEoh: return "eoh";
    case m::cmd::kOptneg: return "optneg";
    case m::cmd::kQuit: return "quit";
    case m::cmd::kRcpt: return "rcpt";
    case m::cmd::kData: return "data";
    case m::cmd::kUnknown: return "unknown";
  }
  return "?";
}

}  // namespace

MilterDialogue::MilterDialogue(std::shared_ptr<const Config> config, std::shared_ptr<const FilterChain> chain,
                               std::shared_ptr<const FilterChain> submission_chain, std::string listener)
    : config_(std::move(config)),
      chain_(std::move(chain)),
      submission_chain_(std::move(submission_chain)),
      listener_(std::move(listener)),
      id_(next_id()) {
  reset_connection();
}

MilterDialogue::~MilterDialogue() = default;

void MilterDialogue::reset_connection() {
  facts_ = SessionFacts{};
  facts_.id = id_;
  facts_.listener = listener_;
  connect_facts_ = facts_;
  macros_.clear();
  connected_ = false;
  refused_.reset();
}

// The message's own macros (queue id, envelope) must not name the next one.
void MilterDialogue::forget_transaction_macros() {
  std::erase_if(macros_, [](const auto& kv) {
    return kv.first == "i" || kv.first.starts_with("{mail_") || kv.first.starts_with("{rcpt_");
  });
}

void MilterDialogue::reset_transaction(bool forget_macros) {
  if (txn_active_) metrics::transaction_done(txn_);
  if (forget_macros) forget_transaction_macros();
  txn_active_ = false;
  txn_ = TransactionFacts{};
  pending_.reset();
  spool_.reset();
  in_body_ = too_big_ = spool_failed_ = false;
}

asio::awaitable<MilterDialogue::Next> MilterDialogue::handle(const m::Packet& packet, std::string& out) {
  const m::Command c = m::decode_command(packet);
  if (!c.valid || (!negotiated_ && c.command != m::cmd::kOptneg)) {
    log::warning("milter-server-garbage").kv("session", id_).kv("listener", listener_)
        .kv("command", command_name(packet.command))
        .kv("error", c.valid ? "command before option negotiation" : "malformed or unknown command")
        .kv("action", "closed");
    co_return Next::kClose;
  }
  switch (c.command) {
    case m::cmd::kOptneg:
      co_return co_await negotiate(c, out);
    case m::cmd::kMacro:
      if (c.macro_stage == m::cmd::kConnect && connected_) {
        // A new client without QUIT_NC first (Sendmail): the old one is
        // over now, these macros are the new one's.
        co_await finish();
        reset_connection();
      }
      take_macros(c);
      co_return Next::kMore;
    case m::cmd::kConnect:
      co_await on_connect(c, out);
      co_return Next::kMore;
    case m::cmd::kHelo:
      co_await on_helo(c, out);
      co_return Next::kMore;
    case m::cmd::kMail:
      co_return co_await on_mail(c, out);
    case m::cmd::kRcpt:
      co_return co_await on_rcpt(c, out);
    case m::cmd::kData:
      proceed(m::step::kNrData, out);
      co_return Next::kMore;
    case m::cmd::kUnknown:
      proceed(m::step::kNrUnkn, out);
      co_return Next::kMore;
    case m::cmd::kHeader:
      if (!on_header(c)) co_return Next::kClose;
      proceed(m::step::kNrHdr, out);
      co_return Next::kMore;
    case m::cmd::kEoh:
      if (txn_active_) {
        if (!spool_) start_content();
        if (!in_body_) append_content("\r\n");
        in_body_ = true;
      }
      proceed(m::step::kNrEoh, out);
      co_return Next::kMore;
    case m::cmd::kBody:
      if (txn_active_) {
        if (!spool_) start_content();
        if (!in_body_) append_content("\r\n");
        in_body_ = true;
        append_content(c.body);
      }
      proceed(m::step::kNrBody, out);
      co_return Next::kMore;
    case m::cmd::kBodyEob:
      co_await end_of_message(c.body, out);
      co_return Next::kMore;
    case m::cmd::kAbort:  // the MTA gave up on this message (RSET, a refusal, a lost client)
      reset_transaction();
      co_return Next::kMore;
    case m::cmd::kQuitNc:  // the connection is kept for the MTA's next client (Postfix's reuse)
      co_await finish();
      reset_connection();
      co_return Next::kMore;
    case m::cmd::kQuit:
      co_return Next::kClose;
  }
  co_return Next::kClose;
}

// SMFIC_OPTNEG: version 2 to 6; postern asks for what it needs of what the MTA offers.
asio::awaitable<MilterDialogue::Next> MilterDialogue::negotiate(const m::Command& c, std::string& out) {
  if (negotiated_ || c.optneg.version < 2) {
    log::warning("milter-server-garbage").kv("session", id_).kv("listener", listener_)
        .kv("error", negotiated_ ? "a second option negotiation" : fmt::format("protocol version {}", c.optneg.version))
        .kv("action", "closed");
    co_return Next::kClose;
  }
  negotiated_ = true;
  const std::uint32_t version = std::min<std::uint32_t>(c.optneg.version, m::kVersion);
  actions_ = c.optneg.actions & kWantedActions;
  steps_ = version >= 6 ? c.optneg.steps & kWantedSteps : c.optneg.steps & (m::step::kNoData | m::step::kNoUnknown);
  out += m::encode_optneg(version, actions_, steps_);
  log::debug("milter-server-negotiated").kv("session", id_).kv("version", version)
      .kv("actions", fmt::format("{:#x}", actions_)).kv("steps", fmt::format("{:#x}", steps_));
  co_return Next::kMore;
}

// Postfix's macros (docs/milter.md "Macros"): each is a fact as soon as it arrives.
void MilterDialogue::take_macros(const m::Command& c) {
  // STARTTLS: Postfix says nothing but the TLS macros of the HELO that
  // follows the handshake (milter_helo_macros), or of the MAIL where the
  // client sends no HELO again and milter_mail_macros lists them
  // (docs/milter.md). What was learned in plaintext (HELO, its notes and
  // symbols, a session-wide accept, AUTH, the macros) is forgotten as a
  // proxied session forgets it (RFC 3207 §4.2, Session::forget_plaintext):
  // a command injected before the handshake decides nothing after it.
  const bool tls_starts = (c.macro_stage == m::cmd::kHelo || c.macro_stage == m::cmd::kMail) && !facts_.tls.active &&
                          std::any_of(c.macros.begin(), c.macros.end(), [](const auto& kv) {
                            return kv.first == "{tls_version}" && !kv.second.empty();
                          });
  if (tls_starts) {
    reset_transaction();
    facts_ = connect_facts_;
    macros_.clear();
  }
  // The macros of a MAIL open a new transaction, also after a MAIL that
  // had no ABORT: the last one's queue id and envelope must not name it.
  if (c.macro_stage == m::cmd::kMail) {
    forget_transaction_macros();
    mail_macros_ = true;
  }
  for (const auto& [name, value] : c.macros) {
    if (name.size() > kMaxMacroName) continue;
    if (macros_.size() >= kMaxMacros && !macros_.count(name)) continue;
    macros_[name] = value.substr(0, 1024);
  }
  auto get = [&](const char* name) -> const std::string* {
    auto it = macros_.find(name);
    return it == macros_.end() ? nullptr : &it->second;
  };
  if (const std::string* v = get("{tls_version}"); v && !v->empty()) {
    facts_.tls.active = true;
    facts_.tls.version = *v;
  }
  if (const std::string* v = get("{cipher}")) facts_.tls.cipher = *v;
  if (const std::string* v = get("{cert_subject}")) facts_.tls.peer_subject = *v;
  if (const std::string* v = get("{auth_authen}")) facts_.auth_user = *v;
  // Postfix's queue id: at MAIL only when the queue file is open already
  // (smtpd_delay_open_until_valid_rcpt = no), at RCPT, DATA and end of
  // message otherwise. The transaction takes it as its id when it comes.
  if (const std::string* v = get("i"); v && !v->empty() && txn_active_) txn_.id = log::sanitize(*v);
}

void MilterDialogue::proceed(std::uint32_t no_reply_step, std::string& out) const {
  if (!(steps_ & no_reply_step)) out += m::encode(m::reply::kContinue, "");
}

// A refusal as SMFIR_REPLYCODE: the MTA says it to its client.
void MilterDialogue::refuse(const Verdict& v, Stage stage, std::string& out) {
  Reply r = verdict_reply(v, stage);
  if (stage == Stage::kConnect && v.action != Verdict::Action::kReject) r.code = 421;
  out += m::encode_replycode(r.code, r.text);
}

const FilterChain* MilterDialogue::active_chain() const {
  const bool submission =
      config_->milter_server.policy == Config::Listener::Policy::kSubmission || !facts_.auth_user.empty();
  return (submission && submission_chain_ ? submission_chain_ : chain_).get();
}

asio::awaitable<Verdict> MilterDialogue::run_filters(Stage stage) {
  const FilterChain* chain = active_chain();
  if (!chain || chain->empty()) co_return Verdict::proceed();
  FilterContext ctx{stage, facts_, txn_};
  auto start = std::chrono::steady_clock::now();
  Verdict v = co_await chain->run(ctx);
  if (stage != Stage::kClose) metrics::filter_time(stage, metrics::seconds_since(start));
  co_return v;
}

static bool refuses(const Verdict& v) {
  return v.action == Verdict::Action::kReject || v.action == Verdict::Action::kTempfail ||
         v.action == Verdict::Action::kDisconnect;
}

// SMFIC_CONNECT: the client's address and verified name (Postfix sends
// "unknown" or "[address]" when it has none). The MTA's macros fill in what
// an unknown family leaves out ({client_addr}, {client_port}).
asio::awaitable<void> MilterDialogue::on_connect(const m::Command& c, std::string& out) {
  if (connected_) {
    co_await finish();  // a new client without QUIT_NC first (Sendmail): the old one is over
    reset_connection();
  }
  connected_ = true;
  std::string address = c.address;
  facts_.client_port = c.port;
  if (c.family == 'U' || c.family == 'L') {
    address.clear();
    if (auto it = macros_.find("{client_addr}"); it != macros_.end()) address = it->second;
    if (auto it = macros_.find("{client_port}"); it != macros_.end()) {
      facts_.client_port = static_cast<unsigned short>(std::strtoul(it->second.c_str(), nullptr, 10));
    }
  }
  // SPF, DNSBLs, trusted_networks and the audit key on this text: it is an
  // IP address in canonical form ("::ffff:192.0.2.1" is 192.0.2.1), or none.
  facts_.client_ip = canonical_ip(address);
  if (facts_.client_ip.empty() && !address.empty()) {
    log::warning("milter-server-garbage").kv("session", id_).kv("command", "connect")
        .kv("error", "not an IP address: " + log::sanitize(address)).kv("action", "client address unknown");
  }
  if (c.hostname != "unknown" && !c.hostname.starts_with("[")) facts_.client_name = c.hostname.substr(0, 255);
  log::info("milter-connect").kv("session", id_).kv("listener", listener_).kv("client", facts_.client_ip)
      .kv("name", log::sanitize(facts_.client_name.empty() ? "unknown" : facts_.client_name));
  Verdict v = co_await run_filters(Stage::kConnect);
  connect_facts_ = facts_;
  if (refuses(v)) {
    refused_ = v;
    metrics::session_refused(listener_, metrics::Refusal::kFilter);
    log::info("milter-refused").kv("session", id_).kv("stage", "connect").kv("client", facts_.client_ip)
        .kv("reason", v.reason);
    refuse(v, Stage::kConnect, out);
    co_return;
  }
  proceed(m::step::kNrConn, out);
}

asio::awaitable<void> MilterDialogue::on_helo(const m::Command& c, std::string& out) {
  if (refused_) {
    refuse(*refused_, Stage::kConnect, out);
    co_return;
  }
  facts_.helo = c.helo.substr(0, 255);
  facts_.esmtp = true;  // the MTA does not say; no filter decides on it
  Verdict v = co_await run_filters(Stage::kHelo);
  if (refuses(v)) {
    log::info("milter-refused").kv("session", id_).kv("stage", "helo").kv("client", facts_.client_ip)
        .kv("reason", v.reason);
    refuse(v, Stage::kHelo, out);
    co_return;
  }
  proceed(m::step::kNrHelo, out);
}

asio::awaitable<MilterDialogue::Next> MilterDialogue::on_mail(const m::Command& c, std::string& out) {
  if (refused_) {
    refuse(*refused_, Stage::kConnect, out);
    co_return Next::kMore;
  }
  // A MAIL without ABORT: the macros just sent are this one's, those of
  // the last one go (also when this MAIL came without macros).
  if (!mail_macros_) forget_transaction_macros();
  mail_macros_ = false;
  reset_transaction(false);
  std::string path = c.args[0];
  if (path.front() != '<') path = "<" + path + ">";
  PathParse parsed = parse_path(path, true, false, true);
  if (parsed.error != PathError::kNone || parsed.end != path.size()) {
    log::warning("milter-server-garbage").kv("session", id_).kv("command", "mail")
        .kv("error", "not a reverse-path: " + log::sanitize(path)).kv("action", "451 4.5.2");
    out += m::encode_replycode(451, "4.5.2 Error: the milter cannot read the sender address");
    co_return Next::kMore;
  }
  txn_active_ = true;
  txn_started_ = std::chrono::steady_clock::now();
  auto qid = macros_.find("i");
  txn_.id = qid != macros_.end() && !qid->second.empty() ? log::sanitize(qid->second)
                                                           : fmt::format("{}.{}", id_, ++transactions_);
  txn_.reverse_path = parsed.mailbox;
  for (std::size_t i = 1; i < c.args.size() && i <= 32; ++i) txn_.mail_parameters.push_back(c.args[i]);
  Verdict v = co_await run_filters(Stage::kMail);
  if (refuses(v)) {
    log::info("milter-refused").kv("session", id_).kv("id", txn_.id).kv("stage", "mail")
        .kv("from", "<" + parsed.mailbox.str() + ">").kv("reason", v.reason);
    refuse(v, Stage::kMail, out);
    Reply r = verdict_reply(v, Stage::kMail);
    write_audit(r.klass() == 4 ? Outcome::kTempfailed : Outcome::kRejected, fmt::format("{} {}", r.code, r.text), v, "mail", "", "",
                false);
    reset_transaction();
    co_return Next::kMore;
  }
  if (v.holds_message()) pending_ = v;
  proceed(m::step::kNrMail, out);
  co_return Next::kMore;
}

asio::awaitable<MilterDialogue::Next> MilterDialogue::on_rcpt(const m::Command& c, std::string& out) {
  if (refused_) {
    refuse(*refused_, Stage::kConnect, out);
    co_return Next::kMore;
  }
  std::string path = c.args[0];
  if (path.front() != '<') path = "<" + path + ">";
  PathParse parsed = parse_path(path, false, true, true);
  if (!txn_active_ || parsed.error != PathError::kNone || parsed.end != path.size()) {
    log::warning("milter-server-garbage").kv("session", id_).kv("command", "rcpt")
        .kv("error", txn_active_ ? "not a forward-path: " + log::sanitize(path) : "RCPT before MAIL")
        .kv("action", "451 4.5.2");
    out += m::encode_replycode(451, "4.5.2 Error: the milter cannot read the recipient address");
    co_return Next::kMore;
  }
  if (txn_.recipients.size() >= config_->limits.recipients) {
    out += m::encode_replycode(replies::kTooManyRecipients.code, replies::kTooManyRecipients.text);
    co_return Next::kMore;
  }
  txn_.current_rcpt = parsed.mailbox;
  for (std::size_t i = 1; i < c.args.size() && i <= 32; ++i) txn_.rcpt_parameters.push_back(c.args[i]);
  Verdict v = co_await run_filters(Stage::kRcpt);
  txn_.current_rcpt.reset();
  txn_.rcpt_parameters.clear();
  if (refuses(v)) {  // this recipient only
    metrics::registry().recipients[1].inc();
    log::info("milter-refused").kv("session", id_).kv("id", txn_.id).kv("stage", "rcpt")
        .kv("to", "<" + parsed.mailbox.str() + ">").kv("reason", v.reason);
    refuse(v, Stage::kRcpt, out);
    co_return Next::kMore;
  }
  if (v.holds_message() && !pending_) pending_ = v;
  metrics::registry().recipients[0].inc();
  txn_.recipients.push_back(parsed.mailbox);
  proceed(m::step::kNrRcpt, out);
  co_return Next::kMore;
}

// The content is rebuilt in the spool as the MTA hands it over: each field
// "Name:" value CRLF, the empty line at SMFIC_EOH, the body chunks (CRLF
// lines, as Postfix sends them). The filters' content taps (DKIM body
// hashing) see it stream in as in a proxied session.
void MilterDialogue::start_content() {
  spool_ = std::make_unique<Spool>(config_->data.spool_memory, config_->data.spool_dir);
  const FilterChain* chain = active_chain();
  if (!chain || chain->empty()) return;
  FilterContext ctx{Stage::kData, facts_, txn_};
  chain->add_content_taps(ctx, *spool_);
}

void MilterDialogue::append_content(std::string_view bytes) {
  if (too_big_ || spool_failed_ || bytes.empty()) return;
  if (spool_->size() + bytes.size() > config_->limits.message_size) {
    too_big_ = true;
    return;
  }
  if (!spool_->append(bytes)) {
    log::error("spool-error").kv("session", id_).kv("op", "write").kv("error", std::strerror(errno));
    spool_failed_ = true;
  }
}

bool MilterDialogue::on_header(const m::Command& c) {
  if (!valid_field_name(c.name)) {
    log::warning("milter-server-garbage").kv("session", id_).kv("command", "header")
        .kv("error", "not a field name: " + log::sanitize(c.name)).kv("action", "closed");
    return false;
  }
  if (!valid_field_value(c.value)) {
    log::warning("milter-server-garbage").kv("session", id_).kv("command", "header")
        .kv("error", "a line break that is not a fold in " + log::sanitize(c.name)).kv("action", "closed");
    return false;
  }
  if (!txn_active_ || in_body_) return true;  // nothing to filter: ignored
  if (!spool_) start_content();
  // Without SMFIP_HDR_LEADSPC the MTA dropped the space after the colon.
  const bool leading_space = steps_ & m::step::kHdrLeadSpc;
  std::string field = c.name + ":" + (leading_space ? "" : " ") + field_value_octets(c.value) + "\r\n";
  append_content(field);
  return true;
}

// SMFIC_BODYEOB: the filters decide on the whole message; the verdict and
// the changes go back as modifications and a final reply.
asio::awaitable<void> MilterDialogue::end_of_message(std::string_view last_chunk, std::string& out) {
  if (!txn_active_) {  // an end of message without MAIL: nothing was filtered
    out += m::encode(m::reply::kAccept, "");
    co_return;
  }
  const auto end_of_content = std::chrono::steady_clock::now();
  ++messages_;
  if (!spool_) start_content();
  if (!in_body_) append_content("\r\n");
  in_body_ = true;
  append_content(last_chunk);

  Verdict verdict;
  Outcome action = Outcome::kRelayed;  // for the audit record, the log and the metrics
  std::string said;       // what the MTA was told, "code text" or the milter reply
  AuditHeaders headers;
  bool dkim_signed = false;
  auto refuse_with = [&](const replies::Def& def) {
    out += m::encode_replycode(def.code, def.text);
    said = fmt::format("{} {}", def.code, def.text);
    action = def.code / 100 == 4 ? Outcome::kTempfailed : Outcome::kRejected;
  };
  if (too_big_) {
    refuse_with(replies::kSizeExceeded);
  } else if (spool_failed_ || !spool_->finish()) {
    refuse_with(replies::kSpoolFailed);
  } else {
    Message message(*spool_, HeaderLimits{config_->limits.header_section_size, config_->limits.header_fields});
    if (message.headers_truncated()) {
      refuse_with(replies::kHeaderSectionTooBig);
    } else {
      txn_.message = &message;
      verdict = co_await run_filters(Stage::kData);
      if (!verdict.decisive()) verdict = co_await run_filters(Stage::kEom);
      verdict = end_of_data_verdict(std::move(verdict), pending_);
      switch (verdict.action) {
        case Verdict::Action::kContinue:
        case Verdict::Action::kAccept:
        case Verdict::Action::kQuarantine: {
          std::string error;
          bool none_left = false;
          std::string mods = milter_modifications(message, txn_, actions_, steps_ & m::step::kHdrLeadSpc, error,
                                                  none_left);
          if (!error.empty()) {
            log::warning("milter-server-action-refused").kv("session", id_).kv("id", txn_.id).kv("error", error)
                .kv("action", "451 4.7.0");
            out += m::encode_replycode(451, "4.7.0 Error: a change to the message is not allowed, try again later");
            said = "451 4.7.0 change not allowed";
            action = Outcome::kTempfailed;
            break;
          }
          if (none_left) {  // as a proxied session: no recipient left, nothing to deliver
            out += m::encode(m::reply::kDiscard, "");
            said = "discard (no recipients left)";
            action = Outcome::kDiscarded;
            break;
          }
          std::string signature;
          const DkimSigner* signer = config_->auth.dkim.signer.get();
          if (signer && signer->wants(facts_.client_ip, facts_.auth_user) && verdict.action != Verdict::Action::kQuarantine) {
            // The fields as the MTA will hold them after the modifications,
            // and the body it will relay (a milter's new one, if any): the
            // proxy's relay signs the same way (proxy/delivery.h).
            std::optional<RelayBody> body = relay_body(*config_, txn_.changes, message);
            if (!body) {  // the signature would not cover the body Postfix relays
              refuse_with(replies::kSpoolFailed);
              break;
            }
            DkimSignOutcome signed_ = co_await sign_as_relayed(*signer, message, txn_.changes, *body, id_, txn_.id);
            if (signed_.status == DkimSignOutcome::Status::kError && signer->options().tempfail_on_error) {
              refuse_with(replies::kDkimSignFailed);
              break;
            }
            if (signed_.status == DkimSignOutcome::Status::kSigned) {
              if (!(actions_ & m::action::kAddHdrs)) {
                refuse_with(replies::kDkimSignFailed);
                break;
              }
              constexpr std::string_view kName = "DKIM-Signature";
              signature = m::encode_header_reply(m::reply::kInsHeader, 0, kName,
                                                 milter_header_value(signed_.field, kName.size(),
                                                                     steps_ & m::step::kHdrLeadSpc));
              dkim_signed = true;
            }
          }
          out += mods;
          out += signature;  // last: on top of the fields inserted before it
          if (verdict.action == Verdict::Action::kQuarantine) {
            if (!(actions_ & m::action::kQuarantine)) {
              refuse_with(replies::kSpoolFailed);  // the MTA cannot hold it: never relayed by mistake
              break;
            }
            out += m::encode_quarantine(log::sanitize(verdict.reason.empty() ? "postern policy" : verdict.reason));
            said = "quarantine";
            action = Outcome::kQuarantined;
          } else {
            said = "accept";
            action = txn_.changes.redirect ? Outcome::kRedirected : Outcome::kRelayed;
          }
          out += m::encode(m::reply::kAccept, "");
          break;
        }
        case Verdict::Action::kDiscard:
          out += m::encode(m::reply::kDiscard, "");
          said = "discard";
          action = Outcome::kDiscarded;
          break;
        default: {  // reject, tempfail, disconnect
          refuse(verdict, Stage::kEom, out);
          Reply r = verdict_reply(verdict, Stage::kEom);
          said = fmt::format("{} {}", r.code, r.text);
          action = r.klass() == 4 ? Outcome::kTempfailed : Outcome::kRejected;
        }
      }
      if (current_audit_log()) headers = audit_message_headers(message);
      txn_.message = nullptr;
    }
  }
  metrics::message_done(action, spool_->size(), metrics::seconds_since(end_of_content),
                        metrics::seconds_since(txn_started_));
  std::string to;
  for (const Mailbox& mb : txn_.recipients) to += (to.empty() ? "<" : ",<") + mb.str() + ">";
  log::Line line = log::info("message");
  line.kv("session", id_).kv("id", txn_.id).kv("mode", "milter").kv("client", facts_.client_ip)
      .kv("from", "<" + txn_.reverse_path.str() + ">").kv("to", to).kv("size", spool_->size())
      .kv("result", outcome_name(action)).kv("milter_reply", log::sanitize(said));
  if (!txn_.symbols.empty()) line.kv("score", fmt::format("{:.2f}", txn_.score));
  if (verdict.decisive()) line.kv("verdict", action_name(verdict.action)).kv("reason", verdict.reason);
  if (dkim_signed) line.kv("dkim", "signed");
  line.kv("duration_ms", elapsed_ms(txn_started_));
  write_audit(action, said, verdict, "eom", headers.message_id, headers.from_domain, dkim_signed);
  reset_transaction();
}

// The message's audit record (filters/audit/audit_log.h); its listener is
// "milter:ADDRESS" and what it was "replied" is the milter reply.
void MilterDialogue::write_audit(Outcome action, std::string_view reply, const Verdict& v, const char* stage,
                                 std::string_view message_id, std::string_view from_domain, bool dkim_signed) {
  std::shared_ptr<AuditLog> audit = current_audit_log();
  if (!audit) return;
  AuditEntry entry{facts_, txn_, std::string(outcome_name(action)), std::string(reply), "postern", stage, v.reason,
                   spool_ ? spool_->size() : 0, std::string(message_id), std::string(from_domain), v.rule,
                   dkim_signed};
  if (!audit->write(audit_json(entry))) {
    log::warning("audit-dropped").kv("session", id_).kv("id", txn_.id).kv("queued_limit", "full");
  }
}

asio::awaitable<void> MilterDialogue::finish() {
  reset_transaction();
  if (connected_) co_await run_filters(Stage::kClose);
}

}  // namespace postern
