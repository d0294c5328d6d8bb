// SMTP client to the MTA: connect, EHLO, mirror MAIL/RCPT, send the message
// after the whole DATA is in; every wait has a deadline (RFC 5321 §4.5.3.2).
#include "proxy/smtp_upstream.h"

#include <asio/co_spawn.hpp>
#include <asio/connect.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/read.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <utility>

#include <fmt/format.h>

#include "filters/text/ascii.h"
#include "proxy/limits.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/replies.h"
#include "proxy/sasl_relay.h"
#include "proxy/socket_read.h"

namespace postern {
namespace {
constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);
constexpr Seconds kQuitTimeout{5};

UpstreamReply local(const replies::Def& def, bool lost) {
  return UpstreamReply{Reply{def.code, std::string(def.text)}, true, lost};
}

// A reply that waits for more from postern: content after 354, a SASL
// response after 334, the TLS handshake after STARTTLS's 220.
bool intermediate(metrics::UpstreamCommand what, const Reply& reply) {
  return reply.klass() == 3 || (what == metrics::UpstreamCommand::kStarttls && reply.code == 220);
}

// A failure reply postern made up for octets that explain nothing; such a
// connection is never tried again for the same transaction.
bool is_protocol_error(const UpstreamReply& r) {
  return r.local && r.reply.code == replies::kUpstreamProtocol.code && r.reply.text == replies::kUpstreamProtocol.text;
}
}  // namespace

SmtpUpstream::SmtpUpstream(const asio::any_io_executor& executor,
                           std::shared_ptr<const Config> config, const SessionFacts& client)
    : config_(std::move(config)),
      client_(client),
      c_(std::make_unique<UpstreamConnection>(executor)),
      watchdog_(executor, [this] {
        std::error_code ignored;
        c_->socket.cancel(ignored);
      }) {}

// What XCLIENT (or XFORWARD) announces of a client: a connection identified
// with other values than the session's now speaks for someone else.
namespace {
SessionFacts identity_of(const SessionFacts& client) {
  SessionFacts identity;
  identity.id = client.id;
  identity.client_ip = client.client_ip;
  identity.client_port = client.client_port;
  identity.client_name = client.client_name;
  identity.helo = client.helo;
  identity.esmtp = client.esmtp;
  identity.auth_user = client.auth_user;
  return identity;
}

// Who the client is before its greeting: what XCLIENT says at prepare() then.
bool same_peer(const SessionFacts& a, const SessionFacts& b) {
  return a.client_ip == b.client_ip && a.client_port == b.client_port && a.client_name == b.client_name &&
         a.auth_user == b.auth_user;
}

bool same_identity(const SessionFacts& a, const SessionFacts& b) {
  return same_peer(a, b) && a.helo == b.helo && a.esmtp == b.esmtp;
}
}  // namespace

struct SmtpUpstream::Preparation {
  Preparation(const asio::any_io_executor& executor, std::shared_ptr<const Config> config, const SessionFacts& client)
      : facts(identity_of(client)),
        upstream(executor, std::move(config), facts),
        ready(executor, std::chrono::steady_clock::time_point::max()) {}

  SessionFacts facts;     // the identity announced, as it was at prepare()
  SmtpUpstream upstream;  // owns the connection until adopt() takes it
  asio::steady_timer ready;  // cancelled once done: wakes settle()
  bool done = false;
  bool ok = false;        // identified; else the connection is closed already
  bool orphaned = false;  // nobody will take it: park it once done
};

SmtpUpstream::~SmtpUpstream() {
  // Running: its coroutine holds what it uses and parks the connection once
  // done. Finished: the connection closes with it (the pool may be gone
  // already when this runs at the io_context's end; release() parks it).
  if (preparation_ && !preparation_->done) preparation_->orphaned = true;
}

void SmtpUpstream::prepare() {
  const auto& up = config_->upstream;
  // An authenticated client's connection is its own (XCLIENT LOGIN=): never pooled.
  if (!up.reuse || state_ != State::kClosed || !client_.auth_user.empty()) return;
  if (preparation_ && name_preparation()) return;
  if (preparation_) {
    // Running: MAIL compares what it announced with the client then.
    if (!preparation_->done) return;
    if (preparation_->ok && same_identity(preparation_->facts, client_)) return;
    adopt();  // the client named itself anew: back to the pool, taken again below
  }
  const auto executor = c_->socket.get_executor();
  // Only an idle connection, never a fresh one: a client that says EHLO and
  // leaves (a scanner) must not cost the MTA a connection.
  std::unique_ptr<UpstreamConnection> pooled = UpstreamPool::of(executor).take(config_);
  if (!pooled) return;
  auto p = std::make_shared<Preparation>(executor, config_, client_);
  // The pool found it quiet; its first write (co_spawn runs it at once, up
  // to there) reads again before it all the same (send()): nothing about the
  // socket is taken on trust across the hand-over.
  pooled->drained = false;
  p->upstream.c_ = std::move(pooled);
  p->upstream.state_ = State::kReady;
  preparation_ = p;
  asio::co_spawn(executor, run_preparation(std::move(p)), asio::detached);
}

// A preparation made at the greeting, before the client named itself, and
// its HELO/EHLO now: the EHLO after XCLIENT says that name, at once where
// XCLIENT was answered, else once it is (run_preparation()). The rest of the
// identity must be the one XCLIENT announced; false when it is not, or when
// the preparation is named already or failed.
bool SmtpUpstream::name_preparation() {
  const std::shared_ptr<Preparation>& p = preparation_;
  if (!p->facts.helo.empty() || client_.helo.empty() || !same_peer(p->facts, client_)) return false;
  if (p->done && !p->ok) return false;
  p->facts.helo = client_.helo;
  p->facts.esmtp = client_.esmtp;
  // Without XCLIENT (RSET alone) nothing on the connection names the client.
  if (!p->done || !p->upstream.c_->unnamed) return true;
  p->done = false;
  asio::co_spawn(c_->socket.get_executor(), greet_prepared(p), asio::detached);
  return true;
}

asio::awaitable<void> SmtpUpstream::greet_prepared(std::shared_ptr<Preparation> p) {
  SmtpUpstream& up = p->upstream;
  up.c_->drained = false;  // XCLIENT's reply was a while ago: what came since is read first
  p->ok = co_await up.greet_as_client(true);
  finish_preparation(*p);
}

// RSET, XCLIENT and EHLO (or RSET alone) as reuse() does, each wait under the
// preparation's own watchdog: settle() waits no longer than these deadlines.
// Made at the greeting, EHLO waits for the client's own (name_preparation()).
asio::awaitable<void> SmtpUpstream::run_preparation(std::shared_ptr<Preparation> p) {
  SmtpUpstream& up = p->upstream;
  p->ok = co_await up.identify(true, true);
  // Named while XCLIENT was on its way: its EHLO follows XCLIENT's reply.
  if (p->ok && up.c_->unnamed && !p->facts.helo.empty()) p->ok = co_await up.greet_as_client(true);
  finish_preparation(*p);
}

void SmtpUpstream::finish_preparation(Preparation& p) {
  SmtpUpstream& up = p.upstream;
  if (!p.ok) {
    // Logged where it failed; the client hears nothing of it (reuse()).
    metrics::registry().upstream_pool_discards[metrics::idx(metrics::PoolDiscard::kReidentify)].inc();
    up.close("pooled connection failed");
    up.failure_.reset();
  }
  p.done = true;
  p.ready.cancel();
  if (p.orphaned && p.ok) {
    log::debug("upstream-prepared-unused").kv("session", up.client_.id).kv("upstream", up.config_->upstream.target);
    up.park_or_close("session ended");
  }
}

asio::awaitable<void> SmtpUpstream::settle() {
  const std::shared_ptr<Preparation> p = preparation_;
  while (!p->done) co_await p->ready.async_wait(use_nothrow);
  adopt();
}

void SmtpUpstream::adopt() {
  const std::shared_ptr<Preparation> p = std::move(preparation_);
  if (!p || !p->ok) return;  // open() takes another pooled connection or connects
  if (!same_identity(p->facts, client_)) {
    // A second EHLO with another name, RSET and HELO: what XCLIENT said is
    // not the client now. open() or prepare() takes this connection again
    // and says it anew.
    log::debug("upstream-prepared-stale").kv("session", client_.id).kv("upstream", config_->upstream.target);
    p->upstream.park_or_close("identity changed");
    return;
  }
  std::swap(c_, p->upstream.c_);
  p->upstream.state_ = State::kClosed;
  state_ = State::kReady;
  xforward_ = p->upstream.xforward_;
  announced_ = p->facts;
  metrics::registry().upstream_connections_reused.inc();
  log::debug("upstream-prepared").kv("session", client_.id).kv("upstream", config_->upstream.target)
      .kv("messages", c_->messages);
}

void SmtpUpstream::abandon_preparation() {
  const std::shared_ptr<Preparation> p = std::move(preparation_);
  if (!p) return;
  if (!p->done) {
    p->orphaned = true;
  } else if (p->ok) {
    log::debug("upstream-prepared-unused").kv("session", client_.id).kv("upstream", config_->upstream.target);
    p->upstream.park_or_close("session ended");
  }
}

bool SmtpUpstream::offers(std::string_view keyword) const {
  for (const std::string& cap : c_->capabilities) {
    if (cap == keyword) return true;
  }
  return false;
}

void SmtpUpstream::close(std::string_view why) {
  if (state_ != State::kClosed) {
    log::warning("upstream-closed").kv("session", client_.id)
        .kv("upstream", config_->upstream.target).kv("reason", why);
  }
  std::error_code ignored;
  c_->socket.close(ignored);
  c_->tls.reset();
  state_ = State::kClosed;
  c_->replies.reset();
  c_->capabilities.clear();
  c_->capability_args.clear();
  c_->ehlo_reply.clear();
}

UpstreamReply SmtpUpstream::lost(std::string_view stage) {
  metrics::upstream_error(watchdog_.expired() ? metrics::UpstreamError::kTimeout : metrics::UpstreamError::kClosed);
  close(stage);
  return local(replies::kUpstreamLost, true);
}

// DESIGN "Every byte from the MTA is explained": whatever the MTA sent that
// does not answer the command at hand (a malformed reply, one of the wrong
// kind, octets no command owed) fails the transaction with 451 4.4.0, and the
// connection is dropped so that nothing stale is read as a later reply
// (Postfix smtpd_proxy: an unexpected reply is replaced, never relayed).
UpstreamReply SmtpUpstream::protocol_error(std::string_view op, metrics::UpstreamProtocolError why,
                                           std::string_view detail) {
  log::warning("upstream-protocol-error").kv("session", client_.id).kv("upstream", config_->upstream.target)
      .kv("op", op).kv("reason", metrics::upstream_protocol_error_name(why)).kv("text", detail.substr(0, 120));
  metrics::upstream_protocol_error(why);
  close("protocol error");
  UpstreamReply r = local(replies::kUpstreamProtocol, true);
  failure_ = r;
  return r;
}

// RFC 5321 §3.8: a 421 is the MTA closing the connection. The client hears
// 421 as well and its session ends, as Postfix's smtpd does when its proxy
// filter says 421: the MTA's text when it carries a 4.x.x code, else postern's.
UpstreamReply SmtpUpstream::closing(Reply said, std::string_view op) {
  log::warning("upstream-421").kv("session", client_.id).kv("upstream", config_->upstream.target)
      .kv("op", op).kv("reply", said.first_line());
  close("upstream sent 421");
  const std::string_view code = said.enhanced_code();
  UpstreamReply r = !code.empty() && code[0] == '4' ? UpstreamReply{Reply{421, std::move(said.text)}}
                                                    : local(replies::kUpstreamClosing, false);
  r.connection_lost = true;
  r.closing = true;
  failure_ = r;
  return r;
}

std::optional<UpstreamReply> SmtpUpstream::quiet(std::string_view op) {
  std::error_code ec;
  std::size_t n = 0;
  if (c_->tls) {
    // Non-blocking, through the TLS engine: records that carry no data
    // (a session ticket) are consumed; data is appended.
    char buffer[4096];
    n = c_->tls->read_some(asio::buffer(buffer), ec);
    c_->replies.input().append(buffer, n);
  } else {
    ec = read_ready(c_->socket, c_->replies.input(), n);
  }
  Reply said;
  switch (c_->replies.unsolicited(said)) {
    case ReplyMatcher::Outcome::kQuiet:
      break;
    case ReplyMatcher::Outcome::kClosing:  // its idle time-out, or shutting down
      return closing(std::move(said), op);
    default:
      return protocol_error(op, metrics::UpstreamProtocolError::kUnexplainedBytes,
                            fmt::format("before {}: {}", op, c_->replies.buffered()));
  }
  if (!ec || ec == asio::error::would_block) return std::nullopt;
  // The MTA closed the connection meanwhile: between transactions that is
  // its idle time-out (RFC 5321 §4.5.3.2), no error.
  if (state_ == State::kInTransaction) metrics::upstream_error(metrics::UpstreamError::kClosed);
  close(ec == asio::error::eof ? "closed by the MTA" : ec.message());
  return local(replies::kUpstreamLost, true);
}

asio::awaitable<std::optional<UpstreamReply>> SmtpUpstream::send(std::string_view bytes, Seconds timeout,
                                                                  std::size_t replies, std::string_view op,
                                                                  Follows follows) {
  if (state_ == State::kDataSent) {
    // Only the content may follow a DATA sent ahead, and data() leaves this
    // state before it writes any: whatever else would be read as content.
    abort_data(op);
    co_return local(replies::kUpstreamLost, true);
  }
  const bool known_quiet = follows == Follows::kReply && c_->drained && c_->replies.buffered().empty();
  c_->drained = false;
  if (c_->replies.owed() == 0 && !known_quiet) {
    if (auto failed = quiet(op)) co_return failed;
  }
  watchdog_.arm(timeout);
  std::error_code ec;
  auto buffer = asio::buffer(bytes.data(), bytes.size());
  if (c_->tls) {
    std::tie(ec, std::ignore) = co_await asio::async_write(*c_->tls, buffer, use_nothrow);
  } else {
    std::tie(ec, std::ignore) = co_await asio::async_write(c_->socket, buffer, use_nothrow);
  }
  watchdog_.disarm();
  if (ec) {
    log::warning("upstream-error").kv("session", client_.id)
        .kv("op", "write").kv("error", watchdog_.expired() ? "timeout" : ec.message());
    co_return lost(fmt::format("write failed ({})", op));
  }
  c_->replies.expect(replies);
  co_return std::nullopt;
}

asio::awaitable<std::optional<UpstreamReply>> SmtpUpstream::receive(Reply& reply, Seconds timeout,
                                                                     std::string_view op) {
  watchdog_.arm(timeout);
  for (;;) {
    switch (c_->replies.next(reply)) {
      case ReplyMatcher::Outcome::kReply:
        watchdog_.disarm();
        co_return std::nullopt;
      case ReplyMatcher::Outcome::kMalformed:
        watchdog_.disarm();
        co_return protocol_error(op, metrics::UpstreamProtocolError::kMalformed, c_->replies.buffered());
      case ReplyMatcher::Outcome::kUnexplained:  // a reply, and octets behind it that answer nothing
        watchdog_.disarm();
        co_return protocol_error(op, metrics::UpstreamProtocolError::kUnexplainedBytes,
                                 fmt::format("{} {} then {}", reply.code, reply.first_line(), c_->replies.buffered()));
      default:
        break;
    }
    std::error_code ec;
    std::string& input = c_->replies.input();
    if (c_->tls) {
      // Replies are short: a 4 KiB read, more in later rounds if need be.
      constexpr std::size_t kReplyChunk = 4096;
      std::size_t old = input.size();
      input.resize(old + kReplyChunk);
      std::size_t n = 0;
      std::tie(ec, n) = co_await c_->tls->async_read_some(asio::buffer(input.data() + old, kReplyChunk), use_nothrow);
      input.resize(old + n);
      c_->drained = false;
    } else {
      // proxy/socket_read.h: no zero-filled reply buffer (bench/README.md).
      std::size_t n = 0;
      ec = read_ready(c_->socket, input, n);
      while (ec == asio::error::would_block) {
        std::tie(ec) = co_await c_->socket.async_wait(asio::socket_base::wait_read, use_nothrow);
        if (!ec) ec = read_ready(c_->socket, input, n);
      }
      c_->drained = !ec && n < limits::kReadChunk;
    }
    if (ec) {
      watchdog_.disarm();
      log::warning("upstream-error").kv("session", client_.id).kv("op", "read")
          .kv("error", watchdog_.expired() ? "timeout" : ec.message());
      co_return lost(fmt::format("no reply ({})", op));
    }
  }
}

asio::awaitable<UpstreamReply> SmtpUpstream::command(metrics::UpstreamCommand what, std::string_view line,
                                                     Seconds timeout, Follows follows) {
  const auto sent = std::chrono::steady_clock::now();
  if (auto failed = co_await send(line, timeout, 1, metrics::upstream_command_name(what), follows)) {
    co_return std::move(*failed);
  }
  co_return co_await reply_to(what, sent, timeout);
}

asio::awaitable<UpstreamReply> SmtpUpstream::reply_to(metrics::UpstreamCommand what,
                                                      std::chrono::steady_clock::time_point sent, Seconds timeout) {
  const std::string_view op = metrics::upstream_command_name(what);
  Reply reply;
  if (auto failed = co_await receive(reply, timeout, op)) co_return std::move(*failed);
  metrics::upstream_reply(what, reply.code, metrics::seconds_since(sent));
  // Whatever the MTA refused, its session may remember: never another client's.
  if (reply.klass() != 2 && reply.klass() != 3) c_->tainted = true;
  if (reply.code == 421) co_return closing(std::move(reply), op);
  if (!c_->replies.closing()) co_return UpstreamReply{std::move(reply)};
  // A 421 right behind the reply: the MTA leaves. A reply that waited for
  // more from postern is void; a final one stands, and the 421 follows it.
  UpstreamReply bye = closing(c_->replies.closing_reply(), op);
  if (intermediate(what, reply)) {
    // A 354 taken back: none of the content went (data() may try again).
    bye.unsent = what == metrics::UpstreamCommand::kData;
    co_return bye;
  }
  bye.reply = std::move(reply);
  bye.local = false;
  co_return bye;
}

asio::awaitable<bool> SmtpUpstream::open(bool identify_client) {
  failure_.reset();
  if (identify_client && config_->upstream.reuse && co_await reuse()) co_return true;
  c_ = std::make_unique<UpstreamConnection>(c_->socket.get_executor());
  const auto& up = config_->upstream;
  const auto& to = config_->timeouts;
  std::error_code ec;
  asio::ip::address addr = asio::ip::make_address(up.host, ec);
  std::vector<asio::ip::tcp::endpoint> endpoints;
  if (!ec) {
    endpoints.emplace_back(addr, up.port);
  } else {
    asio::ip::tcp::resolver resolver(c_->socket.get_executor());
    watchdog_.arm(to.upstream_connect);
    auto [rec, results] = co_await resolver.async_resolve(up.host, std::to_string(up.port), use_nothrow);
    watchdog_.disarm();
    if (rec) {
      metrics::upstream_error(metrics::UpstreamError::kResolve);
      log::warning("upstream-error").kv("session", client_.id)
          .kv("op", "resolve").kv("upstream", up.target).kv("error", rec.message());
      co_return false;
    }
    for (const auto& entry : results) endpoints.push_back(entry.endpoint());
  }
  watchdog_.arm(to.upstream_connect);
  auto [cec, endpoint] = co_await asio::async_connect(c_->socket, endpoints, use_nothrow);
  watchdog_.disarm();
  if (cec) {
    metrics::upstream_error(watchdog_.expired() ? metrics::UpstreamError::kTimeout
                            : cec == asio::error::connection_refused ? metrics::UpstreamError::kConnectRefused
                                                                     : metrics::UpstreamError::kConnectFailed);
    log::warning("upstream-error").kv("session", client_.id).kv("op", "connect").kv("upstream", up.target)
        .kv("error", watchdog_.expired() ? "timeout" : cec.message());
    close("connect failed");
    co_return false;
  }
  c_->socket.set_option(asio::ip::tcp::no_delay(true), ec);
  c_->socket.non_blocking(true, ec);  // read_ready returns would_block, never waits
  state_ = State::kReady;  // so close() logs from here on
  metrics::registry().upstream_connections.inc();

  // The greeting is owed by the connection itself (RFC 5321 §3.1).
  c_->replies.expect(1);
  UpstreamReply greeting = co_await reply_to(metrics::UpstreamCommand::kGreeting, std::chrono::steady_clock::now(),
                                             to.upstream_greeting);
  if (greeting.connection_lost) co_return false;
  if (greeting.reply.code != 220) {
    log::warning("upstream-error").kv("session", client_.id)
        .kv("op", "greeting").kv("reply", greeting.reply.first_line());
    metrics::upstream_protocol_error(metrics::UpstreamProtocolError::kGreeting);
    close("no 220 greeting");
    co_return false;
  }
  if (!co_await ehlo()) co_return false;
  if (up.tls != Config::Upstream::Tls::kNone) {
    if (offers("STARTTLS")) {
      if (!co_await start_tls()) co_return false;
    } else if (up.tls == Config::Upstream::Tls::kVerify) {
      metrics::upstream_error(metrics::UpstreamError::kTls);
    log::error("upstream-tls-failed").kv("session", client_.id)
        .kv("upstream", up.target).kv("error", "STARTTLS not offered");
      close("STARTTLS required but not offered");
      co_return false;
    }
  }
  co_return co_await identify(identify_client, false);
}

// Who the client really is (DESIGN "Envelope"): XCLIENT where the MTA
// offers it (Postfix), else XFORWARD per transaction, else only Received.
// Over a `pooled` connection RSET goes first, and XCLIENT must then be
// taken: the MTA would otherwise book this client's mail under the previous
// one's address.
asio::awaitable<bool> SmtpUpstream::identify(bool identify_client, bool pooled) {
  xforward_ = false;
  c_->xclient = false;
  c_->unnamed = false;
  using Identity = Config::Upstream::ClientIdentity;
  const auto mode = identify_client ? config_->upstream.client_identity : Identity::kNone;
  if ((mode == Identity::kAuto || mode == Identity::kXclient) && offers("XCLIENT")) {
    co_return co_await send_xclient(pooled);
  }
  if ((mode == Identity::kAuto || mode == Identity::kXforward) && offers("XFORWARD")) xforward_ = true;
  if (pooled) {
    // Right after the pool's read found the connection quiet.
    UpstreamReply r = co_await command(metrics::UpstreamCommand::kRset, "RSET\r\n", config_->timeouts.upstream_mail,
                                       Follows::kReply);
    co_return !r.connection_lost && r.reply.positive();
  }
  co_return true;
}

asio::awaitable<bool> SmtpUpstream::reuse() {
  UpstreamPool& pool = UpstreamPool::of(c_->socket.get_executor());
  while (auto pooled = pool.take(config_)) {
    c_ = std::move(pooled);
    state_ = State::kReady;
    if (co_await identify(true, true)) {
      metrics::registry().upstream_connections_reused.inc();
      log::debug("upstream-reused").kv("session", client_.id).kv("upstream", config_->upstream.target)
          .kv("messages", c_->messages);
      co_return true;
    }
    // Its failure was logged where it happened; the client hears nothing of it.
    metrics::registry().upstream_pool_discards[metrics::idx(metrics::PoolDiscard::kReidentify)].inc();
    close("pooled connection failed");
    failure_.reset();
  }
  co_return false;
}

// EHLO (HELO if refused) as `name`; learns the MTA's capabilities.
asio::awaitable<bool> SmtpUpstream::ehlo(std::string name, bool pooled) {
  const auto& up = config_->upstream;
  const auto& to = config_->timeouts;
  if (name.empty()) name = up.helo;
  // What the last EHLO on this connection offered: a pooled connection's
  // EHLO (after XCLIENT) repeats it word for word, and then keeps it instead
  // of parsing it again (4,000 instructions a reused connection, issue 23).
  std::string known_reply = std::exchange(c_->ehlo_reply, std::string());
  std::vector<std::string> known = std::exchange(c_->capabilities, {});
  std::vector<std::string> known_args = std::exchange(c_->capability_args, {});
  output_.assign("EHLO ").append(name).append("\r\n");
  // EHLO follows the greeting, XCLIENT's reply or the TLS handshake at once.
  UpstreamReply ehlo = co_await command(metrics::UpstreamCommand::kEhlo, output_, to.upstream_greeting, Follows::kReply);
  if (ehlo.connection_lost) co_return false;
  if (ehlo.reply.klass() == 2 && ehlo.reply.code != 250) {
    // RFC 5321 §4.1.1.1: EHLO succeeds with 250 only; a 220 here is the
    // greeting of a command answered twice, read one reply late.
    protocol_error("ehlo", metrics::UpstreamProtocolError::kUnexpectedReply, ehlo.reply.first_line());
    co_return false;
  }
  if (pooled && !ehlo.reply.positive()) co_return false;
  if (ehlo.reply.positive() && !known_reply.empty() && ehlo.reply.text == known_reply) {
    c_->capabilities = std::move(known);
    c_->capability_args = std::move(known_args);
    c_->ehlo_reply = std::move(known_reply);
    co_return true;
  }
  if (ehlo.reply.positive()) {
    c_->ehlo_reply = ehlo.reply.text;
    // The first line is the greeting; each further line starts with a keyword.
    std::string_view text = ehlo.reply.text;
    std::size_t nl = text.find('\n');
    while (nl != std::string_view::npos) {
      text.remove_prefix(nl + 1);
      nl = text.find('\n');
      std::string_view line = text.substr(0, nl);
      std::size_t sp = line.find(' ');
      std::string keyword = ascii::to_upper(line.substr(0, sp));
      c_->capabilities.push_back(std::move(keyword));
      c_->capability_args.emplace_back(sp == std::string_view::npos ? std::string_view{} : line.substr(sp + 1));
    }
    co_return true;
  }
  output_.assign("HELO ").append(name).append("\r\n");
  UpstreamReply helo = co_await command(metrics::UpstreamCommand::kEhlo, output_, to.upstream_greeting, Follows::kReply);
  if (helo.connection_lost || !helo.reply.positive()) {
    if (!helo.connection_lost) log::warning("upstream-error").kv("session", client_.id)
          .kv("op", "helo").kv("reply", helo.reply.first_line());
    if (!helo.connection_lost) metrics::upstream_protocol_error(metrics::UpstreamProtocolError::kHelo);
    close("HELO refused");
    co_return false;
  }
  co_return true;
}

// STARTTLS towards the MTA (RFC 3207). Bytes the MTA sent after its 220 in
// plaintext would be read as if protected: the reply matcher fails them like
// any octets no command explains; later ones break the handshake.
asio::awaitable<bool> SmtpUpstream::start_tls() {
  const auto& up = config_->upstream;
  UpstreamReply r = co_await command(metrics::UpstreamCommand::kStarttls, "STARTTLS\r\n", config_->timeouts.upstream_greeting);
  if (r.connection_lost) co_return false;
  auto fail = [&](std::string_view why) {
    metrics::upstream_error(metrics::UpstreamError::kTls);
    log::error("upstream-tls-failed").kv("session", client_.id).kv("upstream", up.target).kv("error", why);
    close("TLS failed");
  };
  if (r.reply.code != 220) {
    if (up.tls == Config::Upstream::Tls::kVerify) {
      fail(fmt::format("STARTTLS refused: {} {}", r.reply.code, r.reply.first_line()));
      co_return false;
    }
    co_return true;  // opportunistic: go on in plaintext
  }
  if (!tls_context_) {
    tls_context_ = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
    SSL_CTX_set_min_proto_version(tls_context_->native_handle(), TLS1_2_VERSION);
    if (up.tls == Config::Upstream::Tls::kVerify) {
      std::error_code ec;
      if (up.ca_file.empty()) tls_context_->set_default_verify_paths(ec);
      else tls_context_->load_verify_file(up.ca_file, ec);
      if (ec) {
        fail("cannot load CA certificates: " + ec.message());
        co_return false;
      }
      tls_context_->set_verify_mode(asio::ssl::verify_peer);
    } else {
      tls_context_->set_verify_mode(asio::ssl::verify_none);
    }
  }
  c_->tls_context = tls_context_;
  c_->tls = std::make_unique<asio::ssl::stream<asio::ip::tcp::socket&>>(c_->socket, *tls_context_);
  const std::string name = up.tls_name.empty() ? up.host : up.tls_name;
  SSL_set_tlsext_host_name(c_->tls->native_handle(), name.c_str());  // SNI
  if (up.tls == Config::Upstream::Tls::kVerify) {
    SSL_set1_host(c_->tls->native_handle(), name.c_str());  // RFC 6125 name check
  }
  c_->drained = false;  // the handshake reads the socket; the EHLO after it reads through TLS first
  watchdog_.arm(config_->timeouts.upstream_greeting);
  auto [ec] = co_await c_->tls->async_handshake(asio::ssl::stream_base::client, use_nothrow);
  watchdog_.disarm();
  if (ec) {
    fail(watchdog_.expired() ? std::string("handshake timeout") : "handshake: " + ec.message());
    co_return false;
  }
  log::debug("upstream-tls").kv("session", client_.id)
      .kv("upstream", up.target).kv("version", SSL_get_version(c_->tls->native_handle()));
  co_return co_await ehlo();  // RFC 3207 §4.2: forget what was learned in plaintext
}

namespace {
// xtext (RFC 3461 §4): "+" followed by two hex digits for octets outside
// '!'..'~' and for '+' and '='.
std::string xtext(std::string_view in) {
  std::string out;
  for (unsigned char c : in) {
    if (c < '!' || c > '~' || c == '+' || c == '=') out += fmt::format("+{:02X}", c);
    else out.push_back(static_cast<char>(c));
  }
  return out;
}

std::string xclient_addr(const std::string& ip) {
  return ip.find(':') != std::string::npos ? "IPV6:" + ip : ip;
}
}  // namespace

// XCLIENT (Postfix XCLIENT_README): only the attributes the MTA lists; it
// answers with a new 220 greeting, after which the session starts over.
std::string SmtpUpstream::xclient_line() const {
  std::string_view offered;
  for (std::size_t i = 0; i < c_->capabilities.size(); ++i) {
    if (c_->capabilities[i] == "XCLIENT") offered = c_->capability_args[i];
  }
  auto has = [&](std::string_view attr) {
    std::size_t pos = 0;
    while (pos < offered.size()) {
      std::size_t sp = offered.find(' ', pos);
      std::string_view word = offered.substr(pos, sp == std::string_view::npos ? std::string_view::npos : sp - pos);
      if (ascii::iequals(word, attr)) {
        return true;
      }
      if (sp == std::string_view::npos) break;
      pos = sp + 1;
    }
    return false;
  };
  std::string line = "XCLIENT";
  if (has("ADDR")) line += " ADDR=" + xtext(xclient_addr(client_.client_ip));
  if (has("PORT")) line += fmt::format(" PORT={}", client_.client_port);
  if (has("NAME")) line += " NAME=" + (client_.client_name.empty() ? std::string("[UNAVAILABLE]") : xtext(client_.client_name));
  if (has("HELO") && !client_.helo.empty()) line += " HELO=" + xtext(client_.helo);
  // Before the client's greeting (prepare()) its protocol is not known yet;
  // the EHLO after XCLIENT says it anyway.
  if (has("PROTO") && !client_.helo.empty()) line += client_.esmtp ? " PROTO=ESMTP" : " PROTO=SMTP";
  if (has("LOGIN") && !client_.auth_user.empty()) line += " LOGIN=" + xtext(client_.auth_user);
  line += "\r\n";
  return line;
}

asio::awaitable<bool> SmtpUpstream::send_xclient(bool rset) {
  const auto& to = config_->timeouts;
  const std::string line = xclient_line();
  // An identity with a login (XCLIENT LOGIN=) stays this client's: only AUTH
  // relayed over this connection gives one, which keeps it out of the pool
  // already; this holds should that ever change.
  if (!client_.auth_user.empty()) c_->tainted = true;
  UpstreamReply r;
  if (rset && offers("PIPELINING")) {
    // RFC 2920: RSET need not end a group; both replies come in order.
    output_.assign("RSET\r\n").append(line);
    const auto sent = std::chrono::steady_clock::now();
    if (auto failed = co_await send(output_, to.upstream_mail, 2, "rset", Follows::kReply)) co_return false;
    UpstreamReply reset = co_await reply_to(metrics::UpstreamCommand::kRset, sent, to.upstream_mail);
    if (reset.connection_lost) co_return false;
    r = co_await reply_to(metrics::UpstreamCommand::kXclient, sent, to.upstream_greeting);
    if (!reset.reply.positive()) co_return false;
  } else {
    if (rset) {
      UpstreamReply reset = co_await command(metrics::UpstreamCommand::kRset, "RSET\r\n", to.upstream_mail,
                                             Follows::kReply);
      if (reset.connection_lost || !reset.reply.positive()) co_return false;
    }
    r = co_await command(metrics::UpstreamCommand::kXclient, line, to.upstream_greeting, Follows::kReply);
  }
  if (r.connection_lost) co_return false;
  if (!r.reply.positive()) {  // Postfix answers 220; simpler servers (smtp-sink) 250
    if (rset) co_return false;  // a pooled connection speaks for its last client still
    // Not authorized (smtpd_authorized_xclient_hosts): carry on without it.
    log::warning("upstream-xclient-refused").kv("session", client_.id).kv("upstream", config_->upstream.target)
        .kv("reply", fmt::format("{} {}", r.reply.code, r.reply.first_line()));
    co_return true;
  }
  // Prepared before the client greeted (prepare()): the EHLO that names it
  // waits for its HELO/EHLO (greet_as_client()).
  c_->unnamed = rset && client_.helo.empty();
  if (c_->unnamed) co_return true;
  co_return co_await greet_as_client(rset);
}

// After XCLIENT the MTA's session starts over; the EHLO that follows speaks
// for the client, so it carries the client's own HELO name (XCLIENT_README;
// it stands for XCLIENT's HELO and PROTO too).
asio::awaitable<bool> SmtpUpstream::greet_as_client(bool pooled) {
  c_->unnamed = false;
  const std::vector<std::string> offered = c_->capabilities;
  c_->xclient = co_await ehlo(client_.helo, pooled);
  announced_ = identity_of(client_);
  // Over a pooled connection the same MTA offers what it offered: anything
  // else is a reply read out of turn (one too many to the pipelined RSET or
  // XCLIENT), or an MTA that answers each client differently; either way a
  // new connection is the safe one.
  if (pooled && c_->xclient && c_->capabilities != offered) {
    log::info("upstream-pool-discard").kv("session", client_.id).kv("upstream", config_->upstream.target)
        .kv("reason", "EHLO after XCLIENT offered something else");
    c_->xclient = false;
  }
  co_return c_->xclient;
}

void SmtpUpstream::append_params(std::string& line, const std::vector<EsmtpParam>& params,
                                 const SmtpUpstream& self) {
  for (const EsmtpParam& p : params) {
    // Pass a parameter only where its extension is offered (RFC 5321 §4.1.2).
    const std::string_view extension = esmtp_param_extension(p.keyword);
    if (extension.empty() || !self.offers(extension)) continue;
    line.append(" ").append(p.keyword);
    if (p.has_value) line.append("=").append(p.value);
  }
}

asio::awaitable<UpstreamReply> SmtpUpstream::mail(const Mailbox& reverse_path,
                                                  const std::vector<EsmtpParam>& params, bool hold) {
  if (preparation_) co_await settle();
  data_failure_.reset();
  if (state_ == State::kInTransaction || state_ == State::kMailHeld || state_ == State::kDataSent) co_await reset();
  // The client greeted again after a message (EHLO or HELO with another
  // name): the MTA would book this one under the name XCLIENT gave for the
  // last. Back to the pool (or QUIT), and open() below takes a connection
  // identified anew, as for a second greeting before the first MAIL (adopt()).
  // Not once AUTH went over it: XCLIENT would end the MTA's authenticated session.
  if (state_ == State::kReady && c_->xclient && client_.auth_user.empty() && !same_identity(announced_, client_)) {
    log::debug("upstream-identity-changed").kv("session", client_.id).kv("upstream", config_->upstream.target);
    if (poolable()) park_or_close("identity changed");
    else co_await quit();
  }
  // A kept connection may have been closed by the MTA meanwhile (its idle
  // time-out): then one fresh connection is tried before the client hears 4xx.
  const bool reused = state_ == State::kReady;
  const bool utf8 =
      std::any_of(params.begin(), params.end(), [](const EsmtpParam& p) { return p.keyword == "SMTPUTF8"; });
  // A session's first MAIL that may be held opens (or takes from the pool)
  // its connection first: what the MTA offers is known only then, and one
  // client connection with one message is what a real MX mostly sees.
  if (hold && !utf8 && state_ == State::kClosed && !co_await open()) co_return open_failure();
  // Held back only over an open connection and without per-transaction
  // XFORWARD, whose reply must come first.
  if (hold && state_ == State::kReady && !utf8 && !xforward_ && offers("PIPELINING")) {
    held_from_ = reverse_path;
    held_params_ = params;
    state_ = State::kMailHeld;
    UpstreamReply r;
    r.held = true;
    co_return r;
  }
  UpstreamReply r = co_await send_mail(reverse_path, params, nullptr, nullptr, reused, false);
  co_return co_await after_mail(std::move(r), utf8);
}

asio::awaitable<UpstreamReply> SmtpUpstream::send_mail(const Mailbox& reverse_path,
                                                       const std::vector<EsmtpParam>& params, const Mailbox* rcpt,
                                                       const std::vector<EsmtpParam>* rcpt_params, bool reused,
                                                       bool data) {
  UpstreamReply r;
  for (int attempt = 0; attempt < 2; ++attempt) {
    // Opened in this call: the first write follows the last reply of the opening.
    const bool opened = state_ == State::kClosed;
    if (opened && !co_await open()) co_return open_failure();
    const Follows follows = opened ? Follows::kReply : Follows::kWait;
    if (xforward_) {
      // XFORWARD (Postfix XFORWARD_README) holds for one transaction.
      std::string xf = fmt::format("XFORWARD ADDR={} PORT={} NAME={} PROTO={}{}\r\n",
                                   xtext(xclient_addr(client_.client_ip)), client_.client_port,
                                   client_.client_name.empty() ? std::string("[UNAVAILABLE]") : xtext(client_.client_name),
                                   client_.esmtp ? "ESMTP" : "SMTP",
                                   client_.helo.empty() ? std::string() : " HELO=" + xtext(client_.helo));
      UpstreamReply x = co_await command(metrics::UpstreamCommand::kXforward, xf, config_->timeouts.upstream_mail,
                                         follows);
      if (x.connection_lost) {
        if (!reused || attempt > 0 || is_protocol_error(x)) co_return x;
        continue;
      }
      if (!x.reply.positive()) {
        log::warning("upstream-xforward-refused").kv("session", client_.id)
            .kv("reply", fmt::format("{} {}", x.reply.code, x.reply.first_line()));
        xforward_ = false;
      }
    }
    // Built once connected: the parameters passed on depend on what this
    // connection's EHLO offered.
    output_.assign("MAIL FROM:<").append(reverse_path.str()).append(">");
    append_params(output_, params, *this);
    output_.append("\r\n");
    if (rcpt) {
      output_.append("RCPT TO:<").append(rcpt->str()).append(">");
      append_params(output_, *rcpt_params, *this);
      output_.append("\r\n");
      if (data) output_.append("DATA\r\n");  // RFC 2920 §3.1: DATA ends the group
    }
    mail_sent_ = std::chrono::steady_clock::now();
    // After XFORWARD's reply, MAIL follows it at once.
    const std::size_t owed = rcpt ? (data ? 3 : 2) : 1;
    if (auto failed = co_await send(output_, config_->timeouts.upstream_mail, owed, "mail",
                                    xforward_ ? Follows::kReply : follows)) {
      r = std::move(*failed);
    } else {
      r = co_await reply_to(metrics::UpstreamCommand::kMail, mail_sent_, config_->timeouts.upstream_mail);
    }
    // Not again after a protocol error: that MTA would be asked to desynchronise twice.
    if (!r.connection_lost || !reused || attempt > 0 || is_protocol_error(r)) break;
    log::info("upstream-reconnect").kv("session", client_.id).kv("upstream", config_->upstream.target);
  }
  co_return r;
}

UpstreamReply SmtpUpstream::open_failure() {
  close("unavailable");
  if (failure_) return *failure_;  // the MTA said 421, or sent octets that explain nothing
  return local(replies::kUpstreamUnavailable, true);
}

asio::awaitable<UpstreamReply> SmtpUpstream::after_mail(UpstreamReply r, bool smtputf8) {
  if (r.connection_lost) co_return r;
  if (r.reply.positive()) {
    state_ = State::kInTransaction;
    if (smtputf8 && !offers("SMTPUTF8")) {
      // The MTA stopped offering SMTPUTF8 since the probe: it cannot take this message.
      co_await reset();
      co_return local(replies::kUpstreamNoSmtputf8, false);
    }
  } else {
    r = checked(std::move(r), "mail");
  }
  co_return r;
}

asio::awaitable<UpstreamReply> SmtpUpstream::send_held_mail() {
  if (preparation_) co_await settle();
  if (state_ != State::kMailHeld) co_return local(replies::kUpstreamLost, true);
  state_ = State::kReady;
  UpstreamReply r = co_await send_mail(held_from_, held_params_, nullptr, nullptr, true, false);
  co_return co_await after_mail(std::move(r), false);
}

// With data_follows, DATA rides in the RCPT's write (RFC 2920 §3.1) and its
// reply is left for data() to read: over an MTA without CHUNKING the message
// then costs the round trips of a direct client, not one more (issue 23).
asio::awaitable<UpstreamReply> SmtpUpstream::rcpt(const Mailbox& forward_path,
                                                  const std::vector<EsmtpParam>& params, bool data_follows) {
  if (preparation_) co_await settle();
  // A DATA sent ahead that the client's DATA did not follow (refused here
  // for want of recipients): its reply is read before anything else is sent.
  if (state_ == State::kDataSent) co_await settle_data("rcpt");
  const bool data = data_follows && early_data() && offers("PIPELINING");
  if (state_ == State::kMailHeld) {
    // MAIL and this RCPT in one write (RFC 2920); MAIL's reply first.
    state_ = State::kReady;
    UpstreamReply m = co_await send_mail(held_from_, held_params_, &forward_path, &params, true, data);
    held_reply_ = co_await after_mail(std::move(m), false);
    if (held_reply_.connection_lost || state_ == State::kClosed) {
      // The RCPT shares MAIL's fate: the MTA's 421 or the protocol error.
      if (held_reply_.closing || is_protocol_error(held_reply_)) co_return held_reply_;
      co_return local(replies::kUpstreamLost, true);
    }
    // The RCPT's reply follows, whatever MAIL's was; after a refused MAIL it
    // is relayed as the MTA gave it (it refuses a RCPT without MAIL too).
    // Its latency counts from the write that carried it.
    UpstreamReply r = co_await reply_to(metrics::UpstreamCommand::kRcpt, mail_sent_, config_->timeouts.upstream_rcpt);
    if (state_ == State::kInTransaction) {
      r = checked_rcpt(std::move(r));
      if (data && state_ == State::kInTransaction) state_ = State::kDataSent;
      co_return r;
    }
    if (data && !r.connection_lost && state_ != State::kClosed) {
      // No transaction, so DATA is refused too: read, and 354 is a lie.
      UpstreamReply d = checked(co_await reply_to(metrics::UpstreamCommand::kData, mail_sent_,
                                                  config_->timeouts.upstream_data_init), "data", 354);
      if (!d.connection_lost && d.reply.code == 354) {
        protocol_error("data", metrics::UpstreamProtocolError::kUnexpectedReply, "354 without a transaction");
      }
    }
    co_return r;
  }
  if (state_ != State::kInTransaction) co_return local(replies::kUpstreamLost, true);
  output_.assign("RCPT TO:<").append(forward_path.str()).append(">");
  append_params(output_, params, *this);
  output_.append("\r\n");
  if (data) output_.append("DATA\r\n");
  const auto sent = std::chrono::steady_clock::now();
  UpstreamReply r;
  if (auto failed = co_await send(output_, config_->timeouts.upstream_rcpt, data ? 2 : 1, "rcpt")) {
    r = std::move(*failed);
  } else {
    r = checked_rcpt(co_await reply_to(metrics::UpstreamCommand::kRcpt, sent, config_->timeouts.upstream_rcpt));
  }
  if (data && state_ == State::kInTransaction) state_ = State::kDataSent;
  co_return r;
}

bool SmtpUpstream::early_data() const {
  return config_->upstream.early_data && !(config_->upstream.chunking && offers("CHUNKING"));
}

asio::awaitable<void> SmtpUpstream::settle_data(std::string_view why) {
  state_ = State::kInTransaction;
  UpstreamReply r = checked(co_await reply_to(metrics::UpstreamCommand::kData, std::chrono::steady_clock::now(),
                                              config_->timeouts.upstream_data_init), "data", 354);
  if (r.connection_lost || r.reply.code != 354) co_return;  // closed, or refused: the transaction goes on
  abort_data(why);
}

UpstreamReply SmtpUpstream::checked_rcpt(UpstreamReply r) { return checked(std::move(r), "rcpt"); }

// DESIGN "Every byte from the MTA is explained": a reply of a kind its
// command cannot have (a 2xx where 354 belongs, a 3xx to RCPT, a 1xx) is
// never relayed as if it were one (Postfix smtpd_proxy replaces it).
UpstreamReply SmtpUpstream::checked(UpstreamReply r, std::string_view op, int intermediate) {
  if (r.connection_lost) return r;
  const int k = r.reply.klass();
  const bool expected = intermediate ? r.reply.code == intermediate || k == 4 || k == 5 : k == 2 || k == 4 || k == 5;
  if (expected) return r;
  return protocol_error(op, metrics::UpstreamProtocolError::kUnexpectedReply, r.reply.first_line());
}

// Without CHUNKING an MTA takes DATA and answers 354 before the content: one
// round trip after the verdict that begin_data() moves to while the client's
// content arrives. Only where nothing else is owed and nothing held, and
// never to an MTA that takes BDAT (one round trip already).
asio::awaitable<void> SmtpUpstream::begin_data() {
  if (preparation_) co_await settle();
  if (!early_data() || state_ != State::kInTransaction || c_->replies.owed() != 0) co_return;
  // A failed write (or what the MTA sent unasked) closed the connection;
  // data() then gives the client that reply. (Bound to a name: g++ 12
  // mishandles a co_await temporary tested in place.)
  if (auto failed = co_await send("DATA\r\n", config_->timeouts.upstream_data_init, 1, "data")) {
    data_failure_ = std::move(*failed);
    co_return;
  }
  state_ = State::kDataSent;
}

void SmtpUpstream::abort_data(std::string_view why) {
  log::debug("upstream-data-aborted").kv("session", client_.id).kv("upstream", config_->upstream.target)
      .kv("op", why);
  metrics::registry().upstream_data_aborts.inc();
  state_ = State::kClosed;  // by design, not a failure: no upstream-closed warning
  close(why);
}

asio::awaitable<UpstreamReply> SmtpUpstream::data(const std::string& head, const Spool& content,
                                                  std::size_t offset, const Mailbox&) {
  if (preparation_) co_await settle();
  const bool early = state_ == State::kDataSent;
  if (early) state_ = State::kInTransaction;
  if (state_ != State::kInTransaction) {
    if (!data_failure_) co_return local(replies::kUpstreamLost, true);
    co_return *std::exchange(data_failure_, std::nullopt);
  }
  const auto& to = config_->timeouts;
  ++c_->messages;
  if (!early && config_->upstream.chunking && offers("CHUNKING")) {
    co_return co_await send_chunked(head, content, offset);
  }
  UpstreamReply go;
  if (early) {  // its reply waited in the socket; the latency counted is what was waited for now
    go = co_await reply_to(metrics::UpstreamCommand::kData, std::chrono::steady_clock::now(), to.upstream_data_init);
  } else {
    go = co_await command(metrics::UpstreamCommand::kData, "DATA\r\n", to.upstream_data_init);
  }
  go = checked(std::move(go), "data", 354);
  if (early) {
    // The 354 may be old: an MTA stops waiting for content after its
    // time-out (Postfix's smtpd_timeout, 10 s under stress) while a slow
    // client sends, and says 421 behind it or closes. Gone before any of the
    // content went, the message may go again (Delivery::relay), as when a
    // kept connection was closed meanwhile; not after a protocol error or
    // this wait's own time-out.
    // A 421 instead of the 354 is the MTA's answer to DATA, relayed as at
    // every stage; after it, the MTA left a message it had not got yet.
    bool after_354 = go.unsent;  // a 421 right behind the 354 (reply_to())
    if (go.reply.code == 354 && !go.connection_lost) {
      if (auto gone = quiet("data")) {
        go = std::move(*gone);
        after_354 = true;
      }
    }
    go.unsent = after_354 && go.connection_lost && !is_protocol_error(go) && !watchdog_.expired();
  } else {
    go.unsent = false;  // sent just now: a 421 behind the 354 is its answer to DATA
  }
  if (go.reply.code != 354 || go.connection_lost) co_return go;  // refused: relayed verbatim
  // Whole blocks, never line by line: header + stuffed content + ".\r\n".
  DotStuffer stuffer;
  output_.clear();
  reserve_output(head, content, offset);
  stuffer.feed(head, output_);
  if (auto failed = co_await send_content(content, offset, &stuffer)) co_return *failed;
  stuffer.finish(output_);
  // The end of data owes the one reply (RFC 5321 §4.1.1.4).
  // Right after the 354 when no block went out before (content in memory).
  if (auto failed = co_await send(output_, to.upstream_data_block, 1, "end-of-data", Follows::kReply)) {
    co_return std::move(*failed);
  }
  UpstreamReply r = co_await final_reply(std::chrono::steady_clock::now(), "end-of-data");
  if (state_ == State::kInTransaction) state_ = State::kReady;  // the transaction ends, refused or not
  co_return r;
}

// The reply to the end of data or BDAT LAST: 2xx, 4xx or 5xx, relayed as
// the MTA gave it; anything else is a protocol error.
asio::awaitable<UpstreamReply> SmtpUpstream::final_reply(std::chrono::steady_clock::time_point sent,
                                                         std::string_view op) {
  co_return checked(co_await reply_to(metrics::UpstreamCommand::kEom, sent, config_->timeouts.upstream_data_term), op);
}

asio::awaitable<UpstreamReply> SmtpUpstream::auth(std::string_view line, bool first, std::string_view mechanism) {
  if (preparation_) co_await settle();
  const UpstreamReply unavailable = local(replies::kAuthUnavailable, false);
  if (first) {
    // Taken from the pool at most: a connection that carried AUTH is never
    // handed to another client (the MTA's session is authenticated).
    if (state_ == State::kClosed && !co_await open()) {
      UpstreamReply failed = open_failure();
      co_return failed.closing ? failed : unavailable;
    }
    // The MTA must list the mechanism in its EHLO AUTH line.
    bool offered = false;
    for (std::size_t i = 0; i < c_->capabilities.size(); ++i) {
      if (c_->capabilities[i] != "AUTH") continue;
      std::string_view list = c_->capability_args[i];
      while (!list.empty()) {
        std::size_t sp = list.find(' ');
        std::string_view m = list.substr(0, sp);
        if (ascii::iequals(m, mechanism)) {
          offered = true;
        }
        list = sp == std::string_view::npos ? std::string_view{} : list.substr(sp + 1);
      }
    }
    if (!offered) {
      log::warning("upstream-auth-unavailable").kv("session", client_.id)
          .kv("upstream", config_->upstream.target).kv("mechanism", mechanism);
      co_return unavailable;
    }
  } else if (state_ == State::kClosed) {
    co_return unavailable;
  }
  c_->tainted = true;
  if (first) sasl_challenges_ = 0;
  // Credentials pass through here: nothing of `line` is ever logged.
  output_.assign(line).append("\r\n");
  UpstreamReply r = co_await command(first ? metrics::UpstreamCommand::kAuth : metrics::UpstreamCommand::kOther,
                                     output_, config_->timeouts.upstream_mail);
  if (r.local || r.connection_lost) co_return r;
  // RFC 4954 §4: AUTH and each response are answered 235, a 334 challenge of
  // one base64 line, 4xx or 5xx; the client's "*" (cancel) 4xx or 5xx only.
  // Anything else — a 250 a client would read as success, a 354, a
  // multi-line or non-base64 334, challenges without end — is never relayed:
  // the MTA's session is in a state nobody knows, and the connection goes.
  const Reply& reply = r.reply;
  bool expected = reply.klass() == 4 || reply.klass() == 5;
  if (line != "*" && reply.code == 235) expected = true;
  if (line != "*" && reply.code == 334) {
    expected = ++sasl_challenges_ <= limits::kSaslChallenges && reply.text.find('\n') == std::string::npos &&
               is_base64(reply.text);
  }
  if (!expected) co_return protocol_error("auth", metrics::UpstreamProtocolError::kUnexpectedReply, reply.first_line());
  co_return r;
}

// Room in output_ for what data() or send_chunked() writes in one block (a
// message in memory whole, else the first kRelayChunk), and a little for
// stuffed dots and the end of data: no copy each time it outgrows its
// capacity (bench/README.md). release_buffers() gives it back.
void SmtpUpstream::reserve_output(const std::string& head, const Spool& content, std::size_t offset) {
  constexpr std::size_t kSlack = 256;
  const std::size_t body = content.in_memory() ? content.size() - std::min(offset, content.size()) : limits::kRelayChunk;
  output_.reserve(output_.size() + head.size() + body + kSlack);
}

// Appends the spool from `offset` to output_ (dot-stuffed when `stuffer` is
// given) and writes it out in kRelayChunk blocks, keeping the last block in
// output_ for the caller to end; a failure reply when the spool or the
// connection fails (the MTA must never take a truncated message).
asio::awaitable<std::optional<UpstreamReply>> SmtpUpstream::send_content(const Spool& content, std::size_t offset,
                                                                          DotStuffer* stuffer) {
  auto append = [&](std::string_view bytes) {
    if (stuffer) stuffer->feed(bytes, output_);
    else output_.append(bytes);
  };
  if (content.in_memory()) {
    append(content.memory().substr(std::min(offset, content.size())));
    co_return std::nullopt;
  }
  std::string chunk(limits::kRelayChunk, '\0');
  for (;;) {
    long n = content.read(offset, chunk.data(), chunk.size());
    if (n < 0) {
      log::error("spool-error").kv("session", client_.id).kv("op", "read").kv("error", std::strerror(errno));
      close("spool read failed");
      co_return local(replies::kSpoolFailed, true);
    }
    if (n == 0) co_return std::nullopt;
    offset += static_cast<std::size_t>(n);
    append(std::string_view(chunk.data(), static_cast<std::size_t>(n)));
    if (output_.size() >= limits::kRelayChunk) {
      // Content owes no reply: the MTA must be quiet until its end.
      if (auto failed = co_await send(output_, config_->timeouts.upstream_data_block, 0, "content")) co_return failed;
      output_.clear();
    }
  }
}

// One "BDAT n LAST" (RFC 3030): a round trip less than DATA/354, and no
// dot-stuffing; the content is canonical CRLF already.
asio::awaitable<UpstreamReply> SmtpUpstream::send_chunked(const std::string& head, const Spool& content,
                                                          std::size_t offset) {
  const auto& to = config_->timeouts;
  offset = std::min(offset, content.size());
  output_ = fmt::format("BDAT {} LAST\r\n", head.size() + content.size() - offset);
  reserve_output(head, content, offset);
  output_.append(head);
  if (auto failed = co_await send_content(content, offset, nullptr)) co_return *failed;
  // One chunk, one reply owed, once all of it is written (RFC 3030 §2).
  if (auto failed = co_await send(output_, to.upstream_data_block, 1, "bdat")) co_return std::move(*failed);
  UpstreamReply r = co_await final_reply(std::chrono::steady_clock::now(), "bdat");
  // RFC 3030 §2: a refused BDAT leaves the transaction open.
  if (state_ == State::kInTransaction && r.reply.positive()) state_ = State::kReady;
  co_return r;
}

asio::awaitable<void> SmtpUpstream::reset() {
  if (preparation_) co_await settle();
  // A DATA sent ahead: after its 354 no RSET (the content would take it).
  if (state_ == State::kDataSent) co_await settle_data("rset");
  if (state_ == State::kMailHeld) {  // nothing was sent
    state_ = State::kReady;
    co_return;
  }
  if (state_ != State::kInTransaction) co_return;
  UpstreamReply r = co_await command(metrics::UpstreamCommand::kRset, "RSET\r\n", config_->timeouts.upstream_mail);
  if (r.connection_lost) co_return;
  if (!r.reply.positive()) {
    close("RSET refused");
    co_return;
  }
  state_ = State::kReady;
}

asio::awaitable<void> SmtpUpstream::quit() {
  abandon_preparation();  // it carried nothing of this client's but XCLIENT: back to the pool
  if (state_ == State::kDataSent) abort_data("quit");  // QUIT would be content
  if (state_ == State::kClosed) co_return;
  // What the MTA sent since its last reply is checked here too (send()).
  // Bound to a name: g++ 12 miscompiles an awaited std::optional tested in
  // place once the write suspends (SIGSEGV seen with `if (co_await send(...))`).
  std::optional<UpstreamReply> failed = co_await send("QUIT\r\n", kQuitTimeout, 1, "quit");
  if (!failed) {
    Reply bye;
    co_await receive(bye, kQuitTimeout, "quit");
  }
  state_ = State::kClosed;  // a polite end: no log line
  close("quit");
}

// Parked for the next client session only when nothing of this one can
// reach it: no open transaction, nothing owed or buffered, no AUTH, no
// refusal or error on the connection, and fewer messages than the limit.
asio::awaitable<void> SmtpUpstream::release() {
  abandon_preparation();
  if (!poolable()) co_return co_await quit();
  park_or_close("");
}

bool SmtpUpstream::poolable() const {
  const auto& up = config_->upstream;
  return up.reuse && state_ == State::kReady && !c_->tainted && c_->replies.owed() == 0 &&
         c_->replies.buffered().empty() && c_->socket.is_open() &&
         (up.reuse_max_messages == 0 || c_->messages < up.reuse_max_messages);
}

void SmtpUpstream::park_or_close(std::string_view why) {
  if (!poolable()) {
    close(why);
    return;
  }
  state_ = State::kClosed;
  release_buffers();
  const auto executor = c_->socket.get_executor();
  UpstreamPool::of(executor).put(std::exchange(c_, std::make_unique<UpstreamConnection>(executor)), config_);
}

asio::awaitable<bool> probe_upstream(asio::any_io_executor executor,
                                     std::shared_ptr<const Config> config, UpstreamCapabilities& caps) {
  if (config->upstream.kind == Config::Upstream::Kind::kMaildir) {
    caps.smtputf8 = true;  // a local file takes any octets; no DSN from a Maildir
    caps.dsn = false;
    co_return true;
  }
  SessionFacts nobody;
  nobody.id = "probe";
  SmtpUpstream probe(executor, config, nobody);
  const bool reached = co_await probe.probe();
  metrics::registry().upstream_reachable = reached;
  metrics::registry().upstream_probe_time = static_cast<std::int64_t>(std::time(nullptr));
  if (!reached) co_return false;
  caps.smtputf8 = probe.offers("SMTPUTF8");
  caps.dsn = probe.offers("DSN");
  co_await probe.quit();
  log::info("upstream-capabilities").kv("upstream", config->upstream.target)
      .kv("smtputf8", caps.smtputf8 ? "yes" : "no").kv("dsn", caps.dsn ? "yes" : "no");
  co_return true;
}

// A message in memory went out through output_ whole (send_content): its
// capacity would stay with the idle connection (issue 18).
void SmtpUpstream::release_buffers() {
  if (output_.capacity() > limits::kIdleBuffer) std::string().swap(output_);
  std::string& input = c_->replies.input();
  if (input.empty() && input.capacity() > limits::kIdleBuffer) std::string().swap(input);
}

}  // namespace postern
