// The filters of a configuration; see filter_setup.h.
#include "proxy/filter_setup.h"

#include "filters/auth/auth_filters.h"
#include "filters/dns/unbound_resolver.h"
#include "filters/lua/lua_filter.h"
#include "proxy/log.h"

namespace postern {
namespace {

bool any_auth_check(const AuthOptions& a) {
  return a.spf.enabled || a.dkim.enabled || a.dmarc.enabled || a.authentication_results.enabled;
}

}  // namespace

std::shared_ptr<const FilterResources> build_filter_resources(const Config& config,
                                                              std::shared_ptr<KeyValueStore> store) {
  auto r = std::make_shared<FilterResources>();
  r->store = store ? std::move(store) : std::make_shared<MemoryStore>(config.lua.store_max_entries);
  const bool needs_dns = any_auth_check(config.auth) || !config.lua.scripts.empty() ||
                         !config.submission.scripts.empty();
  try {
    if (needs_dns) r->resolver = make_resolver(config.dns, asio::any_io_executor());
    if (any_auth_check(config.auth)) {
      AuthOptions auth = config.auth;
      if (auth.hostname.empty()) auth.hostname = config.server.hostname;
      r->shared_filters = make_auth_filters(auth, r->resolver);
    }
  } catch (const std::exception& e) {
    throw ConfigError(std::string("authenticity checks: ") + e.what());
  }
  return r;
}

std::shared_ptr<const FilterChain> build_filter_chain(const Config& config, const FilterResources& resources,
                                                      bool submission) {
  std::vector<std::shared_ptr<Filter>> filters;
  if (!submission || config.submission.authenticity_checks) filters = resources.shared_filters;
  const std::vector<std::string>& scripts = submission ? config.submission.scripts : config.lua.scripts;
  if (!scripts.empty()) {
    LuaOptions lua = config.lua;
    lua.scripts = scripts;
    lua.store = resources.store;
    lua.log = [](LuaLogLevel level, std::string_view line) {
      static constexpr log::Level kLevels[] = {log::Level::kDebug, log::Level::kInfo, log::Level::kWarning,
                                               log::Level::kError};
      log::Line(kLevels[static_cast<int>(level)], "lua").kv("line", line);
    };
    try {
      // Last: rules see the authenticity results and the score so far.
      filters.push_back(make_lua_filter(lua, resources.resolver.get()));
    } catch (const LuaLoadError& e) {
      throw ConfigError(e.what());
    }
  }
  return std::make_shared<const FilterChain>(std::move(filters), config.scores);
}

}  // namespace postern
