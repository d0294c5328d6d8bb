// The watchdog of the I/O threads' rule calls: a rule runs on the I/O thread
// between two waits, and while it runs nothing else on that thread does.
// Every budget is enforced inside the rule (lua_sandbox.cpp,
// lua_bounded_lib.cpp, lua_pattern.cpp); this is the net under them
// (issue 17): one monitor thread per process looks at every Lua state's
// running call and, when one has run longer than lua.busy_threshold without
// returning to the event loop, logs it once naming the rule and counts it
// (FilterStats::lua_thread_busy, postern_lua_thread_busy_total).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace postern {

struct BusySlot {
  // steady_clock nanoseconds when the running stretch began; 0 = idle.
  std::atomic<std::int64_t> since{0};
  // The rule running now (names owned by the Lua state, which outlives its
  // slot); read by the monitor only while `since` is set.
  std::atomic<const std::string*> rule{nullptr};
  std::atomic<const std::string*> script{nullptr};
  std::atomic<bool> reported{false};
  std::chrono::nanoseconds threshold{0};  // 0 = not watched
  std::function<void(std::string_view line)> log;
};

// Registers a slot with the process's monitor (started on first use);
// unregister before the slot dies. Thread-safe.
void watch_busy(BusySlot* slot);
void unwatch_busy(BusySlot* slot);

// Marks the start and the end of one stretch of a rule call on the thread
// that owns the slot. busy_end() logs the end of a stretch the monitor had
// reported.
void busy_begin(BusySlot& slot, const std::string& rule, const std::string& script);
void busy_end(BusySlot& slot);

// Busy stretches the monitor has reported since the start (tests).
std::uint64_t busy_reports();

}  // namespace postern
