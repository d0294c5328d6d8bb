// Options of the authenticity checks ([spf], [dkim], [dmarc],
// [authentication_results] of the configuration), independent of proxy/.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "filters/arc/arc_options.h"
#include "filters/spf/spf_checker.h"
#include "filters/auth/trusted_networks.h"

namespace postern {

class DkimSigner;

struct SpfOptions {
  bool enabled = false;  // on only when configured: it needs [dns] servers that answer
  SpfLimits limits;
  std::chrono::milliseconds timeout{20000};  // whole check
  bool received_spf = true;                  // add a Received-SPF field
  bool reject_fail = false;                  // 550 5.7.23 at MAIL FROM on fail
  bool tempfail_temperror = false;           // 451 4.7.24 at MAIL FROM on temperror
  // RFC 7208 §2.3: check the HELO identity at HELO/EHLO (session notes
  // "spf.helo.*"); a null reverse-path then takes that result (§2.4).
  bool check_helo = true;
  // Outcomes kept by their exact inputs for the shortest TTL of the records
  // they used (SpfResultCache); 0 = none, as with [dns] cache_entries = 0.
  std::size_t result_cache = 10000;
  double score_fail = 3.0, score_softfail = 1.0, score_permerror = 0.5, score_pass = 0, score_neutral = 0,
         score_none = 0, score_temperror = 0;
};

struct DkimOptions {
  bool enabled = false;  // on only when configured: it needs [dns] servers that answer
  std::chrono::milliseconds timeout{20000};  // all key lookups of one message
  unsigned min_key_bits = 1024;              // smaller RSA keys: reported weak (RFC 8301)
  std::size_t max_signatures = 10;           // verified per message; more are reported permerror
  double score_fail = 1.0, score_pass = 0, score_weak_key = 0.5;
  // [[dkim.sign]] keys with sign_authenticated / sign_networks / sign_headers
  // / sign_on_error (filters/dkim/dkim_signer.h); null = no signing. Signing
  // needs no DNS and is independent of `enabled` (verification).
  std::shared_ptr<const DkimSigner> signer;
};

struct DmarcOptions {
  bool enabled = false;  // on only when configured: it needs [dns] servers that answer
  enum class Enforce { kReport, kQuarantine, kReject } enforce = Enforce::kReport;
  // kReport: never a verdict, only symbols and results. kQuarantine: p=reject
  // and p=quarantine quarantine. kReject: p=reject rejects, p=quarantine quarantines.
  bool honor_pct = true;
  // A message without a usable RFC5322.From (none, an empty group, a mailbox
  // without a domain, with an address literal or a domain that is not valid
  // IDNA, a From the parser cannot read, more than kMaxFromDomains domains): RFC 7489 §6.6.1 cannot be
  // applied, and relaying it would let a spoofer skip DMARC by breaking the
  // From. kReject / kQuarantine are capped by `enforce` (report: none).
  enum class UnusableFrom { kNone, kQuarantine, kReject } unusable_from = UnusableFrom::kReject;
  std::chrono::milliseconds timeout{10000};
  double score_fail = 2.0, score_pass = 0;
};

struct AuthResultsOptions {
  bool enabled = false;  // on only when configured: it needs [dns] servers that answer
  std::string authserv_id;           // the server's host name when empty
  bool remove_forged = true;         // drop incoming A-R fields with our authserv-id
};

struct AuthOptions {
  TrustedNetworks trusted;           // [authenticity] trusted_networks: SPF, DKIM and DMARC skipped
  SpfOptions spf;
  DkimOptions dkim;
  DmarcOptions dmarc;
  ArcOptions arc;
  AuthResultsOptions authentication_results;
  std::string hostname;              // receiver name for Received-SPF / authserv-id
  unsigned worker_threads = 4;       // the bounded pool of blocking checks
};

}  // namespace postern
