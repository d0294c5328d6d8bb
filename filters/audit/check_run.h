// What both modes of `postern check` run a message in: the live-equivalent
// check (proxy/check_runner.cpp: the configuration's chain, every stage) and
// the authenticity-only one (offline_check.cpp: the auth filters, mail and
// eom). The message sits in a spool as live content does, the facts are
// those a session would hold, and each stage runs to its verdict on a
// private io_context; both print their JSON with the same helpers.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <asio/io_context.hpp>

#include "filters/filter.h"
#include "filters/filter_chain.h"
#include "filters/message.h"
#include "filters/spool.h"

namespace postern {

class CheckRun {
 public:
  // `message`: the message file, LF or CRLF line ends. The session is
  // "check", from `client_ip`.
  CheckRun(const FilterChain& chain, const std::string& message, const std::string& client_ip);

  // Runs `stage` of the chain on session and tx; blocking.
  Verdict run(Stage stage);

  SessionFacts session;
  TransactionFacts tx;
  Message& message() { return *message_; }

 private:
  const FilterChain& chain_;
  asio::io_context io_;
  Spool spool_;
  std::unique_ptr<Message> message_;
};

// A message file as the spool holds live content: CRLF line ends, and a
// final CRLF (DATA's end marker and BDAT's last chunk end the content after one).
std::string message_crlf(const std::string& in);

// A JSON string of any length (the audit log's writer: valid UTF-8, control
// characters escaped), uncut.
std::string check_json(std::string_view s);

// A score as the check prints it ("%.6g").
std::string check_score(double v);

// "\"symbols\":[{\"name\":...,\"score\":...},...],\"score\":total": the
// symbols a transaction collected and its total.
std::string check_symbols_json(const TransactionFacts& tx);

}  // namespace postern
