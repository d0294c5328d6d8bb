#include "filters/audit/offline_check.h"

#include <cstdio>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/use_future.hpp>

#include "filters/audit/audit_log.h"
#include "filters/auth/auth_filters.h"
#include "filters/auth/auth_results.h"
#include "filters/message.h"
#include "filters/spool.h"

namespace postern {

namespace {

// A JSON string of any length: the audit log's writer (valid UTF-8, control
// characters escaped), uncut.
std::string js(const std::string& s) { return json_string(s, std::string::npos); }

// Message files usually have LF line ends; the spool holds CRLF, and ends
// with one as live content does (DATA's end marker, BDAT's last chunk).
std::string to_crlf(const std::string& in) {
  std::string out;
  out.reserve(in.size() + in.size() / 32 + 2);
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r')) out.push_back('\r');
    out.push_back(in[i]);
  }
  if (!out.empty() && !out.ends_with("\r\n")) out.append("\r\n");
  return out;
}

}  // namespace

std::string run_offline_check(const OfflineCheck& c) {
  auto resolver = make_resolver(c.dns, {});
  // `postern check` is for the authenticity checks: all of them run, whatever
  // the configuration enables for live traffic.
  AuthOptions options = c.auth;
  options.spf.enabled = options.dkim.enabled = options.dmarc.enabled = options.authentication_results.enabled = true;
  options.arc.enabled = true;
  auto filters = make_auth_filters(options, resolver);
  for (const auto& f : c.rules) filters.push_back(f);
  FilterChain chain(std::move(filters), c.thresholds);

  Spool spool(std::size_t(1) << 30, "/tmp");
  spool.append(to_crlf(c.message));
  spool.finish();
  Message message(spool);

  SessionFacts session;
  session.id = "check";
  session.client_ip = c.client_ip;
  session.helo = c.helo;
  TransactionFacts tx;
  tx.id = "check";
  if (!c.mail_from.empty()) {
    auto at = c.mail_from.rfind('@');
    tx.reverse_path = at == std::string::npos ? Mailbox{c.mail_from, ""}
                                              : Mailbox{c.mail_from.substr(0, at), c.mail_from.substr(at + 1)};
  }
  asio::io_context io;
  Verdict verdict;
  FilterContext mail{Stage::kMail, session, tx};
  auto f1 = asio::co_spawn(io, chain.run(mail), asio::use_future);
  io.run();
  verdict = f1.get();
  if (!verdict.decisive() && message.headers_truncated()) {
    // What the live proxy refuses before any filter (552 5.3.4): the header
    // section is over the default limits (filters/message.h HeaderLimits).
    verdict.action = Verdict::Action::kReject;
    verdict.code = 552;
    verdict.enhanced = "5.3.4";
    verdict.reason = "header section over limit";
  } else if (!verdict.decisive()) {
    tx.message = &message;
    FilterContext eom{Stage::kEom, session, tx};
    auto f2 = asio::co_spawn(io, chain.run(eom), asio::use_future);
    io.restart();
    io.run();
    verdict = f2.get();
  }

  const AuthResults& auth = auth_results(tx);
  std::string o = "{";
  if (auth.spf) {
    o += "\"spf\":{\"result\":" + js(spf_result_name(auth.spf->result)) + ",\"domain\":" + js(auth.spf->domain) +
         ",\"explanation\":" + js(auth.spf->explanation) + "}";
  } else {
    o += "\"spf\":null";
  }
  o += ",\"dkim\":[";
  for (std::size_t i = 0; i < auth.dkim.size(); ++i) {
    const auto& d = auth.dkim[i];
    o += std::string(i ? "," : "") + "{\"domain\":" + js(d.domain) + ",\"selector\":" + js(d.selector) +
         ",\"algorithm\":" + js(d.algorithm) + ",\"result\":" + js(dkim_result_name(d.result)) +
         ",\"reason\":" + js(d.reason) + "}";
  }
  o += "]";
  if (auth.dmarc) {
    o += ",\"dmarc\":{\"result\":" + js(dmarc_result_name(auth.dmarc->result)) + ",\"policy\":" + js(auth.dmarc->policy) +
         ",\"from_domain\":" + js(auth.dmarc->from_domain) + ",\"org_domain\":" + js(auth.dmarc->org_domain) + "}";
  } else {
    o += ",\"dmarc\":null";
  }
  o += ",\"arc\":" + (auth.arc ? arc_json(*auth.arc) : std::string("null"));
  std::string ar;
  for (const auto& h : tx.changes.headers) {
    if (h.kind == HeaderEdit::Kind::kPrepend && h.name == "Authentication-Results") ar = h.value;
  }
  o += ",\"authentication_results\":" + js(ar);
  o += ",\"verdict\":{\"action\":" + js(verdict.decisive() ? action_name(verdict.action) : "accept");
  o += ",\"symbols\":[";
  for (std::size_t i = 0; i < tx.symbols.size(); ++i) {
    char score[32];
    std::snprintf(score, sizeof score, "%.6g", tx.symbols[i].score);
    o += std::string(i ? "," : "") + "{\"name\":" + js(tx.symbols[i].name) + ",\"score\":" + score + "}";
  }
  char total[32];
  std::snprintf(total, sizeof total, "%.6g", tx.score);
  o += std::string("],\"score\":") + total + "}}";
  return o;
}

}  // namespace postern
