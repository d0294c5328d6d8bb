// Transfer-encoding and charset decoding for the rule API (RFC 2045 §6,
// RFC 2047 §4.2); see mime.h. Text reaches Lua as well-formed UTF-8 only.
#include <iconv.h>

#include <cerrno>

#include "filters/lua/mime.h"
#include "filters/text/ascii.h"
#include "filters/text/utf8.h"

namespace postern::mime {
namespace {

constexpr std::string_view kReplacementUtf8 = "\xEF\xBF\xBD";  // U+FFFD

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

// Each well-formed UTF-8 sequence of `text`, and U+FFFD for each other octet.
std::string well_formed(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const utf8::Unit& u : utf8::Units(text)) {
    if (u.well_formed) out.append(u.octets);
    else out.append(kReplacementUtf8);
  }
  return out;
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

std::string decode_percent(std::string_view in) {
  std::string out;
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%' && i + 2 < in.size() && hex_value(in[i + 1]) >= 0 && hex_value(in[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex_value(in[i + 1]) * 16 + hex_value(in[i + 2])));
      i += 2;
    } else {
      out.push_back(in[i]);
    }
  }
  return out;
}

std::string to_utf8(std::string_view charset, std::string_view text) {
  std::string cs = ascii::to_lower(charset);
  if (cs.empty() || cs == "utf-8" || cs == "utf8" || cs == "us-ascii" || cs == "ascii") return well_formed(text);
  iconv_t cd = iconv_open("UTF-8", cs.c_str());
  if (cd == reinterpret_cast<iconv_t>(-1)) return well_formed(text);
  // An octet that does not convert becomes U+FFFD and the conversion goes on
  // after it, as mail readers do; the output grows by chunks, so no charset
  // can write past a buffer sized from the input.
  std::string out;
  char* in_ptr = const_cast<char*>(text.data());
  std::size_t in_left = text.size();
  char chunk[4096];
  while (in_left > 0) {
    char* out_ptr = chunk;
    std::size_t out_left = sizeof chunk;
    std::size_t r = iconv(cd, &in_ptr, &in_left, &out_ptr, &out_left);
    int error = errno;
    out.append(chunk, static_cast<std::size_t>(out_ptr - chunk));
    if (r == static_cast<std::size_t>(-1) && error != E2BIG) {  // EILSEQ, EINVAL: skip one octet
      out.append(kReplacementUtf8);
      ++in_ptr;
      --in_left;
    }
  }
  iconv_close(cd);
  return well_formed(out);
}

void cut_utf8(std::string& text, std::size_t limit) {
  if (text.size() <= limit) return;
  std::size_t end = limit;
  // Back off continuation octets (10xxxxxx) to the start of the cut sequence.
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  text.resize(end);
}

std::string decoded_text(const Part& part, std::size_t limit) {
  std::string raw;
  if (part.transfer_encoding == "base64") raw = decode_base64(part.body, limit);
  else if (part.transfer_encoding == "quoted-printable") raw = decode_quoted_printable(part.body, limit);
  else raw = std::string(part.body.substr(0, limit));
  std::string text = to_utf8(part.charset, raw);
  cut_utf8(text, limit);
  return text;
}

}  // namespace postern::mime
