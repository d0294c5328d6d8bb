// Verdict → reply; see verdict_reply.h.
#include "proxy/verdict_reply.h"

#include <cstdio>

namespace postern {
namespace {

constexpr std::size_t kMaxReplyText = 200;
constexpr std::size_t kMaxReplyLines = 10;

// A rule's text reaches the wire: printable ASCII only, bounded.
std::string clean_text(std::string_view text) {
  std::string out;
  for (unsigned char c : text.substr(0, kMaxReplyText)) out.push_back(c >= 32 && c < 127 ? static_cast<char>(c) : ' ');
  return out;
}

bool valid_enhanced(std::string_view e, char klass) {
  // class "." 1*3digit "." 1*3digit (RFC 3463 §2)
  if (e.size() < 5 || e[0] != klass || e[1] != '.') return false;
  int parts = 2, digits = 0;  // "X." is read: subject and detail follow
  for (std::size_t i = 2; i < e.size(); ++i) {
    if (e[i] == '.') {
      if (digits == 0 || ++parts > 3) return false;
      digits = 0;
    } else if (e[i] >= '0' && e[i] <= '9') {
      if (++digits > 3) return false;
    } else {
      return false;
    }
  }
  return parts == 3 && digits > 0;
}

}  // namespace

Reply verdict_reply(const Verdict& v, Stage stage) {
  int code = 250;
  std::string enhanced = "2.0.0";
  std::string text = "Ok";
  const bool envelope = stage == Stage::kHelo || stage == Stage::kMail || stage == Stage::kRcpt;
  switch (v.action) {
    case Verdict::Action::kReject:
      code = envelope ? 550 : 554;
      enhanced = "5.7.1";
      text = "Rejected by policy";
      break;
    case Verdict::Action::kTempfail:
      code = 451;
      enhanced = "4.7.1";
      text = "Try again later";
      break;
    case Verdict::Action::kDisconnect:
      code = 421;
      enhanced = "4.7.0";
      text = "Closing connection";
      break;
    default:
      break;
  }
  const int klass = code / 100;
  if (v.code / 100 == klass && v.code % 100 < 60) code = v.code;
  if (!v.enhanced.empty() && valid_enhanced(v.enhanced, static_cast<char>('0' + klass))) enhanced = v.enhanced;
  if (v.text.empty()) return Reply{code, enhanced + " " + text};
  // "\n" separates the lines of a multi-line reply (a milter's
  // SMFIR_REPLYCODE); each line is cleaned and carries the enhanced code.
  std::string out;
  std::string_view rest = v.text;
  for (std::size_t lines = 0; lines < kMaxReplyLines; ++lines) {
    std::size_t nl = rest.find('\n');
    if (lines) out.push_back('\n');
    out.append(enhanced).append(" ").append(clean_text(rest.substr(0, nl)));
    if (nl == std::string_view::npos) break;
    rest.remove_prefix(nl + 1);
  }
  return Reply{code, out};
}

}  // namespace postern
