// One MTA connection to postern's milter server ([milter_server],
// docs/milter.md), as an I/O-free dialogue: the MTA's commands (SMFIC_*)
// in, postern's replies and modifications (SMFIR_*) out. The MTA's facts —
// the SMFIC_CONNECT address, HELO, envelope and the macros Postfix sends —
// become a SessionFacts and a TransactionFacts, the filter chain runs at
// each stage as it does for a proxied session, and its verdict and changes
// map to milter replies (milter_changes.h). The socket is milter_server.cpp's.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <asio/awaitable.hpp>

#include "filters/filter_chain.h"
#include "filters/milter/milter_protocol.h"
#include "filters/spool.h"
#include "proxy/outcome.h"
#include "proxy/config.h"

namespace postern {

class MilterDialogue {
 public:
  MilterDialogue(std::shared_ptr<const Config> config, std::shared_ptr<const FilterChain> chain,
                 std::shared_ptr<const FilterChain> submission_chain, std::string listener);
  ~MilterDialogue();
  MilterDialogue(const MilterDialogue&) = delete;
  MilterDialogue& operator=(const MilterDialogue&) = delete;

  enum class Next { kMore, kClose };
  // Handles one of the MTA's commands and appends the framed replies to
  // `out` (none for a step negotiated without reply). kClose: SMFIC_QUIT,
  // or the MTA sent garbage (logged): the connection ends after `out`.
  asio::awaitable<Next> handle(const milter::Packet& packet, std::string& out);
  // The connection ends (QUIT, EOF, time-out): the transaction is abandoned
  // and the close stage runs.
  asio::awaitable<void> finish();
  // Between two messages (a drain may close the connection there).
  bool idle() const { return !txn_active_; }
  const std::string& id() const { return id_; }
  std::size_t messages() const { return messages_; }

 private:
  asio::awaitable<Next> negotiate(const milter::Command& c, std::string& out);
  void take_macros(const milter::Command& c);
  asio::awaitable<void> on_connect(const milter::Command& c, std::string& out);
  asio::awaitable<void> on_helo(const milter::Command& c, std::string& out);
  asio::awaitable<Next> on_mail(const milter::Command& c, std::string& out);
  asio::awaitable<Next> on_rcpt(const milter::Command& c, std::string& out);
  bool on_header(const milter::Command& c);
  void append_content(std::string_view bytes);
  asio::awaitable<void> end_of_message(std::string_view last_chunk, std::string& out);
  asio::awaitable<Verdict> run_filters(Stage stage);
  const FilterChain* active_chain() const;
  void start_content();
  void refuse(const Verdict& v, Stage stage, std::string& out);
  // Continue, unless the step was negotiated without a reply (SMFIP_NR_*).
  void proceed(std::uint32_t no_reply_step, std::string& out) const;
  void write_audit(Outcome action, std::string_view reply, const Verdict& v, const char* stage,
                   std::string_view message_id, std::string_view from_domain, bool dkim_signed);
  // `forget_macros`: the message's macros (i, {mail_*}, {rcpt_*}) go too.
  void reset_transaction(bool forget_macros = true);
  void forget_transaction_macros();
  void reset_connection();

  std::shared_ptr<const Config> config_;
  std::shared_ptr<const FilterChain> chain_;
  std::shared_ptr<const FilterChain> submission_chain_;
  std::string listener_;
  std::string id_;
  bool negotiated_ = false;
  std::uint32_t actions_ = 0;  // SMFIF_* the MTA allows
  std::uint32_t steps_ = 0;    // SMFIP_* agreed
  std::map<std::string, std::string> macros_;
  SessionFacts facts_;
  SessionFacts connect_facts_;  // facts_ after the connect stage: what STARTTLS goes back to
  bool connected_ = false;
  std::optional<Verdict> refused_;  // the connect stage refused the client: every later command too
  std::size_t messages_ = 0;
  bool mail_macros_ = false;       // the macros of the coming MAIL arrived
  std::size_t transactions_ = 0;  // MAILs seen: a transaction's id without the MTA's queue id

  bool txn_active_ = false;
  TransactionFacts txn_;
  std::optional<Verdict> pending_;  // discard/quarantine decided before the content
  std::unique_ptr<Spool> spool_;
  bool in_body_ = false;      // SMFIC_EOH seen
  bool too_big_ = false;      // over limits.message_size: refused at end of message
  bool spool_failed_ = false;
  std::chrono::steady_clock::time_point txn_started_;
};

}  // namespace postern
