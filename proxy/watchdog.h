// A deadline for whatever a connection is waiting on (STYLE habit 5).
// Arming is cheap (no timer syscall): the one timer wakes up, sees a later
// deadline and sleeps again, as in Asio's echo_server_with_deadline example.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include <asio/any_io_executor.hpp>
#include <asio/error.hpp>
#include <asio/steady_timer.hpp>

namespace postern {

class Watchdog {
 public:
  using Clock = std::chrono::steady_clock;

  // `on_expire` runs on the executor when an armed deadline passes; it
  // typically cancels the socket the connection is waiting on.
  Watchdog(const asio::any_io_executor& executor, std::function<void()> on_expire)
      : state_(std::make_shared<State>(executor, std::move(on_expire))) {}
  ~Watchdog() { stop(); }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  template <typename Rep, typename Period>
  void arm(std::chrono::duration<Rep, Period> timeout) {
    state_->expired = false;
    state_->deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(timeout);
    // The timer is re-set only when it would wake too late; a later deadline
    // is picked up when it wakes.
    if (!state_->waiting || state_->deadline < state_->timer.expiry()) wait(state_);
  }
  void disarm() { state_->deadline = Clock::time_point::max(); }
  // True when the last armed deadline passed (and on_expire ran).
  bool expired() const { return state_->expired; }
  void stop() {
    state_->on_expire = nullptr;
    state_->deadline = Clock::time_point::max();
    if (state_->waiting) state_->timer.cancel();
  }

 private:
  struct State {
    State(const asio::any_io_executor& ex, std::function<void()> f)
        : timer(ex), on_expire(std::move(f)) {}
    asio::steady_timer timer;
    std::function<void()> on_expire;
    Clock::time_point deadline = Clock::time_point::max();
    bool waiting = false;
    bool expired = false;
  };

  static void wait(const std::shared_ptr<State>& s) {
    s->waiting = true;
    s->timer.expires_at(s->deadline);  // cancels a pending wait: its handler returns
    s->timer.async_wait([s](const std::error_code& ec) {
      if (ec == asio::error::operation_aborted) return;
      s->waiting = false;
      if (!s->on_expire || s->deadline == Clock::time_point::max()) return;
      if (s->deadline <= Clock::now()) {
        s->expired = true;
        s->deadline = Clock::time_point::max();
        auto f = s->on_expire;
        f();
      } else {
        wait(s);
      }
    });
  }

  std::shared_ptr<State> state_;
};

}  // namespace postern
