// The server side of SMTP (RFC 5321, PIPELINING RFC 2920, SIZE RFC 1870,
// 8BITMIME RFC 6152, ENHANCEDSTATUSCODES RFC 2034) mirrored to the upstream.
#include "proxy/session.h"

#include <asio/experimental/as_tuple.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <algorithm>
#include <cstring>
#include <ctime>
#include <fmt/format.h>

#include "filters/message.h"
#include "filters/net/ip_address.h"
#include "filters/text/ascii.h"
#include "filters/text/utf8.h"
#include "proxy/delivery.h"
#include "proxy/limits.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/proxy_protocol.h"
#include "proxy/sasl_relay.h"
#include "proxy/session_limiter.h"
#include "proxy/tls.h"
#include "proxy/verdict_reply.h"

namespace postern {
namespace {

constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);

// 14 upper-case hex digits: the start time's 8, then a counter's 6. Written
// by hand: fmt::format cost 1,100 instructions a connection (issue 23).
std::string next_session_id() {
  static std::atomic<unsigned long> counter{0};
  static const unsigned long start = static_cast<unsigned long>(std::time(nullptr));
  static constexpr char kHex[] = "0123456789ABCDEF";
  const unsigned long n = ++counter;
  std::string id(14, '0');
  for (int i = 0; i < 8; ++i) id[static_cast<std::size_t>(7 - i)] = kHex[(start >> (4 * i)) & 0xf];
  for (int i = 0; i < 6; ++i) id[static_cast<std::size_t>(13 - i)] = kHex[(n >> (4 * i)) & 0xf];
  return id;
}

long long elapsed_ms(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - since)
      .count();
}

// HELO names reach the Received header and logs; keep them to safe octets.
std::string clean_helo(std::string_view helo) {
  std::string out;
  std::size_t n = std::min(helo.size(), limits::kHeloName);
  for (std::size_t i = 0; i < n; ++i) {
    unsigned char c = helo[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_' || c == ':' || c == '[' || c == ']';
    out.push_back(ok ? static_cast<char>(c) : '?');
  }
  return out;
}

}  // namespace

std::string local_text(const asio::ip::tcp::endpoint& local) {
  std::string text = address_text(local.address());
  text += ':';
  text += std::to_string(local.port());
  return text;
}

Session::Session(asio::ip::tcp::socket socket, const asio::ip::tcp::endpoint& peer, bool no_delay_set,
                 std::shared_ptr<const Config> config, std::shared_ptr<const ListenerInfo> listener,
                 std::shared_ptr<asio::ssl::context> tls_context,
                 std::shared_ptr<const FilterChain> chain, std::shared_ptr<const FilterChain> submission_chain,
                 std::shared_ptr<const UpstreamCapabilities> caps,
                 SessionRegistry& registry)
    : conn_(std::move(socket), no_delay_set),
      config_(std::move(config)),
      listener_info_(std::move(listener)),
      listener_(listener_info_->config),
      tls_context_(std::move(tls_context)),
      registry_(registry),
      chain_(std::move(chain)),
      submission_chain_(std::move(submission_chain)),
      caps_(std::move(caps)),
      id_(next_session_id()),
      started_(std::chrono::steady_clock::now()),
      decoder_({config_->limits.message_size, config_->limits.text_line, config_->data.bare_line_ending}),
      spool_(config_->data.spool_memory, config_->data.spool_dir) {
  // Both ends without a getpeername/getsockname each (issue 23: a
  // connection's own cost): the peer as accept() gave it, the local end the
  // listener's unless it is bound to a wildcard address.
  facts_.client_ip = address_text(unmap_v4(peer.address()));
  facts_.client_port = peer.port();
  facts_.id = id_;
  if (!listener_info_->local.empty()) {
    facts_.listener = listener_info_->local;
  } else {
    std::error_code ec;
    auto local = conn_.socket().local_endpoint(ec);
    if (!ec) facts_.listener = local_text(local);
  }
  registry_.sessions.insert(this);
}

Session::~Session() { registry_.sessions.erase(this); }

void SessionRegistry::drain() {
  draining = true;
  for (Session* s : sessions) s->drain();
}

void Session::drain() {
  if (conn_.reading() && mode_ != Mode::kData && mode_ != Mode::kBdat) conn_.cancel();
}

void Session::reply(const replies::Def& def) { queue_reply(def.code, def.text); }

// Every reply to the client is queued here, and counted as it is (metrics).
void Session::queue_reply(int code, std::string_view text) {
  append_reply(output_, code, text);
  metrics::count_reply(code, text);
}

void Session::queue_reply(const Reply& r) { queue_reply(r.code, r.text); }

// A client mistake: reply, count it, and end a session that keeps erring.
void Session::client_error(const replies::Def& def) {
  reply(def);
  note_error();
}

// Every kind of client error counts here (bad commands, failed AUTH); past
// limits.errors the session ends with 421.
void Session::note_error() {
  metrics::registry().client_errors.inc();
  if (++errors_ >= config_->limits.errors && !closing()) {
    log::warning("too-many-errors").kv("session", id_).kv("client", facts_.client_ip)
        .kv("errors", errors_);
    reply(replies::kTooManyErrors);
    after_reply(Next::kClose);
  }
}

Upstream& Session::upstream() {
  if (!upstream_) upstream_ = make_upstream(conn_.executor(), config_, facts_);
  return *upstream_;
}

asio::awaitable<void> Session::run() {
  metrics::SessionGauge open_gauge(listener_.address);
  // This session's places in the concurrent-session limits, taken at accept
  // before a PROXY header or a TLS handshake is read (issue 18: neither may
  // hold a connection past the limits). Behind a PROXY listener the peer is
  // the proxy: it counts in all, the real client per address once known.
  SessionLimiter::Ticket place, client_place;
  using Scope = SessionLimiter::Scope;
  bool ready = co_await admit(place, listener_.proxy_protocol ? Scope::kTotal : Scope::kAll);
  if (ready && listener_.proxy_protocol) {
    ready = co_await read_proxy_header();
    if (!ready) metrics::session_refused(listener_.address, metrics::Refusal::kProxyProtocol);
    else ready = co_await admit(client_place, Scope::kClient);
  }
  if (log::enabled(log::Level::kInfo)) {  // its client text is not made when the line is off
    log::info("session-start").kv("session", id_)
        .kv("client", facts_.client_ip + ':' + std::to_string(facts_.client_port)).kv("listener", facts_.listener);
  }
  if (ready && listener_.tls == Config::Listener::Tls::kImplicit) {
    ready = co_await start_tls();
    if (!ready) metrics::session_refused(listener_.address, metrics::Refusal::kTls);
  }
  if (!ready) {
    conn_.close();
    log::info("session-end").kv("session", id_).kv("client", facts_.client_ip).kv("messages", 0)
        .kv("errors", errors_).kv("duration_ms", elapsed_ms(started_));
    co_return;
  }
  Verdict connect = co_await run_filters(Stage::kConnect);
  connect_facts_ = facts_;  // what STARTTLS goes back to (forget_plaintext)
  if (connect.action == Verdict::Action::kReject || connect.action == Verdict::Action::kTempfail ||
      connect.action == Verdict::Action::kDisconnect) {
    // Refused at connect: the MTA never hears of this client (RFC 5321 §3.1).
    Reply r = verdict_reply(connect, Stage::kConnect);
    if (connect.action != Verdict::Action::kReject) r.code = 421;
    metrics::session_refused(listener_.address, metrics::Refusal::kFilter);
    queue_reply(r);
    after_reply(Next::kClose);
  } else if (co_await talks_before_greeting()) {
    reply(replies::kEarlyTalker);
    after_reply(Next::kClose);
  } else {
    queue_reply(220, config_->server.hostname + " ESMTP postern");
    // An idle MTA connection learns who the client is while the client reads
    // the greeting; its HELO name follows with its EHLO (handle_helo()).
    if (upstream_idle_waiting(conn_.executor(), *config_)) upstream().prepare();
  }
  while (!closing()) {
    co_await process_input();
    co_await settle_mail();  // never wait for the client with a MAIL reply owed
    if (!co_await flush() || closing()) break;
    if (next_ == Next::kStartTls) {
      next_ = Next::kRead;
      if (!co_await start_tls()) break;
      continue;
    }
    if (registry_.draining && mode_ != Mode::kData && mode_ != Mode::kBdat) {
      reply(replies::kShuttingDown);
      break;
    }
    if (!co_await fill()) break;
  }
  co_await flush();
  if (in_transaction()) co_await abandon_transaction();
  if (upstream_) co_await upstream_->release();  // to the next client session where clean (upstream.reuse)
  co_await run_filters(Stage::kClose);
  conn_.close();
  log::info("session-end").kv("session", id_).kv("client", facts_.client_ip).kv("messages", messages_)
      .kv("errors", errors_).kv("duration_ms", elapsed_ms(started_));
}

// Takes the session's place in the limits; false (the client told 421 where
// it can read it, and a log line) when they are full. An implicit-TLS
// listener closes without a word: a plaintext reply is noise to a TLS
// client, and a handshake is what the limit is there to save.
asio::awaitable<bool> Session::admit(SessionLimiter::Ticket& ticket, SessionLimiter::Scope scope) {
  auto refusal = SessionLimiter::instance().admit(facts_.client_ip, config_->limits, ticket, scope);
  if (refusal == SessionLimiter::Refusal::kNone) co_return true;
  const bool implicit_tls = listener_.tls == Config::Listener::Tls::kImplicit;
  metrics::session_refused(listener_.address, metrics::Refusal::kLimit);
  log::warning("session-limit").kv("session", id_).kv("client", facts_.client_ip)
      .kv("limit", refusal_name(refusal)).kv("action", implicit_tls ? "closed" : "refused with 421");
  if (!implicit_tls) {
    reply(refusal_reply(refusal));
    co_await flush();
  }
  co_return false;
}

// RFC 5321 §4.3.1: the client waits for the greeting. Octets sent before it
// (within timeouts.greet_pause) mark a bot that pipelines blindly; it gets
// 554 and never reaches a filter or the MTA. Off when the pause is 0. Implicit
// TLS is exempt: its ClientHello comes first by design.
asio::awaitable<bool> Session::talks_before_greeting() {
  if (conn_.tls() || config_->timeouts.greet_pause <= Seconds(0) || registry_.draining) co_return false;
  const std::size_t early = co_await conn_.early_octets(config_->timeouts.greet_pause);
  if (early == 0) co_return false;
  log::warning("early-talker").kv("session", id_).kv("client", facts_.client_ip).kv("octets", early);
  co_return true;
}

asio::awaitable<bool> Session::flush() {
  if (output_.empty()) co_return true;
  std::error_code ec = co_await conn_.write(output_, config_->timeouts.command);
  output_.clear();
  if (ec) {
    log::info("client-lost").kv("session", id_).kv("op", "write")
        .kv("error", conn_.timed_out() ? "timeout" : ec.message());
    co_return false;
  }
  co_return true;
}

// Reads more input; false when the session must end (a 421 is queued where due).
asio::awaitable<bool> Session::fill() {
  const bool content = mode_ == Mode::kData || mode_ == Mode::kBdat;
  Seconds timeout = content ? config_->timeouts.data : config_->timeouts.command;
  if (mode_ != Mode::kBdat) {
    // timeouts.command bounds the whole command line, timeouts.data each whole
    // line of content, not each read: a client trickling one octet at a time
    // (slowloris) cannot hold the session open. (BDAT octets have no lines.)
    const auto now = std::chrono::steady_clock::now();
    // In DATA: the last read (still in input_) completed no line.
    const bool partial = mode_ == Mode::kData ? !input_.empty() && input_.find('\n') == std::string::npos
                                              : input_pos_ < input_.size() || mode_ == Mode::kSkipLine;
    if (!partial) command_deadline_ = now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(timeout);
    timeout = std::max(Seconds(0), Seconds(command_deadline_ - now));
  }
  if (input_pos_ > 0) {  // the handled lines go
    input_.erase(0, input_pos_);
    input_pos_ = 0;
  }
  std::error_code ec = co_await conn_.read(input_, timeout, content);
  if (!ec) co_return true;
  if (conn_.timed_out()) {
    metrics::registry().timeouts.inc();
    log::warning("timeout").kv("session", id_).kv("client", facts_.client_ip)
        .kv("state", mode_ == Mode::kData ? "data" : "command");
    reply(replies::kTimeout);
  } else if (registry_.draining && ec == asio::error::operation_aborted) {
    reply(replies::kShuttingDown);
  } else {
    log::info("client-lost").kv("session", id_).kv("op", "read")
        .kv("state", mode_ == Mode::kData ? "data" : "command")
        .kv("error", ec == asio::error::eof ? "eof" : ec.message());
    output_.clear();
  }
  co_return false;
}

// The PROXY header a load balancer sends first: the real client replaces the
// socket's peer everywhere. Without a valid one the connection is closed
// without a word (HAProxy spec §2: never guess). Only the listener's
// proxy_protocol_from networks may send one: from anyone else it would be a
// forged client address. The whole header has one deadline
// (timeouts.command), not one per read: trickling octets cannot hold it.
asio::awaitable<bool> Session::read_proxy_header() {
  if (!SessionLimiter::in_networks(facts_.client_ip, listener_.proxy_protocol_from)) {
    log::warning("proxy-protocol-untrusted").kv("session", id_).kv("peer", facts_.client_ip)
        .kv("listener", facts_.listener).kv("action", "closed; not in listener.proxy_protocol_from");
    co_return false;
  }
  if (registry_.draining) co_return false;  // shutting down: as a drained wait below
  using Status = ClientConnection::ProxyHeaderRead::Status;
  const ClientConnection::ProxyHeaderRead read = co_await conn_.read_proxy_header(config_->timeouts.command);
  const ProxyHeader& h = read.header;
  if (read.status == Status::kTimeout || read.status == Status::kClosed) {
    log::warning("proxy-protocol-error").kv("session", id_).kv("peer", facts_.client_ip)
        .kv("error", read.status == Status::kTimeout ? "timeout"
                     : registry_.draining              ? "shutdown"
                                                       : "connection closed before the header");
    co_return false;
  }
  if (read.status == Status::kInvalid) {
    log::warning("proxy-protocol-error").kv("session", id_).kv("peer", facts_.client_ip).kv("error", h.error);
    co_return false;
  }
  if (!h.local) {
    std::error_code ec;
    asio::ip::address addr = unmap_v4(asio::ip::make_address(h.source_ip, ec));
    log::debug("proxy-protocol").kv("session", id_).kv("peer", facts_.client_ip).kv("client", h.source_ip);
    facts_.client_ip = ec ? h.source_ip : addr.to_string();
    facts_.client_port = h.source_port;
  }
  co_return true;
}

// The TLS handshake as server, on the plain socket (RFC 3207, RFC 8314).
// A shutdown ends a handshake as it ends an idle session (drain()): the
// client is who it waits for, and a stalled one would hold the shutdown.
asio::awaitable<bool> Session::start_tls() {
  if (registry_.draining) co_return false;
  std::error_code ec = co_await conn_.start_tls(*tls_context_, config_->timeouts.command);
  metrics::tls_handshake(!ec, ec && conn_.timed_out());
  if (ec) {
    log::warning("tls-failed").kv("session", id_).kv("client", facts_.client_ip)
        .kv("error", conn_.timed_out() ? "timeout" : registry_.draining ? "shutdown" : ec.message());
    co_return false;
  }
  facts_.tls = tls_facts(conn_.tls_handle());
  log::info("tls").kv("session", id_).kv("client", facts_.client_ip).kv("version", facts_.tls.version)
      .kv("cipher", facts_.tls.cipher).kv("peer", facts_.tls.peer_subject.empty() ? "none" : facts_.tls.peer_subject)
      .kv("peer_sha256", facts_.tls.peer_fingerprint.empty() ? "none" : facts_.tls.peer_fingerprint);
  co_return true;
}

// STARTTLS (RFC 3207 §4.2): whatever the client pipelined after it in
// plaintext is dropped (CVE-2011-0411), and the dialogue starts over before
// EHLO, forgetting everything learned in plaintext.
asio::awaitable<void> Session::handle_starttls() {
  reply(replies::kReadyToStartTls);
  if (input_pos_ < input_.size()) {
    log::warning("starttls-injection").kv("session", id_).kv("client", facts_.client_ip)
        .kv("discarded_octets", input_.size() - input_pos_);
  }
  input_.clear();
  input_pos_ = 0;
  if (in_transaction()) co_await abandon_transaction();
  if (upstream_) {  // it heard the plaintext identity (XCLIENT HELO=...): parked where clean, and
    co_await upstream_->release();  // whoever takes it next (this client after EHLO too) says XCLIENT anew
    upstream_.reset();
  }
  forget_plaintext();
  after_reply(Next::kStartTls);  // the handshake follows once the 220 is sent (run())
}

// RFC 3207 §4.2: the server discards all knowledge obtained from the client
// before TLS. Whole structs are replaced, not fields cleared one by one, so a
// fact added later (a rule's session note or symbol, HELO, AUTH, any new
// field) cannot survive by being forgotten here. The session's facts go back
// to what the connection itself established before the client said a word
// (connect_facts_: addresses, the PROXY header's client, the connect stage's
// notes and symbols, the verified reverse-DNS name); the error count stays
// (abuse is not forgiven by a handshake).
void Session::forget_plaintext() {
  facts_ = connect_facts_;
  phase_ = Phase::kConnected;
  sasl_ = SaslRelay{};
  authenticated_ = false;
}

// AUTH (RFC 4954), relayed (proxy/sasl_relay.h); its preconditions are the
// command table's. Credentials are never logged.
asio::awaitable<void> Session::handle_auth(const Command& cmd) {
  co_await auth_step(co_await sasl_.start(cmd.args, upstream()));
}

// What one step of the SASL exchange means for the dialogue.
asio::awaitable<void> Session::auth_step(SaslRelay::Step step) {
  using O = SaslRelay::Outcome;
  switch (step.outcome) {
    case O::kUnknownMechanism:
      client_error(replies::kAuthMechanism);
      co_return;
    case O::kBadResponse:
      log::warning("sasl-response-refused").kv("session", id_).kv("client", facts_.client_ip)
          .kv("mechanism", sasl_.mechanism()).kv("reason", "not base64 or *");
      reply(replies::kSaslResponseSyntax);
      co_await auth_failed();
      co_return;
    case O::kContinue:
      relay_reply(step.reply);
      co_return;
    case O::kAuthenticated:
      relay_reply(step.reply);
      authenticated_ = true;
      facts_.auth_user = log::sanitize(step.user);
      log::info("auth").kv("session", id_).kv("client", facts_.client_ip).kv("mechanism", sasl_.mechanism())
          .kv("user", facts_.auth_user).kv("result", "ok");
      co_return;
    case O::kRefused:
    case O::kUnavailable:
      relay_reply(step.reply);
      log::warning("auth").kv("session", id_).kv("client", facts_.client_ip).kv("mechanism", sasl_.mechanism())
          .kv("result", fmt::format("{} {}", step.reply.reply.code, step.reply.reply.first_line()));
      // A 4xx (MTA without AUTH, busy) says nothing about the credentials.
      if (step.outcome == O::kRefused) co_await auth_failed();
      co_return;
  }
}

// One failed AUTH: counted toward limits.errors and limits.auth_failures,
// and answered late (a tarpit: auth_failure_delay times the failures so
// far); the failure that reaches limits.auth_failures ends the session.
asio::awaitable<void> Session::auth_failed() {
  ++auth_failures_;
  const Config::Limits& limits = config_->limits;
  if (limits.auth_failure_delay > Seconds(0)) {
    asio::steady_timer pause(conn_.executor(), std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                         limits.auth_failure_delay * static_cast<double>(auth_failures_)));
    co_await pause.async_wait(use_nothrow);
  }
  if (auth_failures_ >= limits.auth_failures) {
    log::warning("too-many-auth-failures").kv("session", id_).kv("client", facts_.client_ip)
        .kv("failures", auth_failures_).kv("action", "closed with 421");
    metrics::registry().client_errors.inc();
    reply(replies::kTooManyAuthFailures);
    after_reply(Next::kClose);
    co_return;
  }
  note_error();
}

// Handles every complete command (and DATA content) that is buffered.
asio::awaitable<void> Session::process_input() {
  while (!closing()) {
    std::string_view avail(input_.data() + input_pos_, input_.size() - input_pos_);
    if (mode_ == Mode::kBdat && (chunk_left_ == 0 || !avail.empty())) {
      co_await take_chunk(avail);
      continue;
    }
    if (avail.empty()) co_return;
    if (mode_ == Mode::kData) {
      decoded_.clear();
      DataDecoder::Result r = decoder_.feed(avail, decoded_);
      input_pos_ += r.consumed;
      if (!decoded_.empty() && !spool_failed_ && !spool_.append(decoded_)) {
        log::error("spool-error").kv("session", id_).kv("op", "write").kv("error", std::strerror(errno));
        spool_failed_ = true;
      }
      if (!r.done) co_return;
      mode_ = Mode::kCommand;
      co_await end_of_data();
      continue;
    }
    if (mode_ == Mode::kSkipLine) {
      std::size_t lf = avail.find('\n');
      if (lf == std::string_view::npos) {
        input_pos_ = input_.size();
        co_return;
      }
      input_pos_ += lf + 1;
      mode_ = Mode::kCommand;
      log::warning("line-too-long").kv("session", id_).kv("client", facts_.client_ip);
      // A SASL response too long to read ends the exchange (the MTA's is
      // cancelled): else the client's next command would go to the MTA as
      // the response (QUIT, RSET, NOOP and DATA are base64 too).
      if (sasl_.active()) co_await auth_step(co_await sasl_.refuse(upstream()));
      else client_error(replies::kLineTooLong);
      continue;
    }
    LineScan scan = scan_line(avail, config_->limits.command_line);
    switch (scan.outcome) {
      case LineScan::Outcome::kIncomplete:
        co_return;
      case LineScan::Outcome::kTooLong:
        mode_ = Mode::kSkipLine;
        continue;
      case LineScan::Outcome::kBareLf:
        input_pos_ += scan.consumed;
        if (sasl_.active()) co_await auth_step(co_await sasl_.refuse(upstream()));  // an LF inside the response
        else client_error(replies::kBareLfInCommand);
        continue;
      case LineScan::Outcome::kComplete:
        input_pos_ += scan.consumed;
        if (sasl_.active()) co_await auth_step(co_await sasl_.respond(scan.line, upstream()));
        else co_await handle_command(scan.line);
        continue;
    }
  }
}

asio::awaitable<void> Session::handle_command(std::string_view line) {
  Command cmd = parse_command(line);
  Refusal refusal;
  if (line.find('\0') != std::string_view::npos) refusal = {&replies::kNulInCommand};
  else if (cmd.verb != Verb::kUnknown) refusal = check_syntax(*cmd.spec, !cmd.args.empty());
  // BDAT's chunk follows at once: its size is read before any refusal (handle_bdat).
  if (!refusal && cmd.verb != Verb::kUnknown && cmd.verb != Verb::kBdat) {
    refusal = check_preconditions(*cmd.spec, dialogue());
  }
  // A held MAIL is answered before any other reply; a RCPT that goes on to
  // the MTA takes it along (handle_rcpt settles it where it answers locally).
  if (refusal || cmd.verb != Verb::kRcpt) co_await settle_mail();
  if (refusal) {
    if (refusal.client_error) client_error(*refusal.reply);
    else reply(*refusal.reply);
    co_return;
  }
  if (cmd.verb == Verb::kUnknown) {
    // A SASL response the MTA cut short lands here (RFC 4954 §4): base64
    // that may be a password is not logged.
    bool base64 = line.size() >= 4 &&
                  line.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") ==
                      std::string_view::npos;
    log::info("unknown-command").kv("session", id_).kv("line", base64 ? std::string_view("(base64, not logged)") : line);
    client_error(replies::kUnknownCommand);
    co_return;
  }
  switch (cmd.verb) {
    case Verb::kEhlo:
    case Verb::kHelo:
      if (in_transaction()) co_await abandon_transaction();  // EHLO resets (§4.1.4)
      co_await handle_helo(cmd);
      break;
    case Verb::kStarttls: co_await handle_starttls(); break;
    case Verb::kAuth: co_await handle_auth(cmd); break;
    case Verb::kMail: co_await handle_mail(cmd); break;
    case Verb::kRcpt: co_await handle_rcpt(cmd); break;
    case Verb::kData: co_await handle_data(); break;
    case Verb::kBdat: handle_bdat(cmd); break;
    case Verb::kRset:
      if (in_transaction()) co_await abandon_transaction();
      reply(replies::kOk);
      break;
    case Verb::kNoop: reply(replies::kOk); break;
    case Verb::kHelp: reply(replies::kHelp); break;
    case Verb::kVrfy: reply(replies::kVrfy); break;
    case Verb::kQuit:
      reply(replies::kBye);
      after_reply(Next::kClose);
      break;
    default: client_error(replies::kNotImplemented); break;
  }
}

asio::awaitable<void> Session::handle_helo(const Command& cmd) {
  for (unsigned char c : cmd.args) {
    if (c < 32 || c == 127) {
      client_error(replies::kHeloSyntax);
      co_return;
    }
  }
  facts_.helo = clean_helo(cmd.args);
  facts_.esmtp = cmd.verb == Verb::kEhlo;
  Verdict v = co_await run_filters(Stage::kHelo);
  if (v.action == Verdict::Action::kReject || v.action == Verdict::Action::kTempfail ||
      v.action == Verdict::Action::kDisconnect) {
    queue_reply(verdict_reply(v, Stage::kHelo));
    if (v.action == Verdict::Action::kDisconnect) after_reply(Next::kClose);
    phase_ = Phase::kConnected;
    co_return;
  }
  phase_ = Phase::kGreeted;
  // Who the client is, is known now: an idle upstream connection is told so
  // while the client sends its next command, not after its MAIL (issue 23).
  // Made here only when an idle connection waits: 10,000 greeted sessions
  // that send nothing hold no upstream objects (bench/idle).
  if (upstream_ || upstream_idle_waiting(conn_.executor(), *config_)) upstream().prepare();
  const std::string& host = config_->server.hostname;
  if (!facts_.esmtp) {
    queue_reply(250, host);
    co_return;
  }
  const bool offer_tls = tls_context_ && !conn_.tls() && listener_.tls == Config::Listener::Tls::kStarttls;
  const bool offer_auth = conn_.tls() && listener_.auth == Config::Listener::Auth::kPassthrough && !authenticated_;
  // SMTPUTF8 and DSN only when the MTA behind can carry them (RFC 6531 §3.4, RFC 3461 §4).
  queue_reply(250,
               fmt::format("{}\nPIPELINING\nSIZE {}\n8BITMIME\nCHUNKING\nENHANCEDSTATUSCODES{}{}{}{}", host,
                           config_->limits.message_size, offer_tls ? "\nSTARTTLS" : "",
                           offer_auth ? "\nAUTH PLAIN LOGIN" : "",
                           caps_->smtputf8 ? "\nSMTPUTF8" : "", caps_->dsn ? "\nDSN" : ""));
}

// The dialogue as the command table's preconditions read it.
DialogueState Session::dialogue() const {
  DialogueState d;
  d.phase = phase_;
  d.esmtp = facts_.esmtp;
  d.tls = conn_.tls();
  d.tls_required = listener_.require_tls;
  d.starttls_offered = tls_context_ && listener_.tls == Config::Listener::Tls::kStarttls;
  d.auth_offered = listener_.auth == Config::Listener::Auth::kPassthrough;
  d.authenticated = authenticated_;
  d.transaction_failed = txn_.failed;
  d.recipients = txn_.facts.recipients.size();
  d.rcpt_commands = txn_.rcpt_commands;
  return d;
}

// What this session offers that MAIL and RCPT parameters depend on.
EsmtpOffer Session::esmtp_offer() const {
  const bool auth = conn_.tls() && listener_.auth == Config::Listener::Auth::kPassthrough;
  return EsmtpOffer{facts_.esmtp, caps_->smtputf8, caps_->dsn, config_->limits.message_size, auth};
}

asio::awaitable<void> Session::handle_mail(const Command& cmd) {
  if (messages_ >= config_->limits.messages_per_session) {
    reply(replies::kTooManyMessages);
    after_reply(Next::kClose);
    co_return;
  }
  // The path may hold UTF-8 only when MAIL also says SMTPUTF8 (RFC 6531 §3.4).
  PathArgs args = parse_mail_args(cmd.args, facts_.esmtp && caps_->smtputf8);
  const bool smtputf8 = std::any_of(args.params.begin(), args.params.end(),
                                    [](const EsmtpParam& p) { return p.keyword == "SMTPUTF8"; });
  if (!args.error && !smtputf8 &&
      std::any_of(cmd.args.begin(), cmd.args.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; })) {
    args.error = &replies::kNonAsciiAddress;
  }
  if (!args.error && !valid_utf8(cmd.args)) args.error = &replies::kInvalidUtf8Address;  // RFC 6531 §3.3
  if (args.error) {
    client_error(*args.error);
    co_return;
  }
  for (const EsmtpParam& p : args.params) {
    if (const replies::Def* bad = check_mail_param(p, esmtp_offer())) {
      if (bad == &replies::kSizeExceeded) reply(*bad);
      else client_error(*bad);
      co_return;
    }
  }
  // RFC 4954 §5: postern vouches for no submitter a client names, so the
  // message goes as if AUTH=<> was given (rules, milters and audit see
  // that); the MTA, which authenticated the client itself, hears no AUTH=
  // at all (esmtp_param_extension() lists no extension for it).
  for (EsmtpParam& p : args.params) {
    if (p.keyword == "AUTH") p.value = "<>";
  }
  txn_.smtputf8 = smtputf8;
  txn_.facts = TransactionFacts{};
  txn_.facts.id = fmt::format("{}.{}", id_, messages_ + 1);
  txn_.facts.reverse_path = args.mailbox;
  for (const EsmtpParam& p : args.params) {
    txn_.facts.mail_parameters.push_back(p.has_value ? p.keyword + "=" + p.value : p.keyword);
  }
  txn_.started = std::chrono::steady_clock::now();
  Verdict v = co_await run_filters(Stage::kMail);
  switch (v.action) {
    case Verdict::Action::kReject:
    case Verdict::Action::kTempfail:
    case Verdict::Action::kDisconnect:
      log::info("mail-refused").kv("session", id_).kv("from", "<" + args.mailbox.str() + ">")
          .kv("by", "filter").kv("reason", v.reason);
      queue_reply(verdict_reply(v, Stage::kMail));
      if (v.action == Verdict::Action::kDisconnect) after_reply(Next::kClose);
      audit_mail_refusal(facts_, txn_.facts, verdict_reply(v, Stage::kMail), v);
      reset_transaction();
      co_return;
    case Verdict::Action::kDiscard:
    case Verdict::Action::kQuarantine:
      txn_.pending = v;
      break;
    default:
      break;
  }
  // A RCPT the client pipelined behind this MAIL may take MAIL along to the
  // MTA in one write (RFC 2920): then MAIL's reply comes with RCPT's.
  const bool hold = rcpt_pipelined();
  UpstreamReply r = co_await upstream().mail(args.mailbox, args.params, hold);
  phase_ = Phase::kTransaction;
  txn_.mail_params = std::move(args.params);
  if (!r.held) mail_replied(r);  // held: the upstream keeps it for the RCPT behind (settle_mail)
}

void Session::mail_replied(const UpstreamReply& r) {
  relay_reply(r);
  if (r.reply.positive()) return;
  log::info("mail-refused").kv("session", id_).kv("from", "<" + txn_.facts.reverse_path.str() + ">")
      .kv("reply", fmt::format("{} {}", r.reply.code, r.reply.first_line())).kv("by", r.local ? "postern" : "upstream");
  reset_transaction();
}

asio::awaitable<void> Session::settle_mail() {
  if (!upstream_ || !upstream_->mail_held()) co_return;
  mail_replied(co_await upstream_->send_held_mail());
}

bool Session::rcpt_pipelined() const {
  std::string_view rest(input_);
  rest.remove_prefix(std::min(input_pos_, rest.size()));
  return rest.size() > 5 && ascii::istarts_with(rest, "RCPT ") && rest.find('\n') != std::string_view::npos;
}

// Exactly "DATA" and CRLF, the one form handle_data() answers with 354.
bool Session::data_pipelined() const {
  std::string_view rest(input_);
  rest.remove_prefix(std::min(input_pos_, rest.size()));
  return ascii::istarts_with(rest, "DATA\r\n");
}

asio::awaitable<void> Session::handle_rcpt(const Command& cmd) {
  PathArgs args = parse_rcpt_args(cmd.args, txn_.smtputf8);
  if (!args.error && !valid_utf8(cmd.args)) args.error = &replies::kInvalidUtf8Address;  // RFC 6531 §3.3
  Refusal refusal{args.error};
  for (const EsmtpParam& p : args.params) {
    if (refusal) break;
    refusal.reply = check_rcpt_param(p, esmtp_offer());
  }
  Verdict v;
  std::string rcpt_key;
  if (!refusal) {
    ++txn_.rcpt_commands;
    // A recipient named again: relayed twice, an MTA without a duplicate
    // filter would deliver the message twice. The first RCPT's parameters
    // and verdict hold; the MTA and the filters hear of it once.
    rcpt_key = mailbox_key(args.mailbox);
    if (txn_.rcpt_keys.contains(rcpt_key)) {
      co_await settle_mail();
      log::info("rcpt-duplicate").kv("session", id_).kv("id", txn_.facts.id).kv("to", "<" + args.mailbox.str() + ">");
      reply(replies::kDuplicateRecipient);
      co_return;
    }
    if (txn_.facts.recipients.size() >= config_->limits.recipients) refusal = {&replies::kTooManyRecipients, false};
  }
  if (!refusal) {
    txn_.facts.current_rcpt = args.mailbox;
    for (const EsmtpParam& p : args.params) {
      txn_.facts.rcpt_parameters.push_back(p.has_value ? p.keyword + "=" + p.value : p.keyword);
    }
    v = co_await run_filters(Stage::kRcpt);
    txn_.facts.current_rcpt.reset();
    txn_.facts.rcpt_parameters.clear();
  }
  const bool filter_refused = v.action == Verdict::Action::kReject || v.action == Verdict::Action::kTempfail ||
                              v.action == Verdict::Action::kDisconnect;  // this recipient only; the rest may pass
  if (refusal || filter_refused) {
    co_await settle_mail();  // answered here: a held MAIL's reply goes first
    if (refusal.reply == &replies::kTooManyRecipients || filter_refused) metrics::registry().recipients[1].inc();
    if (refusal) {
      if (refusal.client_error) client_error(*refusal.reply);
      else reply(*refusal.reply);
      co_return;
    }
    log::info("rcpt-refused").kv("session", id_).kv("to", "<" + args.mailbox.str() + ">")
        .kv("by", "filter").kv("reason", v.reason);
    queue_reply(verdict_reply(v, Stage::kRcpt));
    if (v.action == Verdict::Action::kDisconnect) after_reply(Next::kClose);
    co_return;
  }
  // Discard or quarantine for one recipient holds the whole message (one
  // copy, one fate: docs/lua-api.md), once the MTA took that recipient.
  const bool holds = v.holds_message();
  const bool carries_mail = upstream().mail_held();
  // DATA pipelined right behind: the upstream may send it along (no message
  // the filters already keep from the MTA, no BDAT transaction).
  const bool data_follows = data_pipelined() && !txn_.pending && !holds && !txn_.chunked;
  UpstreamReply r = co_await upstream().rcpt(args.mailbox, args.params, data_follows);
  if (carries_mail) {
    mail_replied(upstream().held_mail_reply());
    if (!in_transaction()) {  // MAIL refused: the MTA's answer to this RCPT, as it is
      metrics::registry().recipients[1].inc();
      relay_reply(r);
      co_return;
    }
  }
  relay_reply(r);
  if (r.connection_lost) txn_.failed = true;
  metrics::registry().recipients[r.reply.positive() ? 0 : 1].inc();
  if (r.reply.positive()) {
    if (holds) {
      log::info("rcpt-verdict").kv("session", id_).kv("id", txn_.facts.id).kv("to", "<" + args.mailbox.str() + ">")
          .kv("verdict", action_name(v.action)).kv("reason", v.reason).kv("applies", "whole message");
      if (!txn_.pending) txn_.pending = v;
    }
    txn_.facts.recipients.push_back(std::move(args.mailbox));
    txn_.rcpt_params.push_back(std::move(args.params));
    txn_.rcpt_keys.insert(std::move(rcpt_key));
  } else {
    log::info("rcpt-refused").kv("session", id_).kv("to", "<" + args.mailbox.str() + ">")
        .kv("reply", fmt::format("{} {}", r.reply.code, r.reply.first_line())).kv("by", r.local ? "postern" : "upstream");
  }
}

asio::awaitable<void> Session::handle_data() {
  if (txn_.chunked) {
    client_error(replies::kDataAfterBdat);
    co_return;
  }
  reply(replies::kStartData);
  mode_ = Mode::kData;
  decoder_.reset();
  spool_.clear();
  spool_failed_ = false;
  add_content_taps();
  // The MTA's 354 on its way while the content comes in (upstream.early_data);
  // not for a message the MAIL or RCPT filters already keep from the MTA.
  if (!txn_.pending) co_await upstream().begin_data();
}

// BDAT size [LAST] (RFC 3030 §2): the octets follow the command at once, so
// even a refused BDAT has its chunk read and dropped to stay in step.
void Session::handle_bdat(const Command& cmd) {
  const BdatArgs args = parse_bdat_args(cmd.args);
  if (!args.valid) {
    // Without a size postern cannot know where the chunk ends: stop here.
    client_error(replies::kBdatSyntax);
    after_reply(Next::kClose);
    return;
  }
  const bool last = args.last;
  chunk_left_ = chunk_size_ = args.size;
  chunk_last_ = last;
  chunk_discard_ = true;
  mode_ = Mode::kBdat;
  if (Refusal refusal = check_preconditions(*cmd.spec, dialogue())) {
    if (refusal.client_error) client_error(*refusal.reply);
    else reply(*refusal.reply);
  } else {
    chunk_discard_ = false;
    if (!txn_.chunked) {
      txn_.chunked = true;
      decoder_.reset();
      spool_.clear();
      spool_failed_ = false;
      add_content_taps();
    }
  }
  if (chunk_left_ == 0) mode_ = Mode::kCommand;  // BDAT 0 [LAST]
  if (chunk_left_ == 0 && !chunk_discard_) {
    if (last) {
      mode_ = Mode::kBdat;  // take_chunk() ends the message
    } else {
      reply(replies::kOk);
    }
  }
}

// Consumes BDAT octets from the input; at the end of a chunk answers it, or
// after the LAST one ends the message like the final dot of DATA.
asio::awaitable<void> Session::take_chunk(std::string_view avail) {
  std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(avail.size(), chunk_left_));
  if (!chunk_discard_) {
    decoded_.clear();
    decoder_.feed_chunk(avail.substr(0, take), decoded_);
    if (chunk_last_ && take == chunk_left_) decoder_.finish_chunks(decoded_);
    if (!decoded_.empty() && !spool_failed_ && !spool_.append(decoded_)) {
      log::error("spool-error").kv("session", id_).kv("op", "write").kv("error", std::strerror(errno));
      spool_failed_ = true;
    }
  }
  input_pos_ += take;
  chunk_left_ -= take;
  if (chunk_left_ > 0) co_return;
  mode_ = Mode::kCommand;
  if (chunk_discard_) co_return;  // its refusal is already queued
  if (!chunk_last_) {
    queue_reply(250, fmt::format("2.0.0 Ok: {} octets received", chunk_size_));
    co_return;
  }
  co_await end_of_data();
}

// The client's final dot: check the content, then relay it or refuse it.
asio::awaitable<void> Session::end_of_data() {
  const auto end_of_content = std::chrono::steady_clock::now();
  ++messages_;
  const DataDecoder::Faults& faults = decoder_.faults();
  const bool bare = (faults.bare_lf || faults.bare_cr) &&
                    config_->data.bare_line_ending == DataDecoder::BareLineEnding::kReject;
  const replies::Def* refusal = nullptr;
  if (faults.too_big) refusal = &replies::kSizeExceeded;
  else if (bare) refusal = &replies::kBareLineEnding;
  else if (faults.nul) refusal = &replies::kNulInContent;
  else if (faults.line_too_long) refusal = &replies::kTextLineTooLong;
  else if (txn_.header_utf8 && !txn_.header_utf8->valid()) refusal = &replies::kInvalidUtf8Header;
  else if (spool_failed_) refusal = &replies::kSpoolFailed;
  else if (!spool_.finish()) {
    log::error("spool-error").kv("session", id_).kv("op", "flush").kv("error", std::strerror(errno));
    refusal = &replies::kSpoolFailed;
  }

  Delivery delivery({*config_, facts_, txn_.facts, txn_.mail_params, txn_.rcpt_params, upstream(), spool_, decoder_.size(),
                      txn_.started, end_of_content});
  Fate fate;
  if (refusal) {
    if (bare) {
      log::warning("bare-line-ending").kv("session", id_).kv("client", facts_.client_ip)
          .kv("bare_lf", faults.bare_lf ? "yes" : "no").kv("bare_cr", faults.bare_cr ? "yes" : "no");
    }
    fate = co_await delivery.refuse(*refusal);
  } else {
    Message message(spool_, header_limits());
    if (message.headers_truncated()) {
      // Fields past the limit would reach the MTA unread by any filter.
      log_header_section_refused(message);
      fate = co_await delivery.refuse(replies::kHeaderSectionTooBig, "header section over limit");
    } else {
      txn_.facts.message = &message;
      Verdict verdict = co_await run_filters(Stage::kData);
      if (!verdict.decisive()) verdict = co_await run_filters(Stage::kEom);
      verdict = end_of_data_verdict(std::move(verdict), txn_.pending);
      fate = co_await delivery.deliver(message, verdict);
      txn_.facts.message = nullptr;
    }
  }
  relay_reply(fate.reply);
  if (fate.disconnect) after_reply(Next::kClose);
  delivery.record(fate);
  reset_transaction();
}

// The header section's bounds of this configuration (issue 15).
HeaderLimits Session::header_limits() const {
  return HeaderLimits{config_->limits.header_section_size, config_->limits.header_fields};
}

// A header section over [limits] header_section_size / header_fields: 552
// 5.3.4 (Delivery::refuse) and this log line, nothing relayed.
void Session::log_header_section_refused(const Message& message) const {
  log::warning("header-section-too-big").kv("session", id_).kv("id", txn_.facts.id).kv("client", facts_.client_ip)
      .kv("fields_read", message.headers().size()).kv("size", decoder_.size())
      .kv("limit_size", config_->limits.header_section_size).kv("limit_fields", config_->limits.header_fields);
}

// Filters that read the content as it streams in (DKIM body hashing) tap
// the spool from its first octet.
void Session::add_content_taps() {
  if (txn_.smtputf8) {  // checked on every listener, whatever its filters
    txn_.header_utf8 = std::make_shared<HeaderUtf8Check>();
    spool_.add_tap(txn_.header_utf8);
  }
  const FilterChain* chain = active_chain();
  if (!chain || chain->empty()) return;
  FilterContext ctx{Stage::kData, facts_, txn_.facts};
  chain->add_content_taps(ctx, spool_);
}

// The filters of this session: the listener's policy; on an inbound listener
// an authenticated client submits its own mail and gets the submission set.
const FilterChain* Session::active_chain() const {
  using Policy = Config::Listener::Policy;
  if (listener_.policy == Policy::kNone) return nullptr;
  const bool submission = listener_.policy == Policy::kSubmission || !facts_.auth_user.empty();
  return (submission && submission_chain_ ? submission_chain_ : chain_).get();
}

asio::awaitable<Verdict> Session::run_filters(Stage stage) {
  const FilterChain* chain = active_chain();
  if (!chain || chain->empty()) co_return Verdict::proceed();
  FilterContext ctx{stage, facts_, txn_.facts};
  auto start = std::chrono::steady_clock::now();
  Verdict v = co_await chain->run(ctx);
  if (stage != Stage::kClose) metrics::filter_time(stage, metrics::seconds_since(start));
  co_return v;
}

// An upstream reply to the client, with an enhanced status code on every
// line (with_enhanced_codes). After the MTA's 421 the session ends with a
// 421 too (docs/operations.md "When the MTA says 421").
void Session::relay_reply(const UpstreamReply& r) {
  if (std::optional<Reply> completed = with_enhanced_codes(r.reply)) {
    queue_reply(*completed);
  } else {
    queue_reply(r.reply);
  }
  if (!r.closing) return;
  if (r.reply.code != 421) reply(replies::kUpstreamClosing);
  log::warning("upstream-closing").kv("session", id_).kv("client", facts_.client_ip).kv("action", "421 and close");
  after_reply(Next::kClose);
}

// The client gave up on a transaction (RSET, EHLO, QUIT, lost connection).
asio::awaitable<void> Session::abandon_transaction() {
  if (upstream_ && !txn_.failed) co_await upstream_->reset();
  reset_transaction();
}

void Session::reset_transaction() {
  metrics::transaction_done(txn_.facts);
  txn_ = Transaction{};
  if (phase_ == Phase::kTransaction) phase_ = Phase::kGreeted;
  spool_.clear();
  decoder_.reset();
  spool_failed_ = false;
  release_buffers();
}

// Between messages a session keeps no message-sized buffer (issue 18): the
// spool gave its memory back in clear(); the decoding scratch and the
// upstream's buffers go back here. (The input buffer, which the command
// being handled may still point into, goes back in read_more() when drained.)
void Session::release_buffers() {
  if (decoded_.capacity() > limits::kIdleBuffer) std::string().swap(decoded_);
  if (upstream_) upstream_->release_buffers();
}

}  // namespace postern
