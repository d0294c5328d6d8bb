// RFC 7208 record syntax (§4.6.1, §5, §6, §7.1 and Appendix A), checked
// term by term, and the translation of a valid record for libspf2.
#include "filters/spf/spf_record.h"
#include "filters/text/ascii.h"

#include <arpa/inet.h>

#include <cctype>

namespace postern {

namespace {

bool alpha(char c) { return std::isalpha(static_cast<unsigned char>(c)) != 0; }
bool digit(char c) { return c >= '0' && c <= '9'; }
bool alnum(char c) { return alpha(c) || digit(c); }

// toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
bool toplabel(std::string_view s) {
  if (s.empty() || !alnum(s.front()) || !alnum(s.back())) return false;
  bool letter = false, hyphen = false;
  for (char c : s) {
    if (alpha(c)) letter = true;
    else if (c == '-') hyphen = true;
    else if (!digit(c)) return false;
  }
  return letter || hyphen;
}

// One macro-expand at s[i] == '%': its length, or 0 when it is not one.
std::size_t macro_expand(std::string_view s, std::size_t i, bool explanation) {
  if (i + 1 >= s.size()) return 0;
  const char n = s[i + 1];
  if (n == '%' || n == '_' || n == '-') return 2;
  if (n != '{' || i + 2 >= s.size()) return 0;
  std::size_t k = i + 2;
  const char letter = ascii::to_lower(s[k++]);
  if (std::string_view("slodiphv").find(letter) == std::string_view::npos &&
      !(explanation && std::string_view("crt").find(letter) != std::string_view::npos)) {
    return 0;
  }
  const std::size_t digits_from = k;
  while (k < s.size() && digit(s[k])) ++k;
  if (k > digits_from) {
    // §7.3: a DIGIT transformer is at least 1 (any length: "%{d0001}" is 1).
    bool nonzero = false;
    for (std::size_t d = digits_from; d < k; ++d) nonzero = nonzero || s[d] != '0';
    if (!nonzero) return 0;
  }
  if (k < s.size() && (s[k] == 'r' || s[k] == 'R')) ++k;
  while (k < s.size() && std::string_view(".-+,/_=").find(s[k]) != std::string_view::npos) ++k;
  if (k >= s.size() || s[k] != '}') return 0;
  return k + 1 - i;
}

// cidr length: "0" / %x31-39 0*N DIGIT, at most `max`.
std::optional<unsigned> cidr_length(std::string_view s, unsigned max) {
  if (s.empty() || s.size() > 3 || (s[0] == '0' && s.size() > 1)) return std::nullopt;
  unsigned v = 0;
  for (char c : s) {
    if (!digit(c)) return std::nullopt;
    v = v * 10 + unsigned(c - '0');
  }
  if (v > max) return std::nullopt;
  return v;
}

// ip4-network: four qnum (0..255, no leading zero).
bool ip4_network(std::string_view s) {
  int parts = 0;
  std::size_t i = 0;
  while (parts < 4) {
    std::size_t from = i;
    while (i < s.size() && digit(s[i])) ++i;
    std::string_view q = s.substr(from, i - from);
    if (q.empty() || q.size() > 3 || (q[0] == '0' && q.size() > 1) || std::stoi(std::string(q)) > 255) return false;
    ++parts;
    if (parts < 4) {
      if (i >= s.size() || s[i] != '.') return false;
      ++i;
    }
  }
  return i == s.size();
}

bool ip6_network(std::string_view s) {
  in6_addr a{};
  return !s.empty() && s.size() < 64 && inet_pton(AF_INET6, std::string(s).c_str(), &a) == 1;
}

// [ip4-cidr-length] [ "/" ip6-cidr-length ] at the end of `s`, taken off it.
bool take_dual_cidr(std::string_view& s, SpfDirective& d) {
  auto tail_digits = [](std::string_view t) {
    std::size_t k = t.size();
    while (k > 0 && digit(t[k - 1])) --k;
    return k;
  };
  std::size_t k = tail_digits(s);
  if (k < s.size() && k >= 2 && s[k - 1] == '/' && s[k - 2] == '/') {
    d.cidr6 = cidr_length(s.substr(k), 128);
    if (!d.cidr6) return false;
    s = s.substr(0, k - 2);
    k = tail_digits(s);
  }
  if (k < s.size() && k >= 1 && s[k - 1] == '/') {
    d.cidr4 = cidr_length(s.substr(k), 32);
    if (!d.cidr4) return false;
    s = s.substr(0, k - 1);
  }
  return true;
}

std::string parse_directive(std::string_view term, SpfRecord& record) {
  SpfDirective d;
  if (std::string_view("+-~?").find(term[0]) != std::string_view::npos) {
    d.qualifier = term[0];
    term.remove_prefix(1);
  }
  std::size_t name_end = 0;
  while (name_end < term.size() && term[name_end] != ':' && term[name_end] != '/') ++name_end;
  const std::string_view name = term.substr(0, name_end);
  std::string_view rest = term.substr(name_end);
  auto domain_after_colon = [&](bool required) -> std::optional<std::string> {
    if (rest.empty()) return required ? std::nullopt : std::optional<std::string>(std::string());
    if (rest[0] != ':' || !valid_domain_spec(rest.substr(1))) return std::nullopt;
    return std::string(rest.substr(1));
  };
  if (ascii::iequals(name, "all")) {
    d.mechanism = SpfMechanism::kAll;
    if (!rest.empty()) return "\"all\" takes no argument";
  } else if (ascii::iequals(name, "include") || ascii::iequals(name, "exists")) {
    d.mechanism = ascii::iequals(name, "include") ? SpfMechanism::kInclude : SpfMechanism::kExists;
    auto domain = domain_after_colon(true);
    if (!domain) return "bad domain-spec in \"" + std::string(name) + "\"";
    d.domain_spec = *domain;
  } else if (ascii::iequals(name, "a") || ascii::iequals(name, "mx")) {
    d.mechanism = ascii::iequals(name, "a") ? SpfMechanism::kA : SpfMechanism::kMx;
    if (!take_dual_cidr(rest, d)) return "bad CIDR length in \"" + std::string(name) + "\"";
    auto domain = domain_after_colon(false);
    if (!domain) return "bad domain-spec in \"" + std::string(name) + "\"";
    d.domain_spec = *domain;
  } else if (ascii::iequals(name, "ptr")) {
    d.mechanism = SpfMechanism::kPtr;
    auto domain = domain_after_colon(false);
    if (!domain) return "bad domain-spec in \"ptr\"";
    d.domain_spec = *domain;
  } else if (ascii::iequals(name, "ip4") || ascii::iequals(name, "ip6")) {
    const bool v6 = ascii::iequals(name, "ip6");
    d.mechanism = v6 ? SpfMechanism::kIp6 : SpfMechanism::kIp4;
    if (rest.empty() || rest[0] != ':') return "\"" + std::string(name) + "\" needs an address";
    rest.remove_prefix(1);
    if (auto slash = rest.find('/'); slash != std::string_view::npos) {
      auto len = cidr_length(rest.substr(slash + 1), v6 ? 128 : 32);
      if (!len) return "bad CIDR length in \"" + std::string(name) + "\"";
      (v6 ? d.cidr6 : d.cidr4) = len;
      rest = rest.substr(0, slash);
    }
    if (!(v6 ? ip6_network(rest) : ip4_network(rest))) return "bad address in \"" + std::string(name) + "\"";
    d.network = std::string(rest);
  } else {
    return "unknown mechanism \"" + std::string(name) + "\"";
  }
  record.directives.push_back(std::move(d));
  return {};
}

std::string parse_modifier(std::string_view name, std::string_view value, SpfRecord& record) {
  const bool redirect = ascii::iequals(name, "redirect"), exp = ascii::iequals(name, "exp");
  if (!redirect && !exp) {
    // unknown-modifier = name "=" macro-string: ignored, but it must parse (§6).
    return valid_macro_string(value, false) ? std::string() : "bad macro-string in modifier \"" + std::string(name) + "\"";
  }
  auto& slot = redirect ? record.redirect : record.exp;
  if (slot) return "\"" + std::string(name) + "=\" twice (RFC 7208 6)";
  if (!valid_domain_spec(value)) return "bad domain-spec in \"" + std::string(name) + "=\"";
  slot = std::string(value);
  return {};
}

}  // namespace

bool SpfRecord::has_all() const {
  for (const auto& d : directives) {
    if (d.mechanism == SpfMechanism::kAll) return true;
  }
  return false;
}

bool is_spf_record(std::string_view txt) {
  return txt.size() >= 6 && ascii::iequals(txt.substr(0, 6), "v=spf1") && (txt.size() == 6 || txt[6] == ' ');
}

bool valid_macro_string(std::string_view s, bool explanation) {
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '%') {
      std::size_t n = macro_expand(s, i, explanation);
      if (n == 0) return false;
      i += n;
    } else if (c < 0x21 || c > 0x7e) {
      return false;
    } else {
      ++i;
    }
  }
  return true;
}

bool valid_domain_spec(std::string_view s) {
  if (s.empty() || !valid_macro_string(s, false)) return false;
  // domain-end = ( "." toplabel [ "." ] ) / macro-expand
  if (s.back() == '}') return true;  // a valid macro-string ending in '}' ends in a macro-expand
  if (s.size() >= 2 && s[s.size() - 2] == '%' && (s.back() == '%' || s.back() == '_' || s.back() == '-')) {
    // "%%", "%_", "%-" are macro-expands too -- unless that '%' is itself the
    // second half of "%%": count the run of '%' before the last character.
    std::size_t run = 0;
    for (std::size_t k = s.size() - 1; k > 0 && s[k - 1] == '%'; --k) ++run;
    if (run % 2 == 1) return true;
  }
  std::string_view t = s;
  if (t.back() == '.') t.remove_suffix(1);
  auto dot = t.rfind('.');
  if (dot == std::string_view::npos) return false;
  return toplabel(t.substr(dot + 1));
}

SpfRecordParse parse_spf_record(std::string_view text) {
  SpfRecordParse out;
  if (!is_spf_record(text)) {
    out.error = "not an SPF record";
    return out;
  }
  SpfRecord record;
  std::size_t pos = 6;
  while (pos < text.size()) {
    if (text[pos] == ' ') {
      ++pos;
      continue;
    }
    std::size_t end = text.find(' ', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view term = text.substr(pos, end - pos);
    pos = end;
    for (char c : term) {
      const unsigned char u = static_cast<unsigned char>(c);
      if (u < 0x21 || u > 0x7e) {
        out.error = "a byte outside printable US-ASCII in a term (RFC 7208 3.1)";
        return out;
      }
    }
    // modifier = name "=" macro-string; name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )
    std::size_t n = 0;
    if (alpha(term[0])) {
      n = 1;
      while (n < term.size() && (alnum(term[n]) || term[n] == '-' || term[n] == '_' || term[n] == '.')) ++n;
    }
    std::string error = n > 0 && n < term.size() && term[n] == '='
                            ? parse_modifier(term.substr(0, n), term.substr(n + 1), record)
                            : parse_directive(term, record);
    if (!error.empty()) {
      out.error = std::move(error);
      return out;
    }
  }
  out.record = std::move(record);
  return out;
}

namespace {

// Literal parts in lower case, macro-expands as written (their case means
// URL-escaping).
std::string lower_literals(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%') {
      std::size_t n = macro_expand(s, i, false);
      if (n == 0) n = 1;
      out.append(s.substr(i, n));
      i += n - 1;
    } else {
      out.push_back(ascii::to_lower(s[i]));
    }
  }
  return out;
}

const char* mechanism_name(SpfMechanism m) {
  switch (m) {
    case SpfMechanism::kAll: return "all";
    case SpfMechanism::kInclude: return "include";
    case SpfMechanism::kA: return "a";
    case SpfMechanism::kMx: return "mx";
    case SpfMechanism::kPtr: return "ptr";
    case SpfMechanism::kIp4: return "ip4";
    case SpfMechanism::kIp6: return "ip6";
    case SpfMechanism::kExists: return "exists";
  }
  return "all";
}

}  // namespace

std::string spf_record_for_libspf2(const SpfRecord& record, bool client_ipv6) {
  std::string out = "v=spf1";
  auto term = [&](char q, std::string_view body) {
    out.push_back(' ');
    out.push_back(q);
    out.append(body);
  };
  for (const SpfDirective& d : record.directives) {
    std::string body = mechanism_name(d.mechanism);
    switch (d.mechanism) {
      case SpfMechanism::kIp4:
        if (d.cidr4 == 0u) {
          term(d.qualifier, "ip4:0.0.0.0/1");
          term(d.qualifier, "ip4:128.0.0.0/1");
          continue;
        }
        body += ':' + d.network + (d.cidr4 ? '/' + std::to_string(*d.cidr4) : "");
        break;
      case SpfMechanism::kIp6:
        if (d.cidr6 == 0u) {
          term(d.qualifier, "ip6:::/1");
          term(d.qualifier, "ip6:8000::/1");
          continue;
        }
        body += ':' + d.network + (d.cidr6 ? '/' + std::to_string(*d.cidr6) : "");
        break;
      case SpfMechanism::kA:
      case SpfMechanism::kMx: {
        const std::optional<unsigned>& mine = client_ipv6 ? d.cidr6 : d.cidr4;
        if (mine == 0u) {
          // Any address of the client's family matches: the DNS layer answers
          // D+suffix with the client's address when D has one (§5.3, §5.4).
          std::string domain = d.domain_spec.empty() ? "%{d}" : lower_literals(d.domain_spec);
          if (domain.back() == '.') domain.pop_back();
          body += ':' + domain + std::string(kSpfAnyAddressSuffix);
          break;
        }
        if (!d.domain_spec.empty()) body += ':' + lower_literals(d.domain_spec);
        if (d.cidr4 && *d.cidr4 != 0) body += '/' + std::to_string(*d.cidr4);
        if (d.cidr6 && *d.cidr6 != 0) body += "//" + std::to_string(*d.cidr6);
        break;
      }
      case SpfMechanism::kAll: break;
      case SpfMechanism::kInclude:
      case SpfMechanism::kPtr:
      case SpfMechanism::kExists:
        if (!d.domain_spec.empty()) body += ':' + lower_literals(d.domain_spec);
        break;
    }
    term(d.qualifier, body);
  }
  if (record.redirect && !record.has_all()) out += " redirect=" + lower_literals(*record.redirect);
  return out;
}

std::string truncate_domain(std::string name) {
  if (!name.empty() && name.back() == '.') name.pop_back();
  while (name.size() > 253) {
    auto dot = name.find('.');
    if (dot == std::string::npos) return {};
    name.erase(0, dot + 1);
  }
  return name;
}

}  // namespace postern
