// libspf2 driven through a custom DNS layer (SPF_dns_server_t) whose lookups
// go to postern's resolver and count terms and void lookups for the whole
// check (RFC 7208 §4.6.4).
#include "filters/spf/spf_checker.h"

#include <cctype>
#include <climits>
#include <algorithm>
#include <cstring>
#include <ctime>
#include <optional>
#include <vector>
#include <map>
#include <initializer_list>
#include <set>
#include <string_view>
#include <mutex>

#include "filters/auth/c_api.h"
#include "filters/spf/spf_record.h"
#include "filters/dns/reverse_name.h"
#include "filters/net/ip_address.h"
#include "filters/text/ascii.h"

namespace postern {

namespace {

using Clock = std::chrono::steady_clock;

// What one check's lookups have seen; the lookup callback finds it through a
// thread-local pointer (libspf2 passes no per-request context to the layer).
struct CheckState {
  Resolver* resolver = nullptr;
  SpfLimits limits;
  Clock::time_point deadline;
  unsigned sequence = 0;          // lookups so far
  unsigned terms = 0;             // lookups caused by DNS terms
  unsigned voids = 0;
  bool first_txt_done = false;
  bool top_has_spf = false;       // the identity's own TXT had a "v=spf1" record
  bool top_dns_error = false;
  bool dns_error = false;
  bool timed_out = false;
  unsigned terms_exceeded_at = 0;  // lookup sequence number, 0 = never
  bool terms_exceeded_by_txt = false;
  unsigned voids_exceeded_at = 0;
  bool voids_exceeded_by_txt = false;
  // Found by postern, not libspf2 (spf_record.h): the first SPF record that
  // does not parse, and the first MX answer over 10 names (§4.6.4).
  unsigned syntax_error_at = 0;
  std::string syntax_error;
  unsigned mx_limit_at = 0;
  // The client, for the CIDR /0 names (kSpfAnyAddressSuffix).
  std::string client_ip;
  bool client_ipv6 = false;
  // Targets of MX and PTR answers: their address lookups belong to the mx /
  // ptr term already counted, not to a term of their own.
  std::multiset<std::string> host_lookups;
  // Of those, the PTR answers' names: a DNS error looking one up skips the
  // name (§5.5), it is no temperror.
  std::multiset<std::string> ptr_hosts;
  // A cache-only attempt (SpfChecker::check_cached): lookups never wait, and
  // one that would have to marks the whole attempt void.
  bool cache_only = false;
  bool missed = false;
  // For the result cache: the shortest TTL among the answers used, and
  // whether a TXT record used the %{t} (time) macro, which no cache may keep.
  std::uint32_t min_ttl = UINT32_MAX;
  bool time_macro = false;
};

thread_local CheckState* tl_state = nullptr;

bool has_time_macro(const std::string& txt) {
  for (std::size_t p = txt.find("%{"); p != std::string::npos; p = txt.find("%{", p + 2)) {
    if (p + 2 < txt.size() && (txt[p + 2] == 't' || txt[p + 2] == 'T')) return true;
  }
  return false;
}

// One lookup of a check: waiting on the resolver, or in a cache-only attempt
// from the cache alone (nullopt on a miss, which voids the attempt).
std::optional<DnsAnswer> fetch(CheckState& st, const std::string& name, DnsType type) {
  std::optional<DnsAnswer> a;
  if (!st.cache_only) a = st.resolver->query_blocking(name, type);
  else a = st.resolver->answer_now(name, type);
  if (!a) {
    st.missed = true;
    return a;
  }
  st.min_ttl = std::min(st.min_ttl, a->ttl);
  if (type == DnsType::kTxt) {
    for (const std::string& r : a->records) st.time_macro = st.time_macro || has_time_macro(r);
  }
  return a;
}

SPF_dns_rr_t* make_rr(SPF_dns_server_t* server, const char* domain, ns_type type, int herrno,
                      std::uint32_t ttl = 0) {
  return SPF_dns_rr_new_init(server, domain, type, static_cast<int>(ttl), herrno);
}

SPF_dns_rr_t* lookup(SPF_dns_server_t* server, const char* domain, ns_type type, int /*should_cache*/) {
  CheckState* st = tl_state;
  // The SPF RR type (99) is obsolete (RFC 7208 §3.1): never queried.
  if (!st || type == ns_t_spf) return make_rr(server, domain, type, NO_DATA);
  DnsType t;
  switch (type) {
    case ns_t_a: t = DnsType::kA; break;
    case ns_t_aaaa: t = DnsType::kAaaa; break;
    case ns_t_mx: t = DnsType::kMx; break;
    case ns_t_txt: t = DnsType::kTxt; break;
    case ns_t_ptr: t = DnsType::kPtr; break;
    default: return make_rr(server, domain, type, NO_DATA);
  }
  const std::string asked = ascii::domain_key(domain ? domain : "");
  // a/0 and mx/0 of the client's family (spf_record_for_libspf2): look up
  // the name before the suffix; any address of the family is the client's.
  const bool any_address = asked.size() > kSpfAnyAddressSuffix.size() && asked.ends_with(kSpfAnyAddressSuffix);
  const std::string name = any_address ? asked.substr(0, asked.size() - kSpfAnyAddressSuffix.size()) : asked;
  const unsigned seq = ++st->sequence;
  bool top = false;
  bool counted = true;
  bool ptr_host = false;
  if (t == DnsType::kTxt && !st->first_txt_done) {
    st->first_txt_done = true;
    top = true;
    counted = false;
  } else if (t == DnsType::kA || t == DnsType::kAaaa) {
    if (auto it = st->host_lookups.find(asked); it != st->host_lookups.end()) {
      st->host_lookups.erase(it);
      counted = false;
    }
    if (auto it = st->ptr_hosts.find(asked); it != st->ptr_hosts.end()) {
      st->ptr_hosts.erase(it);
      ptr_host = true;
    }
  }
  if (counted && ++st->terms > st->limits.dns_terms) {
    if (!st->terms_exceeded_at) {
      st->terms_exceeded_at = seq;
      st->terms_exceeded_by_txt = t == DnsType::kTxt;
    }
    return make_rr(server, domain, type, HOST_NOT_FOUND);
  }
  if (Clock::now() >= st->deadline) {
    st->timed_out = true;
    return make_rr(server, domain, type, TRY_AGAIN);
  }
  std::optional<DnsAnswer> fetched = fetch(*st, name, t);
  if (!fetched) return make_rr(server, domain, type, TRY_AGAIN);
  DnsAnswer& a = *fetched;
  int herrno = NETDB_SUCCESS;
  switch (a.status) {
    case DnsStatus::kOk: break;
    case DnsStatus::kNxDomain: herrno = HOST_NOT_FOUND; break;
    case DnsStatus::kNoData: herrno = NO_DATA; break;
    case DnsStatus::kTimeout: st->timed_out = !ptr_host || st->timed_out; [[fallthrough]];
    case DnsStatus::kServFail: herrno = ptr_host ? HOST_NOT_FOUND : TRY_AGAIN; break;
  }
  if (herrno == TRY_AGAIN || (ptr_host && (a.status == DnsStatus::kTimeout || a.status == DnsStatus::kServFail))) {
    st->dns_error = true;
    if (top) st->top_dns_error = true;
  }
  if ((herrno == HOST_NOT_FOUND || herrno == NO_DATA) && counted && ++st->voids > st->limits.void_lookups &&
      !st->voids_exceeded_at) {
    st->voids_exceeded_at = seq;
    st->voids_exceeded_by_txt = t == DnsType::kTxt;
  }
  // §4.6.4: an MX answer of more than 10 names makes the mx term a permerror.
  if (t == DnsType::kMx && herrno == NETDB_SUCCESS && a.records.size() > 10 && !st->mx_limit_at) {
    st->mx_limit_at = seq;
  }
  // §4.6.4: of a PTR answer, the first 10 names only (libspf2 would make
  // the 11th a permerror).
  if (t == DnsType::kPtr && a.records.size() > 10) a.records.resize(10);
  if (any_address && herrno == NETDB_SUCCESS && (t == DnsType::kA || t == DnsType::kAaaa) &&
      (t == DnsType::kAaaa) == st->client_ipv6) {
    a.records = {st->client_ip};
  }
  SPF_dns_rr_t* rr = make_rr(server, domain, type, herrno, a.ttl);
  if (herrno != NETDB_SUCCESS || !rr) return rr;
  int n = 0;
  for (const auto& rec : a.records) {
    std::string value = rec;
    if (t == DnsType::kMx) {
      auto sp = value.find(' ');
      value = sp == std::string::npos ? value : value.substr(sp + 1);
    }
    // Host names compare without case (libspf2 compares ptr: by bytes).
    if (t == DnsType::kMx || t == DnsType::kPtr) value = ascii::domain_key(value);
    if (t == DnsType::kMx && any_address) value += kSpfAnyAddressSuffix;
    if (t == DnsType::kTxt && is_spf_record(value)) {
      if (top) st->top_has_spf = true;
      // Parsed strictly here; libspf2 evaluates what parses, rewritten into
      // a form it evaluates by RFC 7208 (spf_record.h). A record that does
      // not parse is a permerror (§4.6): libspf2 gets an empty one.
      SpfRecordParse parsed = parse_spf_record(value);
      if (!parsed.record) {
        if (!st->syntax_error_at) {
          st->syntax_error_at = seq;
          st->syntax_error = parsed.error;
        }
        value = "v=spf1";
      } else {
        value = spf_record_for_libspf2(*parsed.record, st->client_ipv6);
      }
    }
    if (t == DnsType::kMx || t == DnsType::kPtr) st->host_lookups.insert(value);
    if (t == DnsType::kPtr) st->ptr_hosts.insert(value);
    std::size_t size = t == DnsType::kA ? sizeof(in_addr) : t == DnsType::kAaaa ? sizeof(in6_addr) : value.size() + 1;
    if (SPF_dns_rr_buf_realloc(rr, n, size) != SPF_E_SUCCESS) break;
    if (t == DnsType::kA) {
      if (inet_pton(AF_INET, value.c_str(), &rr->rr[n]->a) != 1) continue;
    } else if (t == DnsType::kAaaa) {
      if (inet_pton(AF_INET6, value.c_str(), &rr->rr[n]->aaaa) != 1) continue;
    } else {
      std::memcpy(rr->rr[n]->txt, value.c_str(), value.size() + 1);
    }
    ++n;
  }
  rr->num_rr = n;
  return rr;
}

void quiet(const char*, int, const char*) {}

// The DNS layer is stateless (state is per thread); one for the process.
SPF_dns_server_t* dns_layer() {
  static SPF_dns_server_t* layer = [] {
    SPF_warning_handler = quiet;
    SPF_info_handler = quiet;
    SPF_debug_handler = quiet;
    auto* l = static_cast<SPF_dns_server_t*>(std::calloc(1, sizeof(SPF_dns_server_t)));
    l->destroy = nullptr;  // shared: never freed by SPF_server_free
    l->lookup = lookup;
    l->name = "postern";
    return l;
  }();
  return layer;
}

// One SPF_server_t per worker thread.
struct ThreadServer {
  SPF_server_t* server = nullptr;
  ~ThreadServer() {
    if (server) SPF_server_free(server);
  }
  SPF_server_t* get(const std::string& receiver) {
    if (!server) {
      server = SPF_server_new_dns(dns_layer(), 0);
      if (server) {
        SPF_server_set_max_dns_mech(server, 10);
        SPF_server_set_max_dns_mx(server, 10);
        SPF_server_set_max_dns_ptr(server, 10);
      }
    }
    if (server && !receiver.empty()) SPF_server_set_rec_dom(server, receiver.c_str());
    return server;
  }
};

SpfResult map_result(SPF_result_t r) {
  switch (r) {
    case SPF_RESULT_PASS: return SpfResult::kPass;
    case SPF_RESULT_FAIL: return SpfResult::kFail;
    case SPF_RESULT_SOFTFAIL: return SpfResult::kSoftfail;
    case SPF_RESULT_NEUTRAL: return SpfResult::kNeutral;
    case SPF_RESULT_NONE: return SpfResult::kNone;
    case SPF_RESULT_TEMPERROR: return SpfResult::kTemperror;
    case SPF_RESULT_PERMERROR: return SpfResult::kPermerror;
    case SPF_RESULT_INVALID: break;
  }
  return SpfResult::kPermerror;  // refined by the caller
}


// RFC 7208 §7 macro expansion, for exp= (libspf2 mangles explanation text:
// spaces become '%' and macros stay unexpanded).
struct MacroVars {
  std::string sender, local, sender_domain, domain, ip, helo, receiver;
  std::string validated = "unknown";  // %{p}
};

std::string url_escape(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
  }
  return out;
}

std::string ip_macro(const std::string& ip, bool readable) {
  in6_addr a6{};
  if (ip.find(':') == std::string::npos || readable || inet_pton(AF_INET6, ip.c_str(), &a6) != 1) return ip;
  // Upper-case nibbles, as RFC 7208 §7.4's example and the openspf suite.
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (int i = 0; i < 16; ++i) {
    if (i) out.push_back('.');
    out.push_back(hex[a6.s6_addr[i] >> 4]);
    out.push_back('.');
    out.push_back(hex[a6.s6_addr[i] & 15]);
  }
  return out;
}

std::optional<std::string> expand_macros(std::string_view s, const MacroVars& v, bool explanation) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c != '%') {
      out.push_back(c);
      continue;
    }
    if (++i >= s.size()) return std::nullopt;
    if (s[i] == '%') { out.push_back('%'); continue; }
    if (s[i] == '_') { out.push_back(' '); continue; }
    if (s[i] == '-') { out += "%20"; continue; }
    if (s[i] != '{') return std::nullopt;
    auto close = s.find('}', i);
    if (close == std::string_view::npos || close == i + 1) return std::nullopt;
    std::string_view spec = s.substr(i + 1, close - i - 1);
    i = close;
    char letter = spec[0];
    const bool upper = ascii::is_upper(letter);
    std::string value;
    switch (ascii::to_lower(letter)) {
      case 's': value = v.sender; break;
      case 'l': value = v.local; break;
      case 'o': value = v.sender_domain; break;
      case 'd': value = v.domain; break;
      case 'i': value = ip_macro(v.ip, false); break;
      case 'p': value = v.validated; break;
      case 'v': value = v.ip.find(':') == std::string::npos ? "in-addr" : "ip6"; break;
      case 'h': value = v.helo; break;
      case 'c': if (!explanation) return std::nullopt; value = v.ip; break;
      case 'r': if (!explanation) return std::nullopt; value = v.receiver; break;
      case 't': if (!explanation) return std::nullopt; value = std::to_string(std::time(nullptr)); break;
      default: return std::nullopt;
    }
    std::size_t k = 1;
    unsigned keep = 0;
    while (k < spec.size() && std::isdigit(static_cast<unsigned char>(spec[k]))) {
      keep = std::min(keep * 10 + unsigned(spec[k++] - '0'), 1000u);  // over 128 parts: all of them
    }
    bool reverse = false;
    if (k < spec.size() && (spec[k] == 'r' || spec[k] == 'R')) { reverse = true; ++k; }
    std::string delims(spec.substr(k));
    for (char d : delims) {
      if (std::string_view(".-+,/_=").find(d) == std::string_view::npos) return std::nullopt;
    }
    if (delims.empty()) delims = ".";
    std::vector<std::string> parts(1);
    for (char ch : value) {
      if (delims.find(ch) != std::string::npos) parts.emplace_back();
      else parts.back().push_back(ch);
    }
    if (reverse) std::reverse(parts.begin(), parts.end());
    std::size_t from = keep && keep < parts.size() ? parts.size() - keep : 0;
    std::string joined;
    for (std::size_t p = from; p < parts.size(); ++p) {
      if (p > from) joined.push_back('.');
      joined += parts[p];
    }
    out += upper ? url_escape(joined) : joined;
  }
  return out;
}

// %{p} (§7.3): a name of the client's PTR records (10 at most) whose
// address records lead back to the client; the domain itself or a subdomain
// of it first; "unknown" when none does.
std::string validated_name(CheckState& st, const MacroVars& v) {
  std::optional<DnsAnswer> ptr = fetch(st, reverse_name(v.ip), DnsType::kPtr);
  if (!ptr || ptr->status != DnsStatus::kOk) return "unknown";
  const DnsType type = v.ip.find(':') == std::string::npos ? DnsType::kA : DnsType::kAaaa;
  std::string first;
  std::size_t tried = 0;
  for (const std::string& host : ptr->records) {
    if (++tried > 10 || Clock::now() >= st.deadline) break;
    std::optional<DnsAnswer> addrs = fetch(st, host, type);
    if (!addrs || addrs->status != DnsStatus::kOk) continue;
    bool back = false;
    for (const std::string& a : addrs->records) back = back || canonical_ip(a) == v.ip;
    if (!back) continue;
    const std::string name = ascii::domain_key(host);
    if (name == v.domain || (name.size() > v.domain.size() && name.ends_with("." + v.domain))) return name;
    if (first.empty()) first = name;
  }
  return first.empty() ? "unknown" : first;
}

// explanation-string = *( macro-string / SP ), macros c, r and t included.
bool valid_explanation_string(std::string_view text) {
  std::size_t pos = 0;
  while (pos <= text.size()) {
    std::size_t sp = text.find(' ', pos);
    if (sp == std::string_view::npos) sp = text.size();
    if (!valid_macro_string(text.substr(pos, sp - pos), true)) return false;
    pos = sp + 1;
  }
  return true;
}

// The one SPF record of `domain`, parsed; nullopt when there is none, more
// than one, or it does not parse.
std::optional<SpfRecord> fetch_record(CheckState& st, const std::string& domain) {
  std::optional<DnsAnswer> txt = fetch(st, domain, DnsType::kTxt);
  if (!txt || txt->status != DnsStatus::kOk) return std::nullopt;
  std::optional<SpfRecord> record;
  for (const std::string& r : txt->records) {
    if (!is_spf_record(r)) continue;
    if (record) return std::nullopt;
    SpfRecordParse parsed = parse_spf_record(r);
    if (!parsed.record) return std::nullopt;
    record = std::move(parsed.record);
  }
  return record;
}

// The explanation of a fail (§6.2): exp= of the record that gave the result
// (following redirect=, never include:), its target's single TXT record
// macro-expanded. Empty -- "as if no exp= was given" -- when any step fails:
// a time-out here never changes the result. The target name is cut to 253
// octets from the left (§7.3); an explanation that is not US-ASCII or not a
// valid explanation-string is none.
std::string explanation(CheckState& st, MacroVars v) {
  std::string domain = v.domain;
  for (int hops = 0; hops < 10 && Clock::now() < st.deadline; ++hops) {
    std::optional<SpfRecord> record = fetch_record(st, domain);
    if (!record) return {};
    v.domain = domain;
    if (!record->has_all() && record->redirect) {
      auto next = expand_macros(*record->redirect, v, false);
      if (!next) return {};
      domain = ascii::domain_key(truncate_domain(*next));
      continue;
    }
    if (!record->exp) return {};
    auto target = expand_macros(*record->exp, v, false);
    if (!target) return {};
    const std::string name = truncate_domain(*target);
    if (!dns_name_valid(name)) return {};
    std::optional<DnsAnswer> text = fetch(st, name, DnsType::kTxt);
    if (!text || text->status != DnsStatus::kOk || text->records.size() != 1) {
      if (text && (text->status == DnsStatus::kTimeout || text->status == DnsStatus::kServFail)) st.dns_error = true;
      return {};
    }
    const std::string& raw = text->records[0];
    for (char c : raw) {
      if (static_cast<unsigned char>(c) > 0x7e) return {};  // §6.2: US-ASCII only
    }
    if (!valid_explanation_string(raw)) return {};
    if (raw.find("%{p") != std::string::npos || raw.find("%{P") != std::string::npos) {
      v.validated = validated_name(st, v);
    }
    auto expanded = expand_macros(raw, v, true);
    if (!expanded) return {};
    std::string printable;
    for (char c : *expanded) {
      if (static_cast<unsigned char>(c) >= 32 && c != 127) printable.push_back(c);
    }
    return printable.substr(0, 512);
  }
  return {};
}

}  // namespace

namespace {

// SPF_request_query_mailfrom() without its first step: libspf2 answers "pass"
// for any loopback client ("localhost is always allowed"), which RFC 7208
// does not have; behind a proxy on the same host without PROXY that passes
// every spoofed domain (and DMARC through SPF alignment). The rest is
// libspf2's own sequence, through its public API. Clients that must skip
// the checks are listed in the configuration instead.
SPF_errcode_t query_mailfrom_no_localhost(SPF_request_t* req, SPF_response_t** respp) {
  *respp = SPF_response_new(req);
  if (!*respp) return SPF_E_NO_MEMORY;
  req->cur_dom = req->use_helo ? req->helo_dom : req->env_from_dp;
  SPF_record_t* record = nullptr;
  SPF_errcode_t err = SPF_server_get_record(req->spf_server, req, *respp, &record);
  if (err != SPF_E_SUCCESS) {
    if (record) SPF_record_free(record);
    SPF_i_done(*respp, (*respp)->result, (*respp)->reason, (*respp)->err);
    return err;
  }
  (*respp)->spf_record_exp = record;
  err = SPF_record_interpret(record, req, *respp, 0);
  SPF_record_free(record);
  (*respp)->spf_record_exp = nullptr;
  return err;
}

}  // namespace

SpfOutcome SpfChecker::check(const SpfQuery& query, std::chrono::milliseconds budget) const {
  bool missed = false;
  return run(query, budget, false, missed);
}

std::optional<SpfOutcome> SpfChecker::check_cached(const SpfQuery& query) const {
  bool missed = false;
  SpfOutcome out = run(query, std::chrono::milliseconds(1000), true, missed);
  if (missed) return std::nullopt;
  return out;
}

SpfOutcome SpfChecker::run(const SpfQuery& q, std::chrono::milliseconds budget, bool cache_only, bool& missed) const {
  SpfOutcome out;
  out.helo = q.helo;
  out.client_ip = canonical_ip(q.client_ip);
  if (q.sender.empty()) {
    out.identity = "helo";
    out.domain = ascii::domain_key(q.helo);
    out.sender = "postmaster@" + out.domain;
  } else {
    out.identity = "mailfrom";
    out.sender = q.sender;
    auto at = q.sender.rfind('@');
    out.domain = ascii::domain_key(at == std::string::npos ? q.sender : q.sender.substr(at + 1));
    // §4.3: a sender without a local-part is postmaster@domain.
    if (at == std::string::npos || at == 0) out.sender = "postmaster@" + out.domain;
  }
  if (out.client_ip.empty()) {
    out.reason = "client address unknown";
    return out;
  }
  // §4.3: an identity that is not a domain name (an address literal, no dot
  // in a HELO) yields none.
  if (out.domain.empty() || out.domain.front() == '[' || !dns_name_valid(out.domain) ||
      (q.sender.empty() && out.domain.find('.') == std::string::npos)) {
    out.reason = "identity is not a domain name";
    return out;
  }

  const std::string key = out.client_ip + '\n' + q.helo + '\n' + q.sender + '\n' + q.receiver;
  if (std::optional<SpfOutcome> hit = results_.get(key)) return std::move(*hit);  // already a copy: no second one

  thread_local ThreadServer thread_server;
  SPF_server_t* server = thread_server.get(q.receiver);
  if (!server) {
    out.result = SpfResult::kTemperror;
    out.reason = "libspf2: out of memory";
    return out;
  }
  CheckState st;
  st.resolver = resolver_.get();
  st.limits = limits_;
  st.deadline = Clock::now() + budget;
  st.cache_only = cache_only;
  st.client_ip = out.client_ip;
  st.client_ipv6 = out.client_ip.find(':') != std::string::npos;
  tl_state = &st;

  SPF_request_t* req = SPF_request_new(server);
  SPF_response_t* resp = nullptr;
  bool ok = req != nullptr;
  if (ok) {
    ok = (out.client_ip.find(':') == std::string::npos
              ? SPF_request_set_ipv4_str(req, out.client_ip.c_str())
              : SPF_request_set_ipv6_str(req, out.client_ip.c_str())) == SPF_E_SUCCESS;
  }
  if (ok && !q.helo.empty()) SPF_request_set_helo_dom(req, q.helo.c_str());
  if (ok) ok = SPF_request_set_env_from(req, out.sender.c_str()) == 0;
  SPF_errcode_t err = SPF_E_SUCCESS;
  if (ok) err = query_mailfrom_no_localhost(req, &resp);
  tl_state = nullptr;

  SPF_result_t raw = resp ? SPF_response_result(resp) : SPF_RESULT_INVALID;
  out.result = map_result(raw);
  if (resp) {
    if (const char* c = SPF_response_get_header_comment(resp)) out.reason = c;
    for (int i = 0; i < SPF_response_messages(resp); ++i) {
      SPF_error_t* m = SPF_response_message(resp, i);
      if (m && SPF_error_errorp(m) && SPF_error_message(m)) {
        if (!out.reason.empty()) out.reason += "; ";
        out.reason += SPF_error_message(m);
      }
    }
  } else if (!ok) {
    out.reason = "libspf2 refused the request";
  }

  if (raw == SPF_RESULT_INVALID) {
    out.result = (st.dns_error || st.timed_out || err == SPF_E_DNS_ERROR) ? SpfResult::kTemperror
                                                                         : SpfResult::kPermerror;
  }
  // libspf2 answers "none" for a record it cannot compile: that is a permerror
  // (§4.6); and "none" when the identity's TXT lookup failed: a temperror (§4.4).
  if (out.result == SpfResult::kNone && st.top_dns_error) out.result = SpfResult::kTemperror;
  if (out.result == SpfResult::kNone && st.top_has_spf) {
    out.result = SpfResult::kPermerror;
    if (out.reason.empty()) out.reason = "SPF record does not parse";
  }
  // A limit crossed during evaluation ends it with permerror (§4.6.4) --
  // except by the exp= lookup after a fail, which only loses the explanation.
  auto limit_hit = [&](unsigned at, bool by_txt) {
    return at != 0 && !(out.result == SpfResult::kFail && by_txt && at == st.sequence);
  };
  // Whichever permanent error postern found first ends it: a record that
  // does not parse (§4.6), an MX answer over 10 names (§4.6.4).
  const unsigned postern_error_at =
      st.syntax_error_at && st.mx_limit_at ? std::min(st.syntax_error_at, st.mx_limit_at)
                                           : std::max(st.syntax_error_at, st.mx_limit_at);
  const unsigned limit_at = std::min(st.terms_exceeded_at ? st.terms_exceeded_at : UINT_MAX,
                                     st.voids_exceeded_at ? st.voids_exceeded_at : UINT_MAX);
  if (postern_error_at && postern_error_at < limit_at) {
    out.result = SpfResult::kPermerror;
    out.reason = postern_error_at == st.syntax_error_at
                     ? "SPF record syntax: " + st.syntax_error + " (RFC 7208 4.6)"
                     : "more than 10 MX names (RFC 7208 4.6.4)";
  } else if (limit_hit(st.terms_exceeded_at, st.terms_exceeded_by_txt)) {
    out.result = SpfResult::kPermerror;
    out.reason = "more than " + std::to_string(limits_.dns_terms) + " DNS-querying terms (RFC 7208 4.6.4)";
  } else if (limit_hit(st.voids_exceeded_at, st.voids_exceeded_by_txt)) {
    out.result = SpfResult::kPermerror;
    out.reason = "more than " + std::to_string(limits_.void_lookups) + " void lookups (RFC 7208 4.6.4)";
  } else if (st.timed_out && out.result != SpfResult::kPass) {
    out.result = SpfResult::kTemperror;
    out.reason = "DNS time-out";
  }
  if (resp) SPF_response_free(resp);
  if (req) SPF_request_free(req);
  if (out.result == SpfResult::kFail) {
    auto at = out.sender.rfind('@');
    MacroVars v{out.sender, out.sender.substr(0, at), out.domain, out.domain, out.client_ip, q.helo, q.receiver};
    out.explanation = explanation(st, v);
  }
  missed = st.missed;
  // The same inputs and the same DNS answers give the same outcome: keep it
  // as long as every answer it used is valid. Not an outcome that a DNS
  // failure, a time-out (the explanation's included) or a cache-only miss
  // shaped, nor one from a record using the time.
  if (!st.missed && !st.dns_error && !st.timed_out && !st.time_macro && out.result != SpfResult::kTemperror &&
      st.min_ttl > 0 && st.min_ttl != UINT32_MAX && Clock::now() < st.deadline) {
    results_.put(key, out, std::chrono::seconds(st.min_ttl));
  }
  return out;
}

std::optional<SpfOutcome> SpfResultCache::get(const std::string& key) {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return std::nullopt;
  if (Clock::now() >= it->second.expires) {
    entries_.erase(it);
    return std::nullopt;
  }
  ++hits_;
  return it->second.outcome;
}

void SpfResultCache::put(const std::string& key, const SpfOutcome& outcome, std::chrono::seconds ttl) {
  if (capacity_ == 0) return;
  std::lock_guard lock(mutex_);
  const auto now = Clock::now();
  if (entries_.size() >= capacity_ && !entries_.count(key)) {
    std::erase_if(entries_, [&](const auto& e) { return now >= e.second.expires; });
    if (entries_.size() >= capacity_) entries_.clear();  // bounded, not LRU: a full cache starts over
  }
  entries_.insert_or_assign(key, Entry{outcome, now + ttl});
}

std::uint64_t SpfResultCache::hits() const {
  std::lock_guard lock(mutex_);
  return hits_;
}

std::string received_spf_value(const SpfOutcome& spf, const std::string& receiver) {
  // §9.1: result (comment) key=value; ... Built in one string, piece by piece
  // (every message gets one: a chain of temporaries cost ~10,000
  // instructions a message, bench/README.md).
  std::string v;
  v.reserve(160 + 2 * receiver.size() + 3 * spf.sender.size() + 2 * spf.client_ip.size() + spf.helo.size() +
            spf.identity.size());
  // The comment holds the sender's text: printable only, and "(", ")" and
  // "\\" as quoted-pairs (RFC 5322 §3.2.2 ccontent), so a MAIL FROM like
  // "x) client-ip=...; y=("@example.com cannot close it and add key=value
  // pairs (RFC 7208 §9.1).
  auto comment = [&v](std::initializer_list<std::string_view> parts) {
    for (std::string_view part : parts) {
      std::size_t run = 0;  // start of the octets appended as they are
      for (std::size_t i = 0; i < part.size(); ++i) {
        const char c = part[i];
        const bool control = static_cast<unsigned char>(c) < 32 || c == 127;
        if (!control && c != '(' && c != ')' && c != '\\') continue;
        v.append(part.substr(run, i - run));
        if (control) {
          v.push_back(' ');
        } else {
          v.push_back('\\');
          v.push_back(c);
        }
        run = i + 1;
      }
      v.append(part.substr(run));
    }
  };
  // Values that are not dot-atoms are quoted.
  auto quoted = [&v](std::string_view s) {
    v.push_back('"');
    for (char c : s) {
      if (c == '"' || c == '\\') v.push_back('\\');
      if (static_cast<unsigned char>(c) >= 32 && c != 127) v.push_back(c);
    }
    v.push_back('"');
  };
  const std::string& sender = spf.sender;
  const std::string& ip = spf.client_ip;
  v.append(spf_result_name(spf.result)).append(" (");
  comment({receiver, ": "});
  switch (spf.result) {
    case SpfResult::kPass: comment({"domain of ", sender, " designates ", ip, " as permitted sender"}); break;
    case SpfResult::kFail: comment({"domain of ", sender, " does not designate ", ip, " as permitted sender"}); break;
    case SpfResult::kSoftfail:
      comment({"domain of transitioning ", sender, " does not designate ", ip, " as permitted sender"});
      break;
    case SpfResult::kNeutral: comment({ip, " is neither permitted nor denied by domain of ", sender}); break;
    case SpfResult::kNone: comment({"domain of ", sender, " does not designate permitted sender hosts"}); break;
    case SpfResult::kTemperror: comment({"error in processing during lookup of ", sender, ": DNS error"}); break;
    case SpfResult::kPermerror: comment({"permanent error in processing domain of ", sender}); break;
  }
  v.append(") client-ip=").append(ip).append(";");
  v.append(" envelope-from=");
  quoted(sender);
  v.append(";");
  if (!spf.helo.empty()) {
    v.append(" helo=");
    quoted(spf.helo);
    v.append(";");
  }
  v.append(" receiver=").append(receiver).append(";");
  v.append(" identity=").append(spf.identity).append(";");
  return v;
}

}  // namespace postern
