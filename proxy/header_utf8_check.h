// The header section of an SMTPUTF8 message must be UTF-8 (RFC 6532 §3):
// a spool tap that follows the decoded content from its
// first octet to the blank line ending the header section and says whether
// every octet there was ASCII or part of a well-formed UTF-8 sequence (RFC
// 3629 §4: no overlong form, surrogate, code point past U+10FFFF, lone
// continuation octet or truncated sequence). The body is not its business
// (8BITMIME and MIME charsets govern it). I/O-free, one pass, O(1) state.
#pragma once

#include <string_view>

#include "filters/spool.h"

namespace postern {

class HeaderUtf8Check final : public SpoolTap {
 public:
  void on_append(std::string_view data) override {
    for (char ch : data) {
      if (done_) return;
      step(static_cast<unsigned char>(ch));
    }
  }
  // After the last octet: false when the header section held ill-formed UTF-8.
  bool valid() const { return !bad_ && (done_ || need_ == 0); }

 private:
  void step(unsigned char c) {
    if (need_ > 0) {
      if (c < lo_ || c > hi_) {
        bad_ = done_ = true;
        return;
      }
      --need_;
      lo_ = 0x80, hi_ = 0xbf;
      ++column_;
      return;
    }
    if (c == '\n') {
      // Content is CRLF by now (DataDecoder): "\r\n" alone on a line, or at
      // the very start, ends the header section.
      if (column_ <= 1) done_ = true;
      column_ = 0;
      return;
    }
    ++column_;
    if (c < 0x80) return;
    lo_ = 0x80, hi_ = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
      need_ = 1;
    } else if (c >= 0xe0 && c <= 0xef) {
      need_ = 2;
      if (c == 0xe0) lo_ = 0xa0;  // no overlong 3-octet form
      if (c == 0xed) hi_ = 0x9f;  // no surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
      need_ = 3;
      if (c == 0xf0) lo_ = 0x90;  // no overlong 4-octet form
      if (c == 0xf4) hi_ = 0x8f;  // nothing past U+10FFFF
    } else {
      bad_ = done_ = true;  // C0, C1 (overlong 2-octet), F5..FF, a lone continuation octet
    }
  }

  unsigned need_ = 0;  // continuation octets still due
  unsigned char lo_ = 0x80, hi_ = 0xbf;  // the next continuation octet's bounds
  std::size_t column_ = 0;  // octets since the last LF
  bool done_ = false;
  bool bad_ = false;
};

}  // namespace postern
