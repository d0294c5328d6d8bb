// The Resolver interface's default blocking query, status names and DNS
// name check (filters/dns/resolver.h).
#include "filters/dns/resolver.h"

#include <exception>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>

namespace postern {

const char* dns_status_name(DnsStatus status) {
  switch (status) {
    case DnsStatus::kOk: return "ok";
    case DnsStatus::kNxDomain: return "nxdomain";
    case DnsStatus::kNoData: return "nodata";
    case DnsStatus::kServFail: return "servfail";
    case DnsStatus::kTimeout: return "timeout";
  }
  return "unknown";
}

bool dns_name_valid(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.size() > 253) return false;
  std::size_t label = 0;
  for (char c : name) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
    } else if (++label > 63) {
      return false;
    }
  }
  return label > 0;
}

DnsAnswer Resolver::query_blocking(const std::string& name, DnsType type) {
  asio::io_context io;
  DnsAnswer answer;
  asio::co_spawn(io, query(name, type), [&](std::exception_ptr e, DnsAnswer a) {
    if (!e) answer = std::move(a);  // an exception leaves kServFail
  });
  io.run();
  return answer;
}

}  // namespace postern
