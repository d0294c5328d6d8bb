// Logging: one line per event, "<time> <level> <event> key=value ...", to
// stderr. Hostile text reaches a line only through sanitize() (STYLE habit 8).
#pragma once

#include <atomic>
#include <string>
#include <string_view>

namespace postern::log {

enum class Level { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void set_level(Level level);
bool enabled(Level level);

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
  std::string text_;
  bool on_;
};

inline Line debug(std::string_view event) { return Line(Level::kDebug, event); }
inline Line info(std::string_view event) { return Line(Level::kInfo, event); }
inline Line warning(std::string_view event) { return Line(Level::kWarning, event); }
inline Line error(std::string_view event) { return Line(Level::kError, event); }

}  // namespace postern::log
