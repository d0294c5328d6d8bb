// The typed results of the sender-authenticity checks of one transaction.
// They live in TransactionFacts::auth (filters/filter.h), written by the SPF,
// DKIM and DMARC filters and read by every later stage, the audit log, the
// metrics and `postern check`; filters/auth/auth_results.h shows them to the
// Lua rules as the notes "spf.*", "dkim.N.*" and "dmarc.*".
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace postern {

// RFC 7208 §2.6 results.
enum class SpfResult { kNone, kNeutral, kPass, kFail, kSoftfail, kTemperror, kPermerror };
const char* spf_result_name(SpfResult r);

struct SpfOutcome {
  SpfResult result = SpfResult::kNone;
  std::string identity;     // "mailfrom" or "helo" (null reverse-path, RFC 7208 §2.4)
  std::string sender;       // the checked identity: "user@domain" or "postmaster@helo"
  std::string domain;       // its domain
  std::string client_ip;    // as checked (IPv4-mapped IPv6 unmapped)
  std::string helo;
  std::string explanation;  // exp= text on fail
  std::string reason;       // why: the matched mechanism, the error, the limit
};

// RFC 6376 §6.1 / RFC 8601 dkim results.
enum class DkimResult { kNone, kPass, kFail, kNeutral, kPolicy, kTemperror, kPermerror };
const char* dkim_result_name(DkimResult r);

struct DkimSignature {
  DkimResult result = DkimResult::kNone;
  std::string domain;     // d=
  std::string selector;   // s=
  std::string algorithm;  // "rsa-sha256", "ed25519-sha256", "rsa-sha1"
  std::string identity;   // i=
  std::string b;          // the first 12 characters of b=, for header.b (RFC 6008)
  std::string reason;     // why it failed, or notes ("l= covers 120 of 300 octets")
  unsigned key_bits = 0;
  bool weak_key = false;  // RSA key < 1024 bits
  long body_length = -1;  // l=, -1 when absent
  bool body_truncated = false;  // l= leaves body octets unsigned
};

// RFC 7489 results.
enum class DmarcResult { kNone, kPass, kFail, kTemperror, kPermerror };
const char* dmarc_result_name(DmarcResult r);

struct DmarcOutcome {
  DmarcResult result = DmarcResult::kNone;
  std::string from_domain;   // RFC5322.From domain
  std::string org_domain;    // its organizational domain (Public Suffix List)
  std::string policy;        // the record's p= (or sp= when it applied): none, quarantine, reject
  std::string disposition;   // after pct=: none, quarantine, reject
  bool spf_aligned = false;
  bool dkim_aligned = false;
  std::string record_domain; // where the record was found (From domain or org domain)
  std::string reason;
  // The record as published (RFC 7489 Appendix C policy_published); meaningful
  // when record_domain is not empty.
  struct Published {
    char p = 'n', sp = 0;        // 'n' none, 'q' quarantine, 'r' reject; sp 0 = as p
    bool adkim_strict = false, aspf_strict = false;
    int pct = 100;
  } published;
  // Why the disposition differs from the policy (Appendix C PolicyOverrideType):
  // "sampled_out" (pct=), "local_policy" (e.g. a trusted ARC sealer),
  // "trusted_forwarder", "mailing_list", "forwarded", "other"; empty when none.
  std::string override_type;
  std::string override_comment;
};

// RFC 8617 ARC chain validation (filters/arc/arc_verify.h).
enum class ArcResult { kNone, kPass, kFail };
const char* arc_result_name(ArcResult r);

// One ARC set as validated: its instance, who sealed it and what it said.
struct ArcSet {
  unsigned instance = 0;
  std::string sealer;        // ARC-Seal d=
  std::string selector;      // ARC-Seal s=
  std::string ams_domain;    // ARC-Message-Signature d=
  std::string cv;            // the seal's cv=: none, pass, fail
  bool ams_valid = false;    // only the newest AMS must validate (RFC 8617 5.2)
  bool as_valid = false;
  std::string aar;           // the ARC-Authentication-Results value after "i=N;"
};

struct ArcOutcome {
  ArcResult result = ArcResult::kNone;
  unsigned count = 0;        // ARC sets found (the highest instance when the chain is whole)
  unsigned oldest_pass = 0;  // lowest instance from which every AMS validates; 0 when all do
  std::string reason;        // why fail ("ARC-Seal i=2 does not verify")
  std::string remote_ip;     // the client, for smtp.remote-ip (RFC 8617 10.1)
  std::vector<ArcSet> sets;  // instance order (1 first); empty when the structure is broken
  // A trusted sealer ([arc] trusted_sealers) whose ARC-Authentication-Results
  // saw the author domain authenticated; set only when the chain passes.
  std::string trusted_sealer;
  unsigned trusted_instance = 0;
  std::string trusted_saw;   // "dmarc=pass", "dkim=pass header.d=example.com", "spf=pass ..."
};

struct AuthResults {
  // Why SPF, DKIM and DMARC did not run ("client 10.0.0.5 in trusted_networks
  // 10.0.0.0/8"); empty when they did.
  std::string skipped;
  std::optional<SpfOutcome> spf;
  bool dkim_checked = false;
  std::vector<DkimSignature> dkim;
  std::optional<DmarcOutcome> dmarc;
  std::optional<ArcOutcome> arc;
};

}  // namespace postern
