#include "filters/spf/spf_filter.h"

#include <optional>

#include <asio/co_spawn.hpp>
#include <asio/use_awaitable.hpp>

#include "filters/auth/auth_results.h"
#include "filters/text/ascii.h"

namespace postern {

namespace {

// Runs on the pool: a coroutine function (not a lambda) so its parameters
// live in the frame.
asio::awaitable<SpfOutcome> check_on_pool(std::shared_ptr<SpfChecker> checker, SpfQuery query,
                                          std::chrono::milliseconds budget) {
  co_return checker->check(query, budget);
}

// On the calling thread when every record is cached (no hand-off: bench/README.md),
// else on the pool.
// `checker` and `pool` belong to the filter, which outlives the call.
asio::awaitable<SpfOutcome> check(const std::shared_ptr<SpfChecker>& checker, SpfQuery query,
                                  std::chrono::milliseconds budget, asio::thread_pool& pool) {
  if (auto cached = checker->check_cached(query)) co_return std::move(*cached);
  auto task = check_on_pool(checker, std::move(query), budget);
  co_return co_await asio::co_spawn(pool.get_executor(), std::move(task), asio::use_awaitable);
}

std::string symbol_name(SpfResult r) {
  return "SPF_" + ascii::to_upper(spf_result_name(r));
}

// The HELO result in the session notes; it stands for the session's
// current HELO name and client address only ("spf.helo.for").
constexpr const char* kHeloPrefix = "spf.helo.";

std::string helo_key(const SessionFacts& s) { return s.helo + " " + s.client_ip; }

void store_helo(SessionFacts& s, const SpfOutcome& spf) {
  auto& n = s.notes;
  const std::string p = kHeloPrefix;
  n[p + "for"] = helo_key(s);
  n[p + "result"] = spf_result_name(spf.result);
  n[p + "domain"] = spf.domain;
  n[p + "client_ip"] = spf.client_ip;
  n[p + "explanation"] = spf.explanation;
  n[p + "reason"] = spf.reason;
}

std::optional<SpfOutcome> load_helo(const SessionFacts& s) {
  const std::string p = kHeloPrefix;
  auto get = [&](const std::string& k) {
    auto it = s.notes.find(p + k);
    return it == s.notes.end() ? std::string() : it->second;
  };
  if (get("for") != helo_key(s)) return std::nullopt;
  auto result = parse_spf_result(get("result"));
  if (!result) return std::nullopt;
  SpfOutcome o;
  o.result = *result;
  o.identity = "helo";
  o.domain = get("domain");
  o.sender = "postmaster@" + o.domain;
  o.client_ip = get("client_ip");
  o.helo = s.helo;
  o.explanation = get("explanation");
  o.reason = get("reason");
  return o;
}

}  // namespace

SpfFilter::SpfFilter(SpfOptions options, std::string receiver, std::shared_ptr<Resolver> resolver,
                     std::shared_ptr<asio::thread_pool> pool)
    : options_(std::move(options)),
      receiver_(std::move(receiver)),
      checker_(std::make_shared<SpfChecker>(std::move(resolver), options_.limits, options_.result_cache)),
      pool_(std::move(pool)) {}

// RFC 7208 §2.3: the HELO identity, checked as postmaster@HELO. Never a
// verdict here: a HELO result decides only the null reverse-path's mail.
asio::awaitable<void> SpfFilter::check_helo(FilterContext& ctx) {
  SpfQuery query;
  query.client_ip = ctx.session.client_ip;
  query.helo = ctx.session.helo;
  query.receiver = receiver_;
  SpfOutcome spf = co_await check(checker_, std::move(query), options_.timeout, *pool_);
  store_helo(ctx.session, spf);
}

asio::awaitable<Verdict> SpfFilter::run(FilterContext& ctx) {
  if (!auth_results(ctx.transaction).skipped.empty()) co_return Verdict::proceed();  // a trusted client
  if (ctx.stage == Stage::kHelo) {
    co_await check_helo(ctx);
    co_return Verdict::proceed();
  }
  const bool null_path = ctx.transaction.reverse_path.empty();
  std::optional<SpfOutcome> helo = null_path ? load_helo(ctx.session) : std::nullopt;
  SpfOutcome spf;
  if (helo) {
    spf = std::move(*helo);  // §2.4: the null reverse-path's identity is the HELO's
  } else {
    SpfQuery query;
    query.client_ip = ctx.session.client_ip;
    query.helo = ctx.session.helo;
    if (!null_path) query.sender = ctx.transaction.reverse_path.str();
    query.receiver = receiver_;
    spf = co_await check(checker_, std::move(query), options_.timeout, *pool_);
  }

  store(ctx.transaction, spf);
  double score = 0;
  switch (spf.result) {
    case SpfResult::kPass: score = options_.score_pass; break;
    case SpfResult::kFail: score = options_.score_fail; break;
    case SpfResult::kSoftfail: score = options_.score_softfail; break;
    case SpfResult::kNeutral: score = options_.score_neutral; break;
    case SpfResult::kNone: score = options_.score_none; break;
    case SpfResult::kTemperror: score = options_.score_temperror; break;
    case SpfResult::kPermerror: score = options_.score_permerror; break;
  }
  ctx.transaction.add_symbol(Symbol{symbol_name(spf.result), score, spf.domain});
  if (options_.received_spf) {
    ctx.transaction.changes.headers.push_back(
        HeaderEdit{HeaderEdit::Kind::kPrepend, "Received-SPF", received_spf_value(spf, receiver_)});
  }
  if (spf.result == SpfResult::kFail && options_.reject_fail) {
    Verdict v;
    v.action = Verdict::Action::kReject;
    v.code = 550;
    v.enhanced = "5.7.23";  // RFC 7372: SPF validation failed
    v.text = spf.explanation.empty() ? "SPF check failed for " + spf.domain : spf.explanation;
    v.reason = "spf=fail " + spf.reason;
    co_return v;
  }
  if (spf.result == SpfResult::kTemperror && options_.tempfail_temperror) {
    Verdict v;
    v.action = Verdict::Action::kTempfail;
    v.code = 451;
    v.enhanced = "4.7.24";  // RFC 7372: SPF validation error
    v.text = "Temporary SPF error for " + spf.domain;
    v.reason = "spf=temperror " + spf.reason;
    co_return v;
  }
  co_return Verdict::proceed();
}

}  // namespace postern
