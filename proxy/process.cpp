// Process set-up for the daemon; see process.h.
#include "proxy/process.h"

#include <grp.h>
#include <malloc.h>
#include <pwd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fmt/format.h>

#include "proxy/log.h"

namespace postern::process {
namespace {
// Descriptors beyond the sessions': listeners, metrics, control socket,
// logs, audit log, DNS sockets, Lua scripts being read.
constexpr std::size_t kReserveFiles = 64;
constexpr std::size_t kFilesPerSession = 3;
volatile std::sig_atomic_t hangup_seen = 0;
extern "C" void note_hangup(int) { hangup_seen = 1; }
}  // namespace

void return_large_buffers_to_os() {
  // Setting it also turns off glibc's sliding threshold, which rises to the
  // largest block freed so far and would keep every later message's buffer
  // in an arena.
  ::mallopt(M_MMAP_THRESHOLD, 256 * 1024);
}

void restrict_file_creation() { ::umask(077); }

std::size_t open_files_needed(const Config& config) {
  if (config.limits.sessions == 0) return 0;  // unlimited: nothing to check against
  return config.limits.sessions * kFilesPerSession + kReserveFiles + config.listeners.size() +
         config.auth.worker_threads;
}

void ensure_open_files(const Config& config) {
  std::size_t needed = open_files_needed(config);
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (needed == 0) {
    // No session limit: every descriptor the hard limit allows may be needed.
    if (rl.rlim_max == RLIM_INFINITY || rl.rlim_cur >= rl.rlim_max) return;
    needed = rl.rlim_max;
  }
  if (rl.rlim_cur >= needed) return;
  if (rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= needed) {
    rlim_t before = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ? needed : rl.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &rl) == 0) {
      log::info("open-files-raised").kv("from", static_cast<unsigned long long>(before))
          .kv("to", static_cast<unsigned long long>(rl.rlim_cur)).kv("needed", needed);
      return;
    }
  }
  throw ConfigError(fmt::format(
      "limits.sessions = {} needs about {} open files ({} a session and {} spare), but the open-file "
      "limit (RLIMIT_NOFILE) is {} with a hard limit of {}: lower limits.sessions, or raise the limit "
      "(ulimit -n {} before starting postern, or LimitNOFILE={} in the systemd unit)",
      config.limits.sessions, needed, kFilesPerSession, kReserveFiles, static_cast<unsigned long long>(rl.rlim_cur),
      static_cast<unsigned long long>(rl.rlim_max), needed, needed));
}

bool resolve_account(const Config& config, Account& out) {
  const passwd* pw = ::getpwnam(config.server.user.c_str());
  if (!pw) {
    log::error("privileges").kv("error", "no such user").kv("user", config.server.user);
    return false;
  }
  out.user = config.server.user;
  out.uid = pw->pw_uid;
  out.gid = pw->pw_gid;
  if (!config.server.group.empty()) {
    const group* gr = ::getgrnam(config.server.group.c_str());
    if (!gr) {
      log::error("privileges").kv("error", "no such group").kv("group", config.server.group);
      return false;
    }
    out.gid = gr->gr_gid;
  }
  return true;
}

bool drop_privileges(const Account& account) {
  if (::geteuid() != 0) {
    if (::geteuid() == account.uid) return true;  // started as that user already (systemd User=)
    log::error("privileges").kv("user", account.user)
        .kv("error", "server.user needs postern to start as root; start it as that user or remove the key");
    return false;
  }
  auto fail = [&](const char* step) {
    log::error("privileges").kv("step", step).kv("user", account.user).kv("error", std::strerror(errno));
    return false;
  };
  if (::initgroups(account.user.c_str(), account.gid) != 0) return fail("initgroups");
  if (::setgid(account.gid) != 0) return fail("setgid");
  if (::setuid(account.uid) != 0) return fail("setuid");
  // setuid() as root sets the real, effective and saved IDs; make sure.
  if (account.uid != 0 && (::setuid(0) == 0 || ::seteuid(0) == 0)) {
    log::error("privileges").kv("user", account.user).kv("error", "root could be regained after setuid");
    return false;
  }
  uid_t r, e, s;
  gid_t rg, eg, sg;
  if (::getresuid(&r, &e, &s) != 0 || ::getresgid(&rg, &eg, &sg) != 0 || r != account.uid || e != account.uid ||
      s != account.uid || rg != account.gid || eg != account.gid || sg != account.gid) {
    log::error("privileges").kv("user", account.user).kv("error", "user or group IDs did not all change");
    return false;
  }
  log::info("privileges-dropped").kv("user", account.user).kv("uid", static_cast<unsigned long long>(account.uid))
      .kv("gid", static_cast<unsigned long long>(account.gid));
  return true;
}

void warn_if_root() {
  if (::geteuid() != 0) return;
  log::warning("running-as-root")
      .kv("hint", "set [server] user (and group) so postern drops root after binding its ports, "
                  "or run it as a user with CAP_NET_BIND_SERVICE (docs/operations.md)");
}

void notify(const std::string& state) { ::sd_notify(0, state.c_str()); }

void notify_reloading() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  unsigned long long usec = static_cast<unsigned long long>(ts.tv_sec) * 1000000ull +
                            static_cast<unsigned long long>(ts.tv_nsec) / 1000;
  notify(fmt::format("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=Reloading the configuration", usec));
}

void defer_hangup() {
  struct sigaction action {};
  action.sa_handler = note_hangup;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  ::sigaction(SIGHUP, &action, nullptr);
}

bool hangup_deferred() {
  const bool seen = hangup_seen != 0;
  hangup_seen = 0;
  return seen;
}

}  // namespace postern::process
