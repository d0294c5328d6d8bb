// What became of a message that reached its end of data (or of a transaction
// refused at MAIL): one enum, named once for the log line, the audit record,
// the postern_messages_total series and `postern status`.
#pragma once

#include <cstddef>
#include <string_view>

namespace postern {

enum class Outcome { kRelayed, kRejected, kTempfailed, kDiscarded, kQuarantined, kRedirected, kCount };

inline constexpr std::string_view kOutcomeNames[] = {"relayed",     "rejected",  "tempfailed", "discarded",
                                                     "quarantined", "redirected"};
static_assert(std::size(kOutcomeNames) == static_cast<std::size_t>(Outcome::kCount));

constexpr std::string_view outcome_name(Outcome o) { return kOutcomeNames[static_cast<std::size_t>(o)]; }

}  // namespace postern
