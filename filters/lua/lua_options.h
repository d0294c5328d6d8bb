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

namespace asio {
class thread_pool;
}

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
  // Decoded header values handed to scripts, and values scripts add, are cut
  // (read) or refused (write) past this.
  std::size_t header_value_limit = 16 * 1024;
  // ctx.body: octets of the message scanned for MIME parts and lines; octets
  // of each decoded text part; number of text parts.
  std::size_t body_scan_limit = 10u * 1024 * 1024;
  std::size_t text_part_limit = 1024 * 1024;
  std::size_t text_parts_max = 32;

  // Lines rules log (print, postern.log) per Lua state (one per I/O thread):
  // a rate a second and a burst; past them lines are dropped and counted.
  double log_rate = 20;
  std::size_t log_burst = 200;
  // The watchdog: a rule call holding its I/O thread longer than this is
  // logged and counted (busy_watch.h); 0 = off.
  std::chrono::milliseconds busy_threshold{1000};
  // The longest a rule waits for a large message's MIME structure read on
  // walk_pool, queued behind other messages' included; past it the rule
  // fails (its on_error applies) rather than hold the session and its MTA
  // connection while the workers are busy.
  std::chrono::milliseconds structure_timeout{60000};

  // postern.regex (PCRE2): a match past these limits is a rule error.
  std::uint32_t regex_match_limit = 1'000'000;
  std::uint32_t regex_depth_limit = 10'000;

  LuaSetting settings;  // [lua.settings]
  // Entries of the in-process store the proxy creates (MemoryStore).
  std::size_t store_max_entries = 1'000'000;
  // [store] max_value: the longest value postern.store.set/add accept.
  std::size_t store_max_value = 64 * 1024;
  // [store] on_error: a store call that got no answer skips the rule
  // (kContinue) or defers the command with 451 4.3.0 (kTempfail).
  OnError store_on_error = OnError::kContinue;

  // Runtime services, not configuration. `log` receives one finished line per
  // event (hostile text is already cut, not yet sanitized); `store` is shared
  // by every thread (one per process). Either may be empty.
  std::function<void(LuaLogLevel, std::string_view)> log;
  // Lines rules log, with the ids of the session and the transaction ("" when
  // none); when empty, `log` gets them with the ids written into the line.
  std::function<void(LuaLogLevel, std::string_view session, std::string_view id, std::string_view line)> rule_log;
  std::shared_ptr<KeyValueStore> store;
  // Where the MIME structure of a message over kWalkElsewhereOver is read
  // while the rule waits (lua_message.cpp); null: on the rule's own thread.
  std::shared_ptr<asio::thread_pool> walk_pool;
};

}  // namespace postern
