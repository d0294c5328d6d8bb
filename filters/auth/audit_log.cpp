#include "filters/auth/audit_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <ctime>
#include <stdexcept>

#include "filters/auth/auth_results.h"

namespace postern {

namespace {

constexpr std::size_t kMaxField = 512;  // octets of any one text field

// A JSON string: control characters escaped, invalid UTF-8 replaced, cut at kMaxField.
std::string js(const std::string& s) {
  std::string out = "\"";
  std::size_t n = 0;
  for (std::size_t i = 0; i < s.size() && n < kMaxField; ++i, ++n) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {
      std::size_t len = c >= 0xf0 && c < 0xf5 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
      bool ok = len > 0 && i + len <= s.size();
      for (std::size_t k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
      if (ok) {
        out.append(s, i, len);
        i += len - 1;
      } else {
        out += "\\ufffd";
      }
    }
  }
  return out + '"';
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string now_iso8601() {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char date[32];
  std::size_t n = std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
  char millis[8];
  std::snprintf(millis, sizeof millis, ".%03dZ", static_cast<int>(ms));
  return std::string(date, n) + millis;
}

}  // namespace

std::string queue_id_from_reply(const std::string& reply) {
  for (const char* marker : {"queued as ", "id=", "Queued mail for delivery", "Message accepted for delivery"}) {
    auto p = reply.find(marker);
    if (p == std::string::npos) continue;
    p += std::char_traits<char>::length(marker);
    std::string id;
    while (p < reply.size() && (std::isalnum(static_cast<unsigned char>(reply[p])) || reply[p] == '-' || reply[p] == '.' ||
                                reply[p] == '@' || reply[p] == '_')) {
      id.push_back(reply[p++]);
    }
    if (!id.empty()) return id.substr(0, 128);
  }
  // Sendmail: "250 2.0.0 u8TMp1Yd012345 Message accepted for delivery".
  auto p = reply.find(' ');
  if (p != std::string::npos && reply.find("Message accepted") != std::string::npos) {
    auto q = reply.find(' ', p + 1);
    auto r = q == std::string::npos ? std::string::npos : reply.find(' ', q + 1);
    if (r != std::string::npos) return reply.substr(q + 1, r - q - 1);
  }
  return {};
}

std::string audit_json(const AuditEntry& e) {
  const auto& s = e.session;
  const auto& t = e.transaction;
  AuthResults auth = load_auth_results(t);
  std::string o = "{";
  o += "\"time\":" + js(now_iso8601());
  o += ",\"session\":" + js(s.id) + ",\"transaction\":" + js(t.id);
  o += ",\"client\":{\"ip\":" + js(s.client_ip) + ",\"port\":" + std::to_string(s.client_port) +
       ",\"name\":" + js(s.client_name) + "}";
  o += ",\"helo\":" + js(s.helo);
  o += ",\"tls\":{\"active\":" + std::string(s.tls.active ? "true" : "false") + ",\"version\":" + js(s.tls.version) +
       ",\"cipher\":" + js(s.tls.cipher) + "}";
  if (!s.auth_user.empty()) o += ",\"auth_user\":" + js(s.auth_user);
  o += ",\"mail_from\":" + js(t.reverse_path.str());
  o += ",\"rcpt_to\":[";
  for (std::size_t i = 0; i < t.recipients.size() && i < 100; ++i) o += (i ? "," : "") + js(t.recipients[i].str());
  o += "]";
  std::string message_id, from;
  if (t.message) {
    message_id = t.message->first("Message-ID").value_or("");
  }
  if (auth.dmarc) from = auth.dmarc->from_domain;
  o += ",\"message_id\":" + js(message_id) + ",\"from_domain\":" + js(from);
  if (auth.spf) {
    const auto& p = *auth.spf;
    o += ",\"spf\":{\"result\":" + js(spf_result_name(p.result)) + ",\"identity\":" + js(p.identity) +
         ",\"domain\":" + js(p.domain) + ",\"reason\":" + js(p.reason) + "}";
  }
  if (auth.dkim_checked) {
    o += ",\"dkim\":[";
    for (std::size_t i = 0; i < auth.dkim.size(); ++i) {
      const auto& d = auth.dkim[i];
      o += std::string(i ? "," : "") + "{\"domain\":" + js(d.domain) + ",\"selector\":" + js(d.selector) +
           ",\"algorithm\":" + js(d.algorithm) + ",\"result\":" + js(dkim_result_name(d.result)) +
           ",\"reason\":" + js(d.reason) + ",\"key_bits\":" + std::to_string(d.key_bits) + "}";
    }
    o += "]";
  }
  if (auth.dmarc) {
    const auto& d = *auth.dmarc;
    o += ",\"dmarc\":{\"result\":" + js(dmarc_result_name(d.result)) + ",\"policy\":" + js(d.policy) +
         ",\"disposition\":" + js(d.disposition) + ",\"from_domain\":" + js(d.from_domain) +
         ",\"org_domain\":" + js(d.org_domain) + ",\"spf_aligned\":" + (d.spf_aligned ? "true" : "false") +
         ",\"dkim_aligned\":" + (d.dkim_aligned ? "true" : "false") + "}";
  }
  o += ",\"symbols\":[";
  for (std::size_t i = 0; i < t.symbols.size() && i < 200; ++i) {
    o += std::string(i ? "," : "") + "{\"name\":" + js(t.symbols[i].name) + ",\"score\":" + num(t.symbols[i].score) + "}";
  }
  o += "],\"score\":" + num(t.score);
  o += ",\"action\":" + js(e.action);
  o += ",\"upstream_reply\":" + js(e.upstream_reply) + ",\"queue_id\":" + js(queue_id_from_reply(e.upstream_reply));
  o += "}";
  return o;
}

AuditLog::AuditLog(std::string path, std::size_t rotate_size, std::size_t keep)
    : path_(std::move(path)), rotate_size_(rotate_size), keep_(keep) {
  std::lock_guard lock(mu_);
  if (!open_locked()) throw std::runtime_error("audit: cannot open \"" + path_ + "\"");
}

AuditLog::~AuditLog() {
  if (fd_ >= 0) ::close(fd_);
}

bool AuditLog::open_locked() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd_ < 0) return false;
  struct stat st {};
  size_ = ::fstat(fd_, &st) == 0 ? static_cast<std::size_t>(st.st_size) : 0;
  return true;
}

void AuditLog::rotate_locked() {
  if (keep_ == 0) {
    ::unlink(path_.c_str());
  } else {
    for (std::size_t n = keep_; n > 1; --n) {
      ::rename((path_ + '.' + std::to_string(n - 1)).c_str(), (path_ + '.' + std::to_string(n)).c_str());
    }
    ::rename(path_.c_str(), (path_ + ".1").c_str());
  }
  open_locked();
}

bool AuditLog::write(const std::string& line) {
  std::string data = line + '\n';
  std::lock_guard lock(mu_);
  if (fd_ < 0 && !open_locked()) return false;
  if (size_ > 0 && size_ + data.size() > rotate_size_) rotate_locked();
  if (fd_ < 0) return false;
  std::size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd_, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    done += static_cast<std::size_t>(n);
  }
  size_ += data.size();
  return true;
}

}  // namespace postern
