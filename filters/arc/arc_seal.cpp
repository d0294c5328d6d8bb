// ARC sealing; see arc_seal.h.
#include "filters/arc/arc_seal.h"

#include "filters/auth/auth_results.h"

#include <algorithm>
#include <cctype>
#include <ctime>
#include <stdexcept>

#include <asio/co_spawn.hpp>
#include <asio/use_awaitable.hpp>

#include "filters/arc/arc_chain.h"
#include "filters/auth/authentication_results.h"
#include "filters/dkim/dkim_body_hash.h"
#include "filters/text/ascii.h"

namespace postern {

namespace {

std::optional<std::string> relaxed_body_hash(const Spool& spool, std::size_t offset) {
  DkimBodyHash h(DkimBodyCanon::kRelaxed, DkimHash::kSha256);
  char buf[64 * 1024];
  for (;;) {
    long n = spool.read(offset, buf, sizeof buf);
    if (n < 0) return std::nullopt;
    if (n == 0) break;
    h.update(std::string_view(buf, static_cast<std::size_t>(n)));
    offset += static_cast<std::size_t>(n);
  }
  h.finish();
  return h.base64();
}

asio::awaitable<ArcSealOutcome> seal_on_pool(const ArcSealer* sealer, const std::string* block, const Spool* body,
                                             std::size_t offset, const AuthResults* auth, const std::string* rcpt,
                                             bool modified, long now) {
  co_return sealer->seal(*block, *body, offset, *auth, *rcpt, modified, now);
}

}  // namespace

bool arc_message_modified(const Changes& changes) {
  if (!changes.subject_tag.empty() || changes.body) return true;
  for (const HeaderEdit& e : changes.headers) {
    if (e.kind == HeaderEdit::Kind::kChange) return true;
    // The forged Authentication-Results postern removes were not the sender's.
    if (e.kind == HeaderEdit::Kind::kRemove && !header_name_equals(e.name, "Authentication-Results")) return true;
  }
  return false;
}

ArcSealer::ArcSealer(ArcSealOptions options) : options_(std::move(options)) {
  for (DkimSigningKey& k : options_.keys) {
    k.domain = ascii::to_lower(k.domain);
    auto key = ArcSigningKey::load(k.key_pem);
    if (!key) throw std::runtime_error("[[arc.sign]] " + k.key_file + ": not an RSA or Ed25519 private key");
    keys_.push_back(std::move(key));
  }
  pool_ = std::make_unique<asio::thread_pool>(1);
}

ArcSealer::~ArcSealer() {
  if (pool_) pool_->join();
}

ArcSealOutcome ArcSealer::seal(const std::string& header_block, const Spool& body, std::size_t body_offset,
                               const AuthResults& auth, const std::string& rcpt_domain, bool modified,
                               long now) const {
  ArcSealOutcome out;
  if (options_.mode == ArcSealMode::kNone || keys_.empty()) {
    out.reason = "sealing is off";
    out.routine = true;
    return out;
  }
  if (options_.mode == ArcSealMode::kModified && !modified) {
    out.reason = "message not modified";
    out.routine = true;
    return out;
  }
  std::vector<HeaderField> fields = split_header_block(header_block);
  const ArcStructure incoming = arc_structure(fields);
  // §5.1.1: cv= is this hop's validation of the incoming chain. A chain
  // that failed is not extended (postern adds no set that could only say
  // cv=fail); one postern did not validate cannot be vouched for.
  if (incoming.fields == 0) {
    out.cv = "none";
  } else if (!auth.arc || auth.arc->result == ArcResult::kNone) {
    out.reason = "the incoming ARC chain was not validated ([arc] enabled = false)";
    return out;
  } else if (auth.arc->result == ArcResult::kFail || !incoming.error.empty()) {
    out.reason = "the incoming ARC chain fails";
    return out;
  } else {
    out.cv = "pass";
  }
  out.instance = static_cast<unsigned>(incoming.sets.size()) + 1;
  if (out.instance > kArcMaxSets) {
    out.reason = "the chain has 50 sets already";
    return out;
  }
  // The key: the recipient domain's (or a parent's), else the first.
  std::size_t pick = 0;
  const std::string rcpt = ascii::to_lower(rcpt_domain);
  for (std::size_t i = 0; i < options_.keys.size(); ++i) {
    const std::string& d = options_.keys[i].domain;
    if (rcpt == d || (rcpt.size() > d.size() && rcpt.ends_with("." + d))) {
      pick = i;
      break;
    }
  }
  const DkimSigningKey& key = options_.keys[pick];
  const ArcSigningKey& signer = *keys_[pick];
  out.domain = key.domain;
  out.selector = key.selector;
  const std::string i = std::to_string(out.instance);
  const std::string t = std::to_string(now);

  // ARC-Authentication-Results: postern's Authentication-Results (§4.1.1).
  const HeaderField aar{"ARC-Authentication-Results",
                        fold_header_field("ARC-Authentication-Results",
                                          "i=" + i + "; " + authentication_results_value(options_.authserv_id, auth))};
  // ARC-Message-Signature over the fields DKIM would sign that are present.
  std::string h;
  for (const std::string& name : kDefaultSignedHeaders) {
    const bool present = std::any_of(fields.begin(), fields.end(),
                                     [&](const HeaderField& f) { return header_name_equals(f.name, name); });
    if (present) h += (h.empty() ? "" : ":") + ascii::to_lower(name);
  }
  if (h.empty()) h = "from";
  auto bh = relaxed_body_hash(body, body_offset);
  if (!bh) {
    out.status = ArcSealOutcome::Status::kError;
    out.reason = "the body cannot be read";
    return out;
  }
  const std::string ams_unsigned = "i=" + i + "; a=" + signer.algorithm() + "; c=relaxed/relaxed; d=" + key.domain +
                                   "; s=" + key.selector + "; t=" + t + "; h=" + h + "; bh=" + *bh + "; b=";
  const HeaderField ams_draft{"ARC-Message-Signature", fold_header_field("ARC-Message-Signature", ams_unsigned)};
  auto ams_octets = ams_signed_octets(fields, ams_draft);
  auto ams_b = ams_octets ? signer.sign(*ams_octets) : std::nullopt;
  if (!ams_b) {
    out.status = ArcSealOutcome::Status::kError;
    out.reason = "signing the ARC-Message-Signature failed";
    return out;
  }
  const HeaderField ams{"ARC-Message-Signature", fold_header_field("ARC-Message-Signature", ams_unsigned + *ams_b)};
  // ARC-Seal over every set, this one last (§4.1.3).
  const std::string as_unsigned = "i=" + i + "; cv=" + out.cv + "; a=" + signer.algorithm() + "; d=" + key.domain +
                                  "; s=" + key.selector + "; t=" + t + "; b=";
  const HeaderField as_draft{"ARC-Seal", fold_header_field("ARC-Seal", as_unsigned)};
  auto sets = incoming.sets;
  sets.push_back({&aar, &ams, &as_draft});
  auto as_b = signer.sign(seal_signed_octets(sets, sets.size()));
  if (!as_b) {
    out.status = ArcSealOutcome::Status::kError;
    out.reason = "signing the ARC-Seal failed";
    return out;
  }
  out.fields = fold_header_field("ARC-Seal", as_unsigned + *as_b) + ams.raw + aar.raw;
  out.status = ArcSealOutcome::Status::kSealed;
  return out;
}

asio::awaitable<ArcSealOutcome> ArcSealer::seal_relayed(const Message& message, const TransactionFacts& t,
                                                        const Spool& body, std::size_t body_offset) const {
  const bool modified = arc_message_modified(t.changes);
  if (options_.mode == ArcSealMode::kNone || (options_.mode == ArcSealMode::kModified && !modified)) {
    ArcSealOutcome out;
    out.reason = options_.mode == ArcSealMode::kNone ? "sealing is off" : "message not modified";
    out.routine = true;
    co_return out;
  }
  std::string block = render_header_block(message, t.changes, "");
  std::string rcpt = t.recipients.empty() ? "" : t.recipients.front().domain;
  const long now = static_cast<long>(std::time(nullptr));
  auto task = seal_on_pool(this, &block, &body, body_offset, &auth_results(t), &rcpt, modified, now);
  co_return co_await asio::co_spawn(pool_->get_executor(), std::move(task), asio::use_awaitable);
}

}  // namespace postern
