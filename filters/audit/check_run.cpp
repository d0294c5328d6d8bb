// The common ground of `postern check`'s two modes; see check_run.h.
#include "filters/audit/check_run.h"

#include <cstdio>

#include <asio/co_spawn.hpp>
#include <asio/use_future.hpp>

#include "filters/audit/audit_log.h"

namespace postern {

CheckRun::CheckRun(const FilterChain& chain, const std::string& message, const std::string& client_ip)
    : chain_(chain), spool_(std::size_t(1) << 30, "/tmp") {
  session.id = "check";
  session.client_ip = client_ip;
  spool_.append(message_crlf(message));
  spool_.finish();
  message_ = std::make_unique<Message>(spool_);
}

Verdict CheckRun::run(Stage stage) {
  FilterContext ctx{stage, session, tx};
  auto f = asio::co_spawn(io_, chain_.run(ctx), asio::use_future);
  io_.restart();
  io_.run();
  return f.get();
}

std::string message_crlf(const std::string& in) {
  std::string out;
  out.reserve(in.size() + in.size() / 32 + 2);
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r')) out.push_back('\r');
    out.push_back(in[i]);
  }
  if (!out.empty() && !out.ends_with("\r\n")) out.append("\r\n");
  return out;
}

std::string check_json(std::string_view s) { return json_string(s, std::string::npos); }

std::string check_score(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string check_symbols_json(const TransactionFacts& tx) {
  std::string o = "\"symbols\":[";
  for (std::size_t i = 0; i < tx.symbols.size(); ++i) {
    o += std::string(i ? "," : "") + "{\"name\":" + check_json(tx.symbols[i].name) +
         ",\"score\":" + check_score(tx.symbols[i].score) + "}";
  }
  return o + "],\"score\":" + check_score(tx.score);
}

}  // namespace postern
