// DMARC (RFC 7489): the record of the RFC5322.From domain (or of its
// organizational domain, from the Public Suffix List via libpsl), parsed by
// libopendmarc; identifier alignment computed here (libopendmarc's relaxed
// alignment accepts a public suffix such as d=co.uk), p/sp/pct applied.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "filters/auth/auth_options.h"
#include "filters/filter.h"

namespace postern {

// The organizational domain of `domain` (RFC 7489 §3.2); `domain` itself
// when it is a public suffix or unknown to the list. Lower case.
std::string organizational_domain(const std::string& domain);

// True when `a` and `b` align: equal (strict), or the same organizational
// domain (relaxed). Case-insensitive.
bool domains_aligned(const std::string& a, const std::string& b, bool strict);

// The domain of the RFC5322.From field, lower case; nullopt when there is not
// exactly one From field with exactly one mailbox (RFC 7489 §6.6.1).
std::optional<std::string> from_domain(const Message& message);

// A parsed DMARC record.
struct DmarcRecord {
  char p = 'n', sp = 0;  // 'n' none, 'q' quarantine, 'r' reject; sp 0 = as p
  bool adkim_strict = false, aspf_strict = false;
  int pct = 100;
};
// Parses with libopendmarc; nullopt when the text is not a valid DMARC record.
std::optional<DmarcRecord> parse_dmarc_record(const std::string& domain, const std::string& text);

// Everything but the DNS: the outcome from the record found (if any), the
// SPF and DKIM results, and `sample` in [0,100) for pct=.
DmarcOutcome evaluate_dmarc(const std::string& from, const std::optional<DmarcRecord>& record,
                            const std::string& record_domain, const AuthResults& auth, int sample);

class DmarcFilter final : public Filter {
 public:
  DmarcFilter(DmarcOptions options, AuthResultsOptions ar_options, std::shared_ptr<Resolver> resolver);
  const std::string& name() const override { return name_; }
  bool wants(Stage stage) const override { return stage == Stage::kEom; }
  // Decisive only when configured to enforce; a DNS failure is a temperror
  // result, never a verdict (fails open).
  asio::awaitable<Verdict> run(FilterContext& ctx) override;

 private:
  std::string name_ = "dmarc";
  DmarcOptions options_;
  AuthResultsOptions ar_options_;
  std::shared_ptr<Resolver> resolver_;
};

}  // namespace postern
