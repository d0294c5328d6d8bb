// Fuzz target: parse_proxy_header (proxy/proxy_protocol.h), PROXY protocol
// v1 and v2. The input is the start of a connection from a load balancer.
//
// Asserts:
//  - kComplete consumes at most the input (v1: at most 107 octets, ending in
//    CRLF; v2: 16 + the length field, at most kMaxProxyV2); kIncomplete
//    consumes nothing; kInvalid says why, kComplete has no error;
//  - the session re-parses as bytes arrive, so every prefix of a complete
//    header is kIncomplete (never kInvalid), and the input cut right after
//    the header gives the same result;
//  - a complete, non-local header has a source address that is the whole
//    string (no NUL), parses as IPv4 or IPv6, and for v1 re-serializes into
//    a header that parses back to the same address and port.
#include <arpa/inet.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "fuzz_util.h"
#include "proxy/proxy_protocol.h"

using postern::ProxyHeader;
using postern::fuzz::Choices;
using postern::fuzz::escape;
using Outcome = ProxyHeader::Outcome;

namespace {

std::string describe(const ProxyHeader& h) {
  const char* o = h.outcome == Outcome::kComplete ? "complete" : h.outcome == Outcome::kIncomplete ? "incomplete" : "invalid";
  return std::string(o) + " consumed=" + std::to_string(h.consumed) + " local=" + std::to_string(h.local) +
         " source=\"" + escape(h.source_ip) + "\":" + std::to_string(h.source_port) + " error=\"" + h.error + "\"";
}

bool same(const ProxyHeader& a, const ProxyHeader& b) {
  return a.outcome == b.outcome && a.consumed == b.consumed && a.local == b.local && a.source_ip == b.source_ip &&
         a.source_port == b.source_port;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  ProxyHeader h = postern::parse_proxy_header(in);
  auto where = [&] {
    return std::string("  input: \"" + escape(in) + "\"\n  got: " + describe(h));
  };
  const bool v2 = size >= 12 && std::memcmp(data, "\r\n\r\n\0\r\nQUIT\n", 12) == 0;

  switch (h.outcome) {
    case Outcome::kIncomplete:
      FUZZ_CHECK(h.consumed == 0 && h.error.empty(), where());
      return 0;
    case Outcome::kInvalid:
      FUZZ_CHECK(!h.error.empty(), where());
      return 0;
    case Outcome::kComplete:
      break;
  }
  FUZZ_CHECK(h.error.empty() && h.consumed > 0 && h.consumed <= size, where());
  if (v2) {
    FUZZ_CHECK(h.consumed >= 16 && h.consumed <= postern::kMaxProxyV2, where());
  } else {
    FUZZ_CHECK(h.consumed <= postern::kMaxProxyV1 && in.substr(h.consumed - 2, 2) == "\r\n" &&
                   in.substr(0, h.consumed - 2).find("\r\n") == std::string_view::npos,
               where());
  }

  // Arriving byte by byte: never invalid before the header is whole.
  Choices choices(in);
  std::size_t cut = choices.range(0, h.consumed - 1);
  ProxyHeader part = postern::parse_proxy_header(in.substr(0, cut));
  FUZZ_CHECK(part.outcome == Outcome::kIncomplete,
             "  a prefix of a complete header is not kIncomplete\n" + where() + "\n  prefix: \"" +
                 escape(in.substr(0, cut)) + "\"\n  prefix got: " + describe(part));
  ProxyHeader exact = postern::parse_proxy_header(in.substr(0, h.consumed));
  FUZZ_CHECK(same(exact, h), "  the bytes after the header change it\n" + where() + "\n  header only: " + describe(exact));

  if (h.local) return 0;
  unsigned char buf[16];
  bool v4 = inet_pton(AF_INET, h.source_ip.c_str(), buf) == 1;
  bool v6 = !v4 && inet_pton(AF_INET6, h.source_ip.c_str(), buf) == 1;
  FUZZ_CHECK_NAMED("proxy-source-address", (v4 || v6) && std::strlen(h.source_ip.c_str()) == h.source_ip.size(),
                   "  the source address is not exactly an IP address\n" + where());
  // (A source with a NUL inside is the finding above; it cannot round-trip.)
  if (!v2 && std::strlen(h.source_ip.c_str()) == h.source_ip.size()) {
    std::string wire = std::string("PROXY ") + (v4 ? "TCP4 " : "TCP6 ") + h.source_ip + " " +
                       (v4 ? "192.0.2.1" : "2001:db8::1") + " " + std::to_string(h.source_port) + " 25\r\n";
    ProxyHeader back = postern::parse_proxy_header(wire);
    FUZZ_CHECK(back.outcome == Outcome::kComplete && back.source_ip == h.source_ip &&
                   back.source_port == h.source_port && back.consumed == wire.size(),
               "  re-serialized v1 header does not parse back\n" + where() + "\n  wire: \"" + escape(wire) +
                   "\"\n  back: " + describe(back));
  }
  return 0;
}
