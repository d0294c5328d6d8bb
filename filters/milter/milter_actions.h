// What a milter's end-of-message modifications (SMFIR_ADDHEADER ...
// SMFIR_QUARANTINE) become in postern's own Changes, for the milter client
// (milter_filter.cpp drives the stages; this applies the answers). I/O-free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "filters/filter.h"
#include "filters/milter/milter_protocol.h"

namespace postern {

// The changes one end of message brings, applied only when the milter
// finished answering (a milter failing halfway adds nothing).
struct MilterEom {
  Changes changes;
  std::optional<std::string> quarantine;
  std::vector<std::string> actions;  // for the notes and the audit record
  bool ended = false;                // the milter answered end of message
  bool body_cr = false;              // a replaced body's last piece ended in CR
};

// Adds one modification to `eom` when the milter negotiated it (`actions`,
// SMFIF_*); returns why not otherwise (an error of the milter), "" when applied.
// Header values are cleaned (a fold stays a fold, other controls become
// spaces); a replaced body becomes CRLF lines of at most `max_body` octets;
// at most 256 modifications a message.
std::string apply_milter_modification(const milter::Reply& r, std::uint32_t actions, std::size_t max_body,
                                      MilterEom& eom);

}  // namespace postern
