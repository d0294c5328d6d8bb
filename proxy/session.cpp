// The server side of SMTP (RFC 5321, PIPELINING RFC 2920, SIZE RFC 1870,
// 8BITMIME RFC 6152, ENHANCEDSTATUSCODES RFC 2034) mirrored to the upstream.
#include "proxy/session.h"

#include <asio/experimental/as_tuple.hpp>
#include <asio/read.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <algorithm>
#include <cstring>
#include <strings.h>
#include <ctime>
#include <openssl/evp.h>
#include <fmt/format.h>

#include "filters/audit/audit_log.h"
#include "filters/dkim/dkim_signer.h"
#include "filters/auth/utf8.h"
#include "filters/message.h"
#include "proxy/limits.h"
#include "proxy/log.h"
#include "proxy/maildir_upstream.h"
#include "proxy/metrics.h"
#include "proxy/proxy_protocol.h"
#include "proxy/session_limiter.h"
#include "proxy/socket_read.h"
#include "proxy/tls.h"
#include "proxy/verdict_reply.h"

namespace postern {
namespace {

constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);

std::string next_session_id() {
  static std::atomic<unsigned long> counter{0};
  static const unsigned long start = static_cast<unsigned long>(std::time(nullptr));
  return fmt::format("{:08X}{:06X}", start & 0xffffffff, ++counter & 0xffffff);
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

// Formatted once a second per thread: strftime was ~0.3 % of the cycles of a
// message (perf).
std::string rfc5322_date() {
  thread_local std::time_t cached_at = -1;
  thread_local std::string cached;
  std::time_t t = std::time(nullptr);
  if (t != cached_at) {
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[64];
    std::size_t n = std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S +0000", &tm);
    cached.assign(buf, n);
    cached_at = t;
  }
  return cached;
}

// xtext (RFC 3461 §4): printable ASCII except '+' and '=', or "+" and two
// upper-case hex digits.
bool is_xtext(std::string_view s) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    unsigned char c = s[i];
    if (c == '+') {
      if (i + 2 >= s.size()) return false;
      for (int k = 1; k <= 2; ++k) {
        unsigned char h = s[i + k];
        if (!((h >= '0' && h <= '9') || (h >= 'A' && h <= 'F'))) return false;
      }
      i += 2;
    } else if (c < '!' || c > '~' || c == '=') {
      return false;
    }
  }
  return true;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::toupper(static_cast<unsigned char>(a[i])) != std::toupper(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

}  // namespace

Session::Session(asio::ip::tcp::socket socket, std::shared_ptr<const Config> config,
                 const Config::Listener& listener, std::shared_ptr<asio::ssl::context> tls_context,
                 std::shared_ptr<const FilterChain> chain, std::shared_ptr<const FilterChain> submission_chain,
                 std::shared_ptr<const UpstreamCapabilities> caps,
                 SessionRegistry& registry)
    : socket_(std::move(socket)),
      config_(std::move(config)),
      listener_(listener),
      tls_context_(std::move(tls_context)),
      registry_(registry),
      watchdog_(socket_.get_executor(), [this] {
        std::error_code ignored;
        socket_.cancel(ignored);
      }),
      chain_(std::move(chain)),
      submission_chain_(std::move(submission_chain)),
      caps_(std::move(caps)),
      id_(next_session_id()),
      started_(std::chrono::steady_clock::now()),
      decoder_({config_->limits.message_size, config_->limits.text_line, config_->data.bare_line_ending}),
      spool_(config_->data.spool_memory, config_->data.spool_dir) {
  std::error_code ec;
  auto peer = socket_.remote_endpoint(ec);
  if (!ec) {
    asio::ip::address addr = peer.address();
    if (addr.is_v6() && addr.to_v6().is_v4_mapped()) {
      addr = asio::ip::make_address_v4(asio::ip::v4_mapped, addr.to_v6());
    }
    client_.address = addr.to_string();
    client_.port = peer.port();
  }
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
  socket_.non_blocking(true, ec);  // read_ready returns would_block, never waits
  facts_.id = id_;
  client_.session = id_;
  facts_.client_ip = client_.address;
  facts_.client_port = client_.port;
  auto local = socket_.local_endpoint(ec);
  if (!ec) facts_.listener = fmt::format("{}:{}", local.address().to_string(), local.port());
  registry_.sessions.insert(this);
}

Session::~Session() { registry_.sessions.erase(this); }

void Session::drain() {
  draining_ = true;
  if (reading_ && mode_ != Mode::kData && mode_ != Mode::kBdat) {
    std::error_code ignored;
    socket_.cancel(ignored);
  }
}

void Session::reply(const replies::Def& def) { append_reply(output_, def.code, def.text); }

// A client mistake: reply, count it, and end a session that keeps erring.
void Session::client_error(const replies::Def& def) {
  reply(def);
  note_error();
}

// Every kind of client error counts here (bad commands, failed AUTH); past
// limits.errors the session ends with 421.
void Session::note_error() {
  metrics::registry().client_errors.inc();
  if (++errors_ >= config_->limits.errors && !quit_) {
    log::warning("too-many-errors").kv("session", id_).kv("client", client_.address)
        .kv("errors", errors_);
    reply(replies::kTooManyErrors);
    quit_ = true;
  }
}

Upstream& Session::upstream() {
  if (!upstream_) upstream_ = make_upstream(socket_.get_executor(), config_, client_);
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
  log::info("session-start").kv("session", id_).kv("client", fmt::format("{}:{}", client_.address, client_.port))
      .kv("listener", facts_.listener);
  if (ready && listener_.tls == Config::Listener::Tls::kImplicit) {
    ready = co_await start_tls();
    if (!ready) metrics::session_refused(listener_.address, metrics::Refusal::kTls);
  }
  if (!ready) {
    watchdog_.stop();
    std::error_code ignored;
    socket_.close(ignored);
    log::info("session-end").kv("session", id_).kv("client", client_.address).kv("messages", 0)
        .kv("errors", errors_).kv("duration_ms", elapsed_ms(started_));
    co_return;
  }
  Verdict connect = co_await run_filters(Stage::kConnect);
  client_.name = facts_.client_name;  // verified at connect: for XCLIENT/XFORWARD NAME= and Received
  connect_facts_ = facts_;  // what STARTTLS goes back to (forget_plaintext)
  if (connect.action == Verdict::Action::kReject || connect.action == Verdict::Action::kTempfail ||
      connect.action == Verdict::Action::kDisconnect) {
    // Refused at connect: the MTA never hears of this client (RFC 5321 §3.1).
    Reply r = verdict_reply(connect, Stage::kConnect);
    if (connect.action != Verdict::Action::kReject) r.code = 421;
    metrics::session_refused(listener_.address, metrics::Refusal::kFilter);
    append_reply(output_, r);
    quit_ = true;
  } else if (co_await talks_before_greeting()) {
    reply(replies::kEarlyTalker);
    quit_ = true;
  } else {
    append_reply(output_, 220, config_->server.hostname + " ESMTP postern");
  }
  while (!quit_) {
    co_await process_input();
    co_await settle_mail();  // never wait for the client with a MAIL reply owed
    if (!co_await flush() || quit_) break;
    if (starttls_pending_) {
      starttls_pending_ = false;
      if (!co_await start_tls()) break;
      continue;
    }
    if (draining_ && mode_ != Mode::kData && mode_ != Mode::kBdat) {
      reply(replies::kShuttingDown);
      break;
    }
    if (!co_await fill()) break;
  }
  co_await flush();
  // SMTP ends with QUIT, not close_notify: the TLS session stays resumable
  // from the cache (TLS 1.2 session ids), as tickets are (issue 23).
  if (tls_) SSL_set_shutdown(tls_->native_handle(), SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
  if (txn_.active) co_await abandon_transaction();
  if (upstream_) co_await upstream_->quit();
  co_await run_filters(Stage::kClose);
  watchdog_.stop();
  std::error_code ignored;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
  log::info("session-end").kv("session", id_).kv("client", client_.address).kv("messages", messages_)
      .kv("errors", errors_).kv("duration_ms", elapsed_ms(started_));
}

// Takes the session's place in the limits; false (the client told 421 where
// it can read it, and a log line) when they are full. An implicit-TLS
// listener closes without a word: a plaintext reply is noise to a TLS
// client, and a handshake is what the limit is there to save.
asio::awaitable<bool> Session::admit(SessionLimiter::Ticket& ticket, SessionLimiter::Scope scope) {
  auto refusal = SessionLimiter::instance().admit(client_.address, config_->limits, ticket, scope);
  if (refusal == SessionLimiter::Refusal::kNone) co_return true;
  const bool implicit_tls = listener_.tls == Config::Listener::Tls::kImplicit;
  metrics::session_refused(listener_.address, metrics::Refusal::kLimit);
  log::warning("session-limit").kv("session", id_).kv("client", client_.address)
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
  if (tls_ || config_->timeouts.greet_pause <= Seconds(0)) co_return false;
  std::error_code ec;
  if (socket_.available(ec) == 0 && !ec) {
    watchdog_.arm(config_->timeouts.greet_pause);
    std::tie(ec) = co_await socket_.async_wait(asio::ip::tcp::socket::wait_read, use_nothrow);
    watchdog_.disarm();
    if (watchdog_.expired()) co_return false;
  }
  std::size_t early = socket_.available(ec);
  if (ec || early == 0) co_return false;  // nothing, or gone: the normal path finds out
  log::warning("early-talker").kv("session", id_).kv("client", client_.address).kv("octets", early);
  co_return true;
}

asio::awaitable<bool> Session::flush() {
  if (output_.empty()) co_return true;
  metrics::count_replies(output_);
  watchdog_.arm(config_->timeouts.command);
  std::error_code ec;
  if (tls_) {
    std::tie(ec, std::ignore) = co_await asio::async_write(*tls_, asio::buffer(output_), use_nothrow);
  } else {
    std::tie(ec, std::ignore) = co_await asio::async_write(socket_, asio::buffer(output_), use_nothrow);
  }
  watchdog_.disarm();
  output_.clear();
  if (ec) {
    log::info("client-lost").kv("session", id_).kv("op", "write")
        .kv("error", watchdog_.expired() ? "timeout" : ec.message());
    co_return false;
  }
  co_return true;
}

// Appends what the client sends next to input_, within `timeout`.
asio::awaitable<std::error_code> Session::read_more(Seconds timeout) {
  if (input_pos_ > 0) {
    input_.erase(0, input_pos_);
    input_pos_ = 0;
  }
  if (!tls_) {
    std::error_code ec = co_await read_plain(timeout);
    co_return ec;
  }
  // TLS may hold decrypted octets the socket does not show: read into the
  // buffer itself; a small read between messages, so that an idle session
  // does not wait on a content-sized buffer.
  const bool content = mode_ == Mode::kData || mode_ == Mode::kBdat;
  const std::size_t chunk = content ? limits::kReadChunk : limits::kCommandReadChunk;
  if (input_.empty() && !content && input_.capacity() > limits::kIdleBuffer) std::string().swap(input_);
  std::size_t old = input_.size();
  input_.resize(old + chunk);
  auto buffer = asio::buffer(input_.data() + old, chunk);
  watchdog_.arm(timeout);
  reading_ = true;
  auto [ec, n] = co_await tls_->async_read_some(buffer, use_nothrow);
  reading_ = false;
  watchdog_.disarm();
  input_.resize(old + n);
  metrics::registry().bytes_received.inc(n);
  co_return ec;
}

// Plain TCP (proxy/socket_read.h). An idle session gives its input buffer
// back while it waits (issue 8: 10,000 idle sessions <= 200 MB).
asio::awaitable<std::error_code> Session::read_plain(Seconds timeout) {
  std::size_t n = 0;
  std::error_code ec = read_ready(socket_, input_, n);
  while (ec == asio::error::would_block) {
    if (input_.empty()) std::string().swap(input_);
    watchdog_.arm(timeout);
    reading_ = true;
    std::tie(ec) = co_await socket_.async_wait(asio::socket_base::wait_read, use_nothrow);
    reading_ = false;
    watchdog_.disarm();
    if (ec) co_return ec;
    ec = read_ready(socket_, input_, n);
  }
  metrics::registry().bytes_received.inc(n);
  co_return ec;
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
  std::error_code ec = co_await read_more(timeout);
  if (!ec) co_return true;
  if (watchdog_.expired()) {
    metrics::registry().timeouts.inc();
    log::warning("timeout").kv("session", id_).kv("client", client_.address)
        .kv("state", mode_ == Mode::kData ? "data" : "command");
    reply(replies::kTimeout);
  } else if (draining_ && ec == asio::error::operation_aborted) {
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
  if (!SessionLimiter::in_networks(client_.address, listener_.proxy_protocol_from)) {
    log::warning("proxy-protocol-untrusted").kv("session", id_).kv("peer", client_.address)
        .kv("listener", facts_.listener).kv("action", "closed; not in listener.proxy_protocol_from");
    co_return false;
  }
  // Read exactly the header's octets, never more: what follows may be a TLS
  // ClientHello that the TLS engine must read from the socket itself.
  auto read_exact = [this](std::size_t n) -> asio::awaitable<bool> {
    std::size_t old = input_.size();
    input_.resize(old + n);
    auto [ec, got] = co_await asio::async_read(socket_, asio::buffer(input_.data() + old, n), use_nothrow);
    input_.resize(old + got);
    co_return !ec;
  };
  watchdog_.arm(config_->timeouts.command);
  // Octet by octet (a v1 line is at most 107), so a client that is not a
  // proxy is told off at its first wrong octet; a v2 header's address block
  // is read at once once its length is known.
  bool ok = co_await read_exact(1);
  ProxyHeader h;
  while (ok) {
    h = parse_proxy_header(input_);
    if (h.outcome != ProxyHeader::Outcome::kIncomplete) break;
    std::size_t need = 1;
    if (input_.size() >= 16 && input_[0] == '\r') {  // v2: the rest at once
      std::size_t len = (static_cast<unsigned char>(input_[14]) << 8) | static_cast<unsigned char>(input_[15]);
      need = std::max<std::size_t>(1, 16 + len - input_.size());
    }
    ok = co_await read_exact(need);
  }
  watchdog_.disarm();
  if (!ok) {
    log::warning("proxy-protocol-error").kv("session", id_).kv("peer", client_.address)
        .kv("error", watchdog_.expired() ? "timeout" : "connection closed before the header");
    co_return false;
  }
  if (h.outcome == ProxyHeader::Outcome::kInvalid) {
    log::warning("proxy-protocol-error").kv("session", id_).kv("peer", client_.address).kv("error", h.error);
    co_return false;
  }
  input_.clear();
  input_pos_ = 0;
  if (!h.local) {
    std::error_code ec;
    asio::ip::address addr = asio::ip::make_address(h.source_ip, ec);
    if (!ec && addr.is_v6() && addr.to_v6().is_v4_mapped()) {
      addr = asio::ip::make_address_v4(asio::ip::v4_mapped, addr.to_v6());
    }
    log::debug("proxy-protocol").kv("session", id_).kv("peer", client_.address).kv("client", h.source_ip);
    client_.address = ec ? h.source_ip : addr.to_string();
    client_.port = h.source_port;
    facts_.client_ip = client_.address;
    facts_.client_port = client_.port;
  }
  co_return true;
}

// The TLS handshake as server, on the plain socket (RFC 3207, RFC 8314).
asio::awaitable<bool> Session::start_tls() {
  tls_ = std::make_unique<asio::ssl::stream<asio::ip::tcp::socket&>>(socket_, *tls_context_);
  watchdog_.arm(config_->timeouts.command);
  auto [ec] = co_await tls_->async_handshake(asio::ssl::stream_base::server, use_nothrow);
  watchdog_.disarm();
  metrics::tls_handshake(!ec, ec && watchdog_.expired());
  if (ec) {
    log::warning("tls-failed").kv("session", id_).kv("client", client_.address)
        .kv("error", watchdog_.expired() ? "timeout" : ec.message());
    tls_.reset();
    co_return false;
  }
  facts_.tls = tls_facts(tls_->native_handle());
  log::info("tls").kv("session", id_).kv("client", client_.address).kv("version", facts_.tls.version)
      .kv("cipher", facts_.tls.cipher).kv("peer", facts_.tls.peer_subject.empty() ? "none" : facts_.tls.peer_subject)
      .kv("peer_sha256", facts_.tls.peer_fingerprint.empty() ? "none" : facts_.tls.peer_fingerprint);
  co_return true;
}

// STARTTLS (RFC 3207 §4.2): whatever the client pipelined after it in
// plaintext is dropped (CVE-2011-0411), and the dialogue starts over before
// EHLO, forgetting everything learned in plaintext.
asio::awaitable<void> Session::handle_starttls() {
  if (!tls_context_ || listener_.tls != Config::Listener::Tls::kStarttls) {
    client_error(replies::kNotImplemented);
    co_return;
  }
  if (tls_) {
    client_error(replies::kTlsAlreadyActive);
    co_return;
  }
  reply(replies::kReadyToStartTls);
  if (input_pos_ < input_.size()) {
    log::warning("starttls-injection").kv("session", id_).kv("client", client_.address)
        .kv("discarded_octets", input_.size() - input_pos_);
  }
  input_.clear();
  input_pos_ = 0;
  if (txn_.active) co_await abandon_transaction();
  if (upstream_) {  // it heard the plaintext identity (XCLIENT HELO=...); the next MAIL opens a new one
    co_await upstream_->quit();
    upstream_.reset();
  }
  forget_plaintext();
  starttls_pending_ = true;  // the handshake follows once the 220 is sent (run())
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
  ClientFacts client;
  client.session = client_.session;
  client.address = client_.address;
  client.port = client_.port;
  client.name = client_.name;
  client_ = std::move(client);
  greeted_ = false;
  esmtp_ = false;
  auth_ = AuthExchange{};
}

namespace {
std::string base64_decode(std::string_view in) {
  std::string out((in.size() + 3) / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  if (n < 0) return {};
  std::size_t len = static_cast<std::size_t>(n);
  if (in.size() >= 1 && in.back() == '=') --len;  // EVP_DecodeBlock counts padding
  if (in.size() >= 2 && in[in.size() - 2] == '=') --len;
  out.resize(std::min(len, out.size()));
  return out;
}

// RFC 4954 §4: a SASL response (or initial response) is base64 (RFC 4648's
// alphabet; "=" alone is an empty initial response) or "*" to cancel.
bool is_sasl_response(std::string_view line) {
  if (line == "*") return true;
  return line.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") ==
         std::string_view::npos;
}

// The identity a SASL response names: PLAIN's authcid (RFC 4616), LOGIN's user.
std::string sasl_user(std::string_view mechanism, std::string_view response) {
  std::string raw = base64_decode(response);
  if (mechanism == "PLAIN") {
    std::size_t first = raw.find('\0');
    if (first == std::string::npos) return {};
    std::size_t second = raw.find('\0', first + 1);
    return raw.substr(first + 1, second == std::string::npos ? std::string::npos : second - first - 1);
  }
  return raw;
}
}  // namespace

// AUTH (RFC 4954), relayed: the MTA checks the credentials, postern only
// carries the exchange under TLS and learns who authenticated. Credentials
// are never logged.
asio::awaitable<void> Session::handle_auth(const Command& cmd) {
  if (listener_.auth != Config::Listener::Auth::kPassthrough) {
    client_error(replies::kAuthNotOffered);
    co_return;
  }
  if (!tls_) {
    client_error(replies::kAuthNeedsTls);
    co_return;
  }
  if (!greeted_ || !esmtp_) {
    client_error(replies::kNeedHelo);
    co_return;
  }
  if (!facts_.auth_user.empty()) {
    client_error(replies::kAuthAlready);
    co_return;
  }
  if (txn_.active) {
    client_error(replies::kAuthInTransaction);
    co_return;
  }
  std::string_view args = cmd.args;
  std::size_t sp = args.find(' ');
  std::string mechanism(args.substr(0, sp));
  for (char& c : mechanism) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (mechanism != "PLAIN" && mechanism != "LOGIN") {
    client_error(replies::kAuthMechanism);
    co_return;
  }
  if (sp != std::string_view::npos && !is_sasl_response(args.substr(sp + 1))) {
    auth_ = AuthExchange{false, mechanism, {}, false};
    co_await refuse_sasl_response();
    co_return;
  }
  auth_ = AuthExchange{true, mechanism, {}, false};
  if (sp != std::string_view::npos && mechanism == "PLAIN") {  // initial response (RFC 4954 §4)
    auth_.user = sasl_user(mechanism, args.substr(sp + 1));
    auth_.user_known = true;
  }
  co_await auth_reply(co_await upstream().auth(fmt::format("AUTH {}", cmd.args), true, mechanism));
}

asio::awaitable<void> Session::continue_auth(std::string_view line) {
  if (!is_sasl_response(line)) {
    co_await refuse_sasl_response();
    co_return;
  }
  if (line == "*") {  // the client cancels (RFC 4954 §4)
    co_await auth_reply(co_await upstream().auth(line, false, auth_.mechanism));
    co_return;
  }
  if (!auth_.user_known) {
    auth_.user = sasl_user(auth_.mechanism, line);
    auth_.user_known = true;
  }
  co_await auth_reply(co_await upstream().auth(line, false, auth_.mechanism));
}

// Relays the MTA's answer; 334 continues the exchange, 235 ends it authenticated.
asio::awaitable<void> Session::auth_reply(UpstreamReply r) {
  relay_reply(r);
  if (r.reply.code == 334 && !r.connection_lost) co_return;
  auth_.active = false;
  if (r.reply.code == 235) {
    facts_.auth_user = client_.login = log::sanitize(auth_.user);
    log::info("auth").kv("session", id_).kv("client", client_.address).kv("mechanism", auth_.mechanism)
        .kv("user", facts_.auth_user).kv("result", "ok");
  } else {
    log::warning("auth").kv("session", id_).kv("client", client_.address).kv("mechanism", auth_.mechanism)
        .kv("result", fmt::format("{} {}", r.reply.code, r.reply.first_line()));
    // A 4xx (MTA without AUTH, busy) says nothing about the credentials.
    if (r.reply.klass() == 5) co_await auth_failed();
  }
  auth_.user.clear();
}

// A SASL response that is not base64 or "*" (RFC 4954 §4): a CR, LF or NUL
// in it would reach the MTA as a line postern did not read. Refused with
// 501, never relayed; an exchange the MTA has open is cancelled with "*"
// and its answer to that dropped.
asio::awaitable<void> Session::refuse_sasl_response() {
  log::warning("sasl-response-refused").kv("session", id_).kv("client", client_.address)
      .kv("mechanism", auth_.mechanism).kv("reason", "not base64 or *");
  const bool open_upstream = auth_.active;
  auth_.active = false;
  auth_.user.clear();
  if (open_upstream) (void)co_await upstream().auth("*", false, auth_.mechanism);
  reply(replies::kSaslResponseSyntax);
  co_await auth_failed();
}

// One failed AUTH: counted toward limits.errors and limits.auth_failures,
// and answered late (a tarpit: auth_failure_delay times the failures so
// far); the failure that reaches limits.auth_failures ends the session.
asio::awaitable<void> Session::auth_failed() {
  ++auth_failures_;
  const Config::Limits& limits = config_->limits;
  if (limits.auth_failure_delay > Seconds(0)) {
    asio::steady_timer pause(socket_.get_executor(), std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                         limits.auth_failure_delay * static_cast<double>(auth_failures_)));
    co_await pause.async_wait(use_nothrow);
  }
  if (auth_failures_ >= limits.auth_failures) {
    log::warning("too-many-auth-failures").kv("session", id_).kv("client", client_.address)
        .kv("failures", auth_failures_).kv("action", "closed with 421");
    metrics::registry().client_errors.inc();
    reply(replies::kTooManyAuthFailures);
    quit_ = true;
    co_return;
  }
  note_error();
}

// Handles every complete command (and DATA content) that is buffered.
asio::awaitable<void> Session::process_input() {
  while (!quit_) {
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
      log::warning("line-too-long").kv("session", id_).kv("client", client_.address);
      client_error(replies::kLineTooLong);
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
        if (auth_.active) co_await refuse_sasl_response();  // an LF inside the response
        else client_error(replies::kBareLfInCommand);
        continue;
      case LineScan::Outcome::kComplete:
        input_pos_ += scan.consumed;
        if (auth_.active) co_await continue_auth(scan.line);
        else co_await handle_command(scan.line);
        continue;
    }
  }
}

asio::awaitable<void> Session::handle_command(std::string_view line) {
  Command cmd = parse_command(line);
  // A held MAIL is answered before any reply but handle_rcpt()'s (which
  // settles it itself where it answers locally).
  const bool to_rcpt = cmd.verb == Verb::kRcpt && !cmd.args.empty() && line.find('\0') == std::string_view::npos &&
                       !(listener_.require_tls && !tls_);
  if (txn_.mail_held && !to_rcpt) co_await settle_mail();
  if (line.find('\0') != std::string_view::npos) {
    client_error(replies::kNulInCommand);
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
  const unsigned flags = cmd.spec->flags;
  if (flags & kNotImplemented) {
    client_error(replies::kNotImplemented);
    co_return;
  }
  if ((flags & kArgsNone) && !cmd.args.empty()) {
    client_error(replies::kNoArguments);
    co_return;
  }
  if ((flags & kArgsRequired) && cmd.args.empty()) {
    switch (cmd.verb) {
      case Verb::kEhlo: case Verb::kHelo: client_error(replies::kHeloSyntax); break;
      case Verb::kMail: client_error(replies::kMailSyntax); break;
      case Verb::kRcpt: client_error(replies::kRcptSyntax); break;
      default: client_error(replies::kArgsSyntax); break;
    }
    co_return;
  }
  if (listener_.require_tls && !tls_ &&
      (cmd.verb == Verb::kMail || cmd.verb == Verb::kRcpt || cmd.verb == Verb::kData || cmd.verb == Verb::kBdat)) {
    client_error(replies::kTlsRequired);
    co_return;
  }
  switch (cmd.verb) {
    case Verb::kEhlo:
    case Verb::kHelo:
      if (txn_.active) co_await abandon_transaction();  // EHLO resets (§4.1.4)
      co_await handle_helo(cmd);
      break;
    case Verb::kStarttls: co_await handle_starttls(); break;
    case Verb::kAuth: co_await handle_auth(cmd); break;
    case Verb::kMail: co_await handle_mail(cmd); break;
    case Verb::kRcpt: co_await handle_rcpt(cmd); break;
    case Verb::kData: handle_data(); break;
    case Verb::kBdat: handle_bdat(cmd); break;
    case Verb::kRset:
      if (txn_.active) co_await abandon_transaction();
      reply(replies::kOk);
      break;
    case Verb::kNoop: reply(replies::kOk); break;
    case Verb::kHelp: reply(replies::kHelp); break;
    case Verb::kVrfy: reply(replies::kVrfy); break;
    case Verb::kQuit:
      reply(replies::kBye);
      quit_ = true;
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
  client_.helo = clean_helo(cmd.args);
  facts_.helo = client_.helo;
  facts_.esmtp = client_.esmtp = cmd.verb == Verb::kEhlo;
  Verdict v = co_await run_filters(Stage::kHelo);
  if (v.action == Verdict::Action::kReject || v.action == Verdict::Action::kTempfail ||
      v.action == Verdict::Action::kDisconnect) {
    append_reply(output_, verdict_reply(v, Stage::kHelo));
    if (v.action == Verdict::Action::kDisconnect) quit_ = true;
    greeted_ = false;
    co_return;
  }
  greeted_ = true;
  esmtp_ = cmd.verb == Verb::kEhlo;
  const std::string& host = config_->server.hostname;
  if (!esmtp_) {
    append_reply(output_, 250, host);
    co_return;
  }
  const bool offer_tls = tls_context_ && !tls_ && listener_.tls == Config::Listener::Tls::kStarttls;
  const bool offer_auth = tls_ && listener_.auth == Config::Listener::Auth::kPassthrough && facts_.auth_user.empty();
  // SMTPUTF8 and DSN only when the MTA behind can carry them (RFC 6531 §3.4, RFC 3461 §4).
  append_reply(output_, 250,
               fmt::format("{}\nPIPELINING\nSIZE {}\n8BITMIME\nCHUNKING\nENHANCEDSTATUSCODES{}{}{}{}", host,
                           config_->limits.message_size, offer_tls ? "\nSTARTTLS" : "",
                           offer_auth ? "\nAUTH PLAIN LOGIN" : "",
                           caps_->smtputf8 ? "\nSMTPUTF8" : "", caps_->dsn ? "\nDSN" : ""));
}

// MAIL parameters postern knows (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531
// SMTPUTF8, RFC 3461 RET/ENVID); null when `p` is acceptable.
const replies::Def* Session::check_mail_param(const EsmtpParam& p) const {
  if (!esmtp_) return &replies::kUnknownParameter;
  if (p.keyword == "SIZE") {
    // size-value = 1*20DIGIT.
    if (!p.has_value || p.value.size() > 20 || p.value.find_first_not_of("0123456789") != std::string::npos) {
      return &replies::kBadParameter;
    }
    if (p.value.size() > 15 || std::stoull(p.value) > config_->limits.message_size) return &replies::kSizeExceeded;
    return nullptr;
  }
  if (p.keyword == "BODY") {
    bool ok = p.has_value && (iequals(p.value, "7BIT") || iequals(p.value, "8BITMIME"));
    return ok ? nullptr : &replies::kBadParameter;
  }
  if (p.keyword == "SMTPUTF8" && caps_->smtputf8) return p.has_value ? &replies::kBadParameter : nullptr;
  if (p.keyword == "RET" && caps_->dsn) {
    bool ok = p.has_value && (iequals(p.value, "FULL") || iequals(p.value, "HDRS"));
    return ok ? nullptr : &replies::kBadParameter;
  }
  if (p.keyword == "ENVID" && caps_->dsn) {
    return p.has_value && p.value.size() <= 100 && is_xtext(p.value) ? nullptr : &replies::kBadParameter;
  }
  return &replies::kUnknownParameter;
}

// RCPT parameters: RFC 3461 NOTIFY and ORCPT, when DSN is offered.
const replies::Def* Session::check_rcpt_param(const EsmtpParam& p) const {
  if (!esmtp_ || !caps_->dsn) return &replies::kUnknownParameter;
  if (p.keyword == "NOTIFY") {
    if (!p.has_value) return &replies::kBadParameter;
    if (iequals(p.value, "NEVER")) return nullptr;
    std::string_view rest = p.value;
    while (!rest.empty()) {
      std::size_t comma = rest.find(',');
      std::string_view word = rest.substr(0, comma);
      if (!iequals(word, "SUCCESS") && !iequals(word, "FAILURE") && !iequals(word, "DELAY")) {
        return &replies::kBadParameter;
      }
      rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    }
    return nullptr;
  }
  if (p.keyword == "ORCPT") {
    // addr-type ";" xtext, at most 500 characters (RFC 3461 §4.2).
    std::size_t semi = p.value.find(';');
    bool ok = p.has_value && p.value.size() <= 500 && semi != std::string::npos && semi > 0 &&
              is_xtext(std::string_view(p.value).substr(semi + 1));
    return ok ? nullptr : &replies::kBadParameter;
  }
  return &replies::kUnknownParameter;
}

asio::awaitable<void> Session::handle_mail(const Command& cmd) {
  if (!greeted_) {
    client_error(replies::kNeedHelo);
    co_return;
  }
  if (txn_.active) {
    client_error(replies::kNestedMail);
    co_return;
  }
  if (messages_ >= config_->limits.messages_per_session) {
    reply(replies::kTooManyMessages);
    quit_ = true;
    co_return;
  }
  // The path may hold UTF-8 only when MAIL also says SMTPUTF8 (RFC 6531 §3.4).
  PathArgs args = parse_mail_args(cmd.args, esmtp_ && caps_->smtputf8);
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
    if (const replies::Def* bad = check_mail_param(p)) {
      if (bad == &replies::kSizeExceeded) reply(*bad);
      else client_error(*bad);
      co_return;
    }
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
      append_reply(output_, verdict_reply(v, Stage::kMail));
      if (v.action == Verdict::Action::kDisconnect) quit_ = true;
      {
        UpstreamReply refused{verdict_reply(v, Stage::kMail), true};
        write_audit(refused.reply.klass() == 4 ? "tempfailed" : "rejected", refused, v.reason, "mail", {}, v.rule);
      }
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
  txn_.active = true;
  txn_.mail_params = std::move(args.params);
  if (r.held) {
    txn_.mail_held = true;
    co_return;
  }
  mail_replied(r);
}

void Session::mail_replied(const UpstreamReply& r) {
  relay_reply(r);
  if (r.reply.positive()) return;
  log::info("mail-refused").kv("session", id_).kv("from", "<" + txn_.facts.reverse_path.str() + ">")
      .kv("reply", fmt::format("{} {}", r.reply.code, r.reply.first_line())).kv("by", r.local ? "postern" : "upstream");
  reset_transaction();
}

asio::awaitable<void> Session::settle_mail() {
  if (!txn_.mail_held) co_return;
  txn_.mail_held = false;
  UpstreamReply r = co_await upstream().send_held_mail();
  mail_replied(r);
}

bool Session::rcpt_pipelined() const {
  std::string_view rest(input_);
  rest.remove_prefix(std::min(input_pos_, rest.size()));
  return rest.size() > 5 && strncasecmp(rest.data(), "RCPT ", 5) == 0 && rest.find('\n') != std::string_view::npos;
}

asio::awaitable<void> Session::handle_rcpt(const Command& cmd) {
  if (!txn_.active) {
    client_error(replies::kNeedMail);
    co_return;
  }
  if (txn_.failed) {
    reply(replies::kTransactionFailed);
    co_return;
  }
  // Every local answer to this RCPT first needs MAIL's, if MAIL was held.
  PathArgs args = parse_rcpt_args(cmd.args, txn_.smtputf8);
  if (!args.error && !valid_utf8(cmd.args)) args.error = &replies::kInvalidUtf8Address;  // RFC 6531 §3.3
  if (args.error) {
    co_await settle_mail();
    client_error(*args.error);
    co_return;
  }
  for (const EsmtpParam& p : args.params) {
    if (const replies::Def* bad = check_rcpt_param(p)) {
      co_await settle_mail();
      client_error(*bad);
      co_return;
    }
  }
  ++txn_.rcpt_commands;
  if (txn_.facts.recipients.size() >= config_->limits.recipients) {
    co_await settle_mail();
    metrics::registry().recipients[1].inc();
    reply(replies::kTooManyRecipients);
    co_return;
  }
  txn_.facts.current_rcpt = args.mailbox;
  for (const EsmtpParam& p : args.params) {
    txn_.facts.rcpt_parameters.push_back(p.has_value ? p.keyword + "=" + p.value : p.keyword);
  }
  Verdict v = co_await run_filters(Stage::kRcpt);
  txn_.facts.current_rcpt.reset();
  txn_.facts.rcpt_parameters.clear();
  switch (v.action) {
    case Verdict::Action::kReject:
    case Verdict::Action::kTempfail:
    case Verdict::Action::kDisconnect:  // this recipient only; the rest may pass
      co_await settle_mail();
      metrics::registry().recipients[1].inc();
      log::info("rcpt-refused").kv("session", id_).kv("to", "<" + args.mailbox.str() + ">")
          .kv("by", "filter").kv("reason", v.reason);
      append_reply(output_, verdict_reply(v, Stage::kRcpt));
      if (v.action == Verdict::Action::kDisconnect) quit_ = true;
      co_return;
    case Verdict::Action::kDiscard:
    case Verdict::Action::kQuarantine:
      if (!txn_.pending) txn_.pending = v;
      break;
    default:
      break;
  }
  UpstreamReply r = co_await upstream().rcpt(args.mailbox, args.params);
  if (txn_.mail_held) {
    txn_.mail_held = false;
    mail_replied(upstream().held_mail_reply());
    if (!txn_.active) {  // MAIL refused: the MTA's answer to this RCPT, as it is
      metrics::registry().recipients[1].inc();
      relay_reply(r);
      co_return;
    }
  }
  relay_reply(r);
  if (r.connection_lost) txn_.failed = true;
  metrics::registry().recipients[r.reply.positive() ? 0 : 1].inc();
  if (r.reply.positive()) {
    txn_.facts.recipients.push_back(std::move(args.mailbox));
  } else {
    log::info("rcpt-refused").kv("session", id_).kv("to", "<" + args.mailbox.str() + ">")
        .kv("reply", fmt::format("{} {}", r.reply.code, r.reply.first_line())).kv("by", r.local ? "postern" : "upstream");
  }
}

void Session::handle_data() {
  if (!txn_.active) {
    client_error(greeted_ ? replies::kNeedMail : replies::kNeedHelo);
    return;
  }
  if (txn_.failed) {
    reply(replies::kTransactionFailed);
    return;
  }
  if (txn_.facts.recipients.empty()) {
    if (txn_.rcpt_commands > 0) reply(replies::kNoValidRecipients);
    else client_error(replies::kNeedRcpt);
    return;
  }
  if (txn_.chunked) {
    client_error(replies::kDataAfterBdat);
    return;
  }
  reply(replies::kStartData);
  mode_ = Mode::kData;
  decoder_.reset();
  spool_.clear();
  spool_failed_ = false;
  add_content_taps();
}

// BDAT size [LAST] (RFC 3030 §2): the octets follow the command at once, so
// even a refused BDAT has its chunk read and dropped to stay in step.
void Session::handle_bdat(const Command& cmd) {
  std::string_view args = cmd.args;
  std::size_t sp = args.find(' ');
  std::string_view size = args.substr(0, sp);
  std::string_view rest = sp == std::string_view::npos ? std::string_view{} : args.substr(sp + 1);
  bool last = false;
  if (!rest.empty()) {
    if (!iequals(rest, "LAST")) size = {};
    last = true;
  }
  if (size.empty() || size.size() > 15 || size.find_first_not_of("0123456789") != std::string_view::npos) {
    // Without a size postern cannot know where the chunk ends: stop here.
    client_error(replies::kBdatSyntax);
    quit_ = true;
    return;
  }
  chunk_left_ = chunk_size_ = std::stoull(std::string(size));
  chunk_last_ = last;
  chunk_discard_ = true;
  mode_ = Mode::kBdat;
  if (!txn_.active) {
    client_error(greeted_ ? replies::kNeedMail : replies::kNeedHelo);
  } else if (txn_.failed) {
    reply(replies::kTransactionFailed);
  } else if (txn_.facts.recipients.empty()) {
    if (txn_.rcpt_commands > 0) reply(replies::kNoValidRecipients);
    else client_error(replies::kNeedRcpt);
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
    append_reply(output_, 250, fmt::format("2.0.0 Ok: {} octets received", chunk_size_));
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

  UpstreamReply result;
  const char* outcome = nullptr;
  Verdict verdict;
  AuditHeaders audit_headers;  // read while the message exists, written after the reply
  if (refusal) {
    result = UpstreamReply{Reply{refusal->code, std::string(refusal->text)}, true};
    if (bare) {
      log::warning("bare-line-ending").kv("session", id_).kv("client", client_.address)
          .kv("bare_lf", faults.bare_lf ? "yes" : "no").kv("bare_cr", faults.bare_cr ? "yes" : "no");
    }
    co_await upstream().reset();
  } else {
    Message message(spool_, header_limits());
    if (message.headers_truncated()) {
      // Fields past the limit would reach the MTA unread by any filter.
      co_await refuse_header_section(message, result);
      append_reply(output_, result.reply);
      metrics::message_done(metrics::MessageResult::kRejected, decoder_.size(), metrics::seconds_since(end_of_content),
                            metrics::seconds_since(txn_.started));
      write_audit("rejected", result, "header section over limit", "eom", AuditHeaders{});
      reset_transaction();
      co_return;
    }
    txn_.facts.message = &message;
    verdict = co_await run_filters(Stage::kData);
    if (!verdict.decisive()) verdict = co_await run_filters(Stage::kEom);
    if (!verdict.decisive() && txn_.pending) verdict = *txn_.pending;
    switch (verdict.action) {
      case Verdict::Action::kContinue:
      case Verdict::Action::kAccept:
        result = co_await relay(message);
        break;
      case Verdict::Action::kDiscard:
        // The client hears 250 and the message goes nowhere, by policy.
        result = UpstreamReply{Reply{250, "2.0.0 Ok: discarded"}, true};
        outcome = "discarded";
        break;
      case Verdict::Action::kQuarantine:
        result = quarantine(message, verdict);
        if (result.reply.positive()) outcome = "quarantined";
        break;
      default:  // reject, tempfail, disconnect
        result = UpstreamReply{verdict_reply(verdict, Stage::kEom), true};
        if (verdict.action == Verdict::Action::kDisconnect) quit_ = true;
        break;
    }
    if (current_audit_log()) audit_headers = audit_message_headers(message);
    txn_.facts.message = nullptr;
    if (!result.connection_lost) co_await upstream().reset();
  }
  relay_reply(result);

  if (!outcome) {
    outcome = result.reply.positive() ? "relayed" : result.reply.klass() == 4 ? "tempfailed" : "rejected";
  }
  {
    using R = metrics::MessageResult;
    std::string_view o = outcome;
    R r = o == "relayed" ? (txn_.facts.changes.redirect ? R::kRedirected : R::kRelayed)
          : o == "tempfailed" ? R::kTempfailed : o == "discarded" ? R::kDiscarded
          : o == "quarantined" ? R::kQuarantined : R::kRejected;
    metrics::message_done(r, decoder_.size(), metrics::seconds_since(end_of_content), metrics::seconds_since(txn_.started));
  }
  // The line's values are built only when info lines are written (with
  // level = warning they were ~5 % of the instructions a message without
  // filters, callgrind).
  if (log::enabled(log::Level::kInfo)) {
    std::string to;
    for (const Mailbox& m : txn_.facts.recipients) {
      if (!to.empty()) to.push_back(',');
      to.append("<").append(m.str()).append(">");
    }
    std::string symbols;
    for (const Symbol& sym : txn_.facts.symbols) {
      if (!symbols.empty()) symbols.push_back(',');
      symbols.append(sym.name).append(fmt::format("({:.2f})", sym.score));
    }
    log::Line line = log::info("message");
    line.kv("session", id_).kv("id", txn_.facts.id)
        .kv("client", client_.address).kv("from", "<" + txn_.facts.reverse_path.str() + ">").kv("to", to)
        .kv("size", decoder_.size()).kv("result", outcome).kv("by", result.local ? "postern" : "upstream")
        .kv("upstream", fmt::format("{} {}", result.reply.code, result.reply.first_line()));
    if (!symbols.empty()) line.kv("score", fmt::format("{:.2f}", txn_.facts.score)).kv("symbols", symbols);
    if (verdict.decisive()) line.kv("verdict", action_name(verdict.action)).kv("reason", verdict.reason);
    line.kv("duration_ms", elapsed_ms(txn_.started));
  }
  write_audit(outcome, result, verdict.reason, "eom", audit_headers, verdict.rule);
  reset_transaction();
}

// The header section's bounds of this configuration (issue 15).
HeaderLimits Session::header_limits() const {
  return HeaderLimits{config_->limits.header_section_size, config_->limits.header_fields};
}

// A header section over [limits] header_section_size / header_fields: 552
// 5.3.4 and a log line, nothing relayed.
asio::awaitable<void> Session::refuse_header_section(const Message& message, UpstreamReply& result) {
  const replies::Def& r = replies::kHeaderSectionTooBig;
  result = UpstreamReply{Reply{r.code, std::string(r.text)}, true};
  log::warning("header-section-too-big").kv("session", id_).kv("id", txn_.facts.id).kv("client", client_.address)
      .kv("fields_read", message.headers().size()).kv("size", decoder_.size())
      .kv("limit_size", config_->limits.header_section_size).kv("limit_fields", config_->limits.header_fields);
  co_await upstream().reset();
}

// The message's audit record, after its fate is decided (filters/audit/audit_log.h).
void Session::write_audit(std::string_view outcome, const UpstreamReply& result, const std::string& reason,
                          const char* stage, const AuditHeaders& headers, const std::string& rule) {
  std::shared_ptr<AuditLog> audit = current_audit_log();
  if (!audit) return;
  std::string action(outcome);
  if (action == "relayed" && txn_.facts.changes.redirect) action = "redirected";
  std::string reply = fmt::format("{} {}", result.reply.code, result.reply.text);
  std::replace(reply.begin(), reply.end(), '\n', ' ');
  AuditEntry entry{facts_, txn_.facts, std::move(action), std::move(reply), result.local ? "postern" : "upstream",
                   stage, reason, decoder_.size(), headers.message_id, headers.from_domain, rule, txn_.dkim_signed};
  if (!audit->write(audit_json(entry))) {
    log::warning("audit-dropped").kv("session", id_).kv("id", txn_.facts.id).kv("queued_limit", "full");
  }
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

// Relays the message with the filters' changes: a changed envelope is sent
// again (RSET, MAIL, RCPT...), a changed header section is rendered anew.
asio::awaitable<UpstreamReply> Session::relay(const Message& message) {
  const Changes& changes = txn_.facts.changes;
  if (changes.envelope_changed()) {
    UpstreamReply redo = co_await redo_envelope();
    if (!redo.reply.positive()) co_return redo;
  }
  const DkimSigner* signer = config_->auth.dkim.signer.get();
  const bool sign = signer && signer->wants(facts_.client_ip, facts_.auth_user);
  // A milter's new body (SMFIR_REPLBODY) is relayed, and signed, instead of the received one.
  std::unique_ptr<Spool> new_body;
  if (changes.body) {
    new_body = std::make_unique<Spool>(config_->data.spool_memory, config_->data.spool_dir);
    if (!new_body->append(*changes.body) || !new_body->finish()) {
      co_return UpstreamReply{Reply{replies::kSpoolFailed.code, std::string(replies::kSpoolFailed.text)}, true};
    }
  }
  const Spool& body = new_body ? *new_body : spool_;
  const std::size_t body_offset = new_body ? 0 : message.body_offset();
  const bool as_received = !sign && !new_body && changes.headers.empty() && changes.subject_tag.empty() &&
                           !message.body_would_fold();
  std::string head = as_received ? received_header() : render_header_block(message, changes, received_header());
  // A message received without an empty line gets one before its new body.
  auto separate = [&](std::string& h) {
    if (new_body && new_body->size() > 0 && !h.ends_with("\r\n\r\n")) h += "\r\n";
  };
  separate(head);
  const std::size_t offset = as_received ? 0 : body_offset;
  if (sign) {
    // DKIM signs the fields exactly as relayed, without our Received (RFC
    // 6376 §5.4); the DKIM-Signature field goes above it.
    std::string fields = render_header_block(message, changes, "");
    separate(fields);
    DkimSignOutcome signed_ = co_await signer->sign_async(fields, body, body_offset);
    log::Line line(signed_.status == DkimSignOutcome::Status::kError ? log::Level::kWarning : log::Level::kInfo,
                   "dkim-sign");
    line.kv("session", id_).kv("id", txn_.facts.id).kv("domain", signed_.domain).kv("selector", signed_.selector)
        .kv("result", signed_.status == DkimSignOutcome::Status::kSigned ? "signed"
                      : signed_.status == DkimSignOutcome::Status::kError ? "error" : "skipped");
    if (!signed_.reason.empty()) line.kv("reason", signed_.reason);
    if (signed_.status == DkimSignOutcome::Status::kError && signer->options().tempfail_on_error) {
      co_return UpstreamReply{Reply{replies::kDkimSignFailed.code, std::string(replies::kDkimSignFailed.text)}, true};
    }
    head = signed_.field + head;
    txn_.dkim_signed = signed_.status == DkimSignOutcome::Status::kSigned;
  }
  UpstreamReply r = co_await upstream().data(head, body, offset, txn_.facts.reverse_path);
  if (r.reply.positive()) {
    metrics::registry().message_relayed_bytes.inc(head.size() + body.size() - std::min(offset, body.size()));
  }
  co_return r;
}

// The envelope after the filters' changes, mirrored to the upstream anew. A
// recipient the MTA refuses now cannot be refused to the client one by one
// any more, so any refusal tempfails the whole message: nothing is lost.
asio::awaitable<UpstreamReply> Session::redo_envelope() {
  TransactionFacts& t = txn_.facts;
  const Changes& c = t.changes;
  if (c.reverse_path) t.reverse_path = *c.reverse_path;
  std::vector<Mailbox> rcpts = c.redirect ? *c.redirect : t.recipients;
  if (!c.redirect) {
    for (const Mailbox& add : c.add_recipients) rcpts.push_back(add);
    std::erase_if(rcpts, [&](const Mailbox& m) {
      for (const Mailbox& r : c.remove_recipients) {
        if (r.str() == m.str()) return true;
      }
      return false;
    });
  }
  if (rcpts.empty()) {
    co_return UpstreamReply{Reply{250, "2.0.0 Ok: no recipients left after filtering"}, true};
  }
  t.recipients = rcpts;
  co_await upstream().reset();
  UpstreamReply r = co_await upstream().mail(t.reverse_path, txn_.mail_params, false);
  if (!r.reply.positive() || r.closing) {
    if (r.reply.klass() == 5) r.reply.code = 451;  // the client was already told 250 to MAIL
    if (r.closing && r.reply.code != 421) {  // MAIL's 250, then the MTA's 421: never the message's 250
      r.reply = Reply{replies::kUpstreamClosing.code, std::string(replies::kUpstreamClosing.text)};
    }
    co_return r;
  }
  for (const Mailbox& m : rcpts) {
    UpstreamReply rr = co_await upstream().rcpt(m, {});
    if (rr.closing) {  // the MTA's 421: never a 250 for the message
      if (rr.reply.code != 421) {
        rr.reply = Reply{replies::kUpstreamClosing.code, std::string(replies::kUpstreamClosing.text)};
      }
      co_return rr;
    }
    if (!rr.reply.positive()) {
      log::warning("redo-rcpt-refused").kv("session", id_).kv("to", "<" + m.str() + ">")
          .kv("reply", fmt::format("{} {}", rr.reply.code, rr.reply.first_line()));
      co_return UpstreamReply{Reply{451, "4.3.0 Error: changed recipient refused upstream, try again later"}, true,
                              rr.connection_lost};
    }
  }
  co_return UpstreamReply{Reply{250, "2.0.0 Ok"}, true};
}

// Writes the message to the quarantine Maildir with its envelope and reason.
UpstreamReply Session::quarantine(const Message& message, const Verdict& verdict) {
  const TransactionFacts& t = txn_.facts;
  // Folded like every field postern writes: the reason may carry what the
  // client sent (issue 15).
  std::string head = fold_header_field(
      "X-Postern-Quarantine", fmt::format("session={}; client={}; reason={}", id_, client_.address,
                                          log::sanitize(verdict.reason.empty() ? "policy" : verdict.reason)));
  head += fold_header_field("X-Postern-Envelope-From", fmt::format("<{}>", t.reverse_path.str()));
  for (const Mailbox& m : t.recipients) head += fold_header_field("X-Postern-Envelope-To", fmt::format("<{}>", m.str()));
  head += render_header_block(message, t.changes, received_header());
  std::string file = deliver_to_maildir(config_->quarantine.dir, config_->server.hostname, head, spool_,
                                        message.body_offset());
  if (file.empty()) return UpstreamReply{Reply{replies::kSpoolFailed.code, std::string(replies::kSpoolFailed.text)}, true};
  return UpstreamReply{Reply{250, "2.0.0 Ok: quarantined as " + file}, true};
}

// An upstream reply to the client. After the MTA's 421 the session ends
// with a 421 too (docs/operations.md "When the MTA says 421").
void Session::relay_reply(const UpstreamReply& r) {
  append_reply(output_, r.reply);
  if (!r.closing) return;
  if (r.reply.code != 421) reply(replies::kUpstreamClosing);
  log::warning("upstream-closing").kv("session", id_).kv("client", client_.address).kv("action", "421 and close");
  quit_ = true;
}

// The client gave up on a transaction (RSET, EHLO, QUIT, lost connection).
asio::awaitable<void> Session::abandon_transaction() {
  if (upstream_ && !txn_.failed) co_await upstream_->reset();
  reset_transaction();
}

void Session::reset_transaction() {
  metrics::transaction_done(txn_.facts);
  txn_ = Transaction{};
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

// RFC 5321 §4.4 trace header; "with" per RFC 3848.
std::string Session::received_header() const {
  std::string ip = client_.address.find(':') != std::string::npos ? "IPv6:" + client_.address
                                                                  : client_.address;
  // RFC 3848: ESMTPS when the session is under TLS; the protocol and cipher
  // go in a comment, as Postfix writes them.
  std::string with = esmtp_ ? "ESMTP" : "SMTP";
  if (tls_) with += "S";
  if (!facts_.auth_user.empty()) with += "A";
  if (tls_) with += fmt::format(" ({} {})", facts_.tls.version, facts_.tls.cipher);
  // The name is the verified one (forward-confirmed, Postfix's "unknown"
  // otherwise). Three lines as Postfix writes them, each folded further only when the
  // client made it long (a HELO name or a recipient near the command line
  // limit): no line over 998 octets (RFC 5322 §2.1.1, issue 15).
  constexpr std::size_t kLine = 990;
  auto continued = [](std::string_view text) { return "\t" + fold_header_field("", text, kLine).substr(2); };
  std::string header = fold_header_field("Received", fmt::format("from {} ({} [{}])", client_.helo,
                                                                    client_.name.empty() ? "unknown" : client_.name, ip), kLine);
  header += continued(fmt::format("by {} (postern) with {} id {}", config_->server.hostname, with, txn_.facts.id));
  if (txn_.facts.recipients.size() == 1) {
    header += continued(fmt::format("for <{}>; {}", txn_.facts.recipients[0].str(), rfc5322_date()));
  } else {
    header += continued(fmt::format("; {}", rfc5322_date()));
  }
  return header;
}

}  // namespace postern
