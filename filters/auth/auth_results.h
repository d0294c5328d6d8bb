// The authenticity results of one transaction (TransactionFacts::results, types
// in filters/auth/auth_types.h): how each check records its part, and their
// view as notes under the keys "spf.*", "dkim.N.*" and "dmarc.*" (docs/
// authentication.md), which Lua rules read through ctx.notes.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "filters/auth/auth_types.h"
#include "filters/filter.h"

namespace postern {

// The transaction's authenticity results (TransactionFacts::results); the
// const form reads an empty AuthResults when no check has run.
AuthResults& auth_results(TransactionFacts& t);
const AuthResults& auth_results(const TransactionFacts& t);

void store(TransactionFacts& t, const SpfOutcome& spf);
void store(TransactionFacts& t, const std::vector<DkimSignature>& dkim);
void store(TransactionFacts& t, const DmarcOutcome& dmarc);

// The note `key` ("spf.result", "dkim.2.domain", ...) of these results, or
// nothing when the key is not one of them or its check has not run.
std::optional<std::string> auth_note(const AuthResults& auth, std::string_view key);
// Every such note, in key order.
std::vector<std::pair<std::string, std::string>> auth_notes(const AuthResults& auth);
// Whether `key` names an authenticity result ("spf.", "dkim.", "dmarc."):
// those notes are read-only for the rules.
bool is_auth_note_key(std::string_view key);

std::optional<SpfResult> parse_spf_result(std::string_view s);

}  // namespace postern
