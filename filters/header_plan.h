// What the filters' header edits (Changes::headers, the subject tag) do to
// each field of a message: decided once, here, for both consumers — the
// proxy's relayed header section (render_header_block) and the milter
// server's modifications to the MTA's copy (proxy/milter_changes.cpp) — so
// the two can never disagree. I/O-free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace postern {

class Message;
struct Changes;
struct HeaderEdit;

// The fate of one of the message's fields.
struct PlannedField {
  enum class Fate {
    kKeep,    // as received
    kRemove,  // a kRemove edit matched it (a removal wins over any change)
    kChange,  // replaced by `value` (the last matching kChange, tagged if it is the tagged Subject)
    kTag,     // the subject tag goes in front of its own value; `value` is the result
  };
  Fate fate = Fate::kKeep;
  // 1-based among the message's fields of its name (SMFIR_CHGHEADER's
  // index); counted for the fields an edit or the tag names, 1 for the rest.
  std::uint32_t occurrence = 1;
  std::string value;             // kChange, kTag: the new unfolded value
};

// A kInsert edit (a milter's SMFIR_INSHEADER) placed before the message's
// field `before` (fields.size(): after the last field).
struct PlannedInsert {
  std::size_t before = 0;
  const HeaderEdit* edit = nullptr;  // in the Changes the plan was made from
};

struct HeaderPlan {
  std::vector<PlannedField> fields;  // one per message.headers(), in order
  // The kInsert edits in the order they appear in the result: by position,
  // and the later of two at one position first, as each inserts before what
  // is there (libmilter); a position past the last field is after it.
  std::vector<PlannedInsert> inserts;
  // A subject tag and no Subject field left to carry it: a Subject field is
  // added, its value the tag, after the inserted fields and before kAdd ones.
  bool add_subject = false;
  bool changes_fields() const;  // any field not kept
};

// kChange / kRemove edits match by name (case-insensitive) and index (1-based
// occurrence, 0 = every one); the tag goes on the first Subject not removed,
// unless its value starts with the tag already. Prepended and added fields
// (kPrepend above all, kAdd below all, in their order) need no plan. The
// plan points into `changes`, which must outlive it.
HeaderPlan plan_header_edits(const Message& message, const Changes& changes);

// For each of the message's positions 0..fields.size(): how many fields
// before it the plan removes (an MTA that applied the removals first counts
// positions without them).
std::vector<std::size_t> removed_before(const HeaderPlan& plan);

}  // namespace postern
