// The filter chain per I/O thread; see filter_setup.h.
#include "proxy/filter_setup.h"

namespace postern {

std::shared_ptr<const FilterChain> build_filter_chain(const Config& config,
                                                      const asio::any_io_executor& executor) {
  (void)config;
  (void)executor;
  std::vector<std::shared_ptr<Filter>> filters;
  return std::make_shared<const FilterChain>(std::move(filters), ScoreThresholds{});
}

}  // namespace postern
