// The rule-call watchdog; see busy_watch.h.
#include "filters/lua/busy_watch.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "filters/filter_stats.h"

namespace postern {
namespace {

using Clock = std::chrono::steady_clock;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

std::atomic<std::uint64_t> g_reports{0};

// Owns the slots and the monitor thread (detached: it lives as long as the
// process and sleeps while there is nothing to watch).
class Monitor {
 public:
  void add(BusySlot* s) {
    std::lock_guard lock(mutex_);
    slots_.push_back(s);
    if (!started_) {
      started_ = true;
      std::thread([this] { run(); }).detach();
    }
    wake_.notify_one();
  }
  void remove(BusySlot* s) {
    std::lock_guard lock(mutex_);
    slots_.erase(std::remove(slots_.begin(), slots_.end(), s), slots_.end());
  }

 private:
  void run() {
    std::unique_lock lock(mutex_);
    for (;;) {
      std::chrono::nanoseconds period = std::chrono::milliseconds(250);
      for (BusySlot* s : slots_) {
        if (s->threshold.count() > 0) period = std::min(period, s->threshold / 4);
        check(*s);
      }
      period = std::max<std::chrono::nanoseconds>(period, std::chrono::milliseconds(5));
      if (slots_.empty()) wake_.wait(lock);
      else wake_.wait_for(lock, period);
    }
  }

  static void check(BusySlot& s) {
    std::int64_t since = s.since.load(std::memory_order_acquire);
    if (since == 0 || s.threshold.count() <= 0 || s.reported.load(std::memory_order_relaxed)) return;
    std::int64_t busy = now_ns() - since;
    if (busy < s.threshold.count()) return;
    const std::string* rule = s.rule.load(std::memory_order_acquire);
    const std::string* script = s.script.load(std::memory_order_acquire);
    if (!rule || s.since.load(std::memory_order_acquire) != since) return;  // it ended meanwhile
    s.reported.store(true, std::memory_order_relaxed);
    g_reports.fetch_add(1, std::memory_order_relaxed);
    filter_stats().lua_thread_busy(*rule);
    if (s.log) {
      s.log("io-thread-busy rule=" + *rule + " script=" + (script ? *script : std::string()) +
            " busy_ms=" + std::to_string(busy / 1'000'000) +
            " threshold_ms=" + std::to_string(s.threshold.count() / 1'000'000));
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<BusySlot*> slots_;
  bool started_ = false;
};

Monitor& monitor() {
  static Monitor* m = new Monitor;  // never destroyed: the detached thread uses it
  return *m;
}

}  // namespace

void watch_busy(BusySlot* slot) { monitor().add(slot); }
void unwatch_busy(BusySlot* slot) { monitor().remove(slot); }

void busy_begin(BusySlot& slot, const std::string& rule, const std::string& script) {
  slot.rule.store(&rule, std::memory_order_relaxed);
  slot.script.store(&script, std::memory_order_relaxed);
  slot.reported.store(false, std::memory_order_relaxed);
  slot.since.store(now_ns(), std::memory_order_release);
}

void busy_end(BusySlot& slot) {
  std::int64_t since = slot.since.exchange(0, std::memory_order_acq_rel);
  if (slot.reported.load(std::memory_order_relaxed) && slot.log && since != 0) {
    const std::string* rule = slot.rule.load(std::memory_order_relaxed);
    slot.log("io-thread-busy-end rule=" + (rule ? *rule : std::string()) +
             " busy_ms=" + std::to_string((now_ns() - since) / 1'000'000));
  }
}

std::uint64_t busy_reports() { return g_reports.load(std::memory_order_relaxed); }

}  // namespace postern
