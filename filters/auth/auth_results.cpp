// Typed authenticity results to and from TransactionFacts::notes.
#include "filters/auth/auth_results.h"

#include <array>
#include <charconv>

namespace postern {

namespace {

constexpr std::array kSpfNames{"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"};
constexpr std::array kDkimNames{"none", "pass", "fail", "neutral", "policy", "temperror", "permerror"};
constexpr std::array kDmarcNames{"none", "pass", "fail", "temperror", "permerror"};

template <typename E, std::size_t N>
std::optional<E> parse(const std::array<const char*, N>& names, std::string_view s) {
  for (std::size_t i = 0; i < N; ++i) {
    if (s == names[i]) return static_cast<E>(i);
  }
  return std::nullopt;
}

std::string get(const TransactionFacts& t, const std::string& key) {
  auto it = t.notes.find(key);
  return it == t.notes.end() ? std::string() : it->second;
}

long to_long(const std::string& s, long fallback) {
  long v = fallback;
  std::from_chars(s.data(), s.data() + s.size(), v);
  return v;
}

}  // namespace

const char* spf_result_name(SpfResult r) { return kSpfNames[static_cast<std::size_t>(r)]; }
const char* dkim_result_name(DkimResult r) { return kDkimNames[static_cast<std::size_t>(r)]; }
const char* dmarc_result_name(DmarcResult r) { return kDmarcNames[static_cast<std::size_t>(r)]; }

std::optional<SpfResult> parse_spf_result(std::string_view s) { return parse<SpfResult>(kSpfNames, s); }
std::optional<DkimResult> parse_dkim_result(std::string_view s) { return parse<DkimResult>(kDkimNames, s); }
std::optional<DmarcResult> parse_dmarc_result(std::string_view s) { return parse<DmarcResult>(kDmarcNames, s); }

void store(TransactionFacts& t, const SpfOutcome& spf) {
  auto& n = t.notes;
  n["spf.result"] = spf_result_name(spf.result);
  n["spf.identity"] = spf.identity;
  n["spf.sender"] = spf.sender;
  n["spf.domain"] = spf.domain;
  n["spf.client_ip"] = spf.client_ip;
  n["spf.helo"] = spf.helo;
  n["spf.explanation"] = spf.explanation;
  n["spf.reason"] = spf.reason;
}

void store(TransactionFacts& t, const std::vector<DkimSignature>& dkim) {
  auto& n = t.notes;
  n["dkim.count"] = std::to_string(dkim.size());
  for (std::size_t i = 0; i < dkim.size(); ++i) {
    const auto& s = dkim[i];
    const std::string p = "dkim." + std::to_string(i + 1) + '.';
    n[p + "result"] = dkim_result_name(s.result);
    n[p + "domain"] = s.domain;
    n[p + "selector"] = s.selector;
    n[p + "algorithm"] = s.algorithm;
    n[p + "identity"] = s.identity;
    n[p + "b"] = s.b;
    n[p + "reason"] = s.reason;
    n[p + "key_bits"] = std::to_string(s.key_bits);
    n[p + "weak_key"] = s.weak_key ? "1" : "0";
    n[p + "body_length"] = std::to_string(s.body_length);
    n[p + "body_truncated"] = s.body_truncated ? "1" : "0";
  }
}

void store(TransactionFacts& t, const DmarcOutcome& d) {
  auto& n = t.notes;
  n["dmarc.result"] = dmarc_result_name(d.result);
  n["dmarc.from_domain"] = d.from_domain;
  n["dmarc.org_domain"] = d.org_domain;
  n["dmarc.policy"] = d.policy;
  n["dmarc.disposition"] = d.disposition;
  n["dmarc.spf_aligned"] = d.spf_aligned ? "1" : "0";
  n["dmarc.dkim_aligned"] = d.dkim_aligned ? "1" : "0";
  n["dmarc.record_domain"] = d.record_domain;
  n["dmarc.reason"] = d.reason;
}

AuthResults load_auth_results(const TransactionFacts& t) {
  AuthResults r;
  if (auto res = parse_spf_result(get(t, "spf.result"))) {
    SpfOutcome s;
    s.result = *res;
    s.identity = get(t, "spf.identity");
    s.sender = get(t, "spf.sender");
    s.domain = get(t, "spf.domain");
    s.client_ip = get(t, "spf.client_ip");
    s.helo = get(t, "spf.helo");
    s.explanation = get(t, "spf.explanation");
    s.reason = get(t, "spf.reason");
    r.spf = std::move(s);
  }
  if (t.notes.count("dkim.count")) {
    r.dkim_checked = true;
    long count = to_long(get(t, "dkim.count"), 0);
    for (long i = 1; i <= count && i <= 1000; ++i) {
      const std::string p = "dkim." + std::to_string(i) + '.';
      DkimSignature s;
      s.result = parse_dkim_result(get(t, p + "result")).value_or(DkimResult::kPermerror);
      s.domain = get(t, p + "domain");
      s.selector = get(t, p + "selector");
      s.algorithm = get(t, p + "algorithm");
      s.identity = get(t, p + "identity");
      s.b = get(t, p + "b");
      s.reason = get(t, p + "reason");
      s.key_bits = static_cast<unsigned>(to_long(get(t, p + "key_bits"), 0));
      s.weak_key = get(t, p + "weak_key") == "1";
      s.body_length = to_long(get(t, p + "body_length"), -1);
      s.body_truncated = get(t, p + "body_truncated") == "1";
      r.dkim.push_back(std::move(s));
    }
  }
  if (auto res = parse_dmarc_result(get(t, "dmarc.result"))) {
    DmarcOutcome d;
    d.result = *res;
    d.from_domain = get(t, "dmarc.from_domain");
    d.org_domain = get(t, "dmarc.org_domain");
    d.policy = get(t, "dmarc.policy");
    d.disposition = get(t, "dmarc.disposition");
    d.spf_aligned = get(t, "dmarc.spf_aligned") == "1";
    d.dkim_aligned = get(t, "dmarc.dkim_aligned") == "1";
    d.record_domain = get(t, "dmarc.record_domain");
    d.reason = get(t, "dmarc.reason");
    r.dmarc = std::move(d);
  }
  return r;
}

AuthResultCodes load_auth_result_codes(const TransactionFacts& t) {
  AuthResultCodes r;
  r.spf = parse_spf_result(get(t, "spf.result"));
  if (t.notes.count("dkim.count")) {
    r.dkim_checked = true;
    long count = to_long(get(t, "dkim.count"), 0);
    for (long i = 1; i <= count && i <= 1000; ++i) {
      r.dkim.push_back(parse_dkim_result(get(t, "dkim." + std::to_string(i) + ".result")).value_or(DkimResult::kPermerror));
    }
  }
  r.dmarc = parse_dmarc_result(get(t, "dmarc.result"));
  return r;
}

}  // namespace postern
