// The core of `postern check`: the verdict for one message file, offline —
// the mail and eom stages of the authenticity filters (and any further
// filters, the Lua rules) over a spooled copy, printed as one JSON object:
// spf {result, domain, explanation}, dkim [{domain, selector, algorithm,
// result, reason}], dmarc {result, policy, from_domain, org_domain},
// authentication_results (the field text), verdict {action, symbols, score}.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "filters/auth/auth_options.h"
#include "filters/dns/unbound_resolver.h"
#include "filters/filter.h"
#include "filters/filter_chain.h"

namespace postern {

struct OfflineCheck {
  std::string client_ip;
  std::string helo;
  std::string mail_from;       // "a@example.com" or "" for <>
  std::string message;         // the message, CRLF or LF line ends
  AuthOptions auth;
  DnsOptions dns;              // --dns-server goes to dns.servers
  std::vector<std::shared_ptr<Filter>> rules;  // run after the authenticity filters
  ScoreThresholds thresholds;
};

// Blocking; for the command line only. Throws std::runtime_error when the
// resolver or a library cannot start.
std::string run_offline_check(const OfflineCheck& check);

}  // namespace postern
