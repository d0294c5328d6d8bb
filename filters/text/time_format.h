// The two ways postern writes a UTC time. I/O-free, header-only.
#pragma once

#include <ctime>
#include <string>

namespace postern {

// "2026-12-06T10:30:00Z" (RFC 3339): logs, status, reports.
inline std::string format_utc_iso8601(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  return std::string(buf, std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm));
}

// "Sun, 06 Dec 2026 10:30:00 +0000" (RFC 5322 §3.3): Date and Received fields.
inline std::string format_rfc5322_date(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  return std::string(buf, std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S +0000", &tm));
}

}  // namespace postern
