// Starts a Session's coroutine for fuzz_session.cpp. Its own file: co_spawn
// instantiates coroutines, which must not get coverage instrumentation under
// clang 14 (see CMakeLists.txt).
#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <exception>
#include <memory>

#include "proxy/session.h"

namespace postern::fuzz {

void spawn_session(asio::io_context& io, std::shared_ptr<Session> session) {
  Session& s = *session;
  auto keep = [session = std::move(session)](const std::exception_ptr&) {};
  asio::co_spawn(io, s.run(), std::move(keep));
}

}  // namespace postern::fuzz
