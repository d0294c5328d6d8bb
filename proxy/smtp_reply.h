// SMTP replies: the value type, its wire form, and the I/O-free parser for
// replies read from the upstream MTA (RFC 5321 §4.2, multi-line included).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace postern {

// One reply: a 3-digit code and its text lines, joined by '\n' (each line
// without the code). The enhanced status code (RFC 3463), when present, is the
// start of each line's text, so relaying a reply keeps it verbatim.
struct Reply {
  int code = 0;
  std::string text;

  int klass() const { return code / 100; }   // 2, 3, 4 or 5
  bool positive() const { return klass() == 2; }
  // The enhanced status code of the first line ("2.1.5"), or empty.
  std::string_view enhanced_code() const;
  // First line, for logs.
  std::string_view first_line() const;
};

// A reply from the MTA as postern's client hears it: postern offers
// ENHANCEDSTATUSCODES (RFC 2034), so every line of a 2xx, 4xx or 5xx reply
// starts with an enhanced status code of the reply's class. A line without
// one (or with one of another class, kept as text behind it) gets the first
// line's, else "X.0.0", undefined (RFC 3463 §3.1). nullopt when nothing is
// missing (the usual case: no copy).
std::optional<Reply> with_enhanced_codes(const Reply& reply);

// Appends the wire form of `reply` ("250-a\r\n250 b\r\n") to `out`.
void append_reply(std::string& out, const Reply& reply);
void append_reply(std::string& out, int code, std::string_view text);

// Parses replies from a byte stream; keeps state between feeds.
class ReplyParser {
 public:
  enum class Outcome { kComplete, kIncomplete, kInvalid, kTooLong };
  struct Result {
    Outcome outcome;
    std::size_t consumed;  // bytes of input used
  };

  // Consumes complete lines from `input` until one reply is complete.
  Result feed(std::string_view input);
  // The reply completed by the last kComplete; the parser is then reset.
  Reply take();
  void reset();

 private:
  Reply reply_;
  std::size_t lines_ = 0;
};

}  // namespace postern
