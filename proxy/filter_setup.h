// Builds the filters from a configuration snapshot: the process-wide parts
// (DNS resolver, the authenticity checks, the key-value store) once per
// snapshot, and each I/O thread's FilterChain with its own Lua state.
#pragma once

#include <memory>
#include <vector>

#include "filters/dns/resolver.h"
#include "filters/filter_chain.h"
#include "filters/store/kv_store.h"
#include "proxy/config.h"

namespace asio {
class thread_pool;
}

namespace postern {

struct FilterResources {
  std::shared_ptr<Resolver> resolver;                   // null when no check needs DNS
  std::vector<std::shared_ptr<Filter>> shared_filters;  // SPF, DKIM, DMARC, A-R: any thread
  std::shared_ptr<Filter> client_name;                  // verified client name; null when off
  std::shared_ptr<KeyValueStore> store;                 // survives reloads
  StoreOptions store_options;                           // what `store` was built with
  // Where rules have a large message's MIME structure read (LuaOptions::walk_pool).
  std::shared_ptr<asio::thread_pool> walk_pool;
};

// Throws ConfigError (e.g. a resolver libunbound refuses, an LMDB file that
// cannot be opened). `previous`: the running resources on a reload; their
// store is kept (greylisting and rate limits survive a reload, and an LMDB
// file is opened once per process), a changed [store] is logged as needing
// a restart.
std::shared_ptr<const FilterResources> build_filter_resources(const Config& config,
                                                              const FilterResources* previous);

// Throws ConfigError (a script that does not compile: "FILE:LINE: reason");
// the caller keeps the chain it had. Call on the I/O thread that will use it.
// `submission`: the chain of authenticated sessions ([submission]).
std::shared_ptr<const FilterChain> build_filter_chain(const Config& config, const FilterResources& resources,
                                                      bool submission = false);

}  // namespace postern
