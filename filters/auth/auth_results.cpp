// The authenticity results of a transaction (TransactionFacts::results) and
// their view as notes; see auth_results.h.
#include "filters/auth/auth_results.h"

#include <algorithm>
#include <array>

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

}  // namespace

const char* spf_result_name(SpfResult r) { return kSpfNames[static_cast<std::size_t>(r)]; }
const char* dkim_result_name(DkimResult r) { return kDkimNames[static_cast<std::size_t>(r)]; }
const char* dmarc_result_name(DmarcResult r) { return kDmarcNames[static_cast<std::size_t>(r)]; }
const char* arc_result_name(ArcResult r) {
  return r == ArcResult::kPass ? "pass" : r == ArcResult::kFail ? "fail" : "none";
}

std::optional<SpfResult> parse_spf_result(std::string_view s) { return parse<SpfResult>(kSpfNames, s); }

AuthResults& auth_results(TransactionFacts& t) { return t.results.get<AuthResults>(); }

const AuthResults& auth_results(const TransactionFacts& t) {
  static const AuthResults kNone;
  const AuthResults* r = t.results.find<AuthResults>();
  return r ? *r : kNone;
}

void store(TransactionFacts& t, const SpfOutcome& spf) { auth_results(t).spf = spf; }

void store(TransactionFacts& t, const std::vector<DkimSignature>& dkim) {
  AuthResults& auth = auth_results(t);
  auth.dkim_checked = true;
  auth.dkim = dkim;
}

void store(TransactionFacts& t, const DmarcOutcome& d) { auth_results(t).dmarc = d; }

namespace {

const char* flag(bool b) { return b ? "1" : "0"; }

// Calls emit(name, value) for every note of `auth`, in the documented order.
template <typename Emit>
void each_note(const AuthResults& auth, Emit&& emit) {
  if (const auto& s = auth.spf) {
    emit("spf.result", spf_result_name(s->result));
    emit("spf.identity", s->identity);
    emit("spf.sender", s->sender);
    emit("spf.domain", s->domain);
    emit("spf.client_ip", s->client_ip);
    emit("spf.helo", s->helo);
    emit("spf.explanation", s->explanation);
    emit("spf.reason", s->reason);
  }
  if (auth.dkim_checked) {
    emit("dkim.count", std::to_string(auth.dkim.size()));
    for (std::size_t i = 0; i < auth.dkim.size(); ++i) {
      const DkimSignature& d = auth.dkim[i];
      const std::string p = "dkim." + std::to_string(i + 1) + '.';
      emit(p + "result", dkim_result_name(d.result));
      emit(p + "domain", d.domain);
      emit(p + "selector", d.selector);
      emit(p + "algorithm", d.algorithm);
      emit(p + "identity", d.identity);
      emit(p + "b", d.b);
      emit(p + "reason", d.reason);
      emit(p + "key_bits", std::to_string(d.key_bits));
      emit(p + "weak_key", flag(d.weak_key));
      emit(p + "body_length", std::to_string(d.body_length));
      emit(p + "body_truncated", flag(d.body_truncated));
    }
  }
  if (const auto& d = auth.dmarc) {
    emit("dmarc.result", dmarc_result_name(d->result));
    emit("dmarc.from_domain", d->from_domain);
    emit("dmarc.org_domain", d->org_domain);
    emit("dmarc.policy", d->policy);
    emit("dmarc.disposition", d->disposition);
    emit("dmarc.spf_aligned", flag(d->spf_aligned));
    emit("dmarc.dkim_aligned", flag(d->dkim_aligned));
    emit("dmarc.record_domain", d->record_domain);
    emit("dmarc.reason", d->reason);
  }
}

}  // namespace

bool is_auth_note_key(std::string_view key) {
  return key.starts_with("spf.") || key.starts_with("dkim.") || key.starts_with("dmarc.");
}

std::optional<std::string> auth_note(const AuthResults& auth, std::string_view key) {
  std::optional<std::string> found;
  if (!is_auth_note_key(key)) return found;
  each_note(auth, [&](std::string_view name, std::string_view value) {
    if (!found && name == key) found.emplace(value);
  });
  return found;
}

std::vector<std::pair<std::string, std::string>> auth_notes(const AuthResults& auth) {
  std::vector<std::pair<std::string, std::string>> out;
  each_note(auth, [&](std::string_view name, std::string_view value) { out.emplace_back(name, value); });
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace postern
