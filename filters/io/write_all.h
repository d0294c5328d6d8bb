// write(2) until every octet is out, through EINTR: the one loop behind the
// spool file, the audit log and the log output.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <string_view>

namespace postern {

// False on the first failed write, with errno as write(2) left it.
inline bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

}  // namespace postern
