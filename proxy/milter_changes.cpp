// Changes → milter modifications; see milter_changes.h.
#include "proxy/milter_changes.h"

#include <algorithm>
#include <vector>

#include "filters/milter/milter_protocol.h"

namespace postern {
namespace {

namespace m = milter;

// One existing field to change (value) or delete (nullopt), by name and
// 1-based occurrence among the fields of that name.
struct FieldChange {
  std::string name;
  std::uint32_t occurrence = 0;
  std::optional<std::string> value;
};

// The per-field outcome of kChange / kRemove edits and the subject tag, as
// render_header_block decides it (a remove wins; the last change applies;
// the tag goes on the first Subject unless it is there already).
std::vector<FieldChange> field_changes(const Message& message, const Changes& changes, bool& subject_seen) {
  std::vector<FieldChange> out;
  std::vector<std::size_t> seen(changes.headers.size(), 0);
  std::vector<std::pair<std::string, std::uint32_t>> counts;  // occurrences per name so far
  subject_seen = false;
  for (const HeaderField& field : message.headers()) {
    std::uint32_t occurrence = 1;
    auto it = std::find_if(counts.begin(), counts.end(),
                           [&](const auto& c) { return header_name_equals(c.first, field.name); });
    if (it == counts.end()) counts.emplace_back(field.name, 1);
    else occurrence = ++it->second;
    bool removed = false;
    const HeaderEdit* replacement = nullptr;
    for (std::size_t i = 0; i < changes.headers.size(); ++i) {
      const HeaderEdit& e = changes.headers[i];
      if ((e.kind != HeaderEdit::Kind::kChange && e.kind != HeaderEdit::Kind::kRemove) ||
          !header_name_equals(e.name, field.name)) {
        continue;
      }
      ++seen[i];
      if (e.index != 0 && e.index != seen[i]) continue;
      if (e.kind == HeaderEdit::Kind::kRemove) removed = true;
      else replacement = &e;
    }
    if (removed) {
      out.push_back({field.name, occurrence, std::nullopt});
      continue;
    }
    std::optional<std::string> value;
    if (replacement) value = replacement->value;
    if (!subject_seen && header_name_equals(field.name, "Subject")) {
      subject_seen = true;
      const std::string& tag = changes.subject_tag;
      std::string current = value ? *value : field.value();
      if (!tag.empty() && current.compare(0, tag.size(), tag) != 0) value = tag + " " + current;
    }
    if (value) out.push_back({field.name, occurrence, std::move(value)});
  }
  return out;
}

bool allowed(std::uint32_t actions, std::uint32_t needed, const char* what, std::string& error) {
  if ((actions & needed) == needed) return true;
  if (error.empty()) error = std::string("the MTA does not allow the milter to ") + what;
  return false;
}

}  // namespace

std::string milter_header_value(std::string_view field, std::size_t name_size, bool leading_space) {
  std::string_view v = field.substr(std::min(field.size(), name_size + 1));  // after "Name:"
  if (v.ends_with("\r\n")) v.remove_suffix(2);
  if (!leading_space && !v.empty() && v.front() == ' ') v.remove_prefix(1);
  std::string out;
  out.reserve(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (v[i] == '\r' && i + 1 < v.size() && v[i + 1] == '\n') continue;  // CRLF WSP → LF WSP
    out.push_back(v[i]);
  }
  return out;
}

std::string milter_modifications(const Message& message, const TransactionFacts& t, std::uint32_t actions,
                                 bool leading_space, std::string& error, bool& no_recipients_left) {
  const Changes& c = t.changes;
  std::string out;
  no_recipients_left = false;
  auto header = [&](char command, std::uint32_t index, std::string_view name, std::string_view value) {
    std::string field = fold_header_field(name, value);
    out += m::encode_header_reply(command, index, name, milter_header_value(field, name.size(), leading_space));
  };

  bool subject_seen = false;
  std::vector<FieldChange> changed = field_changes(message, c, subject_seen);
  if (!changed.empty() && allowed(actions, m::action::kChgHdrs, "change header fields", error)) {
    // The last occurrence first: a deletion then never moves the index of
    // one still to come.
    for (auto it = changed.rbegin(); it != changed.rend(); ++it) {
      if (it->value) header(m::reply::kChgHeader, it->occurrence, it->name, *it->value);
      else out += m::encode_header_reply(m::reply::kChgHeader, it->occurrence, it->name, "");
    }
  }
  const bool add_subject = !c.subject_tag.empty() && !subject_seen;
  const bool adds = add_subject || std::any_of(c.headers.begin(), c.headers.end(), [](const HeaderEdit& e) {
    return e.kind == HeaderEdit::Kind::kAdd || e.kind == HeaderEdit::Kind::kPrepend ||
           e.kind == HeaderEdit::Kind::kInsert;
  });
  if (adds && allowed(actions, m::action::kAddHdrs, "add header fields", error)) {
    if (add_subject) header(m::reply::kAddHeader, 0, "Subject", c.subject_tag);
    for (const HeaderEdit& e : c.headers) {
      if (e.kind == HeaderEdit::Kind::kAdd) header(m::reply::kAddHeader, 0, e.name, e.value);
    }
    // A [[milter]]'s SMFIR_INSHEADER passed on with its position, in its
    // order (each goes before what is there then, as render_header_block has it).
    for (const HeaderEdit& e : c.headers) {
      if (e.kind == HeaderEdit::Kind::kInsert) {
        header(m::reply::kInsHeader, static_cast<std::uint32_t>(e.index), e.name, e.value);
      }
    }
    // Each insertion at the top pushes the one before it down: the last
    // prepended field goes in first, so they read in the order they were added.
    for (auto it = c.headers.rbegin(); it != c.headers.rend(); ++it) {
      if (it->kind == HeaderEdit::Kind::kPrepend) header(m::reply::kInsHeader, 0, it->name, it->value);
    }
  }

  if (c.reverse_path && allowed(actions, m::action::kChgFrom, "change the sender", error)) {
    out += m::encode_address_reply(m::reply::kChgFrom, c.reverse_path->str());
  }
  std::vector<Mailbox> removed, added;
  if (c.redirect) {
    removed = t.recipients;
    added = *c.redirect;
  } else {
    removed = c.remove_recipients;
    added = c.add_recipients;
  }
  // What the MTA is left with, as Session::redo_envelope computes it.
  std::vector<Mailbox> left = c.redirect ? *c.redirect : t.recipients;
  if (!c.redirect) {
    left.insert(left.end(), c.add_recipients.begin(), c.add_recipients.end());
    std::erase_if(left, [&](const Mailbox& m) {
      return std::any_of(removed.begin(), removed.end(), [&](const Mailbox& r) { return r.str() == m.str(); });
    });
  }
  no_recipients_left = left.empty();
  if (!removed.empty() && allowed(actions, m::action::kDelRcpt, "remove recipients", error)) {
    for (const Mailbox& r : removed) out += m::encode_address_reply(m::reply::kDelRcpt, r.str());
  }
  if (!added.empty() && allowed(actions, m::action::kAddRcpt, "add recipients", error)) {
    for (const Mailbox& a : added) out += m::encode_address_reply(m::reply::kAddRcpt, a.str());
  }

  if (c.body && allowed(actions, m::action::kChgBody, "replace the body", error)) {
    std::string_view body = *c.body;
    if (body.empty()) out += m::encode(m::reply::kReplBody, "");
    for (std::size_t at = 0; at < body.size(); at += m::kBodyChunk) {
      out += m::encode(m::reply::kReplBody, body.substr(at, m::kBodyChunk));
    }
  }
  return out;
}

}  // namespace postern
