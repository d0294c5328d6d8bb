// A read from a plain TCP socket in non-blocking mode that appends exactly
// what arrived: through this thread's scratch buffer, so no read buffer is
// zero-filled or sized with ioctl(FIONREAD) first, and a connection that
// waits holds no buffer (bench/README.md). The scratch buffer is filled and
// emptied with no suspension in between, so the sessions of a thread can
// share it.
#pragma once

#include <memory>
#include <string>
#include <system_error>

#include <asio/ip/tcp.hpp>

#include "proxy/limits.h"

namespace postern {

// Appends what `socket` has ready to `out` and sets `n` to its size (0 at
// end of stream, with asio::error::eof). asio::error::would_block when
// nothing is ready: then wait for readability (async_wait) and call again.
inline std::error_code read_ready(asio::ip::tcp::socket& socket, std::string& out, std::size_t& n) {
  thread_local const std::unique_ptr<char[]> scratch(new char[limits::kReadChunk]);
  std::error_code ec;
  n = socket.read_some(asio::buffer(scratch.get(), limits::kReadChunk), ec);
  out.append(scratch.get(), n);
  return ec;
}

}  // namespace postern
