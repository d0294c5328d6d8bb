// A milter's modifications as Changes; see milter_actions.h.
#include "filters/milter/milter_actions.h"

#include "filters/address.h"
#include "filters/esmtp_param.h"

namespace postern {
namespace {

// Bounds on what one message's replies may add (each is an error past it).
constexpr std::size_t kMaxEdits = 256;
constexpr std::size_t kMaxHeaderValue = 16 * 1024;

// A header value from a milter: a fold ("\n" or "\r\n" then white space)
// becomes CRLF + the white space; any other control character a space, so
// no reply can end the header section or smuggle a line (DESIGN).
std::string clean_header_value(std::string_view v) {
  std::string out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    unsigned char c = v[i];
    if (c == '\r' && i + 1 < v.size() && v[i + 1] == '\n') continue;
    if (c == '\n' && i + 1 < v.size() && (v[i + 1] == ' ' || v[i + 1] == '\t') && !out.empty()) {
      out.append("\r\n");
      continue;
    }
    out.push_back((c < 32 && c != '\t') || c == 127 ? ' ' : static_cast<char>(c));
  }
  return out;
}

bool valid_header_name(std::string_view n) {
  if (n.empty() || n.size() > 200) return false;
  for (unsigned char c : n) {
    if (c <= 32 || c >= 127 || c == ':') return false;  // RFC 5322 §2.2 ftext
  }
  return true;
}

// A body from a milter in CRLF lines: a bare CR or LF becomes CRLF (one
// idea of where a line ends, DESIGN "Invariants").
void append_body(std::string& out, std::string_view piece, bool& pending_cr) {
  for (char c : piece) {
    if (pending_cr) {
      out.append("\r\n");
      pending_cr = false;
      if (c == '\n') continue;
    }
    if (c == '\r') pending_cr = true;
    else if (c == '\n') out.append("\r\n");
    else out.push_back(c);
  }
}

// A milter's ESMTP arguments for a new recipient or sender: validated
// (esmtp_param.h) before they may reach a command line. Refused ones are
// dropped, the address still applies (as Postfix's cleanup keeps the address
// and ignores the arguments); the note and the log say which and why.
std::vector<EsmtpParam> filter_params(std::string_view args, std::string& note, Changes& ch) {
  if (args.empty()) return {};
  EsmtpParamsParse parsed = parse_filter_esmtp_params(args);
  if (!parsed.error.empty()) {
    // Raw text for the log, which sanitizes it; the note (audit) names only why.
    ch.dropped_params.push_back(note + ": " + parsed.error + ": " + std::string(args.substr(0, 200)));
    note += " (arguments refused: " + parsed.error + ")";
    return {};
  }
  if (!parsed.params.empty()) note += " " + esmtp_params_text(parsed.params);
  return std::move(parsed.params);
}

}  // namespace

std::string apply_milter_modification(const milter::Reply& r, std::uint32_t actions, std::size_t max_body,
                                      MilterEom& eom) {
  std::string error;
  auto allowed = [&](std::uint32_t flag) {
    if (actions & flag) return true;
    error = std::string("action '") + r.command + "' not negotiated";
    return false;
  };
  Changes& ch = eom.changes;
  if (eom.actions.size() >= kMaxEdits) {  // every modification but a body piece adds one
    error = "too many modifications";
    return error;
  }
  auto mailbox = [&](const std::string& a, Mailbox& out) {
    // The whole text is one path: a valid path with anything after it
    // ("<x@y>\r\nRCPT TO:...", "x@y> NOTIFY=...") is no address.
    const std::string path = "<" + a + ">";
    PathParse pp = parse_path(path, true, true, true);
    if (pp.error != PathError::kNone || pp.end != path.size()) {
      error = "invalid address in reply";
      return false;
    }
    out = pp.mailbox;
    return true;
  };
  switch (r.command) {
    case milter::reply::kAddHeader:
    case milter::reply::kInsHeader:
    case milter::reply::kChgHeader: {
      if (!allowed(r.command == milter::reply::kChgHeader ? milter::action::kChgHdrs : milter::action::kAddHdrs)) return error;
      if (!valid_header_name(r.name) || r.value.size() > kMaxHeaderValue) {
        error = "invalid header field in reply";
        return error;
      }
      std::string value = clean_header_value(r.value);
      while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.erase(0, 1);
      if (r.command == milter::reply::kAddHeader) {
        ch.headers.push_back(HeaderEdit{HeaderEdit::Kind::kAdd, r.name, value});
        eom.actions.push_back("add_header " + r.name);
      } else if (r.command == milter::reply::kInsHeader) {
        // Position 0 is the top of the message's fields (below postern's
        // Received, which the milter never saw); N is before the Nth field.
        ch.headers.push_back(HeaderEdit{HeaderEdit::Kind::kInsert, r.name, value, r.index});
        eom.actions.push_back("insert_header " + r.name);
      } else if (r.value.empty()) {  // an empty value deletes (smfi_chgheader)
        ch.headers.push_back(HeaderEdit{HeaderEdit::Kind::kRemove, r.name, "", r.index == 0 ? 1 : r.index});
        eom.actions.push_back("delete_header " + r.name);
      } else {
        ch.headers.push_back(HeaderEdit{HeaderEdit::Kind::kChange, r.name, value, r.index == 0 ? 1 : r.index});
        eom.actions.push_back("change_header " + r.name);
      }
      return {};
    }
    case milter::reply::kAddRcpt:
    case milter::reply::kAddRcptPar: {
      if (!allowed(r.command == milter::reply::kAddRcpt ? milter::action::kAddRcpt : milter::action::kAddRcptPar)) return error;
      Mailbox mb;
      if (!mailbox(r.address, mb)) return error;
      if (mb.empty()) return error = "null address as a recipient in reply";
      ch.add_recipients.push_back(mb);
      std::string note = "add_rcpt <" + mb.str() + ">";
      if (std::vector<EsmtpParam> params = filter_params(r.args, note, ch); !params.empty()) {
        ch.add_recipient_params.emplace_back(mb.str(), std::move(params));
      }
      eom.actions.push_back(std::move(note));
      return {};
    }
    case milter::reply::kDelRcpt: {
      if (!allowed(milter::action::kDelRcpt)) return error;
      Mailbox mb;
      if (!mailbox(r.address, mb)) return error;
      ch.remove_recipients.push_back(mb);
      eom.actions.push_back("delete_rcpt <" + mb.str() + ">");
      return {};
    }
    case milter::reply::kChgFrom: {
      if (!allowed(milter::action::kChgFrom)) return error;
      Mailbox mb;
      if (!mailbox(r.address, mb)) return error;
      ch.reverse_path = mb;
      std::string note = "change_from <" + mb.str() + ">";
      ch.reverse_path_params = filter_params(r.args, note, ch);
      eom.actions.push_back(std::move(note));
      return {};
    }
    case milter::reply::kReplBody: {
      if (!allowed(milter::action::kChgBody)) return error;
      if (!ch.body) {
        ch.body.emplace();
        eom.actions.push_back("replace_body");
      }
      // A NUL is no text the MTA may be handed (postern refuses one from
      // the client too); the bound holds on the body as relayed, after
      // each bare line end became CRLF.
      if (r.body.find('\0') != std::string::npos) {
        error = "NUL in replaced body";
        return error;
      }
      append_body(*ch.body, r.body, eom.body_cr);
      if (ch.body->size() + (eom.body_cr ? 2 : 0) > max_body) {
        error = "replaced body too large";
        return error;
      }
      return {};
    }
    case milter::reply::kQuarantine:
      if (!allowed(milter::action::kQuarantine)) return error;
      if (!eom.quarantine) eom.actions.push_back("quarantine");
      eom.quarantine = r.value.substr(0, 200);
      return {};
    case milter::reply::kSetSymList:
      return {};  // only meaningful in negotiation: ignored
    default:
      error = std::string("unexpected reply '") + r.command + "'";
      return error;
  }
}

}  // namespace postern
