// How the store backends report events to the proxy's log without including
// proxy/ (DESIGN: filters never depend on proxy). One call per event: a
// greppable event name and its key=value fields, sanitized by the receiver.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace postern {

enum class StoreLogLevel { kInfo, kWarning, kError };
using StoreLogFields = std::vector<std::pair<std::string, std::string>>;
using StoreLogFn = std::function<void(StoreLogLevel, std::string_view event, const StoreLogFields&)>;

}  // namespace postern
