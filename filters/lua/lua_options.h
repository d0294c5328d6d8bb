// What the Lua rule engine is configured with ([lua] in the configuration)
// and the runtime services it is handed (log sink, key-value store). Plain
// data: the proxy fills it, make_lua_filter() reads it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace postern {

class KeyValueStore;

enum class LuaLogLevel { kDebug, kInfo, kWarning, kError };

// A value of [lua.settings], handed to scripts as the read-only table
// postern.settings. kList and kTable keep their items in `items`; kTable
// names them in `keys` (same order).
struct LuaSetting {
  enum class Kind { kBool, kInteger, kNumber, kString, kList, kTable } kind = Kind::kTable;
  bool boolean = false;
  std::int64_t integer = 0;
  double number = 0;
  std::string string;
  std::vector<std::string> keys;
  std::vector<LuaSetting> items;
};

struct LuaOptions {
  enum class OnError { kTempfail, kContinue };

  // Rule scripts: files, or directories whose *.lua files load in name order.
  std::vector<std::string> scripts;
  // Directories postern's require("name") searches for name.lua.
  std::vector<std::string> module_path;
  OnError on_error = OnError::kTempfail;  // for rules that do not say

  // Per rule invocation: VM instructions, and wall-clock time including waits.
  std::uint64_t instruction_budget = 10'000'000;
  std::chrono::milliseconds timeout{5000};
  // Per Lua state (one per I/O thread): bytes the allocator will hand out.
  std::size_t memory_limit = 64u * 1024 * 1024;
  // string.find/match/gmatch/gsub refuse subjects longer than this (the
  // instruction budget cannot interrupt a C function; STYLE "Known traps").
  std::size_t pattern_subject_limit = 64 * 1024;
  // Decoded header values handed to scripts, and values scripts add, are cut
  // (read) or refused (write) past this.
  std::size_t header_value_limit = 16 * 1024;
  // ctx.body: octets of the message scanned for MIME parts and lines; octets
  // of each decoded text part; number of text parts.
  std::size_t body_scan_limit = 10u * 1024 * 1024;
  std::size_t text_part_limit = 1024 * 1024;
  std::size_t text_parts_max = 32;

  LuaSetting settings;  // [lua.settings]
  // Entries of the in-process store the proxy creates (MemoryStore).
  std::size_t store_max_entries = 1'000'000;
  // [store] on_error: a store call that got no answer skips the rule
  // (kContinue) or defers the command with 451 4.3.0 (kTempfail).
  OnError store_on_error = OnError::kContinue;

  // Runtime services, not configuration. `log` receives one finished line per
  // event (hostile text is already cut, not yet sanitized); `store` is shared
  // by every thread (one per process). Either may be empty.
  std::function<void(LuaLogLevel, std::string_view)> log;
  std::shared_ptr<KeyValueStore> store;
};

}  // namespace postern
