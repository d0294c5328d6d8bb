// `postern check`'s authenticity-only mode; see offline_check.h.
#include "filters/audit/offline_check.h"

#include "filters/audit/audit_log.h"
#include "filters/audit/check_run.h"
#include "filters/auth/auth_filters.h"
#include "filters/auth/auth_results.h"

namespace postern {

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

  CheckRun check(chain, c.message, c.client_ip);
  check.session.helo = c.helo;
  TransactionFacts& tx = check.tx;
  tx.id = "check";
  if (!c.mail_from.empty()) {
    auto at = c.mail_from.rfind('@');
    tx.reverse_path = at == std::string::npos ? Mailbox{c.mail_from, ""}
                                              : Mailbox{c.mail_from.substr(0, at), c.mail_from.substr(at + 1)};
  }
  Verdict verdict = check.run(Stage::kMail);
  if (!verdict.decisive() && check.message().headers_truncated()) {
    // What the live proxy refuses before any filter (552 5.3.4): the header
    // section is over the default limits (filters/message.h HeaderLimits).
    verdict.action = Verdict::Action::kReject;
    verdict.code = 552;
    verdict.enhanced = "5.3.4";
    verdict.reason = "header section over limit";
  } else if (!verdict.decisive()) {
    tx.message = &check.message();
    verdict = check.run(Stage::kEom);
  }

  auto js = [](std::string_view v) { return check_json(v); };
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
  o += "," + check_symbols_json(tx) + "}}";
  return o;
}

}  // namespace postern
