#include "filters/dns/client_name_filter.h"

#include <cctype>

#include <asio/ip/address.hpp>

#include "filters/dns/reverse_name.h"
#include "filters/net/ip_address.h"

namespace postern {

namespace {

// A host name as it may appear in logs and headers: letters, digits, '-',
// '_' and '.', at most 253 octets. PTR data is the client's own to choose.
bool plausible_host(const std::string& host) {
  if (host.empty() || host.size() > 253) return false;
  for (unsigned char c : host) {
    if (!(std::isalnum(c) || c == '-' || c == '_' || c == '.')) return false;
  }
  return true;
}

}  // namespace

asio::awaitable<Verdict> ClientNameFilter::run(FilterContext& ctx) {
  std::error_code ec;
  const asio::ip::address client = unmap_v4(asio::ip::make_address(ctx.session.client_ip, ec));
  std::string owner = reverse_name(ctx.session.client_ip);
  if (ec || owner.empty()) co_return Verdict::proceed();
  DnsAnswer ptr = co_await resolver_->query(owner, DnsType::kPtr);
  if (ptr.status != DnsStatus::kOk) co_return Verdict::proceed();
  const DnsType forward = client.is_v4() ? DnsType::kA : DnsType::kAaaa;
  std::size_t tried = 0;
  for (const std::string& host : ptr.records) {
    if (++tried > kMaxNames) break;
    if (!plausible_host(host)) continue;
    std::string query_name = host;
    DnsAnswer addresses = co_await resolver_->query(query_name, forward);
    if (addresses.status != DnsStatus::kOk) continue;
    for (const std::string& text : addresses.records) {
      asio::ip::address a = asio::ip::make_address(text, ec);
      if (!ec && unmap_v4(a) == client) {
        ctx.session.client_name = host;
        co_return Verdict::proceed();
      }
    }
  }
  co_return Verdict::proceed();
}

}  // namespace postern
