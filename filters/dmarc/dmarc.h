// DMARC (RFC 7489): the record of the RFC5322.From domain (or of its
// organizational domain, from the Public Suffix List via libpsl), parsed by
// libopendmarc; identifier alignment computed here (libopendmarc's relaxed
// alignment accepts a public suffix such as d=co.uk), p/sp/pct applied.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "filters/auth/auth_options.h"
#include "filters/auth/auth_results.h"
#include "filters/filter.h"

namespace postern {

// The organizational domain of `domain` (RFC 7489 §3.2); `domain` itself
// when it is a public suffix or unknown to the list. Lower case.
std::string organizational_domain(const std::string& domain);

// True when `a` and `b` align: equal (strict), or the same organizational
// domain (relaxed). Case-insensitive.
bool domains_aligned(const std::string& a, const std::string& b, bool strict);

// The author domains of a message (RFC 7489 §6.6.1): the domain of every
// mailbox of every From field (any case of the field name, obsolete syntax,
// RFC 6854 groups), lower case, distinct, in order. `error` says why there
// is no usable From: no From field, no mailbox, a mailbox whose domain is
// missing, an address literal or not a host name, more than kMaxFromDomains.
struct AuthorDomains {
  static constexpr std::size_t kMaxFromDomains = 10;
  std::vector<std::string> domains;
  std::size_t mailboxes = 0;  // over all From fields
  std::size_t fields = 0;     // From fields
  std::string error;          // non-empty: domains is not to be used
};
AuthorDomains author_domains(const Message& message);
// The mailboxes' domains of one From field value (unfolded); false (and
// `error` set) when a mailbox has no usable domain.
bool parse_from_domains(std::string_view value, std::vector<std::string>& domains, std::size_t& mailboxes,
                        std::string& error);

// The domain of the RFC5322.From field, lower case; nullopt when there is not
// exactly one From field with exactly one mailbox (what signing needs).
std::optional<std::string> from_domain(const Message& message);

// The record text in the form libopendmarc reads (RFC 7489 §6.4: WSP around
// "=" and ";", tag names and the p/sp/adkim/aspf values in any case); nullopt
// when it does not start with "v=DMARC1" (§6.6.3: not a DMARC record).
std::optional<std::string> normalize_dmarc_record(std::string_view text);

// A parsed DMARC record.
struct DmarcRecord {
  char p = 'n', sp = 0;  // 'n' none, 'q' quarantine, 'r' reject; sp 0 = as p
  bool adkim_strict = false, aspf_strict = false;
  int pct = 100;
};
// Parses with libopendmarc; nullopt when the text is not a valid DMARC record.
std::optional<DmarcRecord> parse_dmarc_record(const std::string& domain, const std::string& text);

// Several author domains' outcomes as one (§6.6.1): every one must pass for
// a pass; else the failing one whose policy is strictest decides; else a
// temperror, a permerror or a none. Empty `outcomes`: a none.
DmarcOutcome combine_dmarc_outcomes(const std::vector<DmarcOutcome>& outcomes);

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
  asio::awaitable<DmarcOutcome> evaluate_domain(const std::string& from, const AuthResults& auth);

  std::string name_ = "dmarc";
  DmarcOptions options_;
  AuthResultsOptions ar_options_;
  std::shared_ptr<Resolver> resolver_;
};

}  // namespace postern
