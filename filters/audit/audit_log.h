// The audit trail: one JSON line per message (time, client, HELO, TLS,
// envelope, Message-ID, From domain, each authenticity result, symbols,
// score, action, upstream reply and queue id), appended to a file by one
// writer thread, so an I/O thread only ever copies a line into a buffer.
// Rotation: by size (path -> path.1 ...) and reopen() for logrotate's
// `postrotate kill -HUP`. Hostile text is JSON-escaped, invalid UTF-8
// replaced, every field truncated.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "filters/auth/auth_types.h"
#include "filters/filter.h"

namespace postern {

struct AuditEntry {
  const SessionFacts& session;
  const TransactionFacts& transaction;  // its message may be null (the content is gone, or never came)
  std::string action;                   // relayed, rejected, tempfailed, discarded, quarantined, redirected
  std::string upstream_reply;           // the final reply the client heard, "" when none
  std::string replied_by;               // "upstream" (the MTA's own reply) or "postern"; "" = unknown
  std::string stage;                    // where it was decided: "eom" (default) or "mail"
  std::string reason;                   // the deciding verdict's reason, "" when none
  std::size_t size = 0;                 // content octets
  // Taken from the message while it exists (audit_message_headers()); used
  // when transaction.message is null.
  std::string message_id;
  std::string from_domain;
  std::string rule;          // the deciding rule (Verdict::rule), "" when none
  bool dkim_signed = false;  // postern added its DKIM-Signature when relaying
};

// Message-ID and the RFC5322.From domain of a message, for AuditEntry.
struct AuditHeaders {
  std::string message_id;
  std::string from_domain;
};
AuditHeaders audit_message_headers(const Message& message);

// The record, one line without the trailing newline, valid UTF-8 JSON.
std::string audit_json(const AuditEntry& entry);

// A JSON string literal of `s`: control characters escaped, invalid UTF-8
// replaced by U+FFFD, cut after `max` octets of `s` (on a character boundary).
std::string json_string(std::string_view s, std::size_t max = 512);
// The "arc" object of the audit log, `postern check` and --auth-only
// (docs/authentication.md): result, count, oldest_pass, reason, sets and
// the trusted sealer.
std::string arc_json(const ArcOutcome& a);

// "250 2.0.0 Ok: queued as 4Xy7" -> "4Xy7". Postfix ("queued as ID"), Exim
// ("id=ID"), Sendmail ("ID Message accepted for delivery"), Exchange
// ("Queued mail for delivery" / "<ID@host> [InternalId=...]"), qmail
// ("ok 1700000000 qp 1234"); "" when nothing is recognized.
std::string queue_id_from_reply(const std::string& reply);

struct AuditLogOptions {
  std::string path;
  std::size_t rotate_size = 100u * 1024 * 1024;  // 0: never by size (logrotate does it)
  std::size_t rotate_keep = 10;                  // rotated files kept: path.1 .. path.N
  // When lines reach the disk: kNever leaves it to the kernel, kInterval
  // fsyncs at most every fsync_interval, kAlways after every batch written.
  enum class Fsync { kNever, kInterval, kAlways } fsync = Fsync::kInterval;
  std::chrono::milliseconds fsync_interval{1000};
  std::size_t queue_limit = 64u * 1024 * 1024;   // octets waiting for the writer; past it lines are dropped
  std::function<void(std::string_view)> on_error;  // called from the writer thread (open, write, fsync failures)

  bool same_file_policy(const AuditLogOptions& o) const {
    return path == o.path && rotate_size == o.rotate_size && rotate_keep == o.rotate_keep && fsync == o.fsync &&
           fsync_interval == o.fsync_interval && queue_limit == o.queue_limit;
  }
};

class AuditLog {
 public:
  // Opens (creates) the file for appending and starts the writer thread;
  // throws std::runtime_error when the file cannot be opened.
  explicit AuditLog(AuditLogOptions options);
  AuditLog(std::string path, std::size_t rotate_size, std::size_t keep);
  // Writes what is queued, fsyncs, stops the writer.
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Thread-safe and quick: queues the line (a '\n' is added) for the writer.
  // False when it was dropped because queue_limit octets are waiting.
  bool write(std::string_view line);
  // Closes and reopens the path before the next write (after logrotate
  // moved the file away). Thread-safe; async-signal-unsafe.
  void reopen();
  // Waits until everything queued before the call is written (or failed);
  // false on time-out.
  bool flush(std::chrono::milliseconds timeout = std::chrono::seconds(10));

  const AuditLogOptions& options() const { return options_; }
  std::uint64_t dropped() const;

 private:
  void run();
  bool open_file();
  void rotate();
  void write_batch(const std::string& batch);
  void report(const std::string& what);

  AuditLogOptions options_;
  // Writer thread only.
  int fd_ = -1;
  std::size_t size_ = 0;
  bool dirty_ = false;  // written since the last fsync
  std::chrono::steady_clock::time_point last_sync_;
  bool failing_ = false;  // an error was reported and not yet recovered from

  mutable std::mutex mu_;
  std::condition_variable wake_;     // the writer: work or stop
  std::condition_variable written_;  // flush(): progress
  std::string pending_;              // guarded by mu_
  std::uint64_t queued_ = 0;         // octets ever queued, guarded by mu_
  std::uint64_t done_ = 0;           // octets ever handled by the writer, guarded by mu_
  std::uint64_t dropped_ = 0;        // lines dropped, guarded by mu_
  bool reopen_ = false;              // guarded by mu_
  bool stop_ = false;                // guarded by mu_
  std::thread thread_;
};

// The process's audit log (null: none). The server installs it at start
// and on reload; sessions write through whatever is current.
std::shared_ptr<AuditLog> current_audit_log();
void install_audit_log(std::shared_ptr<AuditLog> log);

}  // namespace postern
