// What the daemon does to its own process: the file-creation mask, the
// open-file limit the configured session limits need, the privilege drop
// after binding, and the service manager's notifications (sd_notify(3)).
#pragma once

#include <string>
#include <sys/types.h>

#include "proxy/config.h"

namespace postern::process {

// Files postern creates (spool, quarantine, audit, logs, control socket)
// are the owner's only: umask 077.
void restrict_file_creation();

// Buffers of 256 KiB and more (message spools, relayed messages) are mapped
// and unmapped on their own (glibc M_MMAP_THRESHOLD, fixed), so memory a
// session gives back after a message leaves the process instead of staying
// in a heap arena (issue 18: idle sessions' RSS).
void return_large_buffers_to_os();

// Open files the configuration needs: per session the client socket, the
// upstream socket and a spool file, plus a reserve for listeners, logs, DNS.
std::size_t open_files_needed(const Config& config);
// Raises the soft RLIMIT_NOFILE up to the hard limit when the configuration
// needs more (always, without a session limit); throws ConfigError naming the key to lower and the limit to
// raise when even the hard limit is too low.
void ensure_open_files(const Config& config);

// The account server.user/server.group name, resolved.
struct Account {
  std::string user;
  uid_t uid = 0;
  gid_t gid = 0;
};
// Resolves server.user/group; false (with a log line) when they vanished.
bool resolve_account(const Config& config, Account& out);
// initgroups, setgid, setuid, then checks that root cannot be regained.
// Returns false with a log line when any step fails: postern then exits.
bool drop_privileges(const Account& account);
// Logs a loud warning when postern keeps running as root (like Postfix,
// it runs, but says what to set).
void warn_if_root();

// SIGHUP's default action ends the process: until the server's signal set
// takes over, a SIGHUP (logrotate, a reload racing the start) is only noted.
void defer_hangup();
// Whether a SIGHUP came while it was deferred (asked once, then forgotten).
bool hangup_deferred();

// sd_notify(0, state); a no-op without $NOTIFY_SOCKET.
void notify(const std::string& state);
// "RELOADING=1" with MONOTONIC_USEC (systemd 253 Type=notify-reload).
void notify_reloading();

}  // namespace postern::process
