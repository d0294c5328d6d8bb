// postern's DNS interface: every lookup of SPF, DKIM, DMARC and the Lua rules
// goes through one asynchronous, caching resolver (DESIGN "Concurrency").
// A query never blocks the calling I/O thread and always completes, with a
// status, within the configured time-out.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <asio/awaitable.hpp>

namespace postern {

enum class DnsType : std::uint16_t { kA = 1, kNs = 2, kCname = 5, kPtr = 12, kMx = 15, kTxt = 16, kAaaa = 28 };

enum class DnsStatus {
  kOk,        // records present
  kNxDomain,  // the name does not exist
  kNoData,    // the name exists, no records of the type
  kServFail,  // the server failed (SERVFAIL, REFUSED, malformed answer)
  kTimeout,   // no answer within the time-out (after retries)
};

struct DnsAnswer {
  DnsStatus status = DnsStatus::kServFail;
  // Textual records: A/AAAA addresses ("192.0.2.1", "2001:db8::1"); TXT the
  // character-strings of one record concatenated; MX "PREFERENCE HOST"; PTR,
  // NS and CNAME the host. Host names without the trailing dot.
  std::vector<std::string> records;
  std::uint32_t ttl = 0;
  bool from_cache = false;
};

const char* dns_status_name(DnsStatus status);

// Whether `name` can be queried at all: labels of 1..63 octets, 253 in total
// (RFC 1035 §2.3.4). Names that cannot are answered kNxDomain without a query.
bool dns_name_valid(std::string_view name);

class Resolver {
 public:
  virtual ~Resolver() = default;
  // Completes on the awaiting coroutine's executor.
  virtual asio::awaitable<DnsAnswer> query(std::string name, DnsType type) = 0;
  // The answer query() would give at once, without waiting (a cached answer,
  // a name that cannot be queried); nullopt when query() would have to wait.
  // Callers use it to skip a suspension or a thread hand-off (bench/README.md).
  virtual std::optional<DnsAnswer> answer_now(const std::string& /*name*/, DnsType /*type*/) { return std::nullopt; }
  // The answer query() gives, waited for: for the worker-pool threads that
  // run libspf2 and libopendkim (they ask for DNS synchronously), never for
  // an I/O thread. The default runs query() on a private io_context, which
  // suits a resolver whose query() completes without another thread's help;
  // UnboundResolver waits on its own resolver thread instead.
  virtual DnsAnswer query_blocking(const std::string& name, DnsType type);
};

}  // namespace postern
