// The per-thread pool of idle connections to the MTA (issue 23).
#include "proxy/upstream_pool.h"

#include <algorithm>

#include <asio/write.hpp>

#include "proxy/log.h"
#include "proxy/socket_read.h"

namespace postern {
namespace {
using Clock = std::chrono::steady_clock;

Clock::duration idle_timeout(const Config& config) {
  return std::chrono::duration_cast<Clock::duration>(config.upstream.reuse_idle_timeout);
}

// Reads what the MTA sent while the connection waited, without waiting:
// true when nothing, and the connection is still open.
bool still_quiet(UpstreamConnection& c, metrics::PoolDiscard& why, std::string& detail) {
  std::error_code ec;
  std::size_t n = 0;
  if (c.tls) {
    // Records without data (a session ticket) are consumed by the TLS engine.
    char buffer[4096];
    n = c.tls->read_some(asio::buffer(buffer), ec);
    c.replies.input().append(buffer, n);
  } else {
    ec = read_ready(c.socket, c.replies.input(), n);
  }
  Reply said;
  switch (c.replies.unsolicited(said)) {
    case ReplyMatcher::Outcome::kQuiet:
      break;
    case ReplyMatcher::Outcome::kClosing:  // RFC 5321 §3.8: its idle time-out, or shutting down
      why = metrics::PoolDiscard::kClosed;
      detail = "421 " + std::string(said.first_line());
      return false;
    default:
      why = metrics::PoolDiscard::kUnexplained;
      detail = std::string(c.replies.buffered().substr(0, 120));
      return false;
  }
  if (!ec || ec == asio::error::would_block) {
    c.drained = !c.tls && ec == asio::error::would_block;
    return true;
  }
  why = metrics::PoolDiscard::kClosed;
  detail = ec == asio::error::eof ? "closed by the MTA" : ec.message();
  return false;
}
}  // namespace

asio::execution_context::id UpstreamPool::id;

UpstreamPool& UpstreamPool::of(const asio::any_io_executor& executor) {
  return asio::use_service<UpstreamPool>(asio::query(executor, asio::execution::context));
}

void UpstreamPool::shutdown() {
  for (Idle& idle : idle_) discard(idle, metrics::PoolDiscard::kExpired);
  idle_.clear();
  reaper_.reset();
}

void UpstreamPool::discard(Idle& idle, metrics::PoolDiscard why) {
  metrics::registry().upstream_pool_discards[metrics::idx(why)].inc();
  UpstreamConnection& c = *idle.connection;
  std::error_code ignored;
  if (why == metrics::PoolDiscard::kExpired || why == metrics::PoolDiscard::kReload ||
      why == metrics::PoolDiscard::kFull) {
    // Non-blocking and unanswered: six octets fit any idle socket's buffer.
    constexpr std::string_view kQuit = "QUIT\r\n";
    if (c.tls) asio::write(*c.tls, asio::buffer(kQuit.data(), kQuit.size()), ignored);
    else asio::write(c.socket, asio::buffer(kQuit.data(), kQuit.size()), ignored);
  }
  c.socket.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  c.socket.close(ignored);
  c.tls.reset();
}

std::unique_ptr<UpstreamConnection> UpstreamPool::take(const std::shared_ptr<const Config>& config) {
  const auto now = Clock::now();
  while (!idle_.empty()) {
    Idle idle = std::move(idle_.back());
    idle_.pop_back();
    metrics::PoolDiscard why = metrics::PoolDiscard::kExpired;
    std::string detail;
    if (idle.config != config) {
      why = metrics::PoolDiscard::kReload;
    } else if (now - idle.since >= idle_timeout(*config)) {
      why = metrics::PoolDiscard::kExpired;
    } else if (still_quiet(*idle.connection, why, detail)) {
      return std::move(idle.connection);
    }
    if (why == metrics::PoolDiscard::kUnexplained) {
      // The MTA spoke when nothing was owed: a protocol error of the MTA's,
      // though no client hears of it.
      log::warning("upstream-pool-discard").kv("upstream", config->upstream.target)
          .kv("reason", metrics::pool_discard_name(why)).kv("text", log::sanitize(detail));
      metrics::upstream_protocol_error(metrics::UpstreamProtocolError::kUnexplainedBytes);
    } else {
      log::info("upstream-pool-discard").kv("upstream", config->upstream.target)
          .kv("reason", metrics::pool_discard_name(why)).kv("detail", log::sanitize(detail));
    }
    discard(idle, why);
  }
  return nullptr;
}

void UpstreamPool::put(std::unique_ptr<UpstreamConnection> connection, const std::shared_ptr<const Config>& config) {
  const auto executor = connection->socket.get_executor();
  while (!idle_.empty() && idle_.size() >= config->upstream.reuse_pool_size) {
    discard(idle_.front(), metrics::PoolDiscard::kFull);
    idle_.pop_front();
  }
  if (config->upstream.reuse_pool_size == 0) {
    Idle idle{std::move(connection), config, Clock::now()};
    discard(idle, metrics::PoolDiscard::kFull);
    return;
  }
  idle_.push_back(Idle{std::move(connection), config, Clock::now()});
  arm(executor);
}

void UpstreamPool::arm(const asio::any_io_executor& executor) {
  if (idle_.empty()) return;
  if (!reaper_) reaper_ = std::make_unique<asio::steady_timer>(executor);
  // Deadlines follow the order of parking only while every idle connection
  // has one time-out; a reload that changed it mixes two: the earliest of all.
  Clock::time_point deadline = Clock::time_point::max();
  for (const Idle& idle : idle_) deadline = std::min(deadline, idle.since + idle_timeout(*idle.config));
  if (reaper_waiting_ && reaper_->expiry() <= deadline) return;
  reaper_->expires_at(deadline);  // a later wait ends with operation_aborted
  reaper_waiting_ = true;
  const std::uint64_t wait = ++reaper_wait_;
  // The pool lives as long as the io_context that would run this handler.
  reaper_->async_wait([this, wait](const std::error_code& ec) {
    if (wait != reaper_wait_) return;  // replaced by a wait for an earlier deadline
    reaper_waiting_ = false;
    if (ec) return;
    expire();
  });
}

void UpstreamPool::expire() {
  const auto now = Clock::now();
  for (auto it = idle_.begin(); it != idle_.end();) {
    if (now - it->since < idle_timeout(*it->config)) {
      ++it;
      continue;
    }
    log::debug("upstream-pool-discard").kv("upstream", it->config->upstream.target).kv("reason", "expired");
    discard(*it, metrics::PoolDiscard::kExpired);
    it = idle_.erase(it);
  }
  if (!idle_.empty()) arm(idle_.front().connection->socket.get_executor());
}

}  // namespace postern
