// SMTP reply wire form and upstream reply parser.
#include "proxy/smtp_reply.h"

#include "proxy/limits.h"

namespace postern {

namespace {
bool is_digit(char c) { return c >= '0' && c <= '9'; }

void append_code(std::string& out, int code) {
  out.push_back(static_cast<char>('0' + code / 100 % 10));
  out.push_back(static_cast<char>('0' + code / 10 % 10));
  out.push_back(static_cast<char>('0' + code % 10));
}

// The enhanced status code at the start of `t` ("2.1.5"), or empty.
std::string_view leading_enhanced_code(std::string_view t) {
  std::size_t i = 0;
  int parts = 0;
  while (parts < 3) {
    std::size_t start = i;
    while (i < t.size() && is_digit(t[i])) ++i;
    // RFC 3463 §2: class is one digit, subject and detail up to three.
    if (i == start || i - start > (parts == 0 ? 1u : 3u)) return {};
    ++parts;
    if (parts < 3) {
      if (i >= t.size() || t[i] != '.') return {};
      ++i;
    }
  }
  if (i < t.size() && t[i] != ' ') return {};
  if (t[0] != '2' && t[0] != '4' && t[0] != '5') return {};
  return t.substr(0, i);
}
}  // namespace

std::string_view Reply::enhanced_code() const { return leading_enhanced_code(first_line()); }

std::optional<Reply> with_enhanced_codes(const Reply& reply) {
  const int k = reply.klass();
  if (k != 2 && k != 4 && k != 5) return std::nullopt;
  // A code of another class than the reply's ("550 2.0.0 Ok") is no code
  // for it: a client that reads enhanced codes would take it for success.
  const auto code_of = [k](std::string_view line) {
    std::string_view c = leading_enhanced_code(line);
    return !c.empty() && c[0] - '0' == k ? c : std::string_view{};
  };
  std::string_view rest = reply.text;
  bool missing = false;
  for (;;) {
    const std::size_t nl = rest.find('\n');
    missing = code_of(rest.substr(0, nl)).empty();
    if (missing || nl == std::string_view::npos) break;
    rest.remove_prefix(nl + 1);
  }
  if (!missing) return std::nullopt;
  std::string fill(code_of(reply.first_line()));
  if (fill.empty()) fill = std::to_string(k) + ".0.0";
  Reply out{reply.code, {}};
  out.text.reserve(reply.text.size() + 16);
  rest = reply.text;
  for (;;) {
    const std::size_t nl = rest.find('\n');
    const std::string_view line = rest.substr(0, nl);
    if (code_of(line).empty()) {
      out.text.append(fill);
      if (!line.empty()) out.text.push_back(' ');
    }
    out.text.append(line);
    if (nl == std::string_view::npos) break;
    out.text.push_back('\n');
    rest.remove_prefix(nl + 1);
  }
  return out;
}

std::string_view Reply::first_line() const {
  std::string_view t = text;
  return t.substr(0, t.find('\n'));
}

void append_reply(std::string& out, int code, std::string_view text) {
  for (;;) {
    std::size_t nl = text.find('\n');
    append_code(out, code);
    std::string_view line = text.substr(0, nl);
    if (nl == std::string_view::npos) {
      if (!line.empty()) out.push_back(' ');
      out.append(line).append("\r\n");
      return;
    }
    out.push_back('-');
    out.append(line).append("\r\n");
    text.remove_prefix(nl + 1);
  }
}

void append_reply(std::string& out, const Reply& reply) { append_reply(out, reply.code, reply.text); }

void ReplyParser::reset() {
  reply_ = Reply{};
  lines_ = 0;
}

Reply ReplyParser::take() {
  Reply r = std::move(reply_);
  reset();
  return r;
}

ReplyParser::Result ReplyParser::feed(std::string_view input) {
  std::size_t pos = 0;
  for (;;) {
    std::size_t nl = input.find('\n', pos);
    if (nl == std::string_view::npos) {
      if (input.size() - pos > limits::kUpstreamReplyLine) return {Outcome::kTooLong, pos};
      return {Outcome::kIncomplete, pos};
    }
    std::string_view line = input.substr(pos, nl - pos);
    if (line.size() > limits::kUpstreamReplyLine) return {Outcome::kTooLong, pos};
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    pos = nl + 1;
    // "NNN", "NNN text" or "NNN-text" (RFC 5321 §4.2.1).
    if (line.size() < 3 || !is_digit(line[0]) || !is_digit(line[1]) || !is_digit(line[2]) ||
        line[0] < '2' || line[0] > '5' || (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
      return {Outcome::kInvalid, pos};
    }
    for (char c : line) {
      if (c == '\0' || c == '\r') return {Outcome::kInvalid, pos};
    }
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (lines_ == 0) {
      reply_.code = code;
    } else if (code != reply_.code) {
      return {Outcome::kInvalid, pos};
    } else {
      reply_.text.push_back('\n');
    }
    if (++lines_ > limits::kUpstreamReplyLines) return {Outcome::kTooLong, pos};
    if (line.size() > 4) reply_.text.append(line.substr(4));
    bool last = line.size() == 3 || line[3] == ' ';
    if (last) return {Outcome::kComplete, pos};
  }
}

}  // namespace postern
