// MIME decoding for the rule API; see mime.h.
#include "filters/lua/mime.h"
#include "filters/text/ascii.h"

#include <iconv.h>

#include <algorithm>
#include <cctype>
#include <cerrno>

namespace postern::mime {
namespace {

constexpr int kMaxDepth = 16;

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// RFC 2047 §4.2 "Q": like quoted-printable, '_' is a space.
std::string decode_q(std::string_view in) {
  std::string out;
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '_') {
      out.push_back(' ');
    } else if (in[i] == '=' && i + 2 < in.size() && hex_value(in[i + 1]) >= 0 && hex_value(in[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex_value(in[i + 1]) * 16 + hex_value(in[i + 2])));
      i += 2;
    } else {
      out.push_back(in[i]);
    }
  }
  return out;
}

struct Field {
  std::string name;   // lower case
  std::string value;  // unfolded
};

// Splits `text` into its header fields and body; no empty line = all header.
std::vector<Field> parse_header(std::string_view text, std::string_view& body) {
  std::vector<Field> fields;
  std::size_t pos = 0;
  body = {};
  while (pos < text.size()) {
    std::size_t eol = text.find('\n', pos);
    std::size_t next = eol == std::string_view::npos ? text.size() : eol + 1;
    std::string_view line = text.substr(pos, next - pos);
    std::string_view content = line;
    while (!content.empty() && (content.back() == '\n' || content.back() == '\r')) content.remove_suffix(1);
    if (content.empty()) {
      body = text.substr(next);
      return fields;
    }
    if ((content[0] == ' ' || content[0] == '\t') && !fields.empty()) {
      if (fields.back().value.size() < 64 * 1024) fields.back().value.append(content);
    } else {
      std::size_t colon = content.find(':');
      if (colon == std::string_view::npos) {  // not a field: the body starts here
        body = text.substr(pos);
        return fields;
      }
      if (fields.size() < 1000) {
        fields.push_back({ascii::to_lower(ascii::trim(content.substr(0, colon))), std::string(content.substr(colon + 1))});
      }
    }
    pos = next;
  }
  return fields;
}

const Field* find_field(const std::vector<Field>& fields, std::string_view name) {
  for (const Field& f : fields) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

void collect(std::string_view text, int depth, std::size_t max_parts, std::vector<Part>& out) {
  if (out.size() >= max_parts) return;
  std::string_view body;
  std::vector<Field> fields = parse_header(text, body);
  Part part;
  std::string content_type;
  if (const Field* f = find_field(fields, "content-type")) {
    content_type = std::string(ascii::trim(f->value));
    std::string type = ascii::to_lower(ascii::trim(content_type.substr(0, content_type.find(';'))));
    if (type.find('/') != std::string::npos) part.type = type;
    part.charset = ascii::to_lower(header_parameter(content_type, "charset"));
    part.filename = header_parameter(content_type, "name");
  }
  if (const Field* f = find_field(fields, "content-transfer-encoding")) part.transfer_encoding = ascii::to_lower(ascii::trim(f->value));
  if (const Field* f = find_field(fields, "content-disposition")) {
    part.disposition = ascii::to_lower(ascii::trim(f->value.substr(0, f->value.find(';'))));
    std::string name = header_parameter(f->value, "filename");
    if (!name.empty()) part.filename = std::move(name);
  }
  part.filename = decode_header_value(part.filename, 1024);

  if (part.type.rfind("multipart/", 0) == 0 && depth < kMaxDepth) {
    std::string boundary = header_parameter(content_type, "boundary");
    if (!boundary.empty()) {
      std::string delimiter = "--" + boundary;
      std::size_t pos = 0;
      std::size_t part_start = std::string_view::npos;
      while (pos <= body.size()) {
        std::size_t eol = body.find('\n', pos);
        std::size_t next = eol == std::string_view::npos ? body.size() : eol + 1;
        std::string_view line = ascii::trim(body.substr(pos, next - pos));
        if (line.size() >= delimiter.size() && line.compare(0, delimiter.size(), delimiter) == 0) {
          std::string_view rest = line.substr(delimiter.size());
          if (part_start != std::string_view::npos && pos >= part_start) {
            // The line break before a delimiter belongs to it (RFC 2046 §5.1.1).
            std::string_view inner = body.substr(part_start, pos - part_start);
            if (!inner.empty() && inner.back() == '\n') inner.remove_suffix(1);
            if (!inner.empty() && inner.back() == '\r') inner.remove_suffix(1);
            collect(inner, depth + 1, max_parts, out);
          }
          if (rest.substr(0, 2) == "--") return;  // close-delimiter
          part_start = next;
        }
        if (next >= body.size()) break;
        pos = next;
      }
      if (part_start != std::string_view::npos && part_start < body.size()) {
        collect(body.substr(part_start), depth + 1, max_parts, out);  // unterminated
      }
      return;
    }
  }
  part.body = body;
  out.push_back(std::move(part));
}

}  // namespace

std::string decode_base64(std::string_view in, std::size_t limit) {
  std::string out;
  unsigned buffer = 0;
  int bits = 0;
  for (char c : in) {
    int v = base64_value(c);
    if (v < 0) {
      if (c == '=') break;
      continue;  // line breaks and garbage are skipped (RFC 2045 §6.8)
    }
    buffer = (buffer << 6) | static_cast<unsigned>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (out.size() >= limit) break;
      out.push_back(static_cast<char>((buffer >> bits) & 0xFF));
    }
  }
  return out;
}

std::string decode_quoted_printable(std::string_view in, std::size_t limit) {
  std::string out;
  for (std::size_t i = 0; i < in.size() && out.size() < limit; ++i) {
    char c = in[i];
    if (c != '=') {
      out.push_back(c);
      continue;
    }
    if (i + 2 < in.size() && hex_value(in[i + 1]) >= 0 && hex_value(in[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex_value(in[i + 1]) * 16 + hex_value(in[i + 2])));
      i += 2;
      continue;
    }
    // A soft line break "=" [white space] CRLF (RFC 2045 §6.7 rule 5).
    std::size_t j = i + 1;
    while (j < in.size() && (in[j] == ' ' || in[j] == '\t')) ++j;
    if (j < in.size() && in[j] == '\r') ++j;
    if (j < in.size() && in[j] == '\n') {
      i = j;
      continue;
    }
    out.push_back(c);
  }
  return out;
}

std::string to_utf8(std::string_view charset, std::string_view text) {
  std::string cs = ascii::to_lower(charset);
  if (cs.empty() || cs == "utf-8" || cs == "utf8" || cs == "us-ascii" || cs == "ascii") return std::string(text);
  iconv_t cd = iconv_open("UTF-8", cs.c_str());
  if (cd == reinterpret_cast<iconv_t>(-1)) return std::string(text);
  std::string out(text.size() * 4 + 16, '\0');
  char* in_ptr = const_cast<char*>(text.data());
  std::size_t in_left = text.size();
  char* out_ptr = out.data();
  std::size_t out_left = out.size();
  std::size_t r = iconv(cd, &in_ptr, &in_left, &out_ptr, &out_left);
  iconv_close(cd);
  if (r == static_cast<std::size_t>(-1)) return std::string(text);
  out.resize(out.size() - out_left);
  return out;
}

std::string decode_header_value(std::string_view value, std::size_t limit) {
  std::string out;
  std::size_t pos = 0;
  bool last_was_word = false;
  std::string pending_space;  // white space between two encoded-words is dropped (§6.2)
  while (pos < value.size() && out.size() < limit) {
    std::size_t start = value.find("=?", pos);
    if (start == std::string_view::npos) {
      out.append(pending_space).append(value.substr(pos));
      break;
    }
    // =?charset?encoding?text?=
    std::size_t q1 = value.find('?', start + 2);
    std::size_t q2 = q1 == std::string_view::npos ? q1 : value.find('?', q1 + 1);
    std::size_t end = q2 == std::string_view::npos ? q2 : value.find("?=", q2 + 1);
    if (end == std::string_view::npos || q2 != q1 + 2) {
      out.append(pending_space).append(value.substr(pos, start + 2 - pos));
      pending_space.clear();
      last_was_word = false;
      pos = start + 2;
      continue;
    }
    std::string_view between = value.substr(pos, start - pos);
    bool only_space = between.find_first_not_of(" \t\r\n") == std::string_view::npos;
    if (!(last_was_word && only_space)) out.append(between);
    std::string charset(value.substr(start + 2, q1 - start - 2));
    charset = charset.substr(0, charset.find('*'));  // RFC 2231 language suffix
    char enc = ascii::to_upper(value[q1 + 1]);
    std::string_view text = value.substr(q2 + 1, end - q2 - 1);
    std::string raw = enc == 'B' ? decode_base64(text, limit) : decode_q(text);
    out.append(to_utf8(charset, raw));
    last_was_word = true;
    pending_space.clear();
    pos = end + 2;
  }
  if (out.size() > limit) out.resize(limit);
  return out;
}

std::string header_parameter(std::string_view field_value, std::string_view name) {
  std::string want = ascii::to_lower(name);
  std::size_t pos = field_value.find(';');
  while (pos != std::string_view::npos && pos < field_value.size()) {
    ++pos;
    std::size_t eq = field_value.find('=', pos);
    if (eq == std::string_view::npos) break;
    std::string key = ascii::to_lower(ascii::trim(field_value.substr(pos, eq - pos)));
    std::size_t vstart = eq + 1;
    while (vstart < field_value.size() && (field_value[vstart] == ' ' || field_value[vstart] == '\t')) ++vstart;
    std::string value;
    std::size_t vend;
    if (vstart < field_value.size() && field_value[vstart] == '"') {
      vend = vstart + 1;
      while (vend < field_value.size() && field_value[vend] != '"') {
        if (field_value[vend] == '\\' && vend + 1 < field_value.size()) ++vend;
        value.push_back(field_value[vend]);
        ++vend;
      }
      vend = field_value.find(';', vend);
    } else {
      vend = field_value.find(';', vstart);
      value = std::string(ascii::trim(field_value.substr(vstart, vend == std::string_view::npos ? std::string_view::npos : vend - vstart)));
    }
    if (key == want) return value;
    if (key == want + "*") {  // RFC 2231: charset'language'percent-encoded
      std::size_t q = value.find('\'');
      std::size_t q2 = q == std::string::npos ? q : value.find('\'', q + 1);
      std::string charset = q == std::string::npos ? "" : value.substr(0, q);
      std::string_view enc = q2 == std::string::npos ? std::string_view(value) : std::string_view(value).substr(q2 + 1);
      std::string decoded;
      for (std::size_t i = 0; i < enc.size(); ++i) {
        if (enc[i] == '%' && i + 2 < enc.size() && hex_value(enc[i + 1]) >= 0 && hex_value(enc[i + 2]) >= 0) {
          decoded.push_back(static_cast<char>(hex_value(enc[i + 1]) * 16 + hex_value(enc[i + 2])));
          i += 2;
        } else {
          decoded.push_back(enc[i]);
        }
      }
      return to_utf8(charset, decoded);
    }
    pos = vend;
  }
  return {};
}

std::vector<Part> leaf_parts(std::string_view message, std::size_t max_parts) {
  std::vector<Part> out;
  if (max_parts > 0) collect(message, 0, max_parts, out);
  return out;
}

std::string decoded_text(const Part& part, std::size_t limit) {
  std::string raw;
  if (part.transfer_encoding == "base64") raw = decode_base64(part.body, limit);
  else if (part.transfer_encoding == "quoted-printable") raw = decode_quoted_printable(part.body, limit);
  else raw = std::string(part.body.substr(0, limit));
  std::string text = to_utf8(part.charset, raw);
  if (text.size() > limit) text.resize(limit);
  return text;
}

}  // namespace postern::mime
