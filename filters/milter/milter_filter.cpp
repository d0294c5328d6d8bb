// The milter client; see milter_filter.h. One milter connection per SMTP
// session (as Postfix keeps one per smtpd session), opened at the first stage
// and closed with the session; every wait has its deadline (connect, each
// command, end of message) and any failure applies `on_error`.
#include "filters/milter/milter_filter.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <array>
#include <optional>

#include <asio/connect.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/generic/stream_protocol.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include "filters/milter/milter_actions.h"
#include "filters/milter/milter_protocol.h"

namespace postern {
namespace {

using namespace asio::experimental::awaitable_operators;
constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);
using Clock = std::chrono::steady_clock;
namespace m = milter;

// One session's connection to one milter.
struct Connection {
  explicit Connection(const asio::any_io_executor& ex) : socket(ex) {}
  asio::generic::stream_protocol::socket socket;
  m::PacketReader reader;
  m::Negotiated negotiated;
  bool open = false;
  bool failed = false;        // on_error holds for the rest of the session
  bool accepted = false;      // SMFIR_ACCEPT at connect or HELO: the session
  bool txn_accepted = false;  // SMFIR_ACCEPT for this transaction
  bool in_transaction = false;
  std::string error;          // why it failed, for the log
};

class MilterFilter final : public Filter {
 public:
  explicit MilterFilter(MilterOptions o) : options_(std::move(o)), name_("milter:" + options_.name) {}
  const std::string& name() const override { return name_; }
  bool wants(Stage) const override { return true; }
  asio::awaitable<Verdict> run(FilterContext& ctx) override;

 private:
  bool negotiated(const Connection& c, std::uint32_t flag) const { return c.negotiated.steps & flag; }
  asio::awaitable<bool> open(Connection& c, FilterContext& ctx, m::Reply& connect);
  asio::awaitable<bool> send(Connection& c, const std::string& bytes);
  asio::awaitable<bool> read(Connection& c, m::Packet& p, Clock::time_point deadline);
  // Sends `packet` (after the stage's macros) and, unless the milter said it
  // does not answer (`no_reply`), reads its final reply into `final`.
  asio::awaitable<bool> command(Connection& c, const FilterContext& ctx, m::MacroStage stage, std::string packet,
                                bool no_reply, m::Reply& final, MilterEom* eom = nullptr,
                                std::chrono::milliseconds timeout = {});
  asio::awaitable<bool> content(Connection& c, FilterContext& ctx, m::Reply& final, MilterEom& eom);
  Verdict verdict_of(const m::Reply& r, Stage stage, Connection& c, FilterContext& ctx) const;
  Verdict fail(Connection& c, Stage stage) const;
  Verdict on_error(Stage stage) const;

  MilterOptions options_;
  std::string name_;
};

asio::awaitable<bool> MilterFilter::send(Connection& c, const std::string& bytes) {
  asio::steady_timer timer(c.socket.get_executor(), options_.command_timeout);
  auto r = co_await (asio::async_write(c.socket, asio::buffer(bytes), use_nothrow) || timer.async_wait(use_nothrow));
  if (r.index() == 1) {
    c.error = "write timed out";
    co_return false;
  }
  if (auto [ec, n] = std::get<0>(r); ec) {
    c.error = "write: " + ec.message();
    co_return false;
  }
  co_return true;
}

asio::awaitable<bool> MilterFilter::read(Connection& c, m::Packet& p, Clock::time_point deadline) {
  std::array<char, 16 * 1024> buf;
  for (;;) {
    switch (c.reader.next(p)) {
      case m::PacketReader::Status::kPacket: co_return true;
      case m::PacketReader::Status::kInvalid:
        c.error = "invalid packet length";
        co_return false;
      case m::PacketReader::Status::kIncomplete: break;
    }
    if (!options_.unix_socket) {
      // libmilter writes each reply packet on its own: without a quick ACK
      // its second write waits for our delayed ACK (Nagle), 40 ms a message.
      int one = 1;
      ::setsockopt(c.socket.native_handle(), IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    }
    asio::steady_timer timer(c.socket.get_executor(), deadline);
    auto r = co_await (c.socket.async_read_some(asio::buffer(buf), use_nothrow) || timer.async_wait(use_nothrow));
    if (r.index() == 1) {
      c.error = "reply timed out";
      co_return false;
    }
    auto [ec, n] = std::get<0>(r);
    if (ec) {
      c.error = ec == asio::error::eof ? "connection closed" : "read: " + ec.message();
      co_return false;
    }
    c.reader.feed(std::string_view(buf.data(), n));
  }
}

asio::awaitable<bool> MilterFilter::open(Connection& c, FilterContext& ctx, m::Reply& connect) {
  c.open = true;
  connect = m::Reply{};
  connect.command = m::reply::kContinue;
  connect.valid = true;  // tried once per session
  asio::steady_timer timer(c.socket.get_executor(), options_.connect_timeout);
  std::error_code ec;
  asio::generic::stream_protocol::endpoint ep;
  if (options_.unix_socket) {
    ep = asio::local::stream_protocol::endpoint(options_.path);
  } else {
    ep = asio::ip::tcp::endpoint(asio::ip::make_address(options_.host, ec), options_.port);
  }
  auto r = co_await (c.socket.async_connect(ep, use_nothrow) || timer.async_wait(use_nothrow));
  if (r.index() == 1) {
    c.error = "connect timed out";
    co_return false;
  }
  if (auto [cec] = std::get<0>(r); cec) {
    c.error = "connect: " + cec.message();
    co_return false;
  }
  if (!options_.unix_socket) {
    // Unanswered commands (header fields, body chunks) go out at once.
    int one = 1;
    ::setsockopt(c.socket.native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  if (!co_await send(c, m::encode_optneg(m::kVersion, m::action::kAll, m::step::kOffered))) co_return false;
  m::Packet p;
  if (!co_await read(c, p, Clock::now() + options_.command_timeout)) co_return false;
  auto neg = m::decode_optneg(p);
  // A version past ours is a protocol postern does not speak; below 2
  // there are no negotiated steps.
  if (!neg || neg->version < 2 || neg->version > m::kVersion) {
    c.error = "bad option negotiation reply";
    co_return false;
  }
  // Only what was offered: a milter asking for more is refused (Postfix too).
  if ((neg->actions & ~m::action::kAll) || (neg->steps & ~m::step::kOffered)) {
    c.error = "milter asks for actions or steps not offered";
    co_return false;
  }
  c.negotiated = *neg;
  // The connect facts, even when this first stage is a later one.
  const SessionFacts& s = ctx.session;
  if (!negotiated(c, m::step::kNoConnect)) {
    const bool v6 = s.client_ip.find(':') != std::string::npos;
    std::string hostname = s.client_name.empty() ? "[" + s.client_ip + "]" : s.client_name;
    FilterContext at{Stage::kConnect, ctx.session, ctx.transaction};
    if (!co_await command(c, at, m::MacroStage::kConnect,
                          m::encode_connect(hostname, v6 ? '6' : '4', s.client_port, s.client_ip),
                          negotiated(c, m::step::kNrConn), connect)) {
      co_return false;
    }
  }
  co_return true;
}

asio::awaitable<bool> MilterFilter::command(Connection& c, const FilterContext& ctx, m::MacroStage stage,
                                            std::string packet, bool no_reply, m::Reply& final, MilterEom* eom,
                                            std::chrono::milliseconds timeout) {
  std::vector<std::pair<std::string, std::string>> macros;
  for (const std::string& name : options_.macros) {
    if (milter_macro_stage(name) == stage) macros.emplace_back(name, milter_macro_value(name, ctx, options_.hostname));
  }
  if (!macros.empty()) packet = m::encode_macros(stage, macros) + packet;
  final = m::Reply{};
  final.command = m::reply::kContinue;
  final.valid = true;
  // Every reply answers the command before it: one that came unasked (a
  // second answer, an answer to an unanswered step) would be read as the
  // answer to this command and shift every verdict after it.
  std::error_code ec;
  if (c.reader.buffered() > 0 || c.socket.available(ec) > 0) {
    c.error = "reply to no command";
    co_return false;
  }
  if (!co_await send(c, packet)) co_return false;
  if (no_reply) co_return true;
  if (timeout.count() == 0) timeout = options_.command_timeout;
  // One deadline for the whole answer: SMFIR_PROGRESS says the milter is
  // alive but never extends it (a milter sending it forever would hold the
  // session, and the client, past every time-out).
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    m::Packet p;
    if (!co_await read(c, p, deadline)) co_return false;
    final = m::decode_reply(p);
    if (!final.valid) {
      c.error = std::string("malformed reply '") + (p.command >= 32 && p.command < 127 ? p.command : '?') + "'";
      co_return false;
    }
    if (final.command == m::reply::kProgress) continue;
    if (m::is_final(final.command)) {
      if (final.command == m::reply::kShutdown || final.command == m::reply::kConnFail) {
        c.error = final.command == m::reply::kShutdown ? "milter shut down" : "milter reported a connection failure";
        co_return false;
      }
      co_return true;
    }
    if (!eom) {
      c.error = std::string("reply '") + final.command + "' outside end of message";
      co_return false;
    }
    if (std::string e = apply_milter_modification(final, c.negotiated.actions, options_.max_body, *eom); !e.empty()) {
      c.error = std::move(e);
      co_return false;
    }
  }
}

Verdict MilterFilter::on_error(Stage stage) const {
  // Before MAIL an error waits for the transaction: the client hears it at MAIL.
  if (options_.on_error == MilterOptions::OnError::kAccept || stage < Stage::kMail || stage == Stage::kClose) {
    return Verdict::proceed();
  }
  if (options_.on_error == MilterOptions::OnError::kReject) {
    return Verdict{Verdict::Action::kReject, 0, "5.7.1", "Rejected by policy", name_ + " failed", name_};
  }
  return Verdict{Verdict::Action::kTempfail, 451, "4.7.1", "Service unavailable, try again later", name_ + " failed", name_};
}

Verdict MilterFilter::fail(Connection& c, Stage stage) const {
  c.failed = true;
  std::error_code ignored;
  c.socket.close(ignored);
  return on_error(stage);
}

Verdict MilterFilter::verdict_of(const m::Reply& r, Stage stage, Connection& c, FilterContext& ctx) const {
  const std::string reason = name_;
  auto note = [&](std::string_view what) {
    std::string& n = ctx.transaction.notes["milter." + options_.name];
    if (!n.empty()) n += "; ";
    n += what;
  };
  switch (r.command) {
    case m::reply::kAccept:
      if (stage < Stage::kMail) c.accepted = true;
      else c.txn_accepted = true;
      if (stage >= Stage::kMail) note("accept");
      return Verdict::proceed();
    case m::reply::kReject:
      note("reject");
      return Verdict{Verdict::Action::kReject, 0, "", "", reason + ": reject", name_};
    case m::reply::kTempfail:
      note("tempfail");
      return Verdict{Verdict::Action::kTempfail, 0, "", "", reason + ": tempfail", name_};
    case m::reply::kReplyCode:
      note("reply " + std::to_string(r.code));
      // 421 closes the channel (RFC 5321 §3.8): a 421 that left the session
      // open would tell the client one thing and do another.
      return Verdict{r.code == 421          ? Verdict::Action::kDisconnect
                     : r.code / 100 == 4 ? Verdict::Action::kTempfail
                                         : Verdict::Action::kReject,
                     r.code, r.enhanced, r.text, reason + ": reply " + std::to_string(r.code), name_};
    case m::reply::kDiscard:
      if (stage < Stage::kMail) return Verdict::proceed();  // no message to discard yet
      note("discard");
      return Verdict{Verdict::Action::kDiscard, 0, "", "", reason + ": discard", name_};
    default:  // continue, skip
      return Verdict::proceed();
  }
}

// DATA, the header fields, end of header, the body in chunks, end of message.
asio::awaitable<bool> MilterFilter::content(Connection& c, FilterContext& ctx, m::Reply& final, MilterEom& eom) {
  const Message* msg = ctx.transaction.message;
  if (!negotiated(c, m::step::kNoData)) {
    if (!co_await command(c, ctx, m::MacroStage::kData, m::encode(m::cmd::kData, ""),
                          negotiated(c, m::step::kNrData), final) || final.command != m::reply::kContinue) {
      co_return c.error.empty();
    }
  }
  if (!negotiated(c, m::step::kNoHdrs)) {
    for (const HeaderField& f : msg->headers()) {
      // The value as received, folds kept as in the message (CRLF).
      std::string_view raw = f.raw;
      std::string_view value = raw.substr(std::min(raw.size(), raw.find(':') + 1));
      if (value.size() >= 2 && value.substr(value.size() - 2) == "\r\n") value.remove_suffix(2);
      if (!value.empty() && (value.front() == ' ')) value.remove_prefix(1);
      if (!co_await command(c, ctx, m::MacroStage::kData, m::encode_header(f.name, value),
                            negotiated(c, m::step::kNrHdr), final) || final.command != m::reply::kContinue) {
        co_return c.error.empty();
      }
    }
  }
  if (!negotiated(c, m::step::kNoEoh)) {
    if (!co_await command(c, ctx, m::MacroStage::kEoh, m::encode(m::cmd::kEoh, ""), negotiated(c, m::step::kNrEoh),
                          final) || final.command != m::reply::kContinue) {
      co_return c.error.empty();
    }
  }
  if (!negotiated(c, m::step::kNoBody)) {
    const Spool& spool = msg->spool();
    std::string chunk(m::kBodyChunk, '\0');
    for (std::size_t off = msg->body_offset(); off < spool.size();) {
      long n = spool.read(off, chunk.data(), chunk.size());
      if (n <= 0) {
        c.error = "spool read failed";
        co_return false;
      }
      off += static_cast<std::size_t>(n);
      if (!co_await command(c, ctx, m::MacroStage::kData,
                            m::encode(m::cmd::kBody, std::string_view(chunk.data(), static_cast<std::size_t>(n))),
                            negotiated(c, m::step::kNrBody), final)) {
        co_return false;
      }
      if (final.command == m::reply::kSkip) break;  // the milter has seen enough body
      if (final.command != m::reply::kContinue) co_return true;
    }
  }
  if (!co_await command(c, ctx, m::MacroStage::kEom, m::encode(m::cmd::kBodyEob, ""), false, final, &eom,
                        options_.eom_timeout)) {
    co_return false;
  }
  eom.ended = true;
  co_return true;
}

asio::awaitable<Verdict> MilterFilter::run(FilterContext& ctx) {
  const Stage stage = ctx.stage;
  std::shared_ptr<void>& slot = ctx.session.filter_state[name_];
  if (!slot) {
    if (stage == Stage::kClose) co_return Verdict::proceed();
    slot = std::make_shared<Connection>(co_await asio::this_coro::executor);
  }
  auto c = std::static_pointer_cast<Connection>(slot);
  if (stage == Stage::kClose) {
    if (c->open && !c->failed) {  // SMFIC_QUIT, not waited for
      std::string quit = m::encode(m::cmd::kQuit, "");
      std::error_code ignored;
      c->socket.non_blocking(true, ignored);
      c->socket.write_some(asio::buffer(quit), ignored);
    }
    slot.reset();
    co_return Verdict::proceed();
  }
  if (c->failed) co_return on_error(stage);
  if (c->accepted || stage == Stage::kData) co_return Verdict::proceed();

  if (stage == Stage::kMail) {
    c->txn_accepted = false;
    if (c->in_transaction && c->open) {  // the last transaction ended without end of message
      if (!co_await send(*c, m::encode(m::cmd::kAbort, ""))) goto failed;
    }
    c->in_transaction = true;
  }
  if (c->txn_accepted) co_return Verdict::proceed();
  if (!c->open) {
    m::Reply connect;
    if (!co_await open(*c, ctx, connect)) goto failed;
    Verdict v = verdict_of(connect, Stage::kConnect, *c, ctx);
    if (v.decisive() || c->accepted) co_return v;
    if (stage == Stage::kConnect) co_return Verdict::proceed();
    // A later first stage (an earlier filter accepted): say HELO too.
    if (stage > Stage::kHelo && !ctx.session.helo.empty() && !negotiated(*c, m::step::kNoHelo)) {
      m::Reply r;
      FilterContext at{Stage::kHelo, ctx.session, ctx.transaction};
      if (!co_await command(*c, at, m::MacroStage::kHelo, m::encode_helo(ctx.session.helo),
                            negotiated(*c, m::step::kNrHelo), r)) {
        goto failed;
      }
    }
  }
  {
    m::Reply r;
    switch (stage) {
      case Stage::kConnect:
        co_return Verdict::proceed();  // sent by open()
      case Stage::kHelo:
        if (negotiated(*c, m::step::kNoHelo)) co_return Verdict::proceed();
        if (!co_await command(*c, ctx, m::MacroStage::kHelo, m::encode_helo(ctx.session.helo),
                              negotiated(*c, m::step::kNrHelo), r)) {
          goto failed;
        }
        break;
      case Stage::kMail:
        if (negotiated(*c, m::step::kNoMail)) co_return Verdict::proceed();
        if (!co_await command(*c, ctx, m::MacroStage::kMail,
                              m::encode_envelope(m::cmd::kMail, ctx.transaction.reverse_path.str(),
                                                ctx.transaction.mail_parameters),
                              negotiated(*c, m::step::kNrMail), r)) {
          goto failed;
        }
        break;
      case Stage::kRcpt:
        if (negotiated(*c, m::step::kNoRcpt) || !ctx.transaction.current_rcpt) co_return Verdict::proceed();
        if (!co_await command(*c, ctx, m::MacroStage::kRcpt,
                              m::encode_envelope(m::cmd::kRcpt, ctx.transaction.current_rcpt->str(),
                                                ctx.transaction.rcpt_parameters),
                              negotiated(*c, m::step::kNrRcpt), r)) {
          goto failed;
        }
        break;
      case Stage::kEom: {
        if (!ctx.transaction.message) co_return Verdict::proceed();
        MilterEom eom;
        if (!co_await content(*c, ctx, r, eom)) goto failed;
        if (eom.ended) c->in_transaction = false;
        Verdict v = verdict_of(r, stage, *c, ctx);
        if (v.decisive()) co_return v;
        // The milter finished: its changes join the transaction's.
        Changes& ch = ctx.transaction.changes;
        for (HeaderEdit& e : eom.changes.headers) ch.headers.push_back(std::move(e));
        for (Mailbox& mb : eom.changes.add_recipients) ch.add_recipients.push_back(std::move(mb));
        for (auto& added : eom.changes.add_recipient_params) ch.add_recipient_params.push_back(std::move(added));
        for (Mailbox& mb : eom.changes.remove_recipients) ch.remove_recipients.push_back(std::move(mb));
        if (eom.changes.reverse_path) {
          ch.reverse_path = std::move(eom.changes.reverse_path);
          ch.reverse_path_params = std::move(eom.changes.reverse_path_params);
        }
        for (std::string& d : eom.changes.dropped_params) ch.dropped_params.push_back(std::move(d));
        if (eom.changes.body) {
          if (eom.body_cr) eom.changes.body->append("\r\n");
          ch.body = std::move(eom.changes.body);
        }
        std::string& n = ctx.transaction.notes["milter." + options_.name];
        for (const std::string& a : eom.actions) n += (n.empty() ? "" : "; ") + a;
        if (eom.quarantine) {
          co_return Verdict{Verdict::Action::kQuarantine, 0, "", "", name_ + ": quarantine " + *eom.quarantine, name_};
        }
        co_return Verdict::proceed();
      }
      default:
        co_return Verdict::proceed();
    }
    co_return verdict_of(r, stage, *c, ctx);
  }
failed:
  if (options_.on_failure) options_.on_failure(options_, ctx.session.id, stage_name(stage), c->error);
  ctx.transaction.notes["milter." + options_.name] = "error: " + c->error;
  co_return fail(*c, stage);
}

}  // namespace

std::shared_ptr<Filter> make_milter_filter(MilterOptions options) {
  return std::make_shared<MilterFilter>(std::move(options));
}

}  // namespace postern
