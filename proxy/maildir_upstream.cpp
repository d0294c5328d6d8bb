// Maildir delivery (https://cr.yp.to/proginfo/maildir.html): write to tmp/,
// fsync, rename into new/; only then is the message acknowledged.
#include "proxy/maildir_upstream.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fmt/format.h>

#include "filters/io/write_all.h"
#include "proxy/limits.h"
#include "proxy/log.h"
#include "proxy/replies.h"
#include "proxy/smtp_upstream.h"
#include "proxy/upstream_pool.h"

namespace postern {
namespace {

std::atomic<unsigned long> g_delivery_counter{0};

bool make_dirs(const std::string& root) {
  for (const char* sub : {"", "/tmp", "/new", "/cur"}) {
    std::string path = root + sub;
    if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) return false;
  }
  return true;
}

// fsync(2) of a directory: its entries (a rename into it) on disk.
bool sync_dir(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = ::fsync(fd) == 0;
  ::close(fd);
  return ok;
}

// Appends `text` with CRLF turned into the LF of local mail files. Spooled
// content is canonical (every CR is part of a CRLF), so dropping CRs is exact,
// also where a CRLF is split between two chunks.
void append_lf(std::string& out, std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    std::size_t cr = text.find('\r', i);
    if (cr == std::string_view::npos) {
      out.append(text.substr(i));
      return;
    }
    out.append(text.substr(i, cr - i));
    i = cr + 1;
  }
}

}  // namespace

asio::awaitable<UpstreamReply> MaildirUpstream::mail(const Mailbox&, const std::vector<EsmtpParam>&, bool) {
  co_return UpstreamReply{Reply{replies::kSenderOk.code, std::string(replies::kSenderOk.text)}};
}

asio::awaitable<UpstreamReply> MaildirUpstream::rcpt(const Mailbox&, const std::vector<EsmtpParam>&, bool) {
  co_return UpstreamReply{Reply{replies::kRecipientOk.code, std::string(replies::kRecipientOk.text)}};
}

std::string deliver_to_maildir(const std::string& root, const std::string& hostname,
                               std::string_view head, const Spool& content, std::size_t offset) {
  auto fail = [&](std::string_view op, const std::string& path) {
    log::error("maildir-error").kv("op", op).kv("path", path).kv("error", std::strerror(errno));
    return std::string();
  };
  if (!make_dirs(root)) return fail("mkdir", root);
  auto now = std::chrono::system_clock::now().time_since_epoch();
  auto usec = std::chrono::duration_cast<std::chrono::microseconds>(now).count();
  std::string name = fmt::format("{}.M{}P{}Q{}.{}", usec / 1000000, usec % 1000000, ::getpid(),
                                 ++g_delivery_counter, hostname);
  std::string tmp = root + "/tmp/" + name;
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return fail("open", tmp);

  std::string out;
  append_lf(out, head);
  bool ok = true;
  std::string chunk(limits::kRelayChunk, '\0');
  for (;;) {
    long n = content.read(offset, chunk.data(), chunk.size());
    if (n < 0) {
      ok = false;
      break;
    }
    if (n == 0) break;
    offset += static_cast<std::size_t>(n);
    append_lf(out, std::string_view(chunk.data(), static_cast<std::size_t>(n)));
    if (out.size() >= limits::kRelayChunk) {
      ok = ok && write_all(fd, out);
      out.clear();
    }
  }
  ok = ok && write_all(fd, out) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) {
    fail("write", tmp);
    ::unlink(tmp.c_str());
    return {};
  }
  std::string final_path = root + "/new/" + name;
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
    fail("rename", final_path);
    ::unlink(tmp.c_str());
    return {};
  }
  // The rename is durable only once new/ itself is on disk (fsync(2): the
  // directory entry needs its own fsync); until then no 250.
  if (!sync_dir(root + "/new")) {
    fail("fsync", root + "/new");
    ::unlink(final_path.c_str());  // the client hears 4xx and sends it again: not kept twice
    return {};
  }
  return name;
}

asio::awaitable<UpstreamReply> MaildirUpstream::data(const std::string& head, const Spool& content,
                                                     std::size_t offset, const Mailbox& reverse_path) {
  std::string file = deliver_to_maildir(config_->upstream.maildir, config_->server.hostname,
                                        "Return-Path: <" + reverse_path.str() + ">\r\n" + head, content, offset);
  if (file.empty()) {
    co_return UpstreamReply{Reply{replies::kSpoolFailed.code, std::string(replies::kSpoolFailed.text)}, true, false};
  }
  co_return UpstreamReply{Reply{250, "2.0.0 Ok: queued as " + file}};
}

std::unique_ptr<Upstream> make_upstream(const asio::any_io_executor& executor,
                                        std::shared_ptr<const Config> config,
                                        const SessionFacts& client) {
  if (config->upstream.kind == Config::Upstream::Kind::kMaildir) {
    return std::make_unique<MaildirUpstream>(std::move(config));
  }
  return std::make_unique<SmtpUpstream>(executor, std::move(config), client);
}

bool upstream_idle_waiting(const asio::any_io_executor& executor, const Config& config) {
  return config.upstream.kind != Config::Upstream::Kind::kMaildir && config.upstream.reuse &&
         UpstreamPool::of(executor).size() > 0;
}

}  // namespace postern
