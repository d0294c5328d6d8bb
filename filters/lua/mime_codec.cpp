// Transfer-encoding and charset decoding for the rule API (RFC 2045 §6,
// RFC 2047 §4.2); see mime.h. Text reaches Lua as well-formed UTF-8 only.
#include <iconv.h>

#include <algorithm>
#include <array>
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

// Decodes into `out` grown once, through a table: text parts of tens of
// megabytes are decoded to be searched (the structure reader).
void Base64Decoder::feed(std::string_view in, std::string& out, std::size_t limit) {
  static const std::array<signed char, 256> kValue = [] {
    std::array<signed char, 256> t{};
    for (int c = 0; c < 256; ++c) t[static_cast<std::size_t>(c)] = static_cast<signed char>(base64_value(static_cast<char>(c)));
    return t;
  }();
  if (done_) return;
  // Each input octet adds at most 6 bits: in.size() * 3 / 4 + 1 octets at most.
  const std::size_t start = out.size();
  const std::size_t room = std::min(limit - std::min(limit, start), in.size() / 4 * 3 + 3);
  out.resize(start + room);
  char* w = out.data() + start;
  char* const end = w + room;
  unsigned buffer = buffer_;
  int bits = bits_;
  for (char c : in) {
    const int v = kValue[static_cast<unsigned char>(c)];
    if (v < 0) {
      if (c == '=') {
        done_ = true;
        break;
      }
      continue;  // line breaks and garbage are skipped (RFC 2045 §6.8)
    }
    buffer = (buffer << 6) | static_cast<unsigned>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (w == end) break;  // at `limit`
      *w++ = static_cast<char>((buffer >> bits) & 0xFF);
    }
  }
  out.resize(static_cast<std::size_t>(w - out.data()));
  buffer_ = buffer;
  bits_ = bits;
}

std::string decode_base64(std::string_view in, std::size_t limit) {
  std::string out;
  Base64Decoder().feed(in, out, limit);
  return out;
}

// "=XX" is an octet; "=" [white space] [CR] LF a soft line break (RFC 2045
// §6.7 rule 5); any other '=' stands for itself, and what follows it is read
// on its own.
void QuotedPrintableDecoder::step(char c, std::string& out) {
  if (pending_.empty()) {
    if (c == '=') pending_.push_back(c);
    else out.push_back(c);
    return;
  }
  const char last = pending_.back();
  if (pending_.size() == 1 && hex_value(c) >= 0) {
    pending_.push_back(c);
    return;
  }
  if (pending_.size() == 2 && hex_value(last) >= 0) {
    if (hex_value(c) >= 0) {
      out.push_back(static_cast<char>(hex_value(last) * 16 + hex_value(c)));
      pending_.clear();
      return;
    }
  } else if (last != '\r' && (c == ' ' || c == '\t' || c == '\r')) {
    pending_.push_back(c);
    return;
  } else if (c == '\n') {
    pending_.clear();  // soft line break
    return;
  }
  release(out);
  step(c, out);
}

void QuotedPrintableDecoder::release(std::string& out) {
  out.append(pending_);  // holds no '=' after the first: nothing to decode again
  pending_.clear();
}

void QuotedPrintableDecoder::feed(std::string_view in, std::string& out, std::size_t limit) {
  std::size_t i = 0;
  while (i < in.size() && out.size() < limit) {
    if (!pending_.empty()) {
      step(in[i++], out);
      continue;
    }
    // Up to the next '=' the text stands for itself: copied in one go.
    const std::size_t eq = std::min(in.find('=', i), in.size());
    const std::size_t end = i + std::min(eq - i, limit - out.size());
    out.append(in.substr(i, end - i));
    i = end;
    if (i == eq && i < in.size() && out.size() < limit) {
      pending_.push_back('=');
      ++i;
    }
  }
}

void QuotedPrintableDecoder::finish(std::string& out, std::size_t limit) {
  if (out.size() < limit) release(out);
  if (out.size() > limit) out.resize(limit);
}

std::string decode_quoted_printable(std::string_view in, std::size_t limit) {
  std::string out;
  QuotedPrintableDecoder d;
  d.feed(in, out, limit);
  d.finish(out, limit);
  if (out.size() > limit) out.resize(limit);
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

std::string decoded_text(const Part& part, std::size_t limit, bool* cut) {
  std::string raw;
  const std::string_view body = part.body;
  if (part.transfer_encoding == "base64") raw = decode_base64(body, limit);
  else if (part.transfer_encoding == "quoted-printable") raw = decode_quoted_printable(body, limit);
  else raw = std::string(body.substr(0, limit));
  std::string text = to_utf8(part.charset, raw);
  // Reaching the limit counts as cut: what came after it is unknown.
  if (cut) *cut = raw.size() >= limit || text.size() > limit;
  cut_utf8(text, limit);
  return text;
}

}  // namespace postern::mime
