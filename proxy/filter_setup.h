// Builds the filter chain of one I/O thread from a configuration snapshot:
// the built-in checks and the Lua rules, in the order they run.
#pragma once

#include <memory>

#include <asio/any_io_executor.hpp>

#include "filters/filter_chain.h"
#include "proxy/config.h"

namespace postern {

// Throws ConfigError (e.g. a script that does not compile); the caller keeps
// the chain it had.
std::shared_ptr<const FilterChain> build_filter_chain(const Config& config,
                                                      const asio::any_io_executor& executor);

}  // namespace postern
