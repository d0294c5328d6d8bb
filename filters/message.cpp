// Header section parser and renderer; see message.h.
#include "filters/message.h"

#include <algorithm>

#include "filters/filter.h"
#include "filters/header_plan.h"
#include "filters/text/ascii.h"

namespace postern {

bool header_name_equals(std::string_view a, std::string_view b) { return ascii::iequals(a, b); }

std::size_t header_field_name_length(std::string_view line, std::size_t* colon) {
  std::size_t n = 0;
  while (n < line.size() && line[n] != ':' && static_cast<unsigned char>(line[n]) >= 33 &&
         static_cast<unsigned char>(line[n]) <= 126) {
    ++n;
  }
  if (n == 0) return 0;
  std::size_t at = n;
  while (at < line.size() && (line[at] == ' ' || line[at] == '\t')) ++at;
  if (at >= line.size() || line[at] != ':') return 0;
  if (colon) *colon = at;
  return n;
}

std::string fold_header_field(std::string_view name, std::string_view value, std::size_t soft) {
  constexpr std::size_t kHard = 990;
  const std::size_t kSoft = std::min(soft, kHard);
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  // Most fields fit on one line as they are: no word loop (the Received
  // field and the A-R of every message come here).
  if (name.size() + 2 + value.size() <= kSoft && !value.empty() && !space(value.front()) && !space(value.back()) &&
      value.find_first_of("\r\n") == std::string_view::npos) {
    std::string out;
    out.reserve(name.size() + value.size() + 4);
    out.append(name).append(": ").append(value).append("\r\n");
    return out;
  }
  std::string out;
  // The value, its name and a fold ("\r\n ") per soft line: one allocation.
  out.reserve(name.size() + value.size() + 3 * (value.size() / std::max<std::size_t>(kSoft, 1) + 2) + 4);
  out.append(name).append(":");
  std::size_t line = out.size();  // octets on the current line
  std::size_t i = 0;
  bool first = true;
  // Words with the white space before each, kept as written (CR and LF
  // dropped: a value folded before is folded anew); a fold goes before that
  // white space, which then starts the continuation line.
  while (i < value.size()) {
    std::string ws;
    while (i < value.size() && space(value[i])) {
      if (value[i] == ' ' || value[i] == '\t') ws.push_back(value[i]);
      ++i;
    }
    std::size_t word = i;
    while (i < value.size() && !space(value[i])) ++i;
    std::string_view w = value.substr(word, i - word);
    if (w.empty()) break;  // trailing white space
    if (ws.empty() && (first || word > 0)) ws = " ";  // after the colon, or where a bare CRLF was
    first = false;
    if (!ws.empty()) {
      if (line + ws.size() + w.size() > kSoft && line > 1) {
        out.append("\r\n");
        line = 0;
      }
      if (ws.size() > kSoft / 2) ws = " ";  // a run of white space longer than half a line is one space
      out.append(ws);
      line += ws.size();
    }
    // A word longer than a line can hold: broken where it must be.
    while (line + w.size() > kHard) {
      const std::size_t take = kHard > line ? kHard - line : 0;
      out.append(w.substr(0, take)).append("\r\n ");
      line = 1;
      w.remove_prefix(take);
    }
    out.append(w);
    line += w.size();
  }
  out.append("\r\n");
  return out;
}

std::string HeaderField::value() const {
  std::string_view v = raw;
  v.remove_prefix(std::min(v.size(), raw.find(':') + 1));  // "Name:" (or obsolete "Name :")
  std::string out;
  out.reserve(v.size());
  // Unfold (RFC 5322 §2.2.3): every CRLF goes, the white space after stays.
  for (std::size_t crlf; (crlf = v.find("\r\n")) != std::string_view::npos; v.remove_prefix(crlf + 2)) {
    out.append(v.substr(0, crlf));
  }
  out.append(v);
  std::size_t start = out.find_first_not_of(" \t");
  if (start == std::string::npos) return {};
  std::size_t end = out.find_last_not_of(" \t");
  return out.substr(start, end - start + 1);
}

Message::Message(const Spool& spool, HeaderLimits limits) : spool_(&spool) {
  // The first max_bytes octets (the empty line counts), in place when the
  // spool is in memory.
  std::string block;
  const std::string_view text = spool.head(std::min(limits.max_bytes, spool.size()), block);
  const std::size_t got = text.size();
  headers_.reserve(16);  // mail has 10-30 fields: one or two growths, not five
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t eol = text.find("\r\n", pos);
    if (eol == std::string_view::npos) {
      // No line end within the block: all header (a message without body),
      // or a header section longer than we parse.
      truncated_ = got < spool.size();
      if (!truncated_ && pos < text.size()) {
        // A last field without CRLF cannot occur in spooled content; treat as body.
      }
      break;
    }
    std::string_view line = text.substr(pos, eol - pos);
    if (line.empty()) {  // the empty line ending the header section
      header_end_ = pos;
      body_offset_ = eol + 2;
      return;
    }
    if (line[0] == ' ' || line[0] == '\t') {
      if (headers_.empty()) break;  // continuation without a field: body starts here
      headers_.back().raw.append(text.substr(pos, eol + 2 - pos));
      pos = eol + 2;
      continue;
    }
    const std::size_t name = header_field_name_length(line);
    // Not a field: the body starts here without an empty line, where the MTA
    // (Postfix's is_header()) starts it too.
    if (name == 0) break;
    if (headers_.size() >= limits.max_fields) {
      truncated_ = true;
      break;
    }
    // The field with its continuation lines, copied once (a folded field was
    // appended to line by line: a DKIM-Signature of ~8 lines grew its
    // string 8 times, twice a message).
    std::size_t end = eol + 2;
    while (end < text.size() && (text[end] == ' ' || text[end] == '\t')) {
      const std::size_t next = text.find("\r\n", end);
      if (next == std::string_view::npos) break;  // no line end: left to the top of the loop
      end = next + 2;
    }
    headers_.push_back(HeaderField{std::string(line.substr(0, name)), std::string(text.substr(pos, end - pos))});
    pos = end;
  }
  if (pos >= text.size() && got < spool.size()) truncated_ = true;
  // Cut inside a folded field: that field is left to the unparsed rest, whole,
  // so the rendered header block ends at a field boundary and the rest follows
  // unchanged (else an empty line would be inserted into the field).
  char next = pos < text.size() ? text[pos] : 0;
  if (truncated_ && pos >= text.size() && spool.read(pos, &next, 1) != 1) next = 0;
  if (truncated_ && !headers_.empty() && (next == ' ' || next == '\t')) {
    pos -= headers_.back().raw.size();
    headers_.pop_back();
  }
  header_end_ = body_offset_ = pos;
}

bool Message::body_would_fold() const {
  if (body_offset_ != header_end_ || body_offset_ >= spool_->size()) return false;
  char c = 0;
  return spool_->read(body_offset_, &c, 1) == 1 && (c == ' ' || c == '\t');
}

std::optional<std::string> Message::first(std::string_view name) const {
  for (const HeaderField& f : headers_) {
    if (header_name_equals(f.name, name)) return f.value();
  }
  return std::nullopt;
}

std::vector<std::string> Message::all(std::string_view name) const {
  std::vector<std::string> out;
  for (const HeaderField& f : headers_) {
    if (header_name_equals(f.name, name)) out.push_back(f.value());
  }
  return out;
}

namespace {
void append_field(std::string& out, std::string_view name, std::string_view value) {
  out.append(fold_header_field(name, value));
}
}  // namespace

std::string render_header_block(const Message& message, const Changes& changes, std::string_view trace) {
  std::string out(trace);
  for (const HeaderEdit& e : changes.headers) {
    if (e.kind == HeaderEdit::Kind::kPrepend) append_field(out, e.name, e.value);
  }
  // What happens to each field is decided once (header_plan.h), for the
  // milter server's modifications too.
  const HeaderPlan plan = plan_header_edits(message, changes);
  auto insert = plan.inserts.begin();
  auto insert_before = [&](std::size_t position) {
    for (; insert != plan.inserts.end() && insert->before == position; ++insert) {
      append_field(out, insert->edit->name, insert->edit->value);
    }
  };
  for (std::size_t f = 0; f < message.headers().size(); ++f) {
    const HeaderField& field = message.headers()[f];
    const PlannedField& planned = plan.fields[f];
    insert_before(f);
    switch (planned.fate) {
      case PlannedField::Fate::kKeep:
        out.append(field.raw);
        break;
      case PlannedField::Fate::kRemove:
        break;
      case PlannedField::Fate::kChange:
        append_field(out, field.name, planned.value);
        break;
      case PlannedField::Fate::kTag: {
        // The tag goes in front of the raw value, so the field keeps its folds;
        // when the first line would grow past 78 octets the tag gets a line of
        // its own (a fold after it), so no line grows past what was received
        // (RFC 5322 §2.1.1) however long the client made it.
        std::string raw = field.raw;
        std::size_t at = raw.find(':') + 1;
        if (at < raw.size() && raw[at] == ' ') ++at;
        const std::size_t first_line = raw.find("\r\n");
        const std::string_view tag = changes.subject_tag;
        if (first_line != std::string::npos && first_line + tag.size() + 1 > 78 && at < first_line) {
          raw.insert(at, fold_header_field("", tag).substr(2) + " ");  // "tag\r\n " (tag itself folded)
        } else {
          raw.insert(at, std::string(tag) + " ");
        }
        out.append(raw);
        break;
      }
    }
  }
  insert_before(message.headers().size());
  if (plan.add_subject) append_field(out, "Subject", changes.subject_tag);
  for (const HeaderEdit& e : changes.headers) {
    if (e.kind == HeaderEdit::Kind::kAdd) append_field(out, e.name, e.value);
  }
  // Whatever separated the header section from the body (the empty line), as received.
  std::size_t gap = message.body_offset() - message.header_end_;
  if (gap > 0) {
    std::string sep(gap, '\0');
    message.spool().read(message.header_end_, sep.data(), gap);
    out.append(sep);
  } else if (message.body_would_fold()) {
    out.append("\r\n");
  }
  return out;
}

const char* stage_name(Stage stage) {
  switch (stage) {
    case Stage::kConnect: return "connect";
    case Stage::kHelo: return "helo";
    case Stage::kMail: return "mail";
    case Stage::kRcpt: return "rcpt";
    case Stage::kData: return "data";
    case Stage::kEom: return "eom";
    case Stage::kClose: return "close";
  }
  return "?";
}

const char* action_name(Verdict::Action action) {
  switch (action) {
    case Verdict::Action::kContinue: return "continue";
    case Verdict::Action::kAccept: return "accept";
    case Verdict::Action::kReject: return "reject";
    case Verdict::Action::kTempfail: return "tempfail";
    case Verdict::Action::kDiscard: return "discard";
    case Verdict::Action::kQuarantine: return "quarantine";
    case Verdict::Action::kDisconnect: return "disconnect";
  }
  return "?";
}

}  // namespace postern
