#include "filters/auth/dmarc.h"

#include <libpsl.h>

#include <asio/use_awaitable.hpp>

#include <cctype>
#include <cstring>
#include <mutex>
#include <random>

#include "filters/auth/authentication_results.h"
#include "filters/auth/c_api.h"

namespace postern {

namespace {

std::string lower(std::string s) {
  if (!s.empty() && s.back() == '.') s.pop_back();
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

const psl_ctx_t* psl() {
  // The system's list (Debian's publicsuffix package) when present, else the
  // copy compiled into libpsl. Never freed: shared by every thread.
  static const psl_ctx_t* ctx = [] {
    const psl_ctx_t* c = psl_latest(nullptr);
    return c ? c : psl_builtin();
  }();
  return ctx;
}

void init_opendmarc() {
  static std::once_flag once;
  std::call_once(once, [] {
    static OPENDMARC_LIB_T lib;
    std::memset(&lib, 0, sizeof lib);
    lib.tld_type = OPENDMARC_TLD_TYPE_NONE;
    opendmarc_policy_library_init(&lib);
  });
}

const char* policy_name(char p) {
  switch (p) {
    case 'r': return "reject";
    case 'q': return "quarantine";
    default: return "none";
  }
}

}  // namespace

std::string organizational_domain(const std::string& domain) {
  std::string d = lower(domain);
  const char* reg = psl_registrable_domain(psl(), d.c_str());
  return reg ? std::string(reg) : d;
}

bool domains_aligned(const std::string& a, const std::string& b, bool strict) {
  std::string x = lower(a), y = lower(b);
  if (x.empty() || y.empty()) return false;
  if (x == y) return true;
  if (strict) return false;
  // A public suffix aligns with nothing but itself (the d=co.uk case).
  if (psl_is_public_suffix(psl(), x.c_str()) || psl_is_public_suffix(psl(), y.c_str())) return false;
  return organizational_domain(x) == organizational_domain(y);
}

std::optional<std::string> from_domain(const Message& message) {
  auto froms = message.all("From");
  if (froms.size() != 1) return std::nullopt;
  const std::string& v = froms[0];
  // The addr-spec: inside <...> when there is an angle-addr, else the value;
  // quoted strings and comments of the display name are skipped.
  std::string addr;
  bool quoted = false;
  int comment = 0;
  std::size_t mailboxes = 1;
  std::string current;
  bool angle = false;
  for (std::size_t i = 0; i < v.size(); ++i) {
    char c = v[i];
    if (quoted) {
      if (c == '\\') ++i;
      else if (c == '"') quoted = false;
      continue;
    }
    if (comment) {
      if (c == '\\') ++i;
      else if (c == '(') ++comment;
      else if (c == ')') --comment;
      continue;
    }
    if (c == '"') quoted = true;
    else if (c == '(') comment = 1;
    else if (c == '<') { angle = true; current.clear(); }
    else if (c == '>') { if (angle) addr = current; angle = false; }
    else if (c == ',') { ++mailboxes; }
    else if (!std::isspace(static_cast<unsigned char>(c))) current.push_back(c);
  }
  if (mailboxes != 1) return std::nullopt;
  if (addr.empty()) addr = current;
  auto at = addr.rfind('@');
  if (at == std::string::npos || at + 1 >= addr.size()) return std::nullopt;
  std::string d = lower(addr.substr(at + 1));
  if (!dns_name_valid(d)) return std::nullopt;
  return d;
}

std::optional<DmarcRecord> parse_dmarc_record(const std::string& domain, const std::string& text) {
  init_opendmarc();
  DMARC_POLICY_T* pctx = opendmarc_policy_connect_init(reinterpret_cast<u_char*>(const_cast<char*>("0.0.0.0")), 4);
  if (!pctx) return std::nullopt;
  std::optional<DmarcRecord> out;
  if (opendmarc_policy_parse_dmarc(pctx, reinterpret_cast<u_char*>(const_cast<char*>(domain.c_str())),
                                   reinterpret_cast<u_char*>(const_cast<char*>(text.c_str()))) == DMARC_PARSE_OKAY) {
    DmarcRecord r;
    int p = 0, sp = 0, adkim = 0, aspf = 0, pct = 100;
    if (opendmarc_policy_fetch_p(pctx, &p) == DMARC_PARSE_OKAY && p != DMARC_RECORD_P_UNSPECIFIED) {
      r.p = static_cast<char>(p);
      if (opendmarc_policy_fetch_sp(pctx, &sp) == DMARC_PARSE_OKAY && sp != DMARC_RECORD_P_UNSPECIFIED) {
        r.sp = static_cast<char>(sp);
      }
      if (opendmarc_policy_fetch_adkim(pctx, &adkim) == DMARC_PARSE_OKAY) r.adkim_strict = adkim == DMARC_RECORD_A_STRICT;
      if (opendmarc_policy_fetch_aspf(pctx, &aspf) == DMARC_PARSE_OKAY) r.aspf_strict = aspf == DMARC_RECORD_A_STRICT;
      if (opendmarc_policy_fetch_pct(pctx, &pct) == DMARC_PARSE_OKAY && pct >= 0 && pct <= 100) r.pct = pct;
      out = r;
    }
  }
  opendmarc_policy_connect_shutdown(pctx);
  return out;
}

DmarcOutcome evaluate_dmarc(const std::string& from, const std::optional<DmarcRecord>& record,
                            const std::string& record_domain, const AuthResults& auth, int sample) {
  DmarcOutcome o;
  o.from_domain = from;
  o.org_domain = organizational_domain(from);
  o.record_domain = record_domain;
  if (!record) {
    o.result = DmarcResult::kNone;
    o.reason = "no DMARC record";
    return o;
  }
  // §3.1.2: SPF aligns through the MAIL FROM domain (the HELO for <>).
  if (auth.spf && auth.spf->result == SpfResult::kPass) {
    o.spf_aligned = domains_aligned(auth.spf->domain, from, record->aspf_strict);
  }
  for (const auto& s : auth.dkim) {
    if (s.result == DkimResult::kPass && domains_aligned(s.domain, from, record->adkim_strict)) {
      o.dkim_aligned = true;
    }
  }
  // §6.6.3: sp= applies when the record was found at the organizational
  // domain for a From domain below it.
  char policy = record->p;
  if (record->sp && lower(record_domain) != lower(from)) policy = record->sp;
  o.policy = policy_name(policy);
  if (o.spf_aligned || o.dkim_aligned) {
    o.result = DmarcResult::kPass;
    o.disposition = "none";
    return o;
  }
  o.result = DmarcResult::kFail;
  char applied = policy;
  // §6.6.4: a message outside pct= gets the next policy down.
  if (sample >= record->pct) applied = policy == 'r' ? 'q' : 'n';
  o.disposition = policy_name(applied);
  o.reason = "neither SPF nor DKIM aligned";
  if (applied != policy) o.reason += "; not sampled by pct=" + std::to_string(record->pct);
  return o;
}

DmarcFilter::DmarcFilter(DmarcOptions options, AuthResultsOptions ar_options, std::shared_ptr<Resolver> resolver)
    : options_(options), ar_options_(std::move(ar_options)), resolver_(std::move(resolver)) {}

namespace {

enum class Lookup { kFound, kNone, kError };

// The one "v=DMARC1" record at _dmarc.DOMAIN (§6.6.3: none when several).
asio::awaitable<std::pair<Lookup, std::string>> fetch_record(std::shared_ptr<Resolver> resolver, std::string domain) {
  std::string name = "_dmarc." + domain;
  DnsAnswer a = co_await resolver->query(std::move(name), DnsType::kTxt);
  if (a.status == DnsStatus::kServFail || a.status == DnsStatus::kTimeout) co_return std::pair{Lookup::kError, std::string()};
  std::string found;
  int count = 0;
  for (const auto& r : a.records) {
    std::size_t i = 0;
    while (i < r.size() && std::isspace(static_cast<unsigned char>(r[i]))) ++i;
    if (r.compare(i, 8, "v=DMARC1") == 0) {
      std::size_t j = i + 8;
      while (j < r.size() && std::isspace(static_cast<unsigned char>(r[j]))) ++j;
      if (j == r.size() || r[j] == ';') {
        found = r;
        ++count;
      }
    }
  }
  if (count != 1) co_return std::pair{Lookup::kNone, std::string()};
  co_return std::pair{Lookup::kFound, found};
}

}  // namespace

asio::awaitable<Verdict> DmarcFilter::run(FilterContext& ctx) {
  const Message* message = ctx.transaction.message;
  if (!message) co_return Verdict::proceed();
  const AuthResults& auth = ctx.transaction.auth;
  auto from = from_domain(*message);
  DmarcOutcome o;
  if (!from) {
    o.result = DmarcResult::kPermerror;
    o.reason = "not exactly one From mailbox";
  } else {
    std::string org = organizational_domain(*from);
    std::string record_domain = *from;
    auto [status, text] = co_await fetch_record(resolver_, *from);
    if (status == Lookup::kNone && org != *from) {
      record_domain = org;
      std::tie(status, text) = co_await fetch_record(resolver_, org);
    }
    if (status == Lookup::kError) {
      o.result = DmarcResult::kTemperror;
      o.from_domain = *from;
      o.org_domain = org;
      o.reason = "DNS error fetching the DMARC record";
    } else {
      std::optional<DmarcRecord> record;
      if (status == Lookup::kFound) record = parse_dmarc_record(record_domain, text);
      thread_local std::mt19937 rng{std::random_device{}()};
      int sample = options_.honor_pct ? static_cast<int>(rng() % 100) : 0;
      o = evaluate_dmarc(*from, record, status == Lookup::kFound ? record_domain : "", auth, sample);
      if (status == Lookup::kFound && !record) {
        o.result = DmarcResult::kPermerror;
        o.reason = "DMARC record does not parse";
      }
    }
  }
  store(ctx.transaction, o);
  switch (o.result) {
    case DmarcResult::kPass: ctx.transaction.add_symbol(Symbol{"DMARC_PASS", options_.score_pass, o.from_domain}); break;
    case DmarcResult::kFail:
      ctx.transaction.add_symbol(Symbol{"DMARC_FAIL", options_.score_fail, o.from_domain + " p=" + o.policy});
      break;
    case DmarcResult::kNone: ctx.transaction.add_symbol(Symbol{"DMARC_NONE", 0, o.from_domain}); break;
    case DmarcResult::kTemperror: ctx.transaction.add_symbol(Symbol{"DMARC_TEMPERROR", 0, o.from_domain}); break;
    case DmarcResult::kPermerror: ctx.transaction.add_symbol(Symbol{"DMARC_PERMERROR", 0, o.reason}); break;
  }
  if (o.result != DmarcResult::kFail || options_.enforce == DmarcOptions::Enforce::kReport ||
      o.disposition == "none") {
    co_return Verdict::proceed();
  }
  // A decisive verdict ends the chain: the Authentication-Results field goes
  // on now (it matters for a quarantined copy).
  add_authentication_results(ctx, ar_options_);
  Verdict v;
  v.reason = "dmarc=fail p=" + o.policy + " header.from=" + o.from_domain;
  if (o.disposition == "reject" && options_.enforce == DmarcOptions::Enforce::kReject) {
    v.action = Verdict::Action::kReject;
    v.code = 550;
    v.enhanced = "5.7.1";
    v.text = "Rejected by DMARC policy for " + o.from_domain;
  } else {
    v.action = Verdict::Action::kQuarantine;
  }
  co_return v;
}

}  // namespace postern
