// The factory the proxy uses for the authenticity checks.
//
// Threading contract:
//  - make_resolver() (filters/dns/unbound_resolver.h): one per process,
//    thread-safe; query() may be awaited on any executor and completes there.
//    With an empty executor it runs libunbound's descriptor on a thread of
//    its own; UnboundResolver::shutdown() (or the last reference) stops it.
//  - make_auth_filters(): the filters are immutable after construction and
//    shared by every I/O thread (put them in every session's FilterChain).
//    SPF and DKIM run their blocking library calls on one bounded
//    asio::thread_pool (AuthOptions::worker_threads) owned by the filters;
//    run() moves there and comes back to the session's executor. DMARC and
//    Authentication-Results run on the session's executor (async DNS only).
//  - Order: spf (stage mail), dkim, arc (its keys looked up on the
//    session's executor, the body hash and signatures on the pool), dmarc
//    (which may apply a trusted ARC sealer's override), authentication-results
//    (stage eom). Put the Lua filter after them so rules see the results
//    (TransactionFacts::auth; for Lua, ctx.spf/dkim/dmarc/arc and the notes
//    "spf.*", "dkim.N.*", "dmarc.*").
#pragma once

#include <memory>
#include <vector>

#include "filters/auth/auth_options.h"
#include "filters/dns/resolver.h"
#include "filters/filter.h"

namespace postern {

// Throws std::invalid_argument unless `resolver` came from make_resolver(),
// std::runtime_error when a library cannot start.
std::vector<std::shared_ptr<Filter>> make_auth_filters(const AuthOptions& options, std::shared_ptr<Resolver> resolver);

}  // namespace postern
