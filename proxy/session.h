// One client connection from accept to close: the SMTP server dialogue, the
// DATA stream into the spool, and the mirrored upstream transaction. One
// coroutine is the session's whole life; it runs on one I/O thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include <asio/awaitable.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/ssl.hpp>

#include "filters/address.h"
#include "filters/filter_chain.h"
#include "filters/spool.h"
#include "proxy/client_connection.h"
#include "proxy/config.h"
#include "proxy/data_decoder.h"
#include "proxy/header_utf8_check.h"
#include "proxy/replies.h"
#include "proxy/sasl_relay.h"
#include "proxy/session_limiter.h"
#include "proxy/smtp_command.h"
#include "proxy/upstream.h"
#include "proxy/watchdog.h"

namespace postern {

class Session;

// The sessions of one I/O thread; touched only from that thread.
struct SessionRegistry {
  std::unordered_set<Session*> sessions;
  bool draining = false;  // shutdown began: each session ends with 421 4.3.2 once no message is in flight

  // Shutdown: marks the thread draining and wakes the sessions idle in a read.
  void drain();
};

// What the sessions accepted on one listener share, made once when its
// accept loop starts (proxy/server.cpp) rather than once per connection.
struct ListenerInfo {
  Config::Listener config;
  // "address:port" of the bound socket, the session's local end; empty when
  // it is bound to a wildcard address (0.0.0.0, ::): each session asks then.
  std::string local;
};

// "address:port" of a session's local end, as facts.listener reports it.
std::string local_text(const asio::ip::tcp::endpoint& local);

class Session {
 public:
  // `peer`: the client's end, as accept() gave it; `no_delay_set`: the
  // socket has TCP_NODELAY from its listening socket (proxy/server.cpp).
  Session(asio::ip::tcp::socket socket, const asio::ip::tcp::endpoint& peer, bool no_delay_set,
          std::shared_ptr<const Config> config,
          std::shared_ptr<const ListenerInfo> listener, std::shared_ptr<asio::ssl::context> tls_context,
          std::shared_ptr<const FilterChain> chain, std::shared_ptr<const FilterChain> submission_chain,
          std::shared_ptr<const UpstreamCapabilities> caps,
          SessionRegistry& registry);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  asio::awaitable<void> run();
  // Shutdown (SessionRegistry::drain): a session waiting for a command gets
  // 421 4.3.2 and closes; one busy with a message finishes it first.
  void drain();

 private:
  enum class Mode { kCommand, kData, kBdat, kSkipLine };
  // What the session does once its queued replies are written: one value, so
  // no two requests can contradict each other. Ordered by strength; a later
  // request never weakens an earlier one (after_reply): a close stays a close.
  enum class Next {
    kRead,      // read the next command or content
    kStartTls,  // the 220 to STARTTLS is queued: the TLS handshake follows (RFC 3207)
    kClose,     // the session ends (QUIT, a 421, a refusal that disconnects)
  };

  // The open mail transaction (RFC 5321 §3.3); dies only in reset_transaction().
  struct Transaction {
    bool failed = false;  // the upstream was lost: the rest of it gets 451 4.4.2
    TransactionFacts facts;  // envelope, changes, symbols: what filters see
    std::vector<EsmtpParam> mail_params;
    std::vector<std::vector<EsmtpParam>> rcpt_params;  // each accepted recipient's, as facts.recipients
    std::unordered_set<std::string> rcpt_keys;  // mailbox_key() of each accepted recipient: a duplicate is one of them
    bool smtputf8 = false;  // MAIL carried SMTPUTF8 (RFC 6531)
    std::shared_ptr<HeaderUtf8Check> header_utf8;  // with smtputf8: the content's header section checked
    bool chunked = false;   // content comes in BDAT chunks (RFC 3030)
    std::optional<Verdict> pending;  // discard/quarantine decided before the content
    std::size_t rcpt_commands = 0;
    std::chrono::steady_clock::time_point started;
  };

  asio::awaitable<void> process_input();
  asio::awaitable<bool> flush();
  asio::awaitable<bool> talks_before_greeting();
  asio::awaitable<bool> fill();
  asio::awaitable<bool> read_proxy_header();
  asio::awaitable<bool> admit(SessionLimiter::Ticket& ticket, SessionLimiter::Scope scope);
  asio::awaitable<bool> start_tls();
  asio::awaitable<void> handle_starttls();
  void forget_plaintext();
  asio::awaitable<void> handle_auth(const Command& cmd);
  asio::awaitable<void> auth_step(SaslRelay::Step step);
  asio::awaitable<void> auth_failed();
  asio::awaitable<void> handle_command(std::string_view line);
  asio::awaitable<void> handle_helo(const Command& cmd);
  asio::awaitable<void> handle_mail(const Command& cmd);
  // The upstream's reply to MAIL, relayed; a refusal ends the transaction.
  void mail_replied(const UpstreamReply& r);
  void relay_reply(const UpstreamReply& r);
  // Sends a MAIL the upstream holds on its own and relays its reply (no-op
  // when none is held). Before any reply but that of the RCPT carrying it.
  asio::awaitable<void> settle_mail();
  // Whether the client's next buffered line is a complete RCPT command.
  bool rcpt_pipelined() const;
  bool data_pipelined() const;
  asio::awaitable<void> handle_rcpt(const Command& cmd);
  asio::awaitable<void> handle_data();
  void handle_bdat(const Command& cmd);
  asio::awaitable<void> take_chunk(std::string_view avail);
  EsmtpOffer esmtp_offer() const;
  DialogueState dialogue() const;
  bool in_transaction() const { return phase_ == Phase::kTransaction; }
  asio::awaitable<void> end_of_data();
  asio::awaitable<Verdict> run_filters(Stage stage);
  void add_content_taps();
  const FilterChain* active_chain() const;
  asio::awaitable<void> abandon_transaction();
  void reset_transaction();
  void release_buffers();
  HeaderLimits header_limits() const;
  void log_header_section_refused(const Message& message) const;

  void reply(const replies::Def& def);
  void queue_reply(int code, std::string_view text);
  void queue_reply(const Reply& r);
  void after_reply(Next next) { next_ = std::max(next_, next); }
  bool closing() const { return next_ == Next::kClose; }
  void client_error(const replies::Def& def);
  void note_error();
  Upstream& upstream();

  ClientConnection conn_;  // the socket, TLS, the PROXY header: the read and write side
  std::shared_ptr<const Config> config_;
  std::shared_ptr<const ListenerInfo> listener_info_;
  const Config::Listener& listener_;  // listener_info_->config
  std::shared_ptr<asio::ssl::context> tls_context_;  // null: no TLS on this listener
  SessionRegistry& registry_;
  std::shared_ptr<const FilterChain> chain_;
  std::shared_ptr<const FilterChain> submission_chain_;  // once the client authenticated
  std::shared_ptr<const UpstreamCapabilities> caps_;
  std::unique_ptr<Upstream> upstream_;
  std::string id_;
  SessionFacts facts_;  // the client model: filters, Lua, the upstream (XCLIENT) and Received read it
  SessionFacts connect_facts_;  // facts_ after the connect stage, before any command
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point command_deadline_;  // the current (command or content) line's, see fill()

  std::string input_;
  std::size_t input_pos_ = 0;
  std::string output_;
  std::string decoded_;
  Mode mode_ = Mode::kCommand;
  Next next_ = Next::kRead;
  SaslRelay sasl_;  // AUTH relayed to the MTA (RFC 4954)
  // The MTA said 235: its session is authenticated, whatever name postern
  // read from the exchange (facts_.auth_user; empty when the client named none).
  bool authenticated_ = false;
  std::uint64_t chunk_size_ = 0;  // the current BDAT's declared size
  std::uint64_t chunk_left_ = 0;  // BDAT octets still to read
  bool chunk_last_ = false;
  bool chunk_discard_ = false;    // the BDAT was refused: read and drop its octets

  Phase phase_ = Phase::kConnected;  // the dialogue's position; the parser's is mode_
  std::size_t errors_ = 0;
  std::size_t auth_failures_ = 0;
  std::size_t messages_ = 0;
  Transaction txn_;
  DataDecoder decoder_;
  Spool spool_;
  bool spool_failed_ = false;
};

}  // namespace postern
