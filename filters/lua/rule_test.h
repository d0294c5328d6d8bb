// `postern test`: runs Lua rules offline against fixture files (a TOML file
// naming an .eml message, the client, the envelope, static DNS answers and
// the expected outcome) and prints PASS/FAIL per fixture — the tool a mail
// admin uses before deploying a rule (like rspamc or miltertest).
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "filters/auth/auth_options.h"
#include "filters/filter_chain.h"
#include "filters/lua/lua_options.h"

namespace postern {

struct RuleTestOptions {
  // Scripts, module path, limits and settings; a fixture may name its own
  // scripts and settings instead. `log` and `store` are ignored: each fixture
  // gets a fresh in-process store and its log lines are printed on failure.
  LuaOptions lua;
  ScoreThresholds scores;
  // A fixture with `authenticity = true` runs the real SPF, DKIM, DMARC and
  // Authentication-Results filters (these options, every check enabled)
  // before the rules, resolving through libunbound with its [[dns]] records.
  AuthOptions auth;
  bool verbose = false;  // print every run's outcome, not only failures
};

// Runs every fixture (files, or directories whose *.toml files run in name
// order); prints one line per fixture and a summary to `out`. Returns 0 when
// all pass, 1 when any fails, 2 when a fixture or script cannot be read.
int run_rule_tests(const std::vector<std::string>& fixtures, const RuleTestOptions& options, std::ostream& out);

}  // namespace postern
