// Where accepted mail goes: the MTA behind postern (SmtpUpstream) or the
// embedded default's local Maildir (MaildirUpstream). A session mirrors each
// envelope command to its Upstream and relays the Upstream's reply.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>

#include "filters/address.h"
#include "filters/session_facts.h"
#include "filters/spool.h"
#include "proxy/config.h"
#include "proxy/smtp_command.h"
#include "proxy/smtp_reply.h"

namespace postern {

// What the MTA offers, learned by a probe at start-up and refreshed, so the
// client's EHLO advertises only extensions the MTA can carry (SMTPUTF8, DSN).
struct UpstreamCapabilities {
  std::atomic<bool> smtputf8{false};
  std::atomic<bool> dsn{false};
};

// What the upstream did with a command. Replies from the MTA are relayed
// verbatim; `local` marks replies postern made up (MTA down, lost, garbled).
struct UpstreamReply {
  Reply reply;
  bool local = false;
  bool connection_lost = false;  // the upstream connection is gone
  bool held = false;             // MAIL held back (see Upstream::mail): no reply yet
  // The MTA said 421 (RFC 5321 §3.8), as this reply or right behind it: the
  // client hears `reply`, then a 421 if `reply` is not one, and its session
  // ends (docs/operations.md "When the MTA says 421").
  bool closing = false;
  // data() found the MTA gone after its 354 to a DATA sent ahead, before any
  // of the content went out (its time-out in DATA while a slow client sent):
  // the message may go once more on a new transaction (Delivery::relay).
  bool unsent = false;
};

class Upstream {
 public:
  virtual ~Upstream() = default;

  // MAIL FROM:<reverse-path> params; opens the connection first if needed.
  // ESMTP parameters are passed on where the upstream offers their extension.
  //
  // `hold`: the client pipelined a RCPT right behind this MAIL. An upstream
  // that offers PIPELINING (RFC 2920) may then hold MAIL back and answer
  // `held`; the next rcpt() sends both commands in one write and reads both
  // replies, and held_mail_reply() gives MAIL's. send_held_mail() sends a
  // held MAIL on its own instead. One round trip to the MTA less per message.
  virtual asio::awaitable<UpstreamReply> mail(const Mailbox& reverse_path,
                                              const std::vector<EsmtpParam>& params, bool hold) = 0;
  // RCPT TO:<forward-path> params. `data_follows`: the client pipelined DATA
  // right behind this RCPT, and postern answers it with 354 when this RCPT
  // leaves a recipient (or had one). An upstream that would send DATA later
  // (begin_data()) may send it in this write instead and read its reply in
  // data(), or read it and go on where the client's DATA ends up refused
  // after all (reset(), rcpt()).
  virtual asio::awaitable<UpstreamReply> rcpt(const Mailbox& forward_path,
                                              const std::vector<EsmtpParam>& params, bool data_follows) = 0;
  // Whether a MAIL is held back now: the upstream keeps that state, the
  // session asks. An upstream that never holds needs none of these three.
  virtual bool mail_held() const { return false; }
  virtual asio::awaitable<UpstreamReply> send_held_mail() { co_return UpstreamReply{}; }
  // MAIL's reply after an rcpt() that carried a held MAIL.
  virtual const UpstreamReply& held_mail_reply() const {
    static const UpstreamReply none;
    return none;
  }
  // DATA, then `head` (the header section to send: postern's Received and
  // the message's fields, edits applied) followed by the spooled content from
  // `offset`, dot-stuffed, and the end of data; returns the final reply.
  virtual asio::awaitable<UpstreamReply> data(const std::string& head, const Spool& content,
                                              std::size_t offset, const Mailbox& reverse_path) = 0;
  // The client's DATA was answered 354 and its content follows. An upstream
  // that would send DATA and wait for 354 may send DATA now, so that the 354
  // comes back while the content arrives; data() then reads it. A message
  // that is not relayed after that ends the connection (reset(), quit()):
  // the MTA drops a transaction whose content never ended (RFC 5321 §4.1.1.4).
  virtual asio::awaitable<void> begin_data() { co_return; }
  // One line of a SASL exchange relayed to the MTA (RFC 4954): `first` is the
  // AUTH command itself, opening the connection first if needed. Replies are
  // relayed verbatim; 454 when the MTA does not offer the mechanism.
  virtual asio::awaitable<UpstreamReply> auth(std::string_view line, bool first, std::string_view mechanism) = 0;
  // Abandons the open transaction (RSET), if any.
  virtual asio::awaitable<void> reset() = 0;
  // Ends the connection politely (QUIT), if open.
  virtual asio::awaitable<void> quit() = 0;
  // The client session ends: the connection may serve another client
  // session (upstream.reuse), else as quit().
  virtual asio::awaitable<void> release() { co_await quit(); }
  // Between messages: gives back buffers a message made large.
  virtual void release_buffers() {}
  // The client was greeted (who it is is known but its HELO name), or its
  // HELO/EHLO was answered: an upstream that keeps idle connections may
  // ready one for this client now, in the background, while the session
  // reads the client's next command; at the greeting as far as it can
  // without that name. Never opens a connection; later operations wait for
  // it (issue 23).
  virtual void prepare() {}
  // The capabilities the MTA offered (upper-case EHLO keywords), if connected.
  virtual bool offers(std::string_view keyword) const = 0;
};

// Connects to the MTA once (EHLO, QUIT) and records what it offers; false
// when the MTA could not be reached (the previous capabilities then stay).
asio::awaitable<bool> probe_upstream(asio::any_io_executor executor,
                                     std::shared_ptr<const Config> config, UpstreamCapabilities& caps);

// `client` is the session's model, read when the connection opens
// (XCLIENT/XFORWARD, the EHLO name); it outlives the upstream.
std::unique_ptr<Upstream> make_upstream(const asio::any_io_executor& executor,
                                        std::shared_ptr<const Config> config,
                                        const SessionFacts& client);

// Whether an idle MTA connection waits in this thread's pool (upstream.reuse):
// only then is a session's upstream made ahead of its MAIL (prepare()), so
// that a greeted session that sends no mail costs no upstream object.
bool upstream_idle_waiting(const asio::any_io_executor& executor, const Config& config);

}  // namespace postern
