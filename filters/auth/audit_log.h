// The audit trail: one JSON line per message (time, client, HELO, TLS,
// envelope, Message-ID, From domain, each authenticity result, symbols,
// score, action, upstream reply and queue id), appended to a file that is
// rotated by size. Hostile text is JSON-escaped and truncated.
#pragma once

#include <cstddef>
#include <mutex>
#include <string>

#include "filters/filter.h"

namespace postern {

struct AuditEntry {
  const SessionFacts& session;
  const TransactionFacts& transaction;  // its message may be null (rejected before DATA)
  std::string action;                   // action_name() of the final verdict, or "relay"
  std::string upstream_reply;           // the MTA's final reply, "" when none
};

// The record, one line without the trailing newline.
std::string audit_json(const AuditEntry& entry);

// "250 2.0.0 Ok: queued as 4Xy7" -> "4Xy7" (Postfix, Exim "id=", Sendmail, Exchange forms).
std::string queue_id_from_reply(const std::string& reply);

class AuditLog {
 public:
  // Opens (creates) `path` for appending; throws std::runtime_error on failure.
  AuditLog(std::string path, std::size_t rotate_size, std::size_t keep);
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Thread-safe; one write(2) per line. Rotates first when the line would
  // take the file past rotate_size: path.N -> path.N+1 ..., path -> path.1.
  // Returns false when the line could not be written.
  bool write(const std::string& line);

 private:
  bool open_locked();
  void rotate_locked();

  std::string path_;
  std::size_t rotate_size_;
  std::size_t keep_;
  std::mutex mu_;
  int fd_ = -1;
  std::size_t size_ = 0;
};

}  // namespace postern
