#include "filters/dkim/dkim_filter.h"

#include "filters/auth/auth_results.h"
#include "filters/dkim/dkim_stream.h"

#include <asio/co_spawn.hpp>
#include <asio/use_awaitable.hpp>

namespace postern {

namespace {

asio::awaitable<std::vector<DkimSignature>> verify_on_pool(std::shared_ptr<DkimVerifier> verifier,
                                                           std::shared_ptr<DkimStream> stream,
                                                           const Message* message,
                                                           std::chrono::milliseconds budget) {
  if (stream) {
    auto streamed = stream->finish(*message, budget);
    if (streamed) co_return std::move(*streamed);
  }
  co_return verifier->verify(*message, budget);
}

// The key records of `names`, without a thread waiting: cached ones at
// once, the others awaited, none started past `deadline`.
asio::awaitable<void> look_up_keys(Resolver& resolver, const std::vector<std::string>& names, DkimKeys& keys,
                                   std::chrono::steady_clock::time_point deadline) {
  for (const std::string& name : names) {
    if (auto now = resolver.answer_now(name, DnsType::kTxt)) {
      keys.emplace(name, std::move(*now));
      continue;
    }
    if (std::chrono::steady_clock::now() >= deadline) break;
    DnsAnswer answer = co_await resolver.query(name, DnsType::kTxt);
    keys.emplace(name, std::move(answer));
  }
}

}  // namespace

DkimFilter::DkimFilter(DkimOptions options, std::shared_ptr<Resolver> resolver,
                       std::shared_ptr<asio::thread_pool> pool)
    : options_(options),
      resolver_(resolver),
      verifier_(std::make_shared<DkimVerifier>(std::move(resolver),
                                               DkimVerifyOptions{options.min_key_bits, options.max_signatures})),
      pool_(std::move(pool)) {}

std::shared_ptr<SpoolTap> DkimFilter::content_tap(const FilterContext&) const {
  return std::make_shared<DkimStream>(verifier_, this);
}

asio::awaitable<Verdict> DkimFilter::run(FilterContext& ctx) {
  const Message* message = ctx.transaction.message;
  if (!message || !auth_results(ctx.transaction).skipped.empty()) co_return Verdict::proceed();  // none, or a trusted client
  std::shared_ptr<DkimStream> stream;
  for (const auto& tap : message->spool().taps()) {
    auto s = std::dynamic_pointer_cast<DkimStream>(tap);
    if (s && s->owner() == this) stream = std::move(s);
  }
  std::vector<DkimSignature> sigs;
  if (stream && stream->complete(*message)) {
    // Header and body are hashed already: what is left is the key records,
    // looked up without a thread waiting, and the signature checks (CPU, a
    // few per message at most) right here -- no hand-off to the pool and
    // back (bench/README.md).
    DkimKeys keys;
    const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
    co_await look_up_keys(*resolver_, stream->key_names(), keys, deadline);
    auto streamed = stream->finish(*message, options_.timeout, &keys);
    if (streamed) sigs = std::move(*streamed);
  } else {
    // The spool must be read again (a header section the stream could not
    // follow): that is a pass over the whole body, so on the pool.
    auto task = verify_on_pool(verifier_, std::move(stream), message, options_.timeout);
    sigs = co_await asio::co_spawn(pool_->get_executor(), std::move(task), asio::use_awaitable);
  }
  store(ctx.transaction, sigs);

  // One summary symbol: the best result over all signatures.
  auto has = [&](DkimResult r) {
    for (const auto& s : sigs) {
      if (s.result == r) return true;
    }
    return false;
  };
  if (sigs.empty()) {
    ctx.transaction.add_symbol(Symbol{"DKIM_NONE", 0, "no signature"});
  } else if (has(DkimResult::kPass)) {
    std::string domains;
    for (const auto& s : sigs) {
      if (s.result == DkimResult::kPass) domains += (domains.empty() ? "" : " ") + s.domain;
    }
    ctx.transaction.add_symbol(Symbol{"DKIM_PASS", options_.score_pass, domains});
  } else if (has(DkimResult::kFail)) {
    ctx.transaction.add_symbol(Symbol{"DKIM_FAIL", options_.score_fail, sigs.front().domain});
  } else if (has(DkimResult::kTemperror)) {
    ctx.transaction.add_symbol(Symbol{"DKIM_TEMPERROR", 0, sigs.front().domain});
  } else if (has(DkimResult::kPolicy)) {
    ctx.transaction.add_symbol(Symbol{"DKIM_POLICY", 0, sigs.front().reason});
  } else {
    ctx.transaction.add_symbol(Symbol{"DKIM_PERMERROR", 0, sigs.front().reason});
  }
  for (const auto& s : sigs) {
    if (s.weak_key) {
      ctx.transaction.add_symbol(Symbol{"DKIM_WEAK_KEY", options_.score_weak_key, s.domain});
      break;
    }
  }
  for (const auto& s : sigs) {
    if (s.body_truncated) {
      ctx.transaction.add_symbol(Symbol{"DKIM_PARTIAL_BODY", 0, s.domain});
      break;
    }
  }
  co_return Verdict::proceed();
}

}  // namespace postern
