// The milter client's configuration vocabulary: the macros it can send
// (with the stage each goes before, Postfix's milter_*_macros defaults) and
// the socket syntax; see milter_filter.h.
#include <asio/ip/address.hpp>

#include "filters/milter/milter_filter.h"
#include "filters/milter/milter_protocol.h"

namespace postern {
namespace {

namespace m = milter;

// The macro vocabulary, with the stage each is sent before (Postfix's
// milter_*_macros defaults).
struct MacroDef {
  const char* name;
  m::MacroStage stage;
};
constexpr MacroDef kMacros[] = {
    {"j", m::MacroStage::kConnect},           {"_", m::MacroStage::kConnect},
    {"{daemon_name}", m::MacroStage::kConnect}, {"{client_addr}", m::MacroStage::kConnect},
    {"{client_port}", m::MacroStage::kConnect}, {"{client_name}", m::MacroStage::kConnect},
    {"{tls_version}", m::MacroStage::kHelo},   {"{cipher}", m::MacroStage::kHelo},
    {"{cert_subject}", m::MacroStage::kHelo},  {"i", m::MacroStage::kMail},
    {"{auth_authen}", m::MacroStage::kMail},   {"{mail_addr}", m::MacroStage::kMail},
    {"{rcpt_addr}", m::MacroStage::kRcpt},
};

}  // namespace

std::string milter_macro_value(std::string_view name, const FilterContext& ctx, const std::string& hostname) {
  const SessionFacts& s = ctx.session;
  if (name == "j") return hostname;
  if (name == "_") return (s.client_name.empty() ? "unknown" : s.client_name) + " [" + s.client_ip + "]";
  if (name == "{daemon_name}") return "postern";
  if (name == "{client_addr}") return s.client_ip;
  if (name == "{client_port}") return std::to_string(s.client_port);
  if (name == "{client_name}") return s.client_name.empty() ? "unknown" : s.client_name;
  if (name == "{tls_version}") return s.tls.active ? s.tls.version : "";
  if (name == "{cipher}") return s.tls.active ? s.tls.cipher : "";
  if (name == "{cert_subject}") return s.tls.peer_subject;
  if (name == "i") return ctx.transaction.id;
  if (name == "{auth_authen}") return s.auth_user;
  if (name == "{mail_addr}") return ctx.transaction.reverse_path.str();
  if (name == "{rcpt_addr}") return ctx.transaction.current_rcpt ? ctx.transaction.current_rcpt->str() : "";
  return "";
}

std::optional<milter::MacroStage> milter_macro_stage(std::string_view name) {
  for (const MacroDef& d : kMacros) {
    if (name == d.name) return d.stage;
  }
  return std::nullopt;
}

const std::vector<std::string>& milter_known_macros() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const MacroDef& d : kMacros) v.emplace_back(d.name);
    return v;
  }();
  return names;
}

std::string parse_milter_socket(std::string_view text, MilterOptions& out) {
  if (text.starts_with("unix:") || text.starts_with("local:")) {
    std::string_view path = text.substr(text.find(':') + 1);
    if (path.empty() || path.front() != '/') return "expected unix:/absolute/path";
    if (path.size() >= 100) return "unix socket path too long";
    out.unix_socket = true;
    out.path = std::string(path);
    return "";
  }
  if (!text.starts_with("inet:") && !text.starts_with("inet6:")) return "expected inet:HOST:PORT or unix:PATH";
  std::string_view rest = text.substr(text.find(':') + 1);
  std::size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos) return "expected inet:HOST:PORT";
  std::string host(rest.substr(0, colon));
  std::string_view port = rest.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host == "localhost") host = "127.0.0.1";
  std::error_code ec;
  asio::ip::make_address(host, ec);
  if (ec) return "HOST must be an IP address or localhost, got \"" + host + "\"";
  unsigned p = 0;
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos ||
      (p = static_cast<unsigned>(std::stoul(std::string(port)))) == 0 || p > 65535) {
    return "PORT must be 1 to 65535";
  }
  out.unix_socket = false;
  out.host = host;
  out.port = static_cast<unsigned short>(p);
  return "";
}

}  // namespace postern
