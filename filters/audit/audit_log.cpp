// The audit record and its writer; see audit_log.h.
#include "filters/audit/audit_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <stdexcept>

#include "filters/auth/auth_results.h"
#include "filters/dmarc/dmarc.h"
#include "filters/audit/json_reader.h"
#include "filters/io/write_all.h"
#include "filters/text/utf8.h"

namespace postern {

namespace {

constexpr std::size_t kMaxField = 512;       // octets of any one text field
constexpr std::size_t kMaxRecipients = 100;  // forward-paths listed per record
constexpr std::size_t kMaxSymbols = 200;

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
  std::snprintf(millis, sizeof millis, ".%03dZ", static_cast<int>(ms) % 1000);
  return std::string(date, n) + millis;
}

bool id_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '@' || c == '_';
}

// The run of id characters at reply[p], at most 128.
std::string id_at(const std::string& reply, std::size_t p) {
  std::string id;
  while (p < reply.size() && id_char(reply[p]) && id.size() < 128) id.push_back(reply[p++]);
  return id;
}

}  // namespace

std::string arc_json(const ArcOutcome& a) {
  auto js = [](std::string_view v) { return json_string(v, 256); };
  std::string o = "{\"result\":" + js(arc_result_name(a.result)) + ",\"count\":" + std::to_string(a.count) +
                  ",\"oldest_pass\":" + std::to_string(a.oldest_pass) + ",\"reason\":" + js(a.reason) + ",\"sets\":[";
  for (std::size_t i = 0; i < a.sets.size(); ++i) {
    const ArcSet& s = a.sets[i];
    o += std::string(i ? "," : "") + "{\"i\":" + std::to_string(s.instance) + ",\"sealer\":" + js(s.sealer) +
         ",\"selector\":" + js(s.selector) + ",\"ams_domain\":" + js(s.ams_domain) + ",\"cv\":" + js(s.cv) +
         ",\"ams_valid\":" + (s.ams_valid ? "true" : "false") + ",\"as_valid\":" + (s.as_valid ? "true" : "false") + "}";
  }
  o += "]";
  if (!a.trusted_sealer.empty()) {
    o += ",\"trusted_sealer\":" + js(a.trusted_sealer) + ",\"trusted_instance\":" + std::to_string(a.trusted_instance) +
         ",\"trusted_saw\":" + js(a.trusted_saw);
  }
  return o + "}";
}

std::string json_string(std::string_view s, std::size_t max) {
  std::string out = "\"";
  std::size_t octets = 0;
  for (const utf8::Unit& u : utf8::Units(s)) {
    if (octets >= max) break;
    octets += u.octets.size();
    if (!u.well_formed) {
      out += "\\ufffd";
    } else if (!u.ascii()) {
      out.append(u.octets);
    } else if (const char c = u.octets[0]; c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      out += buf;
    } else {
      out.push_back(c);
    }
  }
  return out + '"';
}

AuditHeaders audit_message_headers(const Message& message) {
  AuditHeaders h;
  h.message_id = message.first("Message-ID").value_or("");
  h.from_domain = from_domain(message).value_or("");
  return h;
}

std::string queue_id_from_reply(const std::string& reply) {
  // Postfix: "250 2.0.0 Ok: queued as 4Xy7Zq".
  if (auto p = reply.find("queued as "); p != std::string::npos) {
    std::string id = id_at(reply, p + 10);
    if (!id.empty()) return id;
  }
  // Exchange: "250 2.6.0 <mid@host> [InternalId=1234, Hostname=EX1] Queued mail for delivery".
  if (auto p = reply.find("InternalId="); p != std::string::npos) {
    std::string id = id_at(reply, p + 11);
    if (!id.empty()) return id;
  }
  // Exim: "250 OK id=1abcDE-000123-XY".
  if (auto p = reply.find("id="); p != std::string::npos) {
    std::string id = id_at(reply, p + 3);
    if (!id.empty()) return id;
  }
  // Sendmail, OpenSMTPD: "250 2.0.0 u8TMp1Yd012345 Message accepted for delivery".
  if (auto p = reply.find(" Message accepted"); p != std::string::npos) {
    auto start = reply.rfind(' ', p - 1);
    if (start != std::string::npos && start + 1 < p) return id_at(reply, start + 1);
  }
  // qmail: "250 ok 1700000000 qp 12345".
  if (auto p = reply.find(" qp "); p != std::string::npos) {
    std::string id = id_at(reply, p + 4);
    if (!id.empty()) return id;
  }
  // Exchange without InternalId: the <message-id> it names.
  if (reply.find("Queued mail for delivery") != std::string::npos) {
    auto lt = reply.find('<');
    auto gt = lt == std::string::npos ? std::string::npos : reply.find('>', lt);
    if (gt != std::string::npos && gt - lt - 1 <= 128) return reply.substr(lt + 1, gt - lt - 1);
  }
  return {};
}

std::string audit_json(const AuditEntry& e) {
  const auto& s = e.session;
  const auto& t = e.transaction;
  auto js = [](std::string_view v) { return json_string(v, kMaxField); };
  const AuthResults& auth = auth_results(t);
  std::string o = "{";
  o += "\"time\":" + js(now_iso8601());
  o += ",\"session\":" + js(s.id) + ",\"transaction\":" + js(t.id);
  // Where the message came in: an SMTP listener "IP:PORT", or "milter:SOCKET"
  // for one postern judged as Postfix's milter (proxy/milter_server.h).
  o += ",\"listener\":" + js(s.listener);
  o += ",\"client\":{\"ip\":" + js(s.client_ip) + ",\"port\":" + std::to_string(s.client_port) +
       ",\"name\":" + js(s.client_name) + "}";
  o += ",\"helo\":" + js(s.helo);
  o += ",\"tls\":{\"active\":" + std::string(s.tls.active ? "true" : "false") + ",\"version\":" + js(s.tls.version) +
       ",\"cipher\":" + js(s.tls.cipher) + "}";
  if (!s.auth_user.empty()) o += ",\"auth_user\":" + js(s.auth_user);
  o += ",\"mail_from\":" + js(t.reverse_path.str());
  o += ",\"rcpt_to\":[";
  for (std::size_t i = 0; i < t.recipients.size() && i < kMaxRecipients; ++i) {
    o += (i ? "," : "") + js(t.recipients[i].str());
  }
  o += "],\"rcpt_count\":" + std::to_string(t.recipients.size());
  AuditHeaders h{e.message_id, e.from_domain};
  if (t.message) h = audit_message_headers(*t.message);
  if (h.from_domain.empty() && auth.dmarc) h.from_domain = auth.dmarc->from_domain;
  o += ",\"message_id\":" + js(h.message_id) + ",\"from_domain\":" + js(h.from_domain);
  o += ",\"size\":" + std::to_string(e.size);
  if (!auth.skipped.empty()) o += ",\"auth_skipped\":" + js(auth.skipped);
  if (auth.spf) {
    const auto& p = *auth.spf;
    o += ",\"spf\":{\"result\":" + js(spf_result_name(p.result)) + ",\"identity\":" + js(p.identity) +
         ",\"sender\":" + js(p.sender) + ",\"domain\":" + js(p.domain) + ",\"explanation\":" + js(p.explanation) +
         ",\"reason\":" + js(p.reason) + "}";
  }
  if (auth.dkim_checked) {
    o += ",\"dkim\":[";
    for (std::size_t i = 0; i < auth.dkim.size(); ++i) {
      const auto& d = auth.dkim[i];
      o += std::string(i ? "," : "") + "{\"domain\":" + js(d.domain) + ",\"selector\":" + js(d.selector) +
           ",\"algorithm\":" + js(d.algorithm) + ",\"result\":" + js(dkim_result_name(d.result)) +
           ",\"identity\":" + js(d.identity) + ",\"b\":" + js(d.b) + ",\"reason\":" + js(d.reason) +
           ",\"key_bits\":" + std::to_string(d.key_bits) + ",\"weak_key\":" + (d.weak_key ? "true" : "false") +
           ",\"body_length\":" + std::to_string(d.body_length) +
           ",\"body_truncated\":" + (d.body_truncated ? "true" : "false") + "}";
    }
    o += "]";
  }
  if (auth.dmarc) {
    const auto& d = *auth.dmarc;
    o += ",\"dmarc\":{\"result\":" + js(dmarc_result_name(d.result)) + ",\"policy\":" + js(d.policy) +
         ",\"disposition\":" + js(d.disposition) + ",\"from_domain\":" + js(d.from_domain) +
         ",\"org_domain\":" + js(d.org_domain) + ",\"record_domain\":" + js(d.record_domain) +
         ",\"spf_aligned\":" + (d.spf_aligned ? "true" : "false") +
         ",\"dkim_aligned\":" + (d.dkim_aligned ? "true" : "false") + ",\"reason\":" + js(d.reason);
    if (!d.record_domain.empty()) {
      const auto& p = d.published;
      auto policy = [](char c) { return c == 'r' ? "reject" : c == 'q' ? "quarantine" : "none"; };
      o += std::string(",\"published\":{\"p\":\"") + policy(p.p) + "\",\"sp\":\"" + policy(p.sp ? p.sp : p.p) +
           "\",\"adkim\":\"" + (p.adkim_strict ? "s" : "r") + "\",\"aspf\":\"" + (p.aspf_strict ? "s" : "r") +
           "\",\"pct\":" + std::to_string(p.pct) + "}";
    }
    if (!d.override_type.empty()) {
      o += ",\"override\":{\"type\":" + js(d.override_type) + ",\"comment\":" + js(d.override_comment) + "}";
    }
    o += "}";
  }
  if (auth.arc) o += ",\"arc\":" + arc_json(*auth.arc);
  o += ",\"symbols\":[";
  for (std::size_t i = 0; i < t.symbols.size() && i < kMaxSymbols; ++i) {
    o += std::string(i ? "," : "") + "{\"name\":" + js(t.symbols[i].name) + ",\"score\":" + num(t.symbols[i].score) + "}";
  }
  o += "]";
  // Each milter's actions (its "milter.NAME" transaction note; docs/milter.md).
  bool milters = false;
  for (auto it = t.notes.lower_bound("milter."); it != t.notes.end() && it->first.starts_with("milter."); ++it) {
    o += std::string(milters ? "," : ",\"milters\":{") + js(it->first.substr(7)) + ":" + js(it->second);
    milters = true;
  }
  if (milters) o += "}";
  o += ",\"score\":" + num(t.score);
  o += ",\"stage\":" + js(e.stage.empty() ? "eom" : e.stage);
  o += ",\"action\":" + js(e.action);
  if (!e.reason.empty()) o += ",\"reason\":" + js(e.reason);
  if (!e.rule.empty()) o += ",\"rule\":" + js(e.rule);
  o += std::string(",\"signed\":") + (e.dkim_signed ? "true" : "false");
  o += ",\"upstream_reply\":" + js(e.upstream_reply);
  if (!e.replied_by.empty()) o += ",\"replied_by\":" + js(e.replied_by);
  o += ",\"queue_id\":" + js(e.replied_by == "postern" ? std::string() : queue_id_from_reply(e.upstream_reply));
  o += "}";
  return o;
}

// ---- the writer

AuditLog::AuditLog(std::string path, std::size_t rotate_size, std::size_t keep)
    : AuditLog([&] {
        AuditLogOptions o;
        o.path = std::move(path);
        o.rotate_size = rotate_size;
        o.rotate_keep = keep;
        return o;
      }()) {}

AuditLog::AuditLog(AuditLogOptions options) : options_(std::move(options)) {
  if (!open_file()) {
    throw std::runtime_error("audit: cannot open \"" + options_.path + "\": " + std::strerror(errno));
  }
  last_sync_ = std::chrono::steady_clock::now();
  thread_ = std::thread([this] { run(); });
}

AuditLog::~AuditLog() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
  if (fd_ >= 0) {
    if (dirty_ && options_.fsync != AuditLogOptions::Fsync::kNever) ::fsync(fd_);
    ::close(fd_);
  }
}

bool AuditLog::write(std::string_view line) {
  {
    std::lock_guard lock(mu_);
    if (pending_.size() + line.size() + 1 > options_.queue_limit) {
      ++dropped_;
      return false;
    }
    pending_.append(line);
    pending_.push_back('\n');
    queued_ += line.size() + 1;
  }
  wake_.notify_one();
  return true;
}

void AuditLog::reopen() {
  {
    std::lock_guard lock(mu_);
    reopen_ = true;
  }
  wake_.notify_one();
}

bool AuditLog::flush(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  const std::uint64_t target = queued_;
  wake_.notify_one();
  return written_.wait_for(lock, timeout, [&] { return done_ >= target; });
}

std::uint64_t AuditLog::dropped() const {
  std::lock_guard lock(mu_);
  return dropped_;
}

// The writer thread: takes the whole queue at once and writes it outside the lock.
void AuditLog::run() {
  std::unique_lock lock(mu_);
  for (;;) {
    const bool interval = options_.fsync == AuditLogOptions::Fsync::kInterval;
    auto ready = [&] { return stop_ || reopen_ || !pending_.empty(); };
    if (interval && dirty_) {
      wake_.wait_until(lock, last_sync_ + options_.fsync_interval, ready);
    } else {
      wake_.wait(lock, ready);
    }
    const bool reopen = reopen_;
    reopen_ = false;
    std::string batch;
    batch.swap(pending_);
    const bool stop = stop_;
    lock.unlock();
    if (reopen) {
      if (fd_ >= 0 && dirty_) ::fsync(fd_);
      dirty_ = false;
      if (!open_file()) report("cannot reopen: " + std::string(std::strerror(errno)));
    }
    if (!batch.empty()) write_batch(batch);
    const auto now = std::chrono::steady_clock::now();
    if (fd_ >= 0 && dirty_ &&
        (options_.fsync == AuditLogOptions::Fsync::kAlways ||
         (interval && now - last_sync_ >= options_.fsync_interval))) {
      if (::fsync(fd_) != 0) report("fsync failed: " + std::string(std::strerror(errno)));
      dirty_ = false;
      last_sync_ = now;
    }
    lock.lock();
    done_ += batch.size();
    written_.notify_all();
    if (stop && pending_.empty()) return;
  }
}

bool AuditLog::open_file() {
  int fd = ::open(options_.path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd < 0) return false;
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
  struct stat st {};
  size_ = ::fstat(fd_, &st) == 0 ? static_cast<std::size_t>(st.st_size) : 0;
  return true;
}

// path.N-1 -> path.N ... path -> path.1, then a fresh path.
void AuditLog::rotate() {
  if (fd_ >= 0 && dirty_ && options_.fsync != AuditLogOptions::Fsync::kNever) ::fsync(fd_);
  dirty_ = false;
  const std::string& path = options_.path;
  if (options_.rotate_keep == 0) {
    ::unlink(path.c_str());
  } else {
    for (std::size_t n = options_.rotate_keep; n > 1; --n) {
      ::rename((path + '.' + std::to_string(n - 1)).c_str(), (path + '.' + std::to_string(n)).c_str());
    }
    ::rename(path.c_str(), (path + ".1").c_str());
  }
  if (!open_file()) report("cannot open after rotation: " + std::string(std::strerror(errno)));
}

// Writes whole lines, rotating between two lines when the next would take
// the file past rotate_size (a single longer line goes alone into a file).
void AuditLog::write_batch(const std::string& batch) {
  if (fd_ < 0 && !open_file()) {
    report("cannot open: " + std::string(std::strerror(errno)) + "; lines lost");
    return;
  }
  const std::size_t limit = options_.rotate_size;
  std::size_t start = 0;
  bool rotated = false;  // a fresh file takes at least one line, whatever its size
  while (start < batch.size()) {
    std::size_t end = start;
    // Take lines while they fit (or all of them without size rotation).
    while (end < batch.size()) {
      std::size_t nl = batch.find('\n', end);
      std::size_t next = nl == std::string::npos ? batch.size() : nl + 1;
      if (limit > 0 && size_ + (next - start) > limit && (end > start || (size_ > 0 && !rotated))) break;
      end = next;
    }
    if (end == start) {  // the next line does not fit in what is left: a new file
      rotate();
      rotated = true;
      if (fd_ < 0) return;
      continue;
    }
    if (!write_all(fd_, std::string_view(batch).substr(start, end - start))) {
      report("write failed: " + std::string(std::strerror(errno)) + "; lines lost");
      return;
    }
    size_ += end - start;
    dirty_ = true;
    rotated = false;
    start = end;
  }
  failing_ = false;
}

// Each failure is reported once until a batch is written again.
void AuditLog::report(const std::string& what) {
  if (failing_) return;
  failing_ = true;
  if (options_.on_error) options_.on_error("audit log " + options_.path + ": " + what);
}

namespace {
std::mutex g_current_mu;
std::shared_ptr<AuditLog> g_current;
}  // namespace

std::shared_ptr<AuditLog> current_audit_log() {
  std::lock_guard lock(g_current_mu);
  return g_current;
}

void install_audit_log(std::shared_ptr<AuditLog> log) {
  std::shared_ptr<AuditLog> old;
  {
    std::lock_guard lock(g_current_mu);
    old = std::move(g_current);
    g_current = std::move(log);
  }
  // `old` is flushed and joined here, outside the lock, unless a session still holds it.
}

}  // namespace postern
