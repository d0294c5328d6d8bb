// Line-oriented logger: each line is built in memory and written with one
// write(2), so lines from several threads never interleave.
#include "proxy/log.h"

#include <unistd.h>

#include <chrono>
#include <ctime>
#include <fmt/format.h>

#include "proxy/limits.h"

namespace postern::log {
namespace {
std::atomic<int> g_level{static_cast<int>(Level::kInfo)};

constexpr std::string_view kLevelNames[] = {"debug", "info", "warning", "error"};

void append_timestamp(std::string& out) {
  using namespace std::chrono;
  auto now = system_clock::now();
  auto secs = time_point_cast<seconds>(now);
  auto ms = duration_cast<milliseconds>(now - secs).count();
  std::time_t t = system_clock::to_time_t(secs);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  out.append(buf, n);
  fmt::format_to(std::back_inserter(out), ".{:03d}Z", static_cast<int>(ms));
}
}  // namespace

void set_level(Level level) { g_level.store(static_cast<int>(level), std::memory_order_relaxed); }
bool enabled(Level level) { return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed); }

std::string sanitize(std::string_view text) {
  std::string out;
  std::size_t n = std::min(text.size(), limits::kLogText);
  out.reserve(n + 3);
  for (std::size_t i = 0; i < n; ++i) {
    unsigned char c = text[i];
    out.push_back(c >= 32 && c < 127 ? static_cast<char>(c) : '?');
  }
  if (text.size() > n) out.append("...");
  return out;
}

Line::Line(Level level, std::string_view event) : on_(enabled(level)) {
  if (!on_) return;
  text_.reserve(256);
  append_timestamp(text_);
  text_.push_back(' ');
  text_.append(kLevelNames[static_cast<int>(level)]);
  text_.push_back(' ');
  text_.append(event);
}

Line::~Line() {
  if (!on_) return;
  text_.push_back('\n');
  std::string_view rest = text_;
  while (!rest.empty()) {
    ssize_t n = ::write(2, rest.data(), rest.size());
    if (n <= 0) break;
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
}

Line& Line::kv(std::string_view key, std::string_view value) {
  if (!on_) return *this;
  text_.push_back(' ');
  text_.append(key);
  text_.push_back('=');
  std::string clean = sanitize(value);
  bool quote = clean.empty() || clean.find_first_of(" \"=") != std::string::npos;
  if (!quote) {
    text_.append(clean);
    return *this;
  }
  text_.push_back('"');
  for (char c : clean) {
    if (c == '"' || c == '\\') text_.push_back('\\');
    text_.push_back(c);
  }
  text_.push_back('"');
  return *this;
}

Line& Line::kv(std::string_view key, long long value) {
  if (on_) fmt::format_to(std::back_inserter(text_), " {}={}", key, value);
  return *this;
}

Line& Line::kv(std::string_view key, unsigned long long value) {
  if (on_) fmt::format_to(std::back_inserter(text_), " {}={}", key, value);
  return *this;
}

}  // namespace postern::log
