#include "filters/dmarc/dmarc.h"

#include "filters/arc/arc_verify.h"

#include <libpsl.h>

#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <mutex>
#include <random>
#include <unordered_map>

#include "filters/auth/authentication_results.h"
#include "filters/auth/c_api.h"
#include "filters/text/ascii.h"
#include "filters/text/idna.h"

namespace postern {

namespace {

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

// Results of a pure function by their input, per thread (no lock), bounded:
// a full memo starts over. Mail brings the same few author domains and
// records again and again, and libpsl's lookup and libopendmarc's parse
// (a policy context allocated, the record copied tag by tag) cost more than
// the rest of the DMARC check (bench/README.md).
template <typename Value>
class Memo {
 public:
  static constexpr std::size_t kMaxEntries = 1024;
  const Value* find(const std::string& key) const {
    auto it = entries_.find(key);
    return it == entries_.end() ? nullptr : &it->second;
  }
  const Value& put(const std::string& key, Value value) {
    if (entries_.size() >= kMaxEntries) entries_.clear();
    return entries_.insert_or_assign(key, std::move(value)).first->second;
  }

 private:
  std::unordered_map<std::string, Value> entries_;
};

// Longer input (a DNS name is at most 253 octets) is computed every time.
constexpr std::size_t kMaxMemoKey = 1024;

}  // namespace

std::string organizational_domain(const std::string& domain) {
  thread_local Memo<std::string> memo;
  const bool keep = domain.size() <= kMaxMemoKey;
  if (keep) {
    if (const std::string* org = memo.find(domain)) return *org;
  }
  std::string d = ascii::domain_key(domain);
  const char* reg = psl_registrable_domain(psl(), d.c_str());
  std::string org = reg ? std::string(reg) : d;
  if (keep) memo.put(domain, org);
  return org;
}

bool domains_aligned(const std::string& a, const std::string& b, bool strict) {
  std::string x = ascii::domain_key(a), y = ascii::domain_key(b);
  if (x.empty() || y.empty()) return false;
  if (x == y) return true;
  if (strict) return false;
  // A public suffix aligns with nothing but itself (the d=co.uk case).
  if (psl_is_public_suffix(psl(), x.c_str()) || psl_is_public_suffix(psl(), y.c_str())) return false;
  return organizational_domain(x) == organizational_domain(y);
}

namespace {

// One token of an address list (RFC 5322 §3.4): comments and folding white
// space are dropped; quoted strings and domain literals are one token each.
struct AddressToken {
  enum class Kind { kAtom, kQuoted, kLiteral, kSpecial } kind;
  std::string text;
};

// False when a quoted string, comment or domain literal is not closed.
bool tokenize_addresses(std::string_view v, std::vector<AddressToken>& out) {
  constexpr std::string_view kSpecials = "<>,:;@";
  std::size_t i = 0;
  while (i < v.size()) {
    const char c = v[i];
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
      ++i;
    } else if (c == '(') {
      int depth = 0;
      for (; i < v.size(); ++i) {
        if (v[i] == '\\') ++i;
        else if (v[i] == '(') ++depth;
        else if (v[i] == ')' && --depth == 0) break;
      }
      if (i >= v.size()) return false;
      ++i;
    } else if (c == '"') {
      std::string q;
      for (++i; i < v.size() && v[i] != '"'; ++i) {
        if (v[i] == '\\' && i + 1 < v.size()) ++i;
        q.push_back(v[i]);
      }
      if (i >= v.size()) return false;
      ++i;
      out.push_back({AddressToken::Kind::kQuoted, std::move(q)});
    } else if (c == '[') {
      std::size_t end = v.find(']', i);
      if (end == std::string_view::npos) return false;
      out.push_back({AddressToken::Kind::kLiteral, std::string(v.substr(i, end + 1 - i))});
      i = end + 1;
    } else if (kSpecials.find(c) != std::string_view::npos) {
      out.push_back({AddressToken::Kind::kSpecial, std::string(1, c)});
      ++i;
    } else {
      std::size_t start = i;
      while (i < v.size() && kSpecials.find(v[i]) == std::string_view::npos &&
             std::string_view(" \t\r\n()\"[").find(v[i]) == std::string_view::npos) {
        ++i;
      }
      out.push_back({AddressToken::Kind::kAtom, std::string(v.substr(start, i - start))});
    }
  }
  return true;
}

bool is_special(const AddressToken& t, char c) {
  return t.kind == AddressToken::Kind::kSpecial && t.text[0] == c;
}

// The domain of one mailbox's tokens (an angle-addr's inside, or a bare
// addr-spec); "" when it has none usable. `why` says why.
std::string mailbox_domain(const std::vector<AddressToken>& addr, std::string& why) {
  // obs-route ("@a,@b:") before the addr-spec: what follows the last ':'.
  std::size_t from = 0;
  for (std::size_t i = 0; i < addr.size(); ++i) {
    if (is_special(addr[i], ':')) from = i + 1;
  }
  std::size_t at = std::string::npos;
  for (std::size_t i = from; i < addr.size(); ++i) {
    if (is_special(addr[i], '@')) at = i;
  }
  if (at == std::string::npos || at == from) {
    why = "a From mailbox without local-part@domain";
    return {};
  }
  std::string domain;
  for (std::size_t i = at + 1; i < addr.size(); ++i) {
    if (addr[i].kind == AddressToken::Kind::kLiteral) {
      why = "a From mailbox with an address literal";
      return {};
    }
    if (addr[i].kind != AddressToken::Kind::kAtom) {
      why = "a From mailbox whose domain does not parse";
      return {};
    }
    domain += addr[i].text;
  }
  // A U-label domain (RFC 6532 mail): its DMARC record is at the A-label
  // name (IDNA2008, RFC 5891); one that does not convert is unusable.
  std::optional<std::string> a_labels = domain_a_labels(domain);
  if (!a_labels) {
    why = "a From mailbox with an internationalized domain that is not valid IDNA";
    return {};
  }
  std::string d = std::move(*a_labels);
  if (d.empty() || !dns_name_valid(d) || d.find('.') == std::string::npos) {
    why = "a From mailbox whose domain is not a host name";
    return {};
  }
  return d;
}

}  // namespace

bool parse_from_domains(std::string_view value, std::vector<std::string>& domains, std::size_t& mailboxes,
                        std::string& error) {
  std::vector<AddressToken> tokens;
  if (!tokenize_addresses(value, tokens)) {
    error = "a From field with an unclosed quote, comment or literal";
    return false;
  }
  // mailbox-list or address-list with groups (RFC 6854): mailboxes end at
  // ',' and ';' outside <>; ':' outside <> ends a group's display name.
  std::vector<AddressToken> current, angle;
  bool in_angle = false, had_angle = false;
  auto finish = [&]() -> bool {
    const bool empty = current.empty() && !had_angle;
    if (!empty) {
      std::string why;
      std::string d = mailbox_domain(had_angle ? angle : current, why);
      if (d.empty()) {
        error = why;
        return false;
      }
      ++mailboxes;
      if (std::find(domains.begin(), domains.end(), d) == domains.end()) domains.push_back(std::move(d));
    }
    current.clear();
    angle.clear();
    had_angle = false;
    return true;
  };
  for (AddressToken& t : tokens) {
    if (in_angle) {
      if (is_special(t, '>')) in_angle = false;
      else angle.push_back(std::move(t));
      continue;
    }
    if (is_special(t, '<')) {
      if (had_angle) {
        error = "a From mailbox with two angle addresses";
        return false;
      }
      in_angle = had_angle = true;
    } else if (is_special(t, ',') || is_special(t, ';')) {
      if (!finish()) return false;
    } else if (is_special(t, ':')) {
      current.clear();  // a group's display name
    } else if (had_angle) {
      if (t.kind != AddressToken::Kind::kAtom || !t.text.empty()) {
        error = "text after a From mailbox's angle address";
        return false;
      }
    } else {
      current.push_back(std::move(t));
    }
  }
  if (in_angle) {
    error = "a From mailbox with an unclosed angle address";
    return false;
  }
  return finish();
}

AuthorDomains author_domains(const Message& message) {
  AuthorDomains out;
  for (const HeaderField& f : message.headers()) {
    if (!header_name_equals(f.name, "From")) continue;
    ++out.fields;
    if (!parse_from_domains(f.value(), out.domains, out.mailboxes, out.error)) return out;
  }
  if (out.fields == 0) out.error = "no From field";
  else if (out.mailboxes == 0) out.error = "no mailbox in the From field";
  else if (out.domains.size() > AuthorDomains::kMaxFromDomains) out.error = "too many From domains";
  return out;
}

std::optional<std::string> from_domain(const Message& message) {
  AuthorDomains a = author_domains(message);
  if (!a.error.empty() || a.fields != 1 || a.mailboxes != 1) return std::nullopt;
  return a.domains.front();
}

std::optional<std::string> normalize_dmarc_record(std::string_view text) {
  auto trim = [](std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
  };
  std::string out;
  bool first = true;
  while (!text.empty() || first) {
    const std::size_t semi = text.find(';');
    std::string_view item = trim(text.substr(0, semi));
    text.remove_prefix(semi == std::string_view::npos ? text.size() : semi + 1);
    if (item.empty()) {
      if (first) return std::nullopt;
      continue;
    }
    const std::size_t eq = item.find('=');
    if (eq == std::string_view::npos) {
      if (first) return std::nullopt;
      out.append("; ").append(item);  // left for libopendmarc to judge
      continue;
    }
    std::string name = ascii::domain_key(std::string(trim(item.substr(0, eq))));
    std::string value(trim(item.substr(eq + 1)));
    if (first) {
      // §6.4: "v" "=" "DMARC1", the version in exactly that case (%x44...).
      if (name != "v" || value != "DMARC1") return std::nullopt;
      out = "v=DMARC1";
      first = false;
      continue;
    }
    if (name == "p" || name == "sp" || name == "adkim" || name == "aspf") value = ascii::domain_key(value);
    out.append("; ").append(name).append("=").append(value);
  }
  return out;
}

namespace {

std::optional<DmarcRecord> parse_with_opendmarc(const std::string& domain, const std::string& raw) {
  const std::optional<std::string> normalized = normalize_dmarc_record(raw);
  if (!normalized) return std::nullopt;
  const std::string& text = *normalized;
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

}  // namespace

std::optional<DmarcRecord> parse_dmarc_record(const std::string& domain, const std::string& raw) {
  // Keyed by the domain and the record's exact text: a changed record is a
  // new entry, so nothing goes stale (the DNS cache decides what is current).
  thread_local Memo<std::optional<DmarcRecord>> memo;
  if (domain.size() + raw.size() > 2 * kMaxMemoKey) return parse_with_opendmarc(domain, raw);
  std::string key;
  key.reserve(domain.size() + 1 + raw.size());
  key.append(domain).append(1, '\0').append(raw);
  if (const auto* record = memo.find(key)) return *record;
  return memo.put(key, parse_with_opendmarc(domain, raw));
}

DmarcOutcome evaluate_dmarc(const std::string& from, const std::optional<DmarcRecord>& record,
                            const std::string& record_domain, const AuthResults& auth, int sample) {
  DmarcOutcome o;
  o.from_domain = from;
  o.org_domain = organizational_domain(from);
  o.record_domain = record_domain;
  if (record) o.published = {record->p, record->sp, record->adkim_strict, record->aspf_strict, record->pct};
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
  if (record->sp && ascii::domain_key(record_domain) != ascii::domain_key(from)) policy = record->sp;
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
  if (applied != policy) {
    o.reason += "; not sampled by pct=" + std::to_string(record->pct);
    o.override_type = "sampled_out";
    o.override_comment = "pct=" + std::to_string(record->pct);
  }
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
    if (normalize_dmarc_record(r)) {  // starts with "v=DMARC1", WSP allowed (§6.4)
      found = r;
      ++count;
    }
  }
  if (count != 1) co_return std::pair{Lookup::kNone, std::string()};
  co_return std::pair{Lookup::kFound, found};
}

}  // namespace

DmarcOutcome combine_dmarc_outcomes(const std::vector<DmarcOutcome>& outcomes) {
  auto severity = [](const std::string& d) { return d == "reject" ? 2 : d == "quarantine" ? 1 : 0; };
  const DmarcOutcome* pick = nullptr;
  for (DmarcResult r : {DmarcResult::kFail, DmarcResult::kTemperror, DmarcResult::kPermerror, DmarcResult::kNone,
                        DmarcResult::kPass}) {
    for (const DmarcOutcome& o : outcomes) {
      if (o.result != r) continue;
      if (!pick || (r == DmarcResult::kFail && severity(o.disposition) > severity(pick->disposition))) pick = &o;
    }
    if (pick) break;
  }
  if (!pick) return DmarcOutcome{};
  DmarcOutcome out = *pick;
  if (outcomes.size() > 1) {
    if (!out.reason.empty()) out.reason += "; ";
    out.reason += "decides for " + std::to_string(outcomes.size()) + " author domains";
  }
  return out;
}

// The outcome for one author domain: its record (or its organizational
// domain's), evaluated against the SPF and DKIM results.
asio::awaitable<DmarcOutcome> DmarcFilter::evaluate_domain(const std::string& from, const AuthResults& auth) {
  DmarcOutcome o;
  std::string org = organizational_domain(from);
  std::string record_domain = from;
  auto [status, text] = co_await fetch_record(resolver_, from);
  if (status == Lookup::kNone && org != from) {
    record_domain = org;
    std::tie(status, text) = co_await fetch_record(resolver_, org);
  }
  if (status == Lookup::kError) {
    o.result = DmarcResult::kTemperror;
    o.from_domain = from;
    o.org_domain = org;
    o.reason = "DNS error fetching the DMARC record";
    co_return o;
  }
  std::optional<DmarcRecord> record;
  if (status == Lookup::kFound) record = parse_dmarc_record(record_domain, text);
  thread_local std::mt19937 rng{std::random_device{}()};
  int sample = options_.honor_pct ? static_cast<int>(rng() % 100) : 0;
  o = evaluate_dmarc(from, record, status == Lookup::kFound ? record_domain : "", auth, sample);
  if (status == Lookup::kFound && !record) {
    o.result = DmarcResult::kPermerror;
    o.reason = "DMARC record does not parse";
  }
  co_return o;
}

asio::awaitable<Verdict> DmarcFilter::run(FilterContext& ctx) {
  const Message* message = ctx.transaction.message;
  if (!message || !auth_results(ctx.transaction).skipped.empty()) co_return Verdict::proceed();  // none, or a trusted client
  const AuthResults& auth = auth_results(ctx.transaction);
  // §6.6.1: every author domain is evaluated; the strictest failing policy
  // applies, and only a message whose every From domain passes passes.
  const AuthorDomains authors = author_domains(*message);
  DmarcOutcome o;
  if (!authors.error.empty()) {
    o.result = DmarcResult::kPermerror;
    o.reason = "no usable From: " + authors.error;
    using U = DmarcOptions::UnusableFrom;
    o.disposition = options_.unusable_from == U::kReject       ? "reject"
                    : options_.unusable_from == U::kQuarantine ? "quarantine"
                                                               : "none";
  } else {
    std::vector<DmarcOutcome> outcomes;
    for (const std::string& from : authors.domains) outcomes.push_back(co_await evaluate_domain(from, auth));
    o = combine_dmarc_outcomes(outcomes);
    apply_arc_override(o, ctx.transaction);  // a trusted ARC sealer saw it pass (filters/arc/arc_verify.h)
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
  const bool unusable = !authors.error.empty();
  if ((o.result != DmarcResult::kFail && !unusable) || options_.enforce == DmarcOptions::Enforce::kReport ||
      o.disposition == "none" || o.disposition.empty()) {
    co_return Verdict::proceed();
  }
  // A decisive verdict ends the chain: the Authentication-Results field goes
  // on now (it matters for a quarantined copy).
  add_authentication_results(ctx, ar_options_);
  Verdict v;
  v.reason = unusable ? "dmarc=permerror " + o.reason + " (unusable_from=" + o.disposition + ")"
                      : "dmarc=fail p=" + o.policy + " header.from=" + o.from_domain;
  if (o.disposition == "reject" && options_.enforce == DmarcOptions::Enforce::kReject) {
    v.action = Verdict::Action::kReject;
    v.code = 550;
    v.enhanced = "5.7.1";
    v.text = unusable ? "Rejected: no usable From header field for DMARC (RFC 7489 6.6.1)"
                      : "Rejected by DMARC policy for " + o.from_domain;
  } else {
    v.action = Verdict::Action::kQuarantine;
  }
  co_return v;
}

}  // namespace postern
