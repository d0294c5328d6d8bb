// Helpers of the Lua engine's unit tests: build a LuaFilter from script text,
// run one stage on an io_context, and hold a message in a spool.
#pragma once

#include <chrono>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>

#include "filters/filter.h"
#include "filters/store/kv_store.h"
#include "filters/lua/lua_filter.h"
#include "filters/spool.h"
#include "test_util.h"

namespace postern::test {

class LuaHarness {
 public:
  LuaHarness() {
    options.log = [this](LuaLogLevel, std::string_view line) { logs.emplace_back(line); };
    options.store = std::make_shared<MemoryStore>();
    options.timeout = std::chrono::milliseconds(2000);
    options.memory_limit = 32u * 1024 * 1024;
    session.client_ip = "192.0.2.10";
    session.client_port = 40000;
    session.helo = "mail.example.net";
    session.id = "S1";
  }

  // Compiles `script` (written to rules.lua) into a new filter.
  std::shared_ptr<LuaFilter> load(std::string_view script, Resolver* dns = nullptr) {
    options.scripts = {dir.write("rules.lua", script)};
    return std::make_shared<LuaFilter>(options, dns);
  }

  // Puts `text` (CRLF line ends) in the spool as the transaction's message;
  // past `spool_memory` octets the spool is a file.
  void set_message(std::string_view text, std::size_t spool_memory = 1 << 20) {
    spool = std::make_unique<Spool>(spool_memory, dir.path());
    spool->append(text);
    spool->finish();
    message = std::make_unique<Message>(*spool);
    txn.message = message.get();
  }

  Verdict run(Filter& filter, Stage stage) {
    asio::io_context io;
    Verdict out;
    std::exception_ptr error;
    FilterContext ctx{stage, session, txn};
    asio::co_spawn(io, filter.run(ctx), [&](std::exception_ptr e, Verdict v) {
      error = e;
      out = std::move(v);
    });
    io.run();
    if (error) std::rethrow_exception(error);
    return out;
  }

  bool logged(std::string_view needle) const {
    for (const auto& l : logs) {
      if (l.find(needle) != std::string::npos) return true;
    }
    return false;
  }

  TempDir dir;
  LuaOptions options;
  std::vector<std::string> logs;
  SessionFacts session;
  TransactionFacts txn;
  std::unique_ptr<Spool> spool;
  std::unique_ptr<Message> message;
};

}  // namespace postern::test
