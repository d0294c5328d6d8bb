// ARC chain validation and the arc filter; see arc_verify.h.
#include "filters/arc/arc_verify.h"

#include <algorithm>
#include <cctype>
#include <map>

#include <asio/co_spawn.hpp>
#include <asio/use_awaitable.hpp>

#include "filters/arc/arc_crypto.h"
#include "filters/auth/auth_results.h"
#include "filters/dkim/dkim_body_hash.h"
#include "filters/dkim/dkim_tags.h"
#include "filters/dmarc/dmarc.h"
#include "filters/text/ascii.h"

namespace postern {

namespace {

std::string key_name_of(const std::string& value) {
  const std::string d = dkim_tag_value(value, "d"), s = dkim_tag_value(value, "s");
  if (d.empty() || s.empty()) return "";
  return ascii::to_lower(s + "._domainkey." + d);
}

// The key record for `name`, or why there is none.
std::string key_record(const ArcKeys& keys, const std::string& name, std::string& why) {
  auto it = keys.find(name);
  if (it == keys.end()) {
    why = "no answer for the key " + name + " in time";
    return "";
  }
  const DnsAnswer& a = it->second;
  if (a.status == DnsStatus::kNxDomain || a.status == DnsStatus::kNoData) {
    why = "no key at " + name;
    return "";
  }
  if (a.status != DnsStatus::kOk) {
    why = "DNS error looking up " + name;
    return "";
  }
  for (const std::string& r : a.records) {
    if (r.find("p=") != std::string::npos) return r;
  }
  why = "no key record at " + name;
  return "";
}

// The body hashes the AMSs ask for, computed once per canonicalization.
class BodyHashes {
 public:
  BodyHashes(const Spool& spool, std::size_t offset) : spool_(spool), offset_(offset) {}
  std::optional<std::string> get(DkimBodyCanon canon) {
    auto& slot = done_[static_cast<int>(canon)];
    if (!slot) {
      DkimBodyHash h(canon, DkimHash::kSha256);
      char buf[64 * 1024];
      std::size_t pos = offset_;
      for (;;) {
        long n = spool_.read(pos, buf, sizeof buf);
        if (n < 0) return std::nullopt;
        if (n == 0) break;
        h.update(std::string_view(buf, static_cast<std::size_t>(n)));
        pos += static_cast<std::size_t>(n);
      }
      h.finish();
      slot = h.base64();
    }
    return slot;
  }

 private:
  const Spool& spool_;
  std::size_t offset_;
  std::optional<std::string> done_[2];
};

// "" when the ARC-Message-Signature verifies, else why not.
std::string check_ams(const std::vector<HeaderField>& headers, const HeaderField& ams, BodyHashes& body,
                      const ArcKeys& keys, unsigned min_bits) {
  const std::string value = ams.value();
  if (!parse_dkim_tag_list(value)) return "not a tag-list";
  for (const char* tag : {"a", "b", "bh", "d", "h", "s"}) {
    if (dkim_tag_value(value, tag).empty()) return std::string("no ") + tag + "=";
  }
  const std::string c = dkim_tag_value(value, "c");
  const std::string body_c = c.find('/') == std::string::npos ? "simple" : c.substr(c.find('/') + 1);
  if (body_c != "simple" && body_c != "relaxed") return "unknown c=" + c;
  auto octets = ams_signed_octets(headers, ams);
  if (!octets) return "h= is invalid, signs ARC-Seal or lists more than 200 fields";
  auto bh = body.get(body_c == "relaxed" ? DkimBodyCanon::kRelaxed : DkimBodyCanon::kSimple);
  if (!bh) return "the body cannot be read";
  if (*bh != dkim_tag_value(value, "bh")) return "body hash does not match (body changed)";
  std::string why;
  const std::string record = key_record(keys, key_name_of(value), why);
  if (record.empty()) return why;
  why = arc_verify_signature(dkim_tag_value(value, "a"), record, *octets, dkim_tag_value(value, "b"), min_bits);
  return why == "signature does not verify" ? why + " (header changed or wrong key)" : why;
}

std::string check_seal(const ArcStructure& s, std::size_t instance, const ArcKeys& keys, unsigned min_bits) {
  const std::string value = s.sets[instance - 1][2]->value();
  for (const char* tag : {"a", "b", "d", "s"}) {
    if (dkim_tag_value(value, tag).empty()) return std::string("no ") + tag + "=";
  }
  auto tags = parse_dkim_tag_list(value);
  for (const DkimTag& t : *tags) {
    if (t.name == "h") return "h= is not allowed in an ARC-Seal (RFC 8617 4.1.3)";
  }
  std::string why;
  const std::string record = key_record(keys, key_name_of(value), why);
  if (record.empty()) return why;
  return arc_verify_signature(dkim_tag_value(value, "a"), record, seal_signed_octets(s.sets, instance),
                              dkim_tag_value(value, "b"), min_bits);
}

}  // namespace

std::vector<std::string> arc_key_names(const ArcStructure& s) {
  std::vector<std::string> names;
  for (auto it = s.sets.rbegin(); it != s.sets.rend(); ++it) {
    for (int k = 1; k < 3; ++k) {
      std::string n = key_name_of((*it)[k]->value());
      if (!n.empty() && std::find(names.begin(), names.end(), n) == names.end()) names.push_back(std::move(n));
    }
  }
  return names;
}

ArcOutcome verify_arc_chain(const std::vector<HeaderField>& headers, const ArcStructure& s, const Spool& spool,
                            std::size_t body_offset, const ArcKeys& keys, unsigned min_key_bits) {
  ArcOutcome o;
  o.count = static_cast<unsigned>(s.sets.size());
  BodyHashes body(spool, body_offset);
  for (std::size_t i = 0; i < s.sets.size(); ++i) {
    ArcSet set;
    set.instance = static_cast<unsigned>(i + 1);
    const std::string seal = s.sets[i][2]->value();
    set.sealer = ascii::to_lower(dkim_tag_value(seal, "d"));
    set.selector = dkim_tag_value(seal, "s");
    set.cv = dkim_tag_value(seal, "cv");
    set.ams_domain = ascii::to_lower(dkim_tag_value(s.sets[i][1]->value(), "d"));
    const std::string aar = s.sets[i][0]->value();
    set.aar = aar.substr(std::min(aar.size(), aar.find(';') + 1));
    while (!set.aar.empty() && (set.aar.front() == ' ' || set.aar.front() == '\t')) set.aar.erase(0, 1);
    o.sets.push_back(std::move(set));
  }
  // Step 5: the newest AMS must verify; the older ones only tell oldest-pass.
  const std::size_t n = s.sets.size();
  std::string newest_why;
  for (std::size_t i = n; i >= 1; --i) {
    std::string why = check_ams(headers, *s.sets[i - 1][1], body, keys, min_key_bits);
    o.sets[i - 1].ams_valid = why.empty();
    if (i == n) newest_why = why;
    if (!why.empty()) {
      if (i < n) o.oldest_pass = static_cast<unsigned>(i + 1);
      break;
    }
  }
  if (!newest_why.empty()) {
    o.result = ArcResult::kFail;
    o.oldest_pass = 0;
    o.reason = "ARC-Message-Signature i=" + std::to_string(n) + ": " + newest_why;
    return o;
  }
  // Step 6: every seal, newest first.
  for (std::size_t i = n; i >= 1; --i) {
    std::string why = check_seal(s, i, keys, min_key_bits);
    o.sets[i - 1].as_valid = why.empty();
    if (!why.empty()) {
      o.result = ArcResult::kFail;
      o.reason = "ARC-Seal i=" + std::to_string(i) + ": " + why;
      return o;
    }
  }
  o.result = ArcResult::kPass;
  return o;
}

void find_trusted_sealer(ArcOutcome& o, const std::vector<std::string>& trusted,
                         const std::vector<std::string>& authors) {
  if (o.result != ArcResult::kPass || trusted.empty() || authors.empty()) return;
  auto aligned = [&](std::string domain) {
    domain = ascii::to_lower(domain);
    if (auto at = domain.rfind('@'); at != std::string::npos) domain = domain.substr(at + 1);
    if (domain.empty()) return false;
    return std::all_of(authors.begin(), authors.end(),
                       [&](const std::string& a) { return domains_aligned(domain, a, false); });
  };
  auto prop = [](const AuthResInfo& r, std::string_view name) -> std::string {
    for (const auto& [k, v] : r.props) {
      if (k == name) return v;
    }
    return "";
  };
  // A trusted set counts only while the message is what its sealer saw: its
  // AMS still verifies, or every set after it is trusted too. Else anyone
  // could copy a list's set from a genuine post onto a forgery, seal on top
  // with a key of their own -- the chain passes -- and borrow the list's
  // dmarc=pass.
  bool later_trusted = true;
  for (auto it = o.sets.rbegin(); it != o.sets.rend(); ++it) {
    const bool is_trusted = std::find(trusted.begin(), trusted.end(), it->sealer) != trusted.end();
    const bool usable = is_trusted && (later_trusted || it->ams_valid);
    later_trusted = later_trusted && is_trusted;
    if (!usable) continue;
    std::string saw;
    for (const AuthResInfo& r : parse_auth_res(it->aar)) {
      if (r.result != "pass") continue;
      if (r.method == "dmarc") {
        const std::string from = ascii::to_lower(prop(r, "header.from"));
        if (from.empty() || std::find(authors.begin(), authors.end(), from) != authors.end()) {
          saw = "dmarc=pass";
          break;
        }
      } else if (r.method == "dkim" && saw.empty() && aligned(prop(r, "header.d"))) {
        saw = "dkim=pass header.d=" + ascii::to_lower(prop(r, "header.d"));
      } else if (r.method == "spf" && saw.empty() && aligned(prop(r, "smtp.mailfrom"))) {
        saw = "spf=pass smtp.mailfrom=" + ascii::to_lower(prop(r, "smtp.mailfrom"));
      }
    }
    if (saw.empty()) continue;
    o.trusted_sealer = it->sealer;
    o.trusted_instance = it->instance;
    o.trusted_saw = saw;
    return;
  }
}

bool apply_arc_override(DmarcOutcome& o, TransactionFacts& t) {
  const auto& arc = auth_results(t).arc;
  if (o.result != DmarcResult::kFail || !arc || arc->result != ArcResult::kPass || arc->trusted_sealer.empty()) {
    return false;
  }
  o.disposition = "none";
  o.override_type = "local_policy";
  o.override_comment = "arc=pass as=" + arc->trusted_sealer + " i=" + std::to_string(arc->trusted_instance) + " " +
                       arc->trusted_saw;
  t.add_symbol(Symbol{"DMARC_ARC_OVERRIDE", 0, o.override_comment});
  return true;
}

ArcFilter::ArcFilter(ArcOptions options, std::shared_ptr<Resolver> resolver, std::shared_ptr<asio::thread_pool> pool)
    : options_(std::move(options)), resolver_(std::move(resolver)), pool_(std::move(pool)) {
  for (std::string& d : options_.trusted_sealers) d = ascii::to_lower(d);
}

namespace {

asio::awaitable<ArcOutcome> verify_on_pool(const std::vector<HeaderField>* headers, const ArcStructure* s,
                                           const Spool* spool, std::size_t offset, const ArcKeys* keys,
                                           unsigned min_bits) {
  co_return verify_arc_chain(*headers, *s, *spool, offset, *keys, min_bits);
}

}  // namespace

asio::awaitable<Verdict> ArcFilter::run(FilterContext& ctx) {
  const Message* message = ctx.transaction.message;
  if (!message || !auth_results(ctx.transaction).skipped.empty()) co_return Verdict::proceed();
  ArcOutcome o;
  const ArcStructure s = arc_structure(message->headers());
  if (s.fields == 0) {
    o.result = ArcResult::kNone;
  } else if (!s.error.empty()) {
    o.result = ArcResult::kFail;
    o.reason = s.error;
  } else {
    ArcKeys keys;
    const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
    for (const std::string& name : arc_key_names(s)) {
      if (auto now = resolver_->answer_now(name, DnsType::kTxt)) {
        keys.emplace(name, std::move(*now));
        continue;
      }
      if (std::chrono::steady_clock::now() >= deadline) break;
      keys.emplace(name, co_await resolver_->query(name, DnsType::kTxt));
    }
    // The body hash reads the spool: on the pool, like DKIM's second pass.
    auto task = verify_on_pool(&message->headers(), &s, &message->spool(), message->body_offset(), &keys,
                               options_.min_key_bits);
    o = co_await asio::co_spawn(pool_->get_executor(), std::move(task), asio::use_awaitable);
    find_trusted_sealer(o, options_.trusted_sealers, author_domains(*message).domains);
  }
  o.remote_ip = ctx.session.client_ip;
  const std::string detail = o.result == ArcResult::kPass
                                 ? "i=" + std::to_string(o.count) + " as=" + o.sets.back().sealer
                                 : o.reason;
  ctx.transaction.add_symbol(Symbol{o.result == ArcResult::kPass   ? "ARC_PASS"
                                    : o.result == ArcResult::kFail ? "ARC_FAIL"
                                                                   : "ARC_NONE",
                                    0, detail});
  auth_results(ctx.transaction).arc = std::move(o);
  co_return Verdict::proceed();
}

}  // namespace postern
