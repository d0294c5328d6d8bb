// ARC header fields, sets and signed octets; see arc_chain.h.
#include "filters/arc/arc_chain.h"

#include <algorithm>
#include <cctype>
#include <map>

#include "filters/dkim/dkim_tags.h"
#include "filters/text/ascii.h"

namespace postern {

namespace {

bool wsp(char c) { return c == ' ' || c == '\t'; }
bool fws(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && fws(s.front())) s.remove_prefix(1);
  while (!s.empty() && fws(s.back())) s.remove_suffix(1);
  return s;
}

// "1".."50" without sign, leading zeros or white space inside.
std::optional<unsigned> small_number(std::string_view s) {
  if (s.empty() || s.size() > 2 || s[0] == '0') return std::nullopt;
  unsigned n = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + static_cast<unsigned>(c - '0');
  }
  if (n < 1 || n > kArcMaxSets) return std::nullopt;
  return n;
}

// The part of a raw field after the colon.
std::string_view raw_value(std::string_view raw) {
  std::size_t colon = raw.find(':');
  return colon == std::string_view::npos ? std::string_view{} : raw.substr(colon + 1);
}

}  // namespace

std::optional<ArcFieldKind> arc_field_kind(std::string_view name) {
  if (header_name_equals(name, "ARC-Authentication-Results")) return ArcFieldKind::kAar;
  if (header_name_equals(name, "ARC-Message-Signature")) return ArcFieldKind::kAms;
  if (header_name_equals(name, "ARC-Seal")) return ArcFieldKind::kSeal;
  return std::nullopt;
}

std::optional<unsigned> arc_instance(ArcFieldKind kind, std::string_view value) {
  if (kind == ArcFieldKind::kAar) {
    std::size_t semi = value.find(';');
    if (semi == std::string_view::npos) return std::nullopt;
    std::string_view head = trim(value.substr(0, semi));
    std::size_t eq = head.find('=');
    if (eq == std::string_view::npos || trim(head.substr(0, eq)) != "i") return std::nullopt;
    return small_number(trim(head.substr(eq + 1)));
  }
  auto tags = parse_dkim_tag_list(value);
  if (!tags) return std::nullopt;
  for (const DkimTag& t : *tags) {
    if (t.name == "i") return small_number(t.value);
  }
  return std::nullopt;
}

ArcStructure arc_structure(const std::vector<HeaderField>& headers) {
  ArcStructure out;
  std::map<unsigned, std::array<const HeaderField*, 3>> by_instance;
  static constexpr const char* kNames[] = {"ARC-Authentication-Results", "ARC-Message-Signature", "ARC-Seal"};
  auto fail = [&](std::string why) {
    out.sets.clear();
    out.error = std::move(why);
    return out;
  };
  for (const HeaderField& h : headers) {
    auto kind = arc_field_kind(h.name);
    if (!kind) continue;
    ++out.fields;
    const std::string value = h.value();
    auto i = arc_instance(*kind, value);
    const int k = static_cast<int>(*kind);
    if (!i) return fail(std::string(kNames[k]) + " without a valid i= (1-50)");
    auto& set = by_instance[*i];
    if (set[k]) return fail("two " + std::string(kNames[k]) + " fields with i=" + std::to_string(*i));
    set[k] = &h;
  }
  if (by_instance.empty()) return out;
  if (by_instance.size() > kArcMaxSets) return fail("more than 50 ARC sets");
  unsigned expect = 1;
  for (const auto& [i, set] : by_instance) {
    if (i != expect) return fail("ARC set i=" + std::to_string(expect) + " is missing");
    for (int k = 0; k < 3; ++k) {
      if (!set[k]) return fail("ARC set i=" + std::to_string(i) + " has no " + kNames[k]);
    }
    ++expect;
  }
  // §5.2 steps 2-3: a seal that says fail ends the chain; i=1 says none,
  // every later one pass.
  for (const auto& [i, set] : by_instance) {
    const std::string cv = dkim_tag_value(set[2]->value(), "cv");
    if (cv == "fail") return fail("ARC-Seal i=" + std::to_string(i) + " has cv=fail");
    if (i == 1 && cv != "none") return fail("ARC-Seal i=1 has cv=" + (cv.empty() ? "(none)" : cv) + ", not none");
    if (i > 1 && cv != "pass") {
      return fail("ARC-Seal i=" + std::to_string(i) + " has cv=" + (cv.empty() ? "(none)" : cv) + ", not pass");
    }
  }
  for (const auto& [i, set] : by_instance) out.sets.push_back(set);
  return out;
}

std::string relaxed_header(std::string_view name, std::string_view raw) {
  std::string out = ascii::to_lower(trim(name));
  out += ':';
  std::string_view v = raw_value(raw);
  bool space = false, started = false;
  for (char c : v) {
    if (c == '\r' || c == '\n') continue;
    if (wsp(c)) {
      space = true;
      continue;
    }
    if (space && started) out += ' ';
    space = false;
    started = true;
    out += c;
  }
  out += "\r\n";
  return out;
}

std::string without_b_value(std::string_view raw) {
  std::size_t colon = raw.find(':');
  if (colon == std::string_view::npos) return std::string(raw);
  std::string out(raw.substr(0, colon + 1));
  std::size_t end = raw.size();
  while (end > colon + 1 && (raw[end - 1] == '\r' || raw[end - 1] == '\n')) --end;
  std::size_t pos = colon + 1;
  while (pos <= end) {
    std::size_t semi = raw.find(';', pos);
    if (semi == std::string_view::npos || semi > end) semi = end;
    std::string_view seg = raw.substr(pos, semi - pos);
    std::size_t eq = seg.find('=');
    if (eq != std::string_view::npos && trim(seg.substr(0, eq)) == "b") {
      out.append(seg.substr(0, eq + 1));
    } else {
      out.append(seg);
    }
    if (semi < end) out += ';';
    pos = semi + 1;
  }
  out.append(raw.substr(end));
  return out;
}

std::optional<std::string> ams_signed_octets(const std::vector<HeaderField>& headers, const HeaderField& ams) {
  const std::string value = ams.value();
  if (!parse_dkim_tag_list(value)) return std::nullopt;
  const std::string h = dkim_tag_value(value, "h");
  const std::string c = dkim_tag_value(value, "c");
  const bool simple = c.empty() || c == "simple" || c.starts_with("simple/");
  if (h.empty()) return std::nullopt;
  std::string out;
  // Each name takes the lowest field of that name not taken yet. Names are
  // lowered once; h= is bounded (kArcMaxSignedFields) so that a hostile
  // AMS cannot make this names x fields.
  std::vector<std::string> names;
  names.reserve(headers.size());
  for (const HeaderField& f : headers) names.push_back(ascii::to_lower(f.name));
  std::map<std::string, std::size_t> taken;
  std::size_t start = 0, listed = 0;
  while (start <= h.size()) {
    std::size_t end = h.find(':', start);
    if (end == std::string::npos) end = h.size();
    const std::string name = ascii::to_lower(trim(std::string_view(h).substr(start, end - start)));
    start = end + 1;
    if (name.empty()) continue;
    if (name == "arc-seal" || ++listed > kArcMaxSignedFields) return std::nullopt;
    std::size_t& skip = taken[name];
    std::size_t seen = 0;
    for (std::size_t i = headers.size(); i-- > 0;) {
      if (names[i] != name) continue;
      if (seen++ < skip) continue;
      out += simple ? headers[i].raw : relaxed_header(headers[i].name, headers[i].raw);
      break;
    }
    ++skip;
  }
  std::string self = without_b_value(ams.raw);
  std::string canon = simple ? self : relaxed_header(ams.name, self);
  while (!canon.empty() && (canon.back() == '\n' || canon.back() == '\r')) canon.pop_back();
  return out + canon;
}

std::string seal_signed_octets(const std::vector<std::array<const HeaderField*, 3>>& sets, std::size_t upto) {
  std::string out;
  for (std::size_t i = 0; i < upto && i < sets.size(); ++i) {
    for (int k = 0; k < 3; ++k) {
      const HeaderField* f = sets[i][k];
      if (i + 1 == upto && k == 2) {
        std::string last = relaxed_header(f->name, without_b_value(f->raw));
        while (!last.empty() && (last.back() == '\n' || last.back() == '\r')) last.pop_back();
        out += last;
      } else {
        out += relaxed_header(f->name, f->raw);
      }
    }
  }
  return out;
}

std::vector<HeaderField> split_header_block(std::string_view block) {
  std::vector<HeaderField> out;
  std::size_t pos = 0;
  while (pos < block.size()) {
    std::size_t eol = block.find("\r\n", pos);
    std::size_t next = eol == std::string_view::npos ? block.size() : eol + 2;
    std::string_view line = block.substr(pos, next - pos);
    if (line == "\r\n" || line.empty()) break;
    if (wsp(line[0]) && !out.empty()) {
      out.back().raw.append(line);
    } else {
      std::size_t colon = 0;
      std::size_t n = header_field_name_length(line, &colon);
      if (n == 0) break;
      out.push_back(HeaderField{std::string(line.substr(0, n)), std::string(line)});
    }
    pos = next;
  }
  return out;
}

std::vector<AuthResInfo> parse_auth_res(std::string_view payload) {
  // Comments out, quoted strings kept whole.
  std::string text;
  int depth = 0;
  bool quoted = false;
  for (std::size_t i = 0; i < payload.size(); ++i) {
    char c = payload[i];
    if (quoted) {
      if (c == '\\' && i + 1 < payload.size()) c = payload[++i];
      else if (c == '"') { quoted = false; continue; }
      text += (c == ';' || fws(c)) ? '\x01' : c;  // kept in one word, read back as a space
      continue;
    }
    if (depth) {
      if (c == '\\') ++i;
      else if (c == '(') ++depth;
      else if (c == ')') --depth;
      continue;
    }
    if (c == '(') depth = 1;
    else if (c == '"') quoted = true;
    else text += c;
  }
  std::vector<std::string_view> parts;
  std::string_view rest = text;
  while (!rest.empty() || !parts.empty()) {
    std::size_t semi = rest.find(';');
    parts.push_back(trim(rest.substr(0, semi)));
    if (semi == std::string_view::npos) break;
    rest.remove_prefix(semi + 1);
  }
  std::vector<AuthResInfo> out;
  std::size_t first = 0;
  if (!parts.empty() && parts[0].starts_with("i") && parts[0].find('=') != std::string_view::npos &&
      trim(parts[0].substr(0, parts[0].find('='))) == "i") {
    first = 1;  // an AAR's "i=N"
  }
  for (std::size_t p = first + 1; p < parts.size() && out.size() < 64; ++p) {  // + 1: the authserv-id
    std::string_view r = parts[p];
    std::vector<std::string_view> words;
    std::size_t i = 0;
    while (i < r.size()) {
      while (i < r.size() && fws(r[i])) ++i;
      std::size_t s = i;
      while (i < r.size() && !fws(r[i])) ++i;
      if (i > s) words.push_back(r.substr(s, i - s));
    }
    if (words.empty()) continue;
    std::size_t eq = words[0].find('=');
    if (eq == std::string_view::npos) continue;
    AuthResInfo info{ascii::to_lower(words[0].substr(0, eq)), ascii::to_lower(words[0].substr(eq + 1)), {}};
    for (std::size_t w = 1; w < words.size(); ++w) {
      std::size_t e = words[w].find('=');
      if (e == std::string_view::npos) continue;
      std::string v(words[w].substr(e + 1));
      std::replace(v.begin(), v.end(), '\x01', ' ');
      info.props.emplace_back(ascii::to_lower(words[w].substr(0, e)), std::move(v));
    }
    out.push_back(std::move(info));
  }
  return out;
}

}  // namespace postern
