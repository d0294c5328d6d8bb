// The planned header edits; see header_plan.h.
#include "filters/header_plan.h"

#include <algorithm>
#include <utility>

#include "filters/filter.h"
#include "filters/message.h"

namespace postern {

bool HeaderPlan::changes_fields() const {
  return std::any_of(fields.begin(), fields.end(),
                     [](const PlannedField& f) { return f.fate != PlannedField::Fate::kKeep; });
}

HeaderPlan plan_header_edits(const Message& message, const Changes& changes) {
  HeaderPlan plan;
  const std::vector<HeaderField>& headers = message.headers();
  plan.fields.resize(headers.size());
  std::vector<std::uint32_t> seen(changes.headers.size(), 0);  // per edit: matching fields so far
  std::vector<std::pair<std::string_view, std::uint32_t>> counts;  // per name edited: fields so far
  const std::string& tag = changes.subject_tag;
  bool subject_done = tag.empty();
  for (std::size_t f = 0; f < headers.size(); ++f) {
    const HeaderField& field = headers[f];
    PlannedField& planned = plan.fields[f];
    bool removed = false;
    bool named = false;  // some edit names this field: its occurrence may be needed
    const HeaderEdit* replacement = nullptr;
    for (std::size_t i = 0; i < changes.headers.size(); ++i) {
      const HeaderEdit& e = changes.headers[i];
      if ((e.kind != HeaderEdit::Kind::kChange && e.kind != HeaderEdit::Kind::kRemove) ||
          !header_name_equals(e.name, field.name)) {
        continue;
      }
      named = true;
      ++seen[i];
      if (e.index != 0 && e.index != seen[i]) continue;
      if (e.kind == HeaderEdit::Kind::kRemove) removed = true;
      else replacement = &e;
    }
    // Occurrences are counted only for names an edit or the tag may touch:
    // at most one counter per edit, so the plan stays linear in the fields.
    if (named || (!tag.empty() && header_name_equals(field.name, "Subject"))) {
      auto count = std::find_if(counts.begin(), counts.end(),
                                [&](const auto& c) { return header_name_equals(c.first, field.name); });
      if (count == counts.end()) counts.emplace_back(field.name, 1);
      else planned.occurrence = ++count->second;
    }
    if (removed) {
      planned.fate = PlannedField::Fate::kRemove;
      continue;
    }
    if (replacement) {
      planned.fate = PlannedField::Fate::kChange;
      planned.value = replacement->value;
    }
    if (!subject_done && header_name_equals(field.name, "Subject")) {
      subject_done = true;
      std::string current = replacement ? replacement->value : field.value();
      if (current.compare(0, tag.size(), tag) != 0) {
        planned.fate = replacement ? PlannedField::Fate::kChange : PlannedField::Fate::kTag;
        planned.value = tag + " " + current;
      }
    }
  }
  plan.add_subject = !subject_done;
  for (auto it = changes.headers.rbegin(); it != changes.headers.rend(); ++it) {
    if (it->kind == HeaderEdit::Kind::kInsert) plan.inserts.push_back({std::min(it->index, headers.size()), &*it});
  }
  std::stable_sort(plan.inserts.begin(), plan.inserts.end(),
                   [](const PlannedInsert& a, const PlannedInsert& b) { return a.before < b.before; });
  return plan;
}

std::vector<std::size_t> removed_before(const HeaderPlan& plan) {
  std::vector<std::size_t> out(plan.fields.size() + 1, 0);
  for (std::size_t f = 0; f < plan.fields.size(); ++f) {
    out[f + 1] = out[f] + (plan.fields[f].fate == PlannedField::Fate::kRemove ? 1 : 0);
  }
  return out;
}

}  // namespace postern
