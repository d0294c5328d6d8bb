// Logging: one line per event, "<time> <level> <event> key=value ...", or
// one JSON object per line, to stderr, a file or the systemd journal.
// Hostile text reaches a line only through sanitize() (STYLE habit 8).
#pragma once

#include <atomic>
#include <string>
#include <string_view>
#include <vector>

namespace postern::log {

enum class Level { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };
enum class Format { kText, kJson };

void set_level(Level level);
bool enabled(Level level);

// Where lines go: "stderr", "journald" (sd_journal_send, one field per key),
// or "file:/absolute/path" (opened O_APPEND, mode 0600 under postern's umask).
// Throws std::runtime_error naming the path when a file cannot be opened;
// the previous output then stays. Safe to call while other threads log.
void set_output(const std::string& output);
void set_format(Format format);
// The file output is opened again under the same name (logrotate renamed it);
// a no-op for stderr and journald. Returns false, with errno, on failure.
bool reopen();
// The log file's descriptor, -1 when the output is not a file (for fchown
// before a privilege drop).
int file_descriptor();

// Printable ASCII only (others become '?'), cut at limits::kLogText.
std::string sanitize(std::string_view text);

// Builds one line; written when the Line is destroyed.
class Line {
 public:
  Line(Level level, std::string_view event);
  ~Line();
  Line(const Line&) = delete;
  Line& operator=(const Line&) = delete;

  // Adds key=value; the value is sanitized and quoted when needed.
  Line& kv(std::string_view key, std::string_view value);
  Line& kv(std::string_view key, long long value);
  Line& kv(std::string_view key, unsigned long long value);
  Line& kv(std::string_view key, int value) { return kv(key, static_cast<long long>(value)); }
  Line& kv(std::string_view key, unsigned value) { return kv(key, static_cast<unsigned long long>(value)); }
  Line& kv(std::string_view key, unsigned long value) { return kv(key, static_cast<unsigned long long>(value)); }
  Line& kv(std::string_view key, long value) { return kv(key, static_cast<long long>(value)); }
  Line& kv(std::string_view key, const char* value) { return kv(key, std::string_view(value)); }
  Line& kv(std::string_view key, const std::string& value) { return kv(key, std::string_view(value)); }

 private:
  void add_field(std::string_view key, std::string_view clean, bool number);

  Level level_;
  Format format_;
  bool journal_;
  std::string text_;                 // the line as written (text or JSON)
  std::vector<std::string> fields_;  // journald: "POSTERN_KEY=value"
  bool on_;
};

inline Line debug(std::string_view event) { return Line(Level::kDebug, event); }
inline Line info(std::string_view event) { return Line(Level::kInfo, event); }
inline Line warning(std::string_view event) { return Line(Level::kWarning, event); }
inline Line error(std::string_view event) { return Line(Level::kError, event); }

}  // namespace postern::log
