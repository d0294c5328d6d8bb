// The dkim filter: hashes the content as it streams in (a DkimStream tap on
// the spool), looks the keys up asynchronously and verifies every
// DKIM-Signature at end of message, and records the results (TransactionFacts::auth,
// symbols). Content the stream could not follow is verified from the spool,
// on the worker pool.
#pragma once

#include <memory>
#include <string>

#include <asio/thread_pool.hpp>

#include "filters/auth/auth_options.h"
#include "filters/dkim/dkim_verifier.h"
#include "filters/filter.h"

namespace postern {

class DkimFilter final : public Filter {
 public:
  DkimFilter(DkimOptions options, std::shared_ptr<Resolver> resolver,
             std::shared_ptr<asio::thread_pool> pool);
  const std::string& name() const override { return name_; }
  bool wants(Stage stage) const override { return stage == Stage::kEom; }
  // Never decisive: DMARC and the rules decide on the results.
  asio::awaitable<Verdict> run(FilterContext& ctx) override;
  std::shared_ptr<SpoolTap> content_tap(const FilterContext& ctx) const override;

 private:
  std::string name_ = "dkim";
  DkimOptions options_;
  std::shared_ptr<Resolver> resolver_;
  std::shared_ptr<DkimVerifier> verifier_;
  std::shared_ptr<asio::thread_pool> pool_;
};

}  // namespace postern
