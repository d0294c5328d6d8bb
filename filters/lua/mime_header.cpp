// Header values as the rule API shows them: RFC 2047 encoded-words, RFC 2231
// parameters (extended values, continuations) and RFC 5322 comments; see
// mime.h. Every function is linear in its input.
#include <algorithm>
#include <charconv>
#include <vector>

#include "filters/lua/mime.h"
#include "filters/text/ascii.h"

namespace postern::mime {
namespace {

// RFC 2231 §3 sections are numbered from 0; a larger number is no section
// a real name has (and bounds the number parsed).
constexpr unsigned kMaxSectionNumber = 99999;

struct Parameter {
  std::string key;    // lower case, as written: "filename", "filename*", "filename*0*"
  std::string value;  // unquoted
};

// The parameters after the first ';' of a comment-free structured value.
std::vector<Parameter> parameters(std::string_view v) {
  std::vector<Parameter> out;
  std::size_t pos = v.find(';');
  while (pos != std::string_view::npos && pos < v.size()) {
    ++pos;
    std::size_t key_end = pos;
    while (key_end < v.size() && v[key_end] != '=' && v[key_end] != ';') ++key_end;
    if (key_end >= v.size() || v[key_end] == ';') {  // no '=': not a parameter
      pos = key_end < v.size() ? key_end : std::string_view::npos;
      continue;
    }
    Parameter p{ascii::to_lower(ascii::trim(v.substr(pos, key_end - pos))), {}};
    std::size_t i = key_end + 1;
    while (i < v.size() && (v[i] == ' ' || v[i] == '\t')) ++i;
    if (i < v.size() && v[i] == '"') {
      for (++i; i < v.size() && v[i] != '"'; ++i) {
        if (v[i] == '\\' && i + 1 < v.size()) ++i;  // quoted-pair
        p.value.push_back(v[i]);
      }
      pos = v.find(';', i);
    } else {
      pos = v.find(';', i);
      p.value = std::string(ascii::trim(v.substr(i, pos == std::string_view::npos ? std::string_view::npos : pos - i)));
    }
    out.push_back(std::move(p));
  }
  return out;
}

// RFC 2231 §4: charset'language'%xx-encoded octets (charset and language may
// be empty; without both quotes the whole value is the octets).
void split_extended(std::string_view value, std::string& charset, std::string_view& octets) {
  std::size_t q1 = value.find('\'');
  std::size_t q2 = q1 == std::string_view::npos ? q1 : value.find('\'', q1 + 1);
  if (q2 == std::string_view::npos) {
    octets = value;
    return;
  }
  charset = std::string(value.substr(0, q1));
  octets = value.substr(q2 + 1);
}

struct Section {
  unsigned number;
  bool encoded;  // "name*N*="
  std::string_view value;
};

}  // namespace

std::string strip_comments(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  int depth = 0;
  bool quoted = false;
  for (std::size_t i = 0; i < v.size(); ++i) {
    char c = v[i];
    if (c == '\\' && (quoted || depth > 0) && i + 1 < v.size()) {  // quoted-pair
      if (depth == 0) out.append(v.substr(i, 2));
      ++i;
      continue;
    }
    if (depth > 0) {
      depth += c == '(' ? 1 : c == ')' ? -1 : 0;
      continue;
    }
    if (c == '"') quoted = !quoted;
    if (c == '(' && !quoted) {
      depth = 1;
      continue;
    }
    out.push_back(c);
  }
  return out;
}

std::string header_parameter(std::string_view field_value, std::string_view name, std::vector<std::string>* others) {
  const std::string want = ascii::to_lower(name);
  const std::string cleaned = strip_comments(field_value);
  const std::vector<Parameter> params = parameters(cleaned);
  const Parameter* plain = nullptr;
  const Parameter* extended = nullptr;
  std::vector<Section> sections;
  for (const Parameter& p : params) {
    std::string_view key = p.key;
    if (key == want) {
      if (!plain) plain = &p;
      else if (others) others->push_back(p.value);  // a reader may take the last one written
      continue;
    }
    if (key.size() <= want.size() || key.substr(0, want.size()) != want || key[want.size()] != '*') continue;
    std::string_view rest = key.substr(want.size() + 1);
    if (rest.empty()) {
      if (!extended) {
        extended = &p;
      } else if (others) {
        std::string charset;
        std::string_view octets;
        split_extended(p.value, charset, octets);
        others->push_back(to_utf8(charset, decode_percent(octets)));
      }
      continue;
    }
    Section s{0, false, p.value};
    auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), s.number);
    if (ec != std::errc{} || end == rest.data() || s.number > kMaxSectionNumber) continue;
    std::string_view tail(end, static_cast<std::size_t>(rest.data() + rest.size() - end));
    if (tail == "*") s.encoded = true;
    else if (!tail.empty()) continue;
    sections.push_back(s);
  }
  // A mail reader shows the RFC 2231 value where there is one: a plain
  // "filename=" beside it is for readers that know no RFC 2231.
  // Readers that know no RFC 2231 show the plain value instead.
  if (others && plain && (extended || !sections.empty())) others->push_back(plain->value);
  if (extended) {
    std::string charset;
    std::string_view octets;
    split_extended(extended->value, charset, octets);
    return to_utf8(charset, decode_percent(octets));
  }
  if (!sections.empty()) {
    // RFC 2231 §3: sections 0, 1, 2, ... in order; the first gap ends the
    // value, and of two sections with one number the first written counts.
    std::stable_sort(sections.begin(), sections.end(),
                     [](const Section& a, const Section& b) { return a.number < b.number; });
    std::string charset;
    std::string octets;
    unsigned next = 0;
    for (const Section& s : sections) {
      if (s.number < next) continue;  // a duplicate
      if (s.number > next) break;     // a gap
      std::string_view text = s.value;
      if (s.encoded && s.number == 0) split_extended(s.value, charset, text);
      octets += s.encoded ? decode_percent(text) : std::string(text);
      ++next;
    }
    if (next > 0) return to_utf8(charset, octets);
  }
  return plain ? plain->value : std::string();
}

std::string decode_header_value(std::string_view value, std::size_t limit) {
  std::string out;
  // Adjacent encoded-words in one charset are converted together: mailers
  // split a multi-octet character across two words, and readers join them.
  std::string raw;
  std::string raw_charset;
  auto flush = [&] {
    if (!raw.empty()) out += to_utf8(raw_charset, raw);
    raw.clear();
  };
  std::size_t pos = 0;
  bool last_was_word = false;
  while (pos < value.size() && out.size() + raw.size() <= limit) {
    // =?charset?encoding?text?=  (RFC 2047 §2)
    std::size_t start = value.find("=?", pos);
    std::size_t q1 = start == std::string_view::npos ? start : value.find('?', start + 2);
    if (q1 == std::string_view::npos) break;  // no word starts here or later
    char enc = q1 + 2 < value.size() && value[q1 + 2] == '?' ? ascii::to_upper(value[q1 + 1]) : '\0';
    if (enc != 'B' && enc != 'Q') {  // not a word: "=?" is text
      flush();
      out += to_utf8("utf-8", value.substr(pos, start + 2 - pos));
      last_was_word = false;
      pos = start + 2;
      continue;
    }
    // Without "?=" after this word's text no later word ends either (its
    // text starts no earlier): stop here rather than search again, so that
    // a value of many "=?" costs one pass, not one per "=?".
    std::size_t end = value.find("?=", q1 + 3);
    if (end == std::string_view::npos) break;
    std::string_view between = value.substr(pos, start - pos);
    if (!(last_was_word && between.find_first_not_of(" \t\r\n") == std::string_view::npos)) {
      flush();
      out += to_utf8("utf-8", between);  // white space between two words is dropped (§6.2)
    }
    std::string charset(value.substr(start + 2, q1 - start - 2));
    charset = ascii::to_lower(charset.substr(0, charset.find('*')));  // RFC 2231 §5 language suffix
    if (charset != raw_charset) flush();
    raw_charset = charset;
    std::string_view text = value.substr(q1 + 3, end - q1 - 3);
    raw += enc == 'B' ? decode_base64(text, limit) : decode_q(text);
    last_was_word = true;
    pos = end + 2;
  }
  flush();
  if (pos < value.size() && out.size() <= limit) out += to_utf8("utf-8", value.substr(pos, limit - out.size() + 4));
  cut_utf8(out, limit);
  return out;
}

}  // namespace postern::mime
