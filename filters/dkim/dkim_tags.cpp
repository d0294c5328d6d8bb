// DKIM tag-lists and the checks libopendkim leaves out; see dkim_tags.h.
#include "filters/dkim/dkim_tags.h"
#include "filters/text/ascii.h"

#include <algorithm>
#include <array>

namespace postern {

namespace {

constexpr bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
constexpr bool is_alnum(char c) { return is_alpha(c) || (c >= '0' && c <= '9'); }

// `v` without its white space, copied run by run (a b= value is ~350
// octets, broken by the folding white space of its field).
std::string compact(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  std::size_t i = 0;
  while (i < v.size()) {
    std::size_t run = i;
    while (run < v.size() && !ascii::is_space(v[run])) ++run;
    out.append(v.data() + i, run - i);
    i = run;
    while (i < v.size() && ascii::is_space(v[i])) ++i;
  }
  return out;
}

// The octet classes base64_ok reads: one table look-up per octet of the
// ~400 of b= and bh= (a chain of comparisons cost 16 instructions an octet).
enum : unsigned char { kNotBase64, kBase64, kPad, kSpace };
constexpr std::array<unsigned char, 256> kBase64Class = [] {
  std::array<unsigned char, 256> t{};
  for (int c = 0; c < 256; ++c) {
    const char ch = static_cast<char>(c);
    if (is_alnum(ch) || ch == '+' || ch == '/') t[c] = kBase64;
    else if (ch == '=') t[c] = kPad;
    else if (ascii::is_space(ch)) t[c] = kSpace;
  }
  return t;
}();

// base64string (§2.4) once white space is removed: the alphabet, at most
// two "=" at the end, a multiple of four octets. Read in place.
bool base64_ok(std::string_view v) {
  std::size_t n = 0, pad = 0, i = 0;
  // The alphabet and white space, up to the first "=" (or anything else)...
  for (; i < v.size(); ++i) {
    const unsigned char cls = kBase64Class[static_cast<unsigned char>(v[i])];
    if (cls == kBase64) ++n;
    else if (cls != kSpace) break;
  }
  // ...then only "=" and white space.
  for (; i < v.size(); ++i) {
    const unsigned char cls = kBase64Class[static_cast<unsigned char>(v[i])];
    if (cls == kPad) {
      ++pad;
      ++n;
    } else if (cls != kSpace) {
      return false;
    }
  }
  return n > 0 && n % 4 == 0 && pad <= 2;
}

// The tag named `name`. Names are mostly one or two letters, so the first
// octet decides before a comparison of the whole name (parse_dkim_tag_list
// looks up every tag among those before it: ~80 look-ups a signature).
const DkimTag* find(const std::vector<DkimTag>& tags, std::string_view name) {
  if (name.empty()) return nullptr;
  for (const DkimTag& t : tags) {
    if (t.name.size() == name.size() && t.name[0] == name[0] && t.name == name) return &t;
  }
  return nullptr;
}

// The items of a colon-separated list value (q=, t=, s=, k= lists).
bool list_has(std::string_view list, std::string_view item) {
  while (true) {
    const std::size_t colon = list.find(':');
    if (ascii::iequals(ascii::trim(list.substr(0, colon)), item)) return true;
    if (colon == std::string_view::npos) return false;
    list.remove_prefix(colon + 1);
  }
}

}  // namespace

std::optional<std::vector<DkimTag>> parse_dkim_tag_list(std::string_view list) {
  std::vector<DkimTag> out;
  out.reserve(16);  // a DKIM-Signature has 10-14 tags: one allocation
  while (true) {
    const std::size_t semi = list.find(';');
    const std::string_view item = ascii::trim(list.substr(0, semi));
    const bool last = semi == std::string_view::npos;
    if (!item.empty()) {
      const std::size_t eq = item.find('=');
      if (eq == std::string_view::npos) return std::nullopt;
      const std::string_view name = ascii::trim(item.substr(0, eq));
      if (name.empty() || !is_alpha(name[0])) return std::nullopt;
      for (char c : name) {
        if (!is_alnum(c) && c != '_') return std::nullopt;
      }
      if (find(out, name)) return std::nullopt;  // §3.2: a duplicated tag invalidates the list
      out.push_back(DkimTag{name, ascii::trim(item.substr(eq + 1))});
    } else if (!last) {
      return std::nullopt;  // an empty item is not a tag-spec; only the last may be empty (a trailing ';')
    }
    if (last) break;
    list.remove_prefix(semi + 1);
  }
  return out;
}

std::string dkim_tag_value(std::string_view list, std::string_view name) {
  const auto tags = parse_dkim_tag_list(list);
  return tags ? dkim_tag_value(*tags, name) : std::string();
}

std::string dkim_tag_value(const std::vector<DkimTag>& tags, std::string_view name) {
  const DkimTag* t = find(tags, name);
  return t ? compact(t->value) : std::string();
}

bool dkim_tag_starts_with(const std::vector<DkimTag>& tags, std::string_view name, std::string_view prefix) {
  const DkimTag* t = find(tags, name);
  if (!t) return false;
  std::size_t matched = 0;
  for (char c : t->value) {
    if (matched == prefix.size()) break;
    if (ascii::is_space(c)) continue;
    if (c != prefix[matched]) return false;
    ++matched;
  }
  return matched == prefix.size();
}

std::string dkim_signature_problem(std::string_view value) { return dkim_signature_problem(parse_dkim_tag_list(value)); }

std::string dkim_signature_problem(const std::optional<std::vector<DkimTag>>& tags) {
  if (!tags) return "malformed or duplicated tag (RFC 6376 3.2)";
  if (const DkimTag* v = find(*tags, "v"); v && v->value != "1") return "unsupported v= (RFC 6376 3.5)";
  if (const DkimTag* b = find(*tags, "b"); !b || !base64_ok(b->value)) return "b= is not base64 (RFC 6376 3.5)";
  if (const DkimTag* bh = find(*tags, "bh"); !bh || !base64_ok(bh->value)) return "bh= is not base64 (RFC 6376 3.5)";
  if (const DkimTag* q = find(*tags, "q"); q && !list_has(q->value, "dns/txt")) {
    return "unsupported query method q= (RFC 6376 3.5)";
  }
  if (const DkimTag* l = find(*tags, "l")) {
    const std::string n = compact(l->value);
    if (n.empty() || n.size() > 76 || n.find_first_not_of("0123456789") != std::string::npos) {
      return "l= is not a number (RFC 6376 3.5)";
    }
  }
  return {};
}

std::string dkim_key_problem(std::string_view record, std::string_view algorithm, std::string_view domain,
                             std::string_view identity) {
  const auto tags = parse_dkim_tag_list(record);
  if (!tags) return "key record: malformed or duplicated tag (RFC 6376 3.6.1)";
  if (const DkimTag* v = find(*tags, "v"); v && (v != &tags->front() || v->value != "DKIM1")) {
    return "key record: v= is not DKIM1 first (RFC 6376 3.6.1)";
  }
  const DkimTag* k = find(*tags, "k");
  const std::string key_type = k ? compact(k->value) : "rsa";
  const std::string_view alg = algorithm.substr(0, algorithm.find('-'));
  if (!ascii::iequals(key_type, alg)) {
    return "key record: k=" + key_type + " does not match a=" + std::string(algorithm) + " (RFC 8463 3)";
  }
  if (const DkimTag* s = find(*tags, "s"); s && !list_has(s->value, "*") && !list_has(s->value, "email")) {
    return "key record: not for email (s=)";
  }
  if (const DkimTag* t = find(*tags, "t"); t && list_has(t->value, "s") && !identity.empty()) {
    const std::size_t at = identity.rfind('@');
    const std::string_view idomain = at == std::string_view::npos ? identity : identity.substr(at + 1);
    if (!ascii::iequals(idomain, domain)) return "key record: t=s forbids the subdomain i= (RFC 6376 3.6.1)";
  }
  return {};
}

}  // namespace postern
