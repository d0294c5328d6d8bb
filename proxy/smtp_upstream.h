// The SMTP client side: one connection to the MTA behind postern, opened at
// the first accepted MAIL (or taken from this thread's pool of idle ones,
// proxy/upstream_pool.h), kept for the session's later messages, and at the
// session's end parked in the pool when its last transaction ended cleanly.
// A pooled connection may be identified for the client ahead of its first
// MAIL, in the background, once its HELO/EHLO is answered (prepare()).
#pragma once

#include <asio/ip/tcp.hpp>
#include <asio/ssl.hpp>
#include <optional>

#include "proxy/data_decoder.h"
#include "proxy/metrics.h"
#include "proxy/reply_matcher.h"
#include "proxy/upstream.h"
#include "proxy/upstream_pool.h"
#include "proxy/watchdog.h"

namespace postern {

class SmtpUpstream final : public Upstream {
 public:
  SmtpUpstream(const asio::any_io_executor& executor, std::shared_ptr<const Config> config,
               const SessionFacts& client);
  // A preparation still running is left to finish on its own (orphaned).
  ~SmtpUpstream() override;
  SmtpUpstream(const SmtpUpstream&) = delete;
  SmtpUpstream& operator=(const SmtpUpstream&) = delete;

  asio::awaitable<UpstreamReply> mail(const Mailbox& reverse_path,
                                      const std::vector<EsmtpParam>& params, bool hold) override;
  asio::awaitable<UpstreamReply> rcpt(const Mailbox& forward_path,
                                      const std::vector<EsmtpParam>& params, bool data_follows) override;
  bool mail_held() const override { return state_ == State::kMailHeld; }
  asio::awaitable<UpstreamReply> send_held_mail() override;
  const UpstreamReply& held_mail_reply() const override { return held_reply_; }
  asio::awaitable<UpstreamReply> data(const std::string& head, const Spool& content,
                                      std::size_t offset, const Mailbox& reverse_path) override;
  // DATA ahead of the content (upstream.early_data) to an MTA that takes no BDAT.
  asio::awaitable<void> begin_data() override;
  asio::awaitable<UpstreamReply> auth(std::string_view line, bool first, std::string_view mechanism) override;
  asio::awaitable<void> reset() override;
  asio::awaitable<void> quit() override;
  asio::awaitable<void> release() override;
  bool offers(std::string_view keyword) const override;
  void release_buffers() override;
  // Takes an idle connection from this thread's pool, if one waits, and
  // starts identifying it for the client (RSET, XCLIENT, EHLO) in a
  // coroutine of its own; the next operation takes it over (settle()).
  // Called at the greeting too: then XCLIENT goes without HELO and PROTO,
  // and the EHLO after it waits for the client's own, the next call.
  void prepare() override;
  // Opens the connection without announcing a client (no XCLIENT): a probe.
  asio::awaitable<bool> probe() { co_return co_await open(false); }

 private:
  // kDataSent: DATA written ahead of the content (begin_data()), its reply
  // not read yet; only data() goes on from there, anything else closes.
  enum class State { kClosed, kReady, kMailHeld, kInTransaction, kDataSent };

  // A pooled connection being identified in the background (prepare()):
  // its own SmtpUpstream over a copy of the client's identity, shared with
  // the coroutine that runs it, so that neither the session nor this object
  // need outlive it. Defined in smtp_upstream.cpp.
  struct Preparation;
  static asio::awaitable<void> run_preparation(std::shared_ptr<Preparation> p);
  // The client's HELO/EHLO names a preparation made at its greeting.
  bool name_preparation();
  static asio::awaitable<void> greet_prepared(std::shared_ptr<Preparation> p);
  // Done (or failed: the connection closed), waiters woken, an orphan parked.
  static void finish_preparation(Preparation& p);
  // Every operation starts here: waits for a preparation under way, then
  // takes its connection when it announced the client as the client is now;
  // else the connection goes back to the pool, and open() identifies anew.
  asio::awaitable<void> settle();
  void adopt();
  // The session ends (or starts TLS) before it used the preparation: a
  // finished one's connection goes back to the pool, a running one parks it
  // itself once done.
  void abandon_preparation();
  // No transaction open, nothing owed or buffered, no AUTH, no refusal,
  // fewer messages than the limit: the connection may serve another client.
  bool poolable() const;
  // Parks the connection in the pool when poolable(), else closes it.
  void park_or_close(std::string_view why);

  asio::awaitable<bool> open(bool identify_client = true);
  // Takes idle connections from this thread's pool until one serves the
  // client: RSET, and XCLIENT and EHLO again where the MTA offers XCLIENT.
  // False when none did (each that failed is closed; a new one is opened).
  asio::awaitable<bool> reuse();
  // XCLIENT's attributes, or XFORWARD's use, for this connection's client.
  asio::awaitable<bool> identify(bool identify_client, bool pooled);
  // `pooled`: the EHLO after XCLIENT over a pooled connection, which must
  // succeed as EHLO (no HELO fallback).
  asio::awaitable<bool> ehlo(std::string name = {}, bool pooled = false);
  // `rset`: a pooled connection is handed over; RSET goes first (in the
  // same write where PIPELINING is offered) and XCLIENT must be taken.
  asio::awaitable<bool> send_xclient(bool rset = false);
  // The EHLO after XCLIENT, with the client's HELO name.
  asio::awaitable<bool> greet_as_client(bool pooled);
  std::string xclient_line() const;
  // A reply no command of its kind can have (`intermediate`: the one 3xx it
  // may have, else a 2xx, 4xx or 5xx): a protocol error; else `r` as it is.
  UpstreamReply checked(UpstreamReply r, std::string_view op, int intermediate = 0);
  asio::awaitable<bool> start_tls();
  asio::awaitable<UpstreamReply> send_chunked(const std::string& head, const Spool& content, std::size_t offset);
  void reserve_output(const std::string& head, const Spool& content, std::size_t offset);
  asio::awaitable<std::optional<UpstreamReply>> send_content(const Spool& content, std::size_t offset,
                                                             DotStuffer* stuffer);
  // What a write follows. kWait: anything (the client, a filter, another
  // write). kReply: the read of the reply it needed, in the same call with
  // nothing awaited since; when that read left the socket empty (drained),
  // what the MTA sent meanwhile is known to be nothing already.
  enum class Follows { kWait, kReply };
  // Writes `bytes`, after which `replies` more replies are owed; when none is
  // owed before, what the MTA sent meanwhile must be nothing (quiet()). The
  // client's reply when that or the write failed (the connection is closed).
  asio::awaitable<std::optional<UpstreamReply>> send(std::string_view bytes, Seconds timeout, std::size_t replies,
                                                     std::string_view op, Follows follows = Follows::kWait);
  // Reads what the MTA sent without waiting: nothing, else the failure.
  std::optional<UpstreamReply> quiet(std::string_view op);
  // Reads the next reply owed; the client's reply instead when the connection
  // failed, timed out, or the MTA's octets explain nothing.
  asio::awaitable<std::optional<UpstreamReply>> receive(Reply& reply, Seconds timeout, std::string_view op);
  // Sends one command line (`what`, for the metrics) and reads its reply.
  asio::awaitable<UpstreamReply> command(metrics::UpstreamCommand what, std::string_view line, Seconds timeout,
                                         Follows follows = Follows::kWait);
  // Reads the reply to a command sent at `sent` (421: the connection ends).
  asio::awaitable<UpstreamReply> reply_to(metrics::UpstreamCommand what, std::chrono::steady_clock::time_point sent,
                                          Seconds timeout);
  // The reply to the end of data or BDAT LAST, written at `sent`.
  asio::awaitable<UpstreamReply> final_reply(std::chrono::steady_clock::time_point sent, std::string_view op);
  // Sends MAIL (and `rcpt` with it when pipelined) and reads MAIL's reply; over a kept connection the MTA closed meanwhile, once more over a
  // fresh one. Then after_mail(): the transaction's state from that reply.
  // `data`: DATA goes in the same write, behind the RCPT (rcpt()'s data_follows).
  asio::awaitable<UpstreamReply> send_mail(const Mailbox& reverse_path, const std::vector<EsmtpParam>& params,
                                           const Mailbox* rcpt, const std::vector<EsmtpParam>* rcpt_params,
                                           bool reused, bool data);
  asio::awaitable<UpstreamReply> after_mail(UpstreamReply r, bool smtputf8);
  UpstreamReply checked_rcpt(UpstreamReply r);
  // A DATA sent ahead whose message is not relayed: the connection closes,
  // the one way to end DATA without delivering (no RSET there).
  void abort_data(std::string_view why);
  // DATA may go ahead of the content: upstream.early_data, and an MTA that
  // takes no BDAT (one round trip already).
  bool early_data() const;
  // Reads the reply to a DATA sent ahead whose content does not follow now:
  // after its 354 only closing ends it (abort_data()); after a refusal the
  // transaction goes on (kInTransaction).
  asio::awaitable<void> settle_data(std::string_view why);
  // The client's reply when open() failed.
  UpstreamReply open_failure();
  void close(std::string_view why);
  UpstreamReply lost(std::string_view stage);
  // The MTA's octets explain nothing: logged, counted, the connection closed.
  UpstreamReply protocol_error(std::string_view op, metrics::UpstreamProtocolError why, std::string_view detail);
  // The MTA said 421 (`said`): the connection closed, the client's 421.
  UpstreamReply closing(Reply said, std::string_view op);
  static void append_params(std::string& line, const std::vector<EsmtpParam>& params,
                            const SmtpUpstream& self);

  std::shared_ptr<const Config> config_;
  const SessionFacts& client_;
  bool xforward_ = false;  // send XFORWARD before each MAIL
  std::unique_ptr<UpstreamConnection> c_;  // never null; a fresh one after release()
  std::shared_ptr<asio::ssl::context> tls_context_;  // built once per upstream, when TLS is configured
  Watchdog watchdog_;
  std::string output_;
  State state_ = State::kClosed;
  Mailbox held_from_;                   // a MAIL held back (kMailHeld), not sent yet
  std::vector<EsmtpParam> held_params_;
  UpstreamReply held_reply_;  // its reply, read by the rcpt() that carried it
  std::chrono::steady_clock::time_point mail_sent_;  // when the last MAIL (with its RCPT) was written
  std::optional<UpstreamReply> failure_;  // why the last open() failed, when the MTA said so
  std::size_t sasl_challenges_ = 0;       // 334s in the AUTH exchange under way (auth())
  std::optional<UpstreamReply> data_failure_;  // why begin_data()'s DATA failed: data()'s reply
  std::shared_ptr<Preparation> preparation_;  // not taken over yet
  SessionFacts announced_;  // who XCLIENT said the client is on c_ (c_->xclient)
};

}  // namespace postern
