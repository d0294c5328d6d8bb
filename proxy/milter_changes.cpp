// Changes → milter modifications; see milter_changes.h.
#include "proxy/milter_changes.h"

#include <algorithm>
#include <vector>

#include "filters/header_plan.h"
#include "filters/milter/milter_protocol.h"

namespace postern {
namespace {

namespace m = milter;

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

  // The same plan render_header_block follows (filters/header_plan.h).
  const HeaderPlan plan = plan_header_edits(message, c);
  if (plan.changes_fields() && allowed(actions, m::action::kChgHdrs, "change header fields", error)) {
    // The last occurrence first: a deletion then never moves the index of
    // one still to come.
    for (std::size_t f = plan.fields.size(); f-- > 0;) {
      const PlannedField& planned = plan.fields[f];
      const std::string& name = message.headers()[f].name;
      if (planned.fate == PlannedField::Fate::kRemove) {
        out += m::encode_header_reply(m::reply::kChgHeader, planned.occurrence, name, "");
      } else if (planned.fate != PlannedField::Fate::kKeep) {
        header(m::reply::kChgHeader, planned.occurrence, name, planned.value);
      }
    }
  }
  const bool add_subject = plan.add_subject;
  const bool adds = add_subject || std::any_of(c.headers.begin(), c.headers.end(), [](const HeaderEdit& e) {
    return e.kind == HeaderEdit::Kind::kAdd || e.kind == HeaderEdit::Kind::kPrepend ||
           e.kind == HeaderEdit::Kind::kInsert;
  });
  if (adds && allowed(actions, m::action::kAddHdrs, "add header fields", error)) {
    if (add_subject) header(m::reply::kAddHeader, 0, "Subject", c.subject_tag);
    for (const HeaderEdit& e : c.headers) {
      if (e.kind == HeaderEdit::Kind::kAdd) header(m::reply::kAddHeader, 0, e.name, e.value);
    }
    // A [[milter]]'s SMFIR_INSHEADER where the plan puts it, bottom up: each
    // then goes before what is there, above the ones already placed, and
    // counts positions without the fields removed above (already gone at the MTA).
    const std::vector<std::size_t> removed = removed_before(plan);
    for (auto it = plan.inserts.rbegin(); it != plan.inserts.rend(); ++it) {
      header(m::reply::kInsHeader, static_cast<std::uint32_t>(it->before - removed[it->before]), it->edit->name,
             it->edit->value);
    }
    // Each insertion at the top pushes the one before it down: the last
    // prepended field goes in first, so they read in the order they were added.
    for (auto it = c.headers.rbegin(); it != c.headers.rend(); ++it) {
      if (it->kind == HeaderEdit::Kind::kPrepend) header(m::reply::kInsHeader, 0, it->name, it->value);
    }
  }

  if (c.reverse_path && allowed(actions, m::action::kChgFrom, "change the sender", error)) {
    out += m::encode_address_reply(m::reply::kChgFrom, c.reverse_path->str(), esmtp_params_text(c.reverse_path_params));
  }
  std::vector<Mailbox> removed, added;
  if (c.redirect) {
    removed = t.recipients;
    added = *c.redirect;
  } else {
    removed = c.remove_recipients;
    added = c.add_recipients;
  }
  // What the MTA is left with, as Delivery::redo_envelope computes it.
  no_recipients_left = c.recipients_after(t.recipients).empty();
  if (!removed.empty() && allowed(actions, m::action::kDelRcpt, "remove recipients", error)) {
    for (const Mailbox& r : removed) out += m::encode_address_reply(m::reply::kDelRcpt, r.str());
  }
  if (!added.empty() && allowed(actions, m::action::kAddRcpt, "add recipients", error)) {
    for (const Mailbox& a : added) {
      // A [[milter]]'s parameters (SMFIR_ADDRCPT_PAR) where the MTA takes them.
      const std::vector<EsmtpParam>& params = c.redirect ? std::vector<EsmtpParam>{} : c.params_of_added(a);
      if (!params.empty() && (actions & m::action::kAddRcptPar)) {
        out += m::encode_address_reply(m::reply::kAddRcptPar, a.str(), esmtp_params_text(params));
      } else {
        out += m::encode_address_reply(m::reply::kAddRcpt, a.str());
      }
    }
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
