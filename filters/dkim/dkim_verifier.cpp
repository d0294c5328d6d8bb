#include "filters/dkim/dkim_verifier.h"

#include <atomic>
#include <cctype>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>

#include "filters/auth/c_api.h"
#include "filters/dkim/dkim_tags.h"
#include "filters/text/ascii.h"

namespace postern {

namespace {

using Clock = std::chrono::steady_clock;

// Per message, reached from the key-lookup hook through the user context.
struct VerifyState {
  Resolver* resolver;
  Clock::time_point deadline;
  const DkimKeys* keys = nullptr;  // looked up beforehand: never wait
  bool try_again = false;  // a key lookup failed for now (DNS error, time-out)
  // Signatures whose key record cannot verify them (dkim_key_problem), with why.
  std::vector<std::pair<DKIM_SIGINFO*, std::string>> key_problems{};
};

// The key record: from the keys looked up beforehand or the cache when the
// caller must not wait, else from the resolver, waiting.
std::optional<DnsAnswer> key_record(VerifyState& st, const std::string& name) {
  if (!st.keys) return st.resolver->query_blocking(name, DnsType::kTxt);
  if (auto it = st.keys->find(ascii::to_lower(name)); it != st.keys->end()) return it->second;
  return st.resolver->answer_now(name, DnsType::kTxt);
}

DKIM_CBSTAT key_lookup(DKIM* dkim, DKIM_SIGINFO* sig, u_char* buf, size_t buflen) {
  auto* st = static_cast<VerifyState*>(dkim_get_user_context(dkim));
  const char* selector = reinterpret_cast<const char*>(dkim_sig_getselector(sig));
  const char* domain = reinterpret_cast<const char*>(dkim_sig_getdomain(sig));
  if (!st || !selector || !domain) return DKIM_CBSTAT_ERROR;
  if (Clock::now() >= st->deadline) {
    st->try_again = true;
    return DKIM_CBSTAT_TRYAGAIN;
  }
  std::string name = std::string(selector) + "._domainkey." + domain;
  if (!dns_name_valid(name)) return DKIM_CBSTAT_NOTFOUND;
  std::optional<DnsAnswer> record = key_record(*st, name);
  if (!record) {
    st->try_again = true;
    return DKIM_CBSTAT_TRYAGAIN;
  }
  const DnsAnswer& a = *record;
  switch (a.status) {
    case DnsStatus::kOk: break;
    case DnsStatus::kNxDomain:
    case DnsStatus::kNoData: return DKIM_CBSTAT_NOTFOUND;
    default:
      st->try_again = true;
      return DKIM_CBSTAT_TRYAGAIN;
  }
  // RFC 6376 §3.6.2.2: several TXT records are ambiguous; take the one that
  // looks like a key record, else the first.
  const std::string* rec = &a.records.front();
  for (const auto& r : a.records) {
    if (r.find("p=") != std::string::npos) {
      rec = &r;
      break;
    }
  }
  // What libopendkim does not check in the key record against the
  // signature (k= against a=, t=s, s=, duplicated tags): not found for it,
  // and the reason kept for the result.
  auto sig_tag = [&](const char* tag) {
    const u_char* v = dkim_sig_gettagvalue(sig, false, reinterpret_cast<u_char*>(const_cast<char*>(tag)));
    return v ? std::string(reinterpret_cast<const char*>(v)) : std::string();
  };
  std::string problem = dkim_key_problem(*rec, sig_tag("a"), domain, sig_tag("i"));
  if (!problem.empty()) {
    st->key_problems.emplace_back(sig, std::move(problem));
    return DKIM_CBSTAT_NOTFOUND;
  }
  if (rec->size() + 1 > buflen) return DKIM_CBSTAT_ERROR;
  std::memcpy(buf, rec->c_str(), rec->size() + 1);
  return DKIM_CBSTAT_CONTINUE;
}

const char* algorithm_name(dkim_alg_t alg) {
  switch (alg) {
    case DKIM_SIGN_RSASHA1: return "rsa-sha1";
    case DKIM_SIGN_RSASHA256: return "rsa-sha256";
    case DKIM_SIGN_ED25519SHA256: return "ed25519-sha256";
    default: return "unknown";
  }
}

DkimResult classify(int err) {
  switch (err) {
    case DKIM_SIGERROR_KEYFAIL: return DkimResult::kTemperror;
    case DKIM_SIGERROR_BADSIG: return DkimResult::kFail;
    case DKIM_SIGERROR_KEYTOOSMALL: return DkimResult::kPolicy;
    default: return DkimResult::kPermerror;
  }
}

// The value of tag `name`, white space removed: the one tag-list parser
// (dkim_tags.h), so every path reads a signature the same way.
std::string tag_value(std::string_view list, std::string_view name) { return dkim_tag_value(list, name); }

std::string str(const unsigned char* s) { return s ? reinterpret_cast<const char*>(s) : ""; }

std::string strip_space(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (!std::isspace(static_cast<unsigned char>(c))) out.push_back(c);
  }
  return out;
}

// The body hash computed for `sig`'s body canonicalization and digest.
const DkimBodyHash* own_body_hash(DKIM_SIGINFO* sig, const DkimBodyHashes& body) {
  dkim_canon_t header_canon = DKIM_CANON_UNKNOWN, body_canon = DKIM_CANON_UNKNOWN;
  dkim_alg_t alg = DKIM_SIGN_UNKNOWN;
  if (dkim_sig_getcanons(sig, &header_canon, &body_canon) != DKIM_STAT_OK) return nullptr;
  if (dkim_sig_getsignalg(sig, &alg) != DKIM_STAT_OK) return nullptr;
  DkimBodyCanon canon;
  if (body_canon == DKIM_CANON_SIMPLE) canon = DkimBodyCanon::kSimple;
  else if (body_canon == DKIM_CANON_RELAXED) canon = DkimBodyCanon::kRelaxed;
  else return nullptr;
  DkimHash hash;
  if (alg == DKIM_SIGN_RSASHA256 || alg == DKIM_SIGN_ED25519SHA256) hash = DkimHash::kSha256;
  else if (alg == DKIM_SIGN_RSASHA1) hash = DkimHash::kSha1;
  else return nullptr;
  return body.find(canon, hash);
}

// The DKIM-Signature field libopendkim listed `index`-th, whose b= starts
// with `b12`: its value (in a thread-local buffer) and its tag-list, parsed
// once for the match and the checks after it.
struct SignatureField {
  const std::string* value;
  DkimVerifier::TagList tags;  // views into *value
};
std::optional<SignatureField> signature_field(const Message& message, const std::string& b12, int index) {
  thread_local std::string value, by_index;
  int n = 0;
  bool have_index = false;
  for (const auto& h : message.headers()) {
    if (!header_name_equals(h.name, "DKIM-Signature")) continue;
    value = h.value();
    DkimVerifier::TagList tags = parse_dkim_tag_list(value);
    if (!b12.empty() && tags && dkim_tag_starts_with(*tags, "b", b12)) return SignatureField{&value, std::move(tags)};
    if (n++ == index && !have_index) {
      by_index = value;
      have_index = true;
    }
  }
  if (!have_index) return std::nullopt;
  return SignatureField{&by_index, parse_dkim_tag_list(by_index)};
}

}  // namespace

DkimVerifier::DkimVerifier(std::shared_ptr<Resolver> resolver, DkimVerifyOptions options)
    : resolver_(std::move(resolver)), options_(options) {
  lib_ = dkim_init(nullptr, nullptr);
  if (!lib_) throw std::runtime_error("dkim: dkim_init failed");
  // A signature handle for every signature, even one that does not parse,
  // so each is reported.
  // Signatures processed (keys fetched) in dkim_eom only, never in dkim_eoh:
  // the header and body may then be fed on an I/O thread.
  unsigned flags = DKIM_LIBFLAGS_BADSIGHANDLES | DKIM_LIBFLAGS_DELAYSIGPROC;
  dkim_options(lib_, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof flags);
  // libopendkim would refuse small keys outright; verify them and report
  // them weak ("policy") instead.
  unsigned minbits = 512;
  dkim_options(lib_, DKIM_OP_SETOPT, DKIM_OPTS_MINKEYBITS, &minbits, sizeof minbits);
  dkim_set_key_lookup(lib_, key_lookup);
}

DkimVerifier::~DkimVerifier() {
  if (lib_) dkim_close(lib_);
}

DKIM* DkimVerifier::begin() const {
  static std::atomic<unsigned long> job_counter{0};
  const std::string job = "postern-" + std::to_string(++job_counter);
  DKIM_STAT status = DKIM_STAT_OK;
  return dkim_verify(lib_, reinterpret_cast<const unsigned char*>(job.c_str()), nullptr, &status);
}

int DkimVerifier::feed_header(DKIM* dkim, std::string_view field) {
  return dkim_header(dkim, reinterpret_cast<u_char*>(const_cast<char*>(field.data())), field.size());
}

bool DkimVerifier::wants_body(int eoh) {
  return eoh != DKIM_STAT_CBTRYAGAIN && eoh != DKIM_STAT_CBERROR && eoh != DKIM_STAT_NOSIG;
}

std::vector<DkimSignature> DkimVerifier::verify(const Message& message, std::chrono::milliseconds budget) const {
  bool any = false;
  for (const auto& h : message.headers()) {
    if (header_name_equals(h.name, "DKIM-Signature")) any = true;
  }
  if (!any) return {};
  DKIM* dkim = begin();
  if (!dkim) return finish(nullptr, DKIM_STAT_INTERNAL, message, budget);
  for (const auto& h : message.headers()) {
    std::string_view raw = h.raw;
    if (raw.size() >= 2 && raw.substr(raw.size() - 2) == "\r\n") raw.remove_suffix(2);
    feed_header(dkim, raw);
  }
  const DKIM_STAT eoh = dkim_eoh(dkim);
  // The body hashed as DkimStream hashes it (postern's own canonicalization
  // when every signature allows), so that `postern check` and a spool
  // verified again give what the live stream gives.
  DkimBodyHashes own;
  bool use_own = true;
  for (const auto& h : message.headers()) {
    if (!header_name_equals(h.name, "DKIM-Signature")) continue;
    if (auto spec = body_spec(h.value())) own.add(spec->canon, spec->hash);
    else use_own = false;
  }
  if (wants_body(eoh)) {
    const Spool& spool = message.spool();
    std::size_t offset = message.body_offset();
    char buf[65536];
    for (;;) {
      long n = spool.read(offset, buf, sizeof buf);
      if (n <= 0) break;
      offset += static_cast<std::size_t>(n);
      if (use_own) {
        own.update(std::string_view(buf, static_cast<std::size_t>(n)));
      } else if (dkim_body(dkim, reinterpret_cast<u_char*>(buf), static_cast<size_t>(n)) != DKIM_STAT_OK) {
        break;
      }
    }
  }
  if (use_own) {
    own.finish();
    return finish(dkim, eoh, message, budget, nullptr, &own);
  }
  return finish(dkim, eoh, message, budget);
}

std::string DkimVerifier::key_name(std::string_view signature_value) {
  return key_name(parse_dkim_tag_list(signature_value));
}

std::string DkimVerifier::key_name(const TagList& tags) {
  if (!tags) return {};
  std::string selector = dkim_tag_value(*tags, "s"), domain = dkim_tag_value(*tags, "d");
  if (selector.empty() || domain.empty()) return {};
  return ascii::to_lower(selector + "._domainkey." + domain);
}

std::optional<DkimVerifier::BodySpec> DkimVerifier::body_spec(std::string_view signature_value) {
  return body_spec(parse_dkim_tag_list(signature_value));
}

std::optional<DkimVerifier::BodySpec> DkimVerifier::body_spec(const TagList& tags) {
  // l= (with any white space: "l = 20") keeps libopendkim's body pass; a
  // value that is no tag-list is libopendkim's to judge (and permerror).
  if (!tags || !dkim_tag_value(*tags, "l").empty()) return std::nullopt;
  // RFC 6376 §3.5 c=: "header/body", the body part "simple" when absent.
  const std::string c = dkim_tag_value(*tags, "c");
  const auto slash = c.find('/');
  const std::string body = slash == std::string::npos ? "simple" : c.substr(slash + 1);
  BodySpec spec{};
  if (body == "simple") spec.canon = DkimBodyCanon::kSimple;
  else if (body == "relaxed") spec.canon = DkimBodyCanon::kRelaxed;
  else return std::nullopt;
  const std::string a = dkim_tag_value(*tags, "a");
  if (a == "rsa-sha256" || a == "ed25519-sha256") spec.hash = DkimHash::kSha256;
  else if (a == "rsa-sha1") spec.hash = DkimHash::kSha1;
  else return std::nullopt;
  return spec;
}

std::vector<DkimSignature> DkimVerifier::finish(DKIM* dkim, int eoh, const Message& message,
                                                std::chrono::milliseconds budget, const DkimKeys* keys,
                                                const DkimBodyHashes* body) const {
  std::vector<DkimSignature> out;
  if (!dkim) {
    DkimSignature s;
    s.result = DkimResult::kTemperror;
    s.reason = "libopendkim: cannot start verification";
    out.push_back(s);
    return out;
  }
  VerifyState state{resolver_.get(), Clock::now() + budget, keys};
  dkim_set_user_context(dkim, &state);
  // The status that ended the work: dkim_eom's (which now fetches the keys)
  // when it ran, else dkim_eoh's.
  DKIM_STAT last = eoh;
  if (wants_body(eoh)) last = dkim_eom(dkim, nullptr);

  DKIM_SIGINFO** sigs = nullptr;
  int nsigs = 0;
  if (dkim_getsiglist(dkim, &sigs, &nsigs) == DKIM_STAT_OK) {
    for (int i = 0; i < nsigs; ++i) {
      DKIM_SIGINFO* sig = sigs[i];
      DkimSignature s;
      s.domain = str(dkim_sig_getdomain(sig));
      s.selector = str(dkim_sig_getselector(sig));
      dkim_alg_t alg = DKIM_SIGN_UNKNOWN;
      dkim_sig_getsignalg(sig, &alg);
      s.algorithm = algorithm_name(alg);
      unsigned int bits = 0;
      if (dkim_sig_getkeysize(sig, &bits) == DKIM_STAT_OK) s.key_bits = bits;
      unsigned char ident[256] = {0};
      if (dkim_sig_getidentity(dkim, sig, ident, sizeof ident - 1) == DKIM_STAT_OK) s.identity = str(ident);
      // The first 12 characters of b= (RFC 8601 §2.7.1's header.b); the
      // rest of the ~350 is not looked at.
      if (const u_char* b = dkim_sig_gettagvalue(sig, false, reinterpret_cast<u_char*>(const_cast<char*>("b")))) {
        for (; *b && s.b.size() < 12; ++b) {
          if (!std::isspace(*b)) s.b.push_back(static_cast<char>(*b));
        }
      }
      ssize_t msglen = -1, canonlen = -1, signlen = -1;
      if (dkim_sig_getcanonlen(dkim, sig, &msglen, &canonlen, &signlen) == DKIM_STAT_OK && signlen >= 0) {
        s.body_length = static_cast<long>(signlen);
        s.body_truncated = msglen > signlen;
      }
      const unsigned flags = dkim_sig_getflags(sig);
      const int err = dkim_sig_geterror(sig);
      if (i >= static_cast<int>(options_.max_signatures)) {
        s.result = DkimResult::kPermerror;
        s.reason = "too many signatures";
      } else if (body && (flags & DKIM_SIGFLAG_PASSED)) {
        // With postern's own body hash, libopendkim saw no body: a header
        // signature that verified passes on that hash, not on libopendkim's.
        const DkimBodyHash* own = own_body_hash(sig, *body);
        const std::string bh = str(dkim_sig_gettagvalue(sig, false, reinterpret_cast<u_char*>(const_cast<char*>("bh"))));
        if (!own) {
          s.result = DkimResult::kPermerror;
          s.reason = "body hash not computed for this signature";
        } else if (strip_space(bh) == own->base64()) {
          s.result = DkimResult::kPass;
        } else {
          s.result = DkimResult::kFail;
          s.reason = "body hash did not verify";
        }
      } else if (DKIM_SIG_CHECK(sig)) {
        s.result = DkimResult::kPass;
      } else if ((flags & DKIM_SIGFLAG_PASSED) && dkim_sig_getbh(sig) == DKIM_SIGBH_MISMATCH) {
        s.result = DkimResult::kFail;
        s.reason = "body hash did not verify";
      } else if (err != DKIM_SIGERROR_OK && err != DKIM_SIGERROR_UNKNOWN) {
        s.result = classify(err);
        if (const char* e = dkim_sig_geterrorstr(err)) s.reason = e;
      } else if (flags & DKIM_SIGFLAG_PROCESSED) {
        s.result = dkim_sig_getbh(sig) == DKIM_SIGBH_MISMATCH ? DkimResult::kFail : DkimResult::kFail;
        s.reason = dkim_sig_getbh(sig) == DKIM_SIGBH_MISMATCH ? "body hash did not verify" : "signature did not verify";
      } else if (state.try_again || last == DKIM_STAT_CBTRYAGAIN || last == DKIM_STAT_KEYFAIL) {
        // Not processed because its key lookup must be tried again (DNS).
        s.result = DkimResult::kTemperror;
        s.reason = std::string("libopendkim: ") + dkim_getresultstr(DKIM_STAT_CBTRYAGAIN);
      } else {
        s.result = Clock::now() >= state.deadline ? DkimResult::kTemperror : DkimResult::kNeutral;
        s.reason = Clock::now() >= state.deadline ? "key lookup time-out" : "signature not processed";
      }
      // What libopendkim accepts but RFC 6376 / 8463 do not: the signature's
      // own tags (its header field, matched by b=) and its key record.
      if (const auto field = signature_field(message, s.b, i)) {
        std::string problem = dkim_signature_problem(field->tags);
        if (!problem.empty()) {
          s.result = DkimResult::kPermerror;
          s.reason = std::move(problem);
        }
      }
      for (const auto& [bad, why] : state.key_problems) {
        if (bad == sig) {
          s.result = DkimResult::kPermerror;
          s.reason = why;
        }
      }
      // RFC 8301 §3.1: verifiers MUST NOT consider rsa-sha1 signatures
      // valid or passing; "policy" (RFC 8601 §2.7.1), so DMARC never counts
      // it for alignment.
      if (alg == DKIM_SIGN_RSASHA1 && s.result == DkimResult::kPass) {
        s.result = DkimResult::kPolicy;
        s.reason = "rsa-sha1 is not accepted (RFC 8301)";
      }
      if (alg != DKIM_SIGN_ED25519SHA256 && s.key_bits > 0 && s.key_bits < options_.min_key_bits) {
        s.weak_key = true;
        if (s.result == DkimResult::kPass) {
          s.result = DkimResult::kPolicy;
          s.reason = "weak key (" + std::to_string(s.key_bits) + " bits)";
        }
      }
      if (s.body_truncated) {
        if (!s.reason.empty()) s.reason += "; ";
        s.reason += "l= covers " + std::to_string(s.body_length) + " of " + std::to_string(msglen) + " body octets";
      }
      out.push_back(std::move(s));
    }
  }
  if (out.empty()) {
    // libopendkim gave up before it listed the signatures (a key lookup that
    // must be tried again stops dkim_eoh): report each from its header.
    const bool temporary = last == DKIM_STAT_CBTRYAGAIN || last == DKIM_STAT_KEYFAIL ||
                           last == DKIM_STAT_CANTVRFY || Clock::now() >= state.deadline;
    for (const auto& h : message.headers()) {
      if (!header_name_equals(h.name, "DKIM-Signature")) continue;
      DkimSignature s;
      s.domain = tag_value(h.value(), "d");
      s.selector = tag_value(h.value(), "s");
      s.algorithm = tag_value(h.value(), "a");
      s.b = tag_value(h.value(), "b").substr(0, 12);
      s.result = temporary ? DkimResult::kTemperror : DkimResult::kPermerror;
      s.reason = std::string("libopendkim: ") + dkim_getresultstr(last);
      out.push_back(std::move(s));
    }
  }
  dkim_free(dkim);
  return out;
}

}  // namespace postern
