// Line-oriented logger: each line is built in memory and written with one
// write(2) (or one sd_journal_sendv), so lines from several threads never
// interleave. The file output is reopened by dup2() onto the same descriptor,
// so a writer never sees a closed descriptor during a reopen.
#include "proxy/log.h"

#include <fcntl.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <mutex>
#include <stdexcept>
#include <fmt/format.h>

#include "filters/io/write_all.h"
#include "proxy/limits.h"

namespace postern::log {
namespace {
enum class Output { kStderr, kJournal, kFile };

std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::atomic<int> g_format{static_cast<int>(Format::kText)};
std::atomic<int> g_output{static_cast<int>(Output::kStderr)};
std::atomic<int> g_fd{2};
std::mutex g_output_mutex;  // guards g_path and the change of output
std::string g_path;         // kFile: the path to reopen

constexpr std::string_view kLevelNames[] = {"debug", "info", "warning", "error"};
// syslog priorities (RFC 5424 §6.2.1) for journald's PRIORITY field.
constexpr int kPriorities[] = {7, 6, 4, 3};

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

// A journald field name: upper-case letters, digits and '_' (sd_journal_send(3)).
std::string journal_key(std::string_view key) {
  std::string out = "POSTERN_";
  for (char c : key) {
    if (c >= 'a' && c <= 'z') out.push_back(static_cast<char>(c - 'a' + 'A'));
    else if ((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) out.push_back(c);
    else out.push_back('_');
  }
  return out;
}

int open_log_file(const std::string& path) {
  return ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0600);
}
}  // namespace

void set_level(Level level) { g_level.store(static_cast<int>(level), std::memory_order_relaxed); }
bool enabled(Level level) { return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed); }
void set_format(Format format) { g_format.store(static_cast<int>(format), std::memory_order_relaxed); }

void set_output(const std::string& output) {
  std::lock_guard lock(g_output_mutex);
  if (output.rfind("file:", 0) == 0) {
    std::string path = output.substr(5);
    if (g_output.load() == static_cast<int>(Output::kFile) && path == g_path) return;
    int fd = open_log_file(path);
    if (fd < 0) throw std::runtime_error(fmt::format("log.output: cannot open \"{}\": {}", path, std::strerror(errno)));
    int current = g_fd.load();
    if (current > 2) {
      ::dup2(fd, current);  // atomic for writers: same number, new file
      ::close(fd);
    } else {
      g_fd.store(fd);
    }
    g_path = path;
    g_output.store(static_cast<int>(Output::kFile));
    return;
  }
  g_output.store(static_cast<int>(output == "journald" ? Output::kJournal : Output::kStderr));
  // A descriptor once used for the file stays ours, pointed at stderr: a
  // writer that loaded it just now must not write into a reused descriptor.
  int current = g_fd.load();
  if (current > 2) ::dup2(2, current);
  g_path.clear();
}

bool reopen() {
  std::lock_guard lock(g_output_mutex);
  if (g_output.load() != static_cast<int>(Output::kFile)) return true;
  int fd = open_log_file(g_path);
  if (fd < 0) return false;
  ::dup2(fd, g_fd.load());
  ::close(fd);
  return true;
}

int file_descriptor() {
  return g_output.load() == static_cast<int>(Output::kFile) ? g_fd.load() : -1;
}

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

Line::Line(Level level, std::string_view event)
    : level_(level),
      format_(static_cast<Format>(g_format.load(std::memory_order_relaxed))),
      journal_(g_output.load(std::memory_order_relaxed) == static_cast<int>(Output::kJournal)),
      on_(enabled(level)) {
  if (!on_) return;
  text_.reserve(256);
  if (journal_) {
    // journald stamps the time and the priority itself; MESSAGE is the text form.
    text_.append(event);
    fields_.push_back(fmt::format("PRIORITY={}", kPriorities[static_cast<int>(level)]));
    fields_.push_back("SYSLOG_IDENTIFIER=postern");
    fields_.push_back("POSTERN_EVENT=" + std::string(event));
    return;
  }
  if (format_ == Format::kJson) {
    text_.append("{\"ts\":\"");
    append_timestamp(text_);
    text_.append("\",\"level\":\"");
    text_.append(kLevelNames[static_cast<int>(level)]);
    text_.append("\",\"event\":\"");
    text_.append(event);  // events are compile-time names, no escaping needed
    text_.push_back('"');
    return;
  }
  append_timestamp(text_);
  text_.push_back(' ');
  text_.append(kLevelNames[static_cast<int>(level)]);
  text_.push_back(' ');
  text_.append(event);
}

Line::~Line() {
  if (!on_) return;
  if (journal_) {
    std::string message = "MESSAGE=" + text_;
    std::vector<iovec> iov;
    iov.reserve(fields_.size() + 1);
    iov.push_back({message.data(), message.size()});
    for (std::string& f : fields_) iov.push_back({f.data(), f.size()});
    if (sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) >= 0) return;
    // No journal to talk to: the line must not be lost, stderr gets it.
    std::string line;
    append_timestamp(line);
    line.append(" ").append(kLevelNames[static_cast<int>(level_)]).append(" ").append(text_).append("\n");
    (void)write_all(2, line);
    return;
  }
  text_.append(format_ == Format::kJson ? "}\n" : "\n");
  (void)write_all(g_fd.load(std::memory_order_relaxed), text_);
}

void Line::add_field(std::string_view key, std::string_view clean, bool number) {
  if (journal_) fields_.push_back(journal_key(key) + "=" + std::string(clean));
  if (format_ == Format::kJson && !journal_) {
    text_.append(",\"");
    text_.append(key);
    text_.append("\":");
    if (number) {
      text_.append(clean);
      return;
    }
    text_.push_back('"');
    for (char c : clean) {  // sanitized: printable ASCII, only '"' and '\' need escaping
      if (c == '"' || c == '\\') text_.push_back('\\');
      text_.push_back(c);
    }
    text_.push_back('"');
    return;
  }
  text_.push_back(' ');
  text_.append(key);
  text_.push_back('=');
  bool quote = !number && (clean.empty() || clean.find_first_of(" \"=") != std::string_view::npos);
  if (!quote) {
    text_.append(clean);
    return;
  }
  text_.push_back('"');
  for (char c : clean) {
    if (c == '"' || c == '\\') text_.push_back('\\');
    text_.push_back(c);
  }
  text_.push_back('"');
}

Line& Line::kv(std::string_view key, std::string_view value) {
  if (on_) add_field(key, sanitize(value), false);
  return *this;
}

Line& Line::kv(std::string_view key, long long value) {
  if (on_) add_field(key, fmt::format("{}", value), true);
  return *this;
}

Line& Line::kv(std::string_view key, unsigned long long value) {
  if (on_) add_field(key, fmt::format("{}", value), true);
  return *this;
}

}  // namespace postern::log
