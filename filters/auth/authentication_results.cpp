#include "filters/auth/authentication_results.h"
#include "filters/text/ascii.h"

#include <cctype>

namespace postern {

namespace {

constexpr std::size_t kMaxDkimEntries = 8;  // keeps the field under 998 octets

// A value as an RFC 8601 pvalue: bare when it is made of token characters
// (and '@' for an address), else a quoted-string.
std::string pvalue(const std::string& v) {
  bool bare = !v.empty();
  for (unsigned char c : v) {
    if (!(std::isalnum(c) || std::string_view(".-_+@!#$%&'*^`{|}~").find(static_cast<char>(c)) != std::string_view::npos)) {
      bare = false;
    }
  }
  if (bare) return v;
  std::string out = "\"";
  for (unsigned char c : v) {
    if (c < 32 || c == 127) continue;
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(static_cast<char>(c));
  }
  return out + '"';
}

std::string comment_text(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 32 || c == 127 || c == '(' || c == ')' || c == '\\') continue;
    out.push_back(static_cast<char>(c));
    if (out.size() >= 80) break;
  }
  return out;
}

}  // namespace

std::string authentication_results_value(const std::string& authserv_id, const AuthResults& auth) {
  std::string v;
  v.reserve(authserv_id.size() + 400);  // spf, one or two dkim, dmarc: one allocation, not five growths
  v = authserv_id;
  bool any = false;
  if (auth.spf) {
    any = true;
    const auto& s = *auth.spf;
    v += "; spf=";
    v += spf_result_name(s.result);
    if (s.identity == "helo") {
      v += " smtp.helo=" + pvalue(s.helo.empty() ? s.domain : s.helo);
    } else {
      v += " smtp.mailfrom=" + pvalue(s.sender);
    }
  }
  if (auth.dkim_checked) {
    any = true;
    if (auth.dkim.empty()) v += "; dkim=none";
    for (std::size_t i = 0; i < auth.dkim.size() && i < kMaxDkimEntries; ++i) {
      const auto& d = auth.dkim[i];
      v += "; dkim=";
      v += dkim_result_name(d.result);
      if (!d.reason.empty() && d.result != DkimResult::kPass) v += " reason=" + pvalue(comment_text(d.reason));
      if (d.body_truncated && d.result == DkimResult::kPass) v += " (partial body)";
      if (!d.domain.empty()) v += " header.d=" + pvalue(d.domain);
      if (!d.selector.empty()) v += " header.s=" + pvalue(d.selector);
      if (!d.algorithm.empty()) v += " header.a=" + pvalue(d.algorithm);
      if (!d.b.empty()) v += " header.b=" + pvalue(d.b);
    }
  }
  if (auth.arc) {
    // RFC 8617 §10.1: the chain's result with the client and the oldest
    // instance whose AMS still verifies; the reason of a fail in a comment.
    any = true;
    const auto& a = *auth.arc;
    v += "; arc=";
    v += arc_result_name(a.result);
    if (a.result == ArcResult::kPass && !a.sets.empty()) {
      v += " (i=" + std::to_string(a.count) + " as=" + comment_text(a.sets.back().sealer) + ")";
    } else if (a.result == ArcResult::kFail && !a.reason.empty()) {
      v += " (" + comment_text(a.reason) + ")";
    }
    if (a.result != ArcResult::kNone) {
      if (!a.remote_ip.empty()) v += " smtp.remote-ip=" + pvalue(a.remote_ip);
      if (a.result == ArcResult::kPass) v += " header.oldest-pass=" + std::to_string(a.oldest_pass);
    }
  }
  if (auth.dmarc) {
    any = true;
    const auto& d = *auth.dmarc;
    v += "; dmarc=";
    v += dmarc_result_name(d.result);
    if (!d.policy.empty()) {
      // A local-policy override (a trusted ARC sealer) keeps the result
      // fail -- the DMARC check did fail -- and says why the disposition is
      // none (RFC 7489 §7.2 PolicyOverrideType, as OpenDMARC and Gmail write it).
      v += " (p=" + d.policy + " dis=" + (d.disposition.empty() ? "none" : d.disposition);
      if (!d.override_type.empty() && d.override_type != "sampled_out") {
        v += " override=" + d.override_type;
        if (!d.override_comment.empty()) v += ": " + comment_text(d.override_comment);
      }
      v += ")";
    }
    if (!d.from_domain.empty()) v += " header.from=" + pvalue(d.from_domain);
  }
  if (!any) v += "; none";
  // RFC 8601 §2.2: "none" with the reason in a comment.
  if (!any && !auth.skipped.empty()) v += " (checks skipped: " + comment_text(auth.skipped) + ")";
  return v;
}

std::optional<std::string> authserv_id_of(const std::string& value) {
  std::string id;
  int comment = 0;
  bool quoted = false;
  for (std::size_t i = 0; i < value.size(); ++i) {
    char c = value[i];
    if (comment) {
      if (c == '\\') ++i;
      else if (c == '(') ++comment;
      else if (c == ')') --comment;
      continue;
    }
    if (quoted) {
      if (c == '\\' && i + 1 < value.size()) id.push_back(value[++i]);
      else if (c == '"') quoted = false;
      else id.push_back(c);
      continue;
    }
    if (c == '(') comment = 1;
    else if (c == '"') quoted = true;
    else if (c == ';') break;
    else if (std::isspace(static_cast<unsigned char>(c))) {
      if (!id.empty()) break;  // the id ends at white space (a version may follow)
    } else {
      id.push_back(c);
    }
  }
  if (id.empty()) return std::nullopt;
  return ascii::to_lower(id);  // quoted or not, an authserv-id compares without case
}

void add_authentication_results(FilterContext& ctx, const AuthResultsOptions& options) {
  auto& t = ctx.transaction;
  if (!options.enabled || t.notes.count("authres.added")) return;
  t.notes["authres.added"] = "1";
  const std::string ours = ascii::to_lower(options.authserv_id);
  if (options.remove_forged && t.message) {
    std::size_t index = 0;
    std::size_t removed = 0;
    for (const auto& h : t.message->headers()) {
      if (!header_name_equals(h.name, "Authentication-Results")) continue;
      ++index;
      auto id = authserv_id_of(h.value());
      if (id && *id == ours) {
        t.changes.headers.push_back(HeaderEdit{HeaderEdit::Kind::kRemove, "Authentication-Results", "", index});
        ++removed;
      }
    }
    if (removed) t.notes["authres.removed"] = std::to_string(removed);
  }
  t.changes.headers.push_back(HeaderEdit{HeaderEdit::Kind::kPrepend, "Authentication-Results",
                                         authentication_results_value(options.authserv_id, auth_results(t))});
}

asio::awaitable<Verdict> AuthResultsFilter::run(FilterContext& ctx) {
  add_authentication_results(ctx, options_);
  co_return Verdict::proceed();
}

}  // namespace postern
