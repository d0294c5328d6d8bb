// The milter protocol codec; see milter_protocol.h.
#include "filters/milter/milter_protocol.h"

namespace postern::milter {
namespace {

void put32(std::string& out, std::uint32_t v) {
  out.push_back(static_cast<char>(v >> 24));
  out.push_back(static_cast<char>(v >> 16));
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v));
}

std::uint32_t get32(std::string_view s) {
  auto b = [&](std::size_t i) { return static_cast<std::uint32_t>(static_cast<unsigned char>(s[i])); };
  return b(0) << 24 | b(1) << 16 | b(2) << 8 | b(3);
}

void put_string(std::string& out, std::string_view s) {
  // A NUL inside would end the string early for the milter: cut there.
  out.append(s.substr(0, s.find('\0'))).push_back('\0');
}

// Splits NUL-terminated strings; false when the data does not end in NUL.
bool split_strings(std::string_view data, std::vector<std::string_view>& out) {
  if (data.empty() || data.back() != '\0') return false;
  std::size_t pos = 0;
  while (pos < data.size()) {
    std::size_t end = data.find('\0', pos);
    out.push_back(data.substr(pos, end - pos));
    pos = end + 1;
  }
  return true;
}

std::string strip_brackets(std::string_view a) {
  if (a.size() >= 2 && a.front() == '<' && a.back() == '>') a = a.substr(1, a.size() - 2);
  return std::string(a);
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// "550 5.7.1 text" or "550-5.7.1 a\r\n550 5.7.1 b" (RFC 5321 §4.2, RFC 3463).
// The first line's code decides, and only 4xx and 5xx are codes (as in
// libmilter). What follows a line that ends the reply, a line of another
// code or a malformed line is dropped: a refusal with sloppy text is still
// that refusal, never on_error (which may be "accept") and never a second
// reply. The text is cleaned where it reaches the wire (verdict_reply.cpp).
bool parse_replycode(std::string_view data, Reply& r) {
  data = data.substr(0, data.find('\0'));
  bool first = true;
  while (!data.empty()) {
    std::size_t eol = data.find('\n');
    std::string_view line = data.substr(0, eol);
    data = eol == std::string_view::npos ? std::string_view() : data.substr(eol + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.size() < 3 || !is_digit(line[0]) || !is_digit(line[1]) || !is_digit(line[2])) break;
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (first) {
      if (code / 100 != 4 && code / 100 != 5) return false;
      r.code = code;
    } else if (code != r.code) {
      break;
    }
    const bool separated = line.size() == 3 || line[3] == ' ' || line[3] == '-';
    if (!separated && !first) break;
    const bool more = line.size() > 3 && line[3] == '-';
    std::string_view text = line.size() > 4 ? line.substr(separated ? 4 : 3) : std::string_view();
    // An enhanced status code "c.s.d" of the reply's class.
    std::size_t sp = text.find(' ');
    std::string_view word = text.substr(0, sp);
    if (!word.empty() && word[0] == line[0] && word.size() >= 5 && word[1] == '.' &&
        word.find_first_not_of("0123456789.") == std::string_view::npos) {
      if (first) r.enhanced = std::string(word);
      text = sp == std::string_view::npos ? std::string_view() : text.substr(sp + 1);
    }
    if (!first) r.text.push_back('\n');
    r.text.append(text);
    first = false;
    if (!more) break;
  }
  // A bare CR inside a line is no line end: the text never carries one.
  for (char& ch : r.text) {
    if (ch == '\r') ch = ' ';
  }
  return !first;
}

}  // namespace

PacketReader::Status PacketReader::next(Packet& out) {
  if (buffered() < 4) return Status::kIncomplete;
  std::uint32_t len = get32(std::string_view(buffer_).substr(pos_, 4));
  if (len == 0 || len > kMaxPacket) return Status::kInvalid;
  if (buffered() < 4 + std::size_t{len}) return Status::kIncomplete;
  out.command = buffer_[pos_ + 4];
  out.data.assign(buffer_, pos_ + 5, len - 1);
  pos_ += 4 + len;
  if (pos_ == buffer_.size()) {
    buffer_.clear();
    pos_ = 0;
  } else if (pos_ > 64 * 1024) {
    buffer_.erase(0, pos_);
    pos_ = 0;
  }
  return Status::kPacket;
}

std::string encode(char command, std::string_view data) {
  std::string out;
  out.reserve(5 + data.size());
  put32(out, static_cast<std::uint32_t>(data.size() + 1));
  out.push_back(command);
  out.append(data);
  return out;
}

std::string encode_optneg(std::uint32_t version, std::uint32_t actions, std::uint32_t steps) {
  std::string d;
  put32(d, version);
  put32(d, actions);
  put32(d, steps);
  return encode(cmd::kOptneg, d);
}

std::string encode_connect(std::string_view hostname, char family, std::uint16_t port, std::string_view address) {
  std::string d;
  put_string(d, hostname);
  d.push_back(family);
  if (family != 'U') {
    d.push_back(static_cast<char>(port >> 8));
    d.push_back(static_cast<char>(port));
    put_string(d, address);
  }
  return encode(cmd::kConnect, d);
}

std::string encode_helo(std::string_view helo) {
  std::string d;
  put_string(d, helo);
  return encode(cmd::kHelo, d);
}

std::string encode_envelope(char command, std::string_view path, const std::vector<std::string>& args) {
  std::string d;
  put_string(d, "<" + std::string(path) + ">");
  for (const std::string& a : args) put_string(d, a);
  return encode(command, d);
}

std::string encode_header(std::string_view name, std::string_view value) {
  std::string d;
  put_string(d, name);
  put_string(d, value);
  return encode(cmd::kHeader, d);
}

std::string encode_macros(MacroStage stage, const std::vector<std::pair<std::string, std::string>>& macros) {
  std::string d(1, static_cast<char>(stage));
  for (const auto& [name, value] : macros) {
    put_string(d, name);
    put_string(d, value);
  }
  return encode(cmd::kMacro, d);
}

std::optional<Negotiated> decode_optneg(const Packet& p) {
  // The milter may append its macro lists (SMFIR_SETSYMLIST data): ignored.
  if (p.command != reply::kOptneg || p.data.size() < 12) return std::nullopt;
  std::string_view d = p.data;
  return Negotiated{get32(d.substr(0, 4)), get32(d.substr(4, 4)), get32(d.substr(8, 4))};
}

bool is_final(char c) {
  switch (c) {
    case reply::kAccept: case reply::kContinue: case reply::kDiscard: case reply::kReject:
    case reply::kTempfail: case reply::kReplyCode: case reply::kSkip: case reply::kShutdown:
    case reply::kConnFail:
      return true;
    default:
      return false;
  }
}

Reply decode_reply(const Packet& p) {
  Reply r;
  r.command = p.command;
  std::vector<std::string_view> s;
  switch (p.command) {
    case reply::kAccept: case reply::kContinue: case reply::kDiscard: case reply::kReject:
    case reply::kTempfail: case reply::kSkip: case reply::kProgress: case reply::kShutdown:
    case reply::kConnFail:
      r.valid = p.data.empty();
      break;
    case reply::kReplyCode:
      r.valid = parse_replycode(p.data, r);
      break;
    case reply::kAddHeader:  // name \0 value \0
      r.valid = split_strings(p.data, s) && s.size() == 2 && !s[0].empty();
      if (r.valid) r.name = s[0], r.value = s[1];
      break;
    case reply::kInsHeader:
    case reply::kChgHeader:  // index(4) name \0 value \0
      r.valid = p.data.size() > 4 && split_strings(std::string_view(p.data).substr(4), s) && s.size() == 2 &&
                !s[0].empty();
      if (r.valid) r.index = get32(p.data), r.name = s[0], r.value = s[1];
      break;
    case reply::kAddRcpt:
    case reply::kDelRcpt:
      r.valid = split_strings(p.data, s) && s.size() == 1 && !s[0].empty();
      if (r.valid) r.address = strip_brackets(s[0]);
      break;
    case reply::kAddRcptPar:
    case reply::kChgFrom:  // address \0 [args \0]
      r.valid = split_strings(p.data, s) && (s.size() == 1 || s.size() == 2) && !s[0].empty();
      if (r.valid) r.address = strip_brackets(s[0]), r.args = s.size() == 2 ? std::string(s[1]) : "";
      break;
    case reply::kQuarantine:
      r.valid = split_strings(p.data, s) && s.size() == 1;
      if (r.valid) r.value = s[0];
      break;
    case reply::kReplBody:
      r.valid = true;
      r.body = p.data;
      break;
    case reply::kSetSymList:
      r.valid = p.data.size() >= 4;
      break;
    default:
      r.valid = false;
  }
  return r;
}

Command decode_command(const Packet& p) {
  Command c;
  c.command = p.command;
  std::string_view d = p.data;
  std::vector<std::string_view> s;
  switch (p.command) {
    case cmd::kOptneg:
      c.valid = d.size() >= 12;
      if (c.valid) c.optneg = Negotiated{get32(d.substr(0, 4)), get32(d.substr(4, 4)), get32(d.substr(8, 4))};
      break;
    case cmd::kConnect: {  // hostname \0 family [port(2) address \0]
      std::size_t nul = d.find('\0');
      if (nul == std::string_view::npos || nul + 1 >= d.size()) break;
      c.hostname = std::string(d.substr(0, nul));
      c.family = d[nul + 1];
      std::string_view rest = d.substr(nul + 2);
      if (c.family == 'U') {
        c.valid = true;
        break;
      }
      if (c.family != '4' && c.family != '6' && c.family != 'L') break;
      if (rest.size() < 3) break;
      c.port = static_cast<std::uint16_t>(static_cast<unsigned char>(rest[0]) << 8 | static_cast<unsigned char>(rest[1]));
      c.valid = split_strings(rest.substr(2), s) && s.size() == 1;
      if (c.valid) c.address = std::string(s[0]);
      break;
    }
    case cmd::kHelo:
      c.valid = split_strings(d, s) && s.size() == 1;
      if (c.valid) c.helo = std::string(s[0]);
      break;
    case cmd::kMail:
    case cmd::kRcpt:
      c.valid = split_strings(d, s) && !s.empty() && !s[0].empty();
      for (std::string_view a : s) c.args.emplace_back(a);
      break;
    case cmd::kHeader:
      c.valid = split_strings(d, s) && s.size() == 2 && !s[0].empty();
      if (c.valid) c.name = std::string(s[0]), c.value = std::string(s[1]);
      break;
    case cmd::kMacro: {
      if (d.empty()) break;
      c.macro_stage = d[0];
      d.remove_prefix(1);
      if (d.empty()) {
        c.valid = true;
        break;
      }
      c.valid = split_strings(d, s) && s.size() % 2 == 0;
      for (std::size_t i = 0; c.valid && i + 1 < s.size(); i += 2) c.macros.emplace_back(s[i], s[i + 1]);
      break;
    }
    case cmd::kBody: case cmd::kBodyEob: case cmd::kUnknown:
      c.valid = true;
      c.body = p.data;
      break;
    case cmd::kAbort: case cmd::kData: case cmd::kEoh: case cmd::kQuit: case cmd::kQuitNc:
      c.valid = true;  // their data, if any, is ignored (Sendmail sends none)
      break;
    default:
      c.valid = false;
  }
  return c;
}

std::string encode_replycode(int code, std::string_view text) {
  std::string d;
  std::string_view rest = text;
  for (;;) {
    std::size_t nl = rest.find('\n');
    d += std::to_string(code);
    d.push_back(nl == std::string_view::npos ? ' ' : '-');
    d.append(rest.substr(0, nl));
    if (nl == std::string_view::npos) break;
    d.append("\r\n");
    rest.remove_prefix(nl + 1);
  }
  put_string(d, "");
  return encode(reply::kReplyCode, d);
}

std::string encode_header_reply(char command, std::uint32_t index, std::string_view name, std::string_view value) {
  std::string d;
  if (command != reply::kAddHeader) put32(d, index);
  put_string(d, name);
  put_string(d, value);
  return encode(command, d);
}

std::string encode_address_reply(char command, std::string_view address, std::string_view args) {
  std::string d;
  put_string(d, "<" + std::string(address) + ">");
  if (!args.empty()) put_string(d, args);
  return encode(command, d);
}

std::string encode_quarantine(std::string_view reason) {
  std::string d;
  put_string(d, reason);
  return encode(reply::kQuarantine, d);
}

}  // namespace postern::milter
