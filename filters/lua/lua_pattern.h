// string.find, string.match, string.gmatch and string.gsub with Lua 5.4's
// pattern semantics, counting their steps: the instruction hook cannot
// interrupt a C function, so Lua's own matcher ("a*a*a*b" over 60 kB, the
// trim idiom over a run of spaces) can hold a thread for minutes (issue 17,
// STYLE "Known traps"). Every kPatternCheckSteps steps the matcher calls the
// budget check it was registered with, which raises a Lua error once the
// rule's deadline has passed. Not for use outside filters/lua/.
#pragma once

#include <lua.hpp>

namespace postern {

// Raises a Lua error (does not return) when the running rule is over its
// budget; returns otherwise.
using PatternBudgetCheck = void (*)(lua_State* L);

// Steps between two budget checks: one step is one entry of the recursive
// matcher or one character a repetition or %b scans (~2 ns each).
inline constexpr unsigned kPatternCheckSteps = 4096;

// Sets find, match, gmatch and gsub in the table at `table_idx` to the
// counting versions. `check` must outlive the state (a function, not a
// closure).
void register_bounded_patterns(lua_State* L, int table_idx, PatternBudgetCheck check);

}  // namespace postern
