// The filters of a configuration; see filter_setup.h.
#include "proxy/filter_setup.h"

#include "filters/auth/auth_filters.h"
#include "filters/dns/client_name_filter.h"
#include "filters/dns/unbound_resolver.h"
#include "filters/lua/lua_filter.h"
#include "filters/milter/milter_filter.h"
#include "filters/store/persisted_store.h"
#include "proxy/log.h"

#include <asio/thread_pool.hpp>

namespace postern {
namespace {

bool any_auth_check(const AuthOptions& a) {
  return a.spf.enabled || a.dkim.enabled || a.dmarc.enabled || a.authentication_results.enabled;
}

void log_store_event(StoreLogLevel level, std::string_view event, const StoreLogFields& fields) {
  static constexpr log::Level kLevels[] = {log::Level::kInfo, log::Level::kWarning, log::Level::kError};
  log::Line line(kLevels[static_cast<int>(level)], event);
  for (const auto& [key, value] : fields) line.kv(key, value);
}

}  // namespace

std::shared_ptr<const FilterResources> build_filter_resources(const Config& config,
                                                              const FilterResources* previous) {
  auto r = std::make_shared<FilterResources>();
  if (previous && previous->store) {
    r->store = previous->store;
    r->store_options = previous->store_options;
    if (!r->store_options.same_backend(config.store)) {
      log::warning("store-change-needs-restart").kv("backend", r->store->backend())
          .kv("action", "keeping the running store until postern restarts");
    }
  } else {
    try {
      r->store = make_store(config.store, log_store_event);
      r->store_options = config.store;
    } catch (const StoreError& e) {
      throw ConfigError(std::string("store: ") + e.what());
    }
  }
  const bool needs_dns = any_auth_check(config.auth) || !config.lua.scripts.empty() ||
                         !config.submission.scripts.empty();
  if (!config.lua.scripts.empty() || !config.submission.scripts.empty()) {
    // Two threads: a walk takes at most about a second, and two at once
    // leave the I/O threads their share of two cores (bench/README.md).
    r->walk_pool = std::make_shared<asio::thread_pool>(2);
  }
  try {
    if (needs_dns) r->resolver = make_resolver(config.dns, asio::any_io_executor());
    if (r->resolver && config.dns.client_name) r->client_name = std::make_shared<ClientNameFilter>(r->resolver);
    if (any_auth_check(config.auth)) {
      AuthOptions auth = config.auth;
      if (auth.hostname.empty()) auth.hostname = config.server.hostname;
      // [dns] cache_entries = 0 asks for no postern cache: no SPF results kept either.
      if (config.dns.cache_entries == 0) auth.spf.result_cache = 0;
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
  // First: every later filter and rule sees the client's verified name.
  if (resources.client_name) filters.push_back(resources.client_name);
  if (!submission || config.submission.authenticity_checks) {
    filters.insert(filters.end(), resources.shared_filters.begin(), resources.shared_filters.end());
  }
  // Milters after the authenticity checks, before the rules: rules see
  // their outcome (transaction notes "milter.NAME").
  for (MilterOptions m : config.milters) {
    m.on_failure = [](const MilterOptions& o, std::string_view session, std::string_view stage,
                      std::string_view error) {
      static constexpr const char* kPolicy[] = {"tempfail", "accept", "reject"};
      log::warning("milter-error").kv("session", session).kv("milter", o.name).kv("stage", stage)
          .kv("error", error).kv("on_error", kPolicy[static_cast<int>(o.on_error)]);
    };
    filters.push_back(make_milter_filter(std::move(m)));
  }
  const std::vector<std::string>& scripts = submission ? config.submission.scripts : config.lua.scripts;
  if (!scripts.empty()) {
    LuaOptions lua = config.lua;
    lua.scripts = scripts;
    lua.store = resources.store;
    lua.walk_pool = resources.walk_pool;
    lua.log = [](LuaLogLevel level, std::string_view line) {
      static constexpr log::Level kLevels[] = {log::Level::kDebug, log::Level::kInfo, log::Level::kWarning,
                                               log::Level::kError};
      log::Line(kLevels[static_cast<int>(level)], "lua").kv("line", line);
    };
    // Lines rules write carry the session and transaction ids as fields, so
    // that jq 'select(.session == "...")' finds them.
    lua.rule_log = [](LuaLogLevel level, std::string_view session, std::string_view id, std::string_view line) {
      static constexpr log::Level kLevels[] = {log::Level::kDebug, log::Level::kInfo, log::Level::kWarning,
                                               log::Level::kError};
      log::Line out(kLevels[static_cast<int>(level)], "lua");
      if (!session.empty()) out.kv("session", session);
      if (!id.empty()) out.kv("id", id);
      out.kv("line", line);
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
