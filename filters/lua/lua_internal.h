// Internals shared by the Lua engine's files (lua_filter.cpp: the state, the
// sandbox and the coroutine driver; lua_api.cpp: the postern table and the
// ctx object). Not for use outside filters/lua/.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <lua.hpp>

#include "filters/dns/resolver.h"
#include "filters/filter.h"
#include "filters/lua/busy_watch.h"
#include "filters/lua/lua_filter.h"
#include "filters/lua/lua_options.h"
#include "filters/lua/mime.h"

namespace postern {

// Every Lua thread's extra space points at one of these: the main thread's
// (loading) or an invocation's (running a rule).
struct Invocation;
struct ThreadTag {
  LuaRuntime* rt = nullptr;
  Invocation* inv = nullptr;  // null while loading scripts
  std::uint64_t instructions = 0;
  std::uint64_t budget = 0;
  std::chrono::steady_clock::time_point deadline;
  const char* killed = nullptr;  // set once a limit hit: no pcall may catch it
};

ThreadTag* thread_tag(lua_State* L);

struct Rule {
  LuaRuleInfo info;
  unsigned stage_mask = 0;
  int fn_ref = LUA_NOREF;
};

// An asynchronous operation a C function asked for before yielding; the
// driver performs it and resumes the coroutine with its results.
struct PendingOp {
  enum class Kind {
    kNone, kDns, kDnsbl, kSleep, kStoreGet, kStoreSet, kStoreAdd, kStoreIncr, kStoreDel, kStructure
  } kind = Kind::kNone;
  std::string name;  // DNS name / store key
  DnsType type = DnsType::kA;
  std::string value;
  std::int64_t by = 0;
  std::int64_t ttl = 0;
  double seconds = 0;
  // kStructure: the message whose structure is read on LuaOptions::walk_pool
  // into `structure` (the invocation's), within `budget`.
  const Spool* spool = nullptr;
  mime::TextBudget budget;
  std::shared_ptr<const mime::Structure>* structure = nullptr;
};

// The MIME structure of the message in `spool`, read in blocks; when `stop`
// turns true between two blocks the structure says it was not read whole.
// Compressed files decompress to at most `decompress_limit` octets in all
// (mime::StructureReader).
mime::Structure read_spool_structure(const Spool& spool, mime::TextBudget budget,
                                     const std::atomic<bool>* stop = nullptr,
                                     std::size_t decompress_limit = static_cast<std::size_t>(-1));

// Messages over this many octets have their structure read on
// LuaOptions::walk_pool while the rule waits, as for a DNS answer.
inline constexpr std::size_t kWalkElsewhereOver = 1024 * 1024;
// A smaller message's structure is read where the rule runs with its
// compressed files decompressed to at most this many octets; one that needs
// more is read again on the walk pool (a 768 KiB bzip2 file can take a
// fifth of a second to expand to 16 MiB, and a small message may expand
// to 64).
inline constexpr std::size_t kInlineDecompressed = 1024 * 1024;

// When `op` can be answered without waiting -- a cached DNS answer, the
// in-process store -- pushes its values onto L (the rule's coroutine, inside
// the C function that asked) and returns how many; -1 when the rule must
// yield for it (lua_filter.cpp). A yield from C is a C++ throw in this Lua
// build: skipping it matters (bench/README.md).
int answer_now(lua_State* L, LuaRuntime& rt, const PendingOp& op);

struct Invocation {
  std::uint64_t id = 0;
  ThreadTag tag;
  FilterContext* ctx = nullptr;
  const Rule* rule = nullptr;
  PendingOp pending;
  bool added_symbol = false;  // ctx:symbol() was called: a hit for the metrics
  // Loaded on first use of ctx.body:lines(): the message's first
  // body_scan_limit octets, a view into the spool when it is in memory, else
  // into scanned_copy (Spool::head).
  std::optional<std::string_view> scanned;
  std::string scanned_copy;
  // Loaded on first use of text_parts() or attachments(): the whole
  // message's, shared with the transaction's other rule calls.
  std::shared_ptr<const mime::Structure> parts;
};

struct Allocator {
  std::size_t used = 0;
  std::size_t limit = 0;
};

struct LuaRuntime {
  LuaOptions options;
  Resolver* dns = nullptr;
  Allocator alloc;
  lua_State* L = nullptr;
  ThreadTag main_tag;
  std::vector<Rule> rules;
  unsigned stage_mask = 0;
  std::uint64_t next_invocation = 1;
  std::string loading_script;  // the script whose top level runs now
  // Rule coroutines that finished cleanly, kept for the next rule call
  // (bench/README.md); registry references.
  struct IdleThread {
    lua_State* co;
    int ref;
  };
  std::vector<IdleThread> idle_threads;
  // Rule log lines (print, postern.log): a token bucket of lua.log_rate and
  // lua.log_burst, and the lines dropped since the last one that went out.
  double log_tokens = 0;
  std::chrono::steady_clock::time_point log_refilled{};
  std::uint64_t log_dropped = 0;
  // This state's slot in the rule-call watchdog (busy_watch.h).
  BusySlot busy;

  void log(LuaLogLevel level, const std::string& line) const {
    if (options.log) options.log(level, line);
  }
};

inline unsigned stage_bit(Stage s) { return 1u << static_cast<unsigned>(s); }
std::optional<Stage> stage_from_name(std::string_view name);

// lua_sandbox.cpp: the state's allocator (refuses past Allocator::limit),
// the count hook (every kHookInterval instructions: budget and deadline),
// the sandbox globals, text-only chunk loading, and the script list.
inline constexpr int kHookInterval = 1000;
void* capped_alloc(void* ud, void* ptr, std::size_t osize, std::size_t nsize);
void count_hook(lua_State* L, lua_Debug* ar);
void build_sandbox(lua_State* L, LuaRuntime& rt);
// Pushes the chunk of `path` with its own _ENV; on failure pushes the message
// and returns false.
bool load_chunk(lua_State* L, const std::string& path);
// Files, and the *.lua files of directories in name order.
std::vector<std::string> expand_scripts(const std::vector<std::string>& entries);

// Raises a Lua error "FILE:LINE: what" at the running Lua function.
[[noreturn]] void raise_here(lua_State* L, const char* what);

// Logs one line a rule wrote (print, postern.log), with the session and
// transaction ids, within the state's log rate; drops and counts it past.
void rule_log(lua_State* L, LuaLogLevel level, const std::string& line);

// lua_regex.cpp: postern.regex, into the postern table on top of the stack.
void install_regex(lua_State* L);

// lua_bounded_lib.cpp: raises "time limit exceeded" once the running rule's
// deadline has passed (or its earlier limit again); for loops inside C.
void check_rule_budget(lua_State* L);
// Replaces, in the globals table on top of the stack, the built-ins that
// would run unbounded in C: pattern matching, string.rep and string.pack,
// table.insert/remove/move/concat/sort, and setmetatable (no __gc).
void install_bounded_builtins(lua_State* L);

// lua_readonly.cpp: replaces every table in the sandbox globals table on top
// of the stack (the libraries, postern, postern.settings, and theirs) by a
// read-only view, and rawset by one that refuses views.
void make_shared_tables_read_only(lua_State* L);

// Handles of ctx, ctx.client, ctx.envelope, ctx.headers, ctx.body and the
// notes: full userdata naming their invocation, refused once that call is
// over (lua_ctx.cpp).
inline constexpr const char* kCtxMeta = "postern.ctx";
inline constexpr const char* kClientMeta = "postern.client";
inline constexpr const char* kEnvelopeMeta = "postern.envelope";
inline constexpr const char* kHeadersMeta = "postern.headers";
inline constexpr const char* kBodyMeta = "postern.body";
inline constexpr const char* kNotesMeta = "postern.notes";
struct Handle {
  std::uint64_t id;
  bool session;  // notes: the session's (true) or the transaction's
};
Invocation& check_handle(lua_State* L, int idx, const char* meta);
void push_handle(lua_State* L, const Invocation& inv, const char* meta, bool session = false, int uservalues = 0);
void set_string(lua_State* L, const char* key, std::string_view value);
// The transaction's message, or a Lua error before the data stage.
const Message& need_message(lua_State* L, Invocation& inv);
// The metatable of a handle that reads like a read-only table: __index (a
// closure over the `index_upvalues` values on top of the stack, which it
// pops), __newindex (raising the error), __pairs unless null, and a hidden
// metatable.
void install_view(lua_State* L, const char* meta, lua_CFunction index, lua_CFunction newindex, lua_CFunction pairs,
                  int index_upvalues = 0);
// The iterator a view's __pairs returns with its snapshot table: next() on it.
int snapshot_next(lua_State* L);
// lua_message.cpp: registers the metatables of headers, body and notes.
void install_message_types(lua_State* L);

// lua_api.cpp: installs the global `postern` table into the sandbox table at
// the top of the stack.
void install_postern_api(lua_State* L, LuaRuntime& rt);
// Pushes the ctx object of `inv` onto L.
void push_ctx(lua_State* L, Invocation& inv);
// The verdict table's metatable key in the registry.
inline constexpr const char* kVerdictMeta = "postern.verdict";
// Converts the verdict table at `idx`; nullopt when it is not one.
std::optional<Verdict> to_verdict(lua_State* L, int idx);
// Adds a symbol (the session's pending list before MAIL).
void add_symbol(FilterContext& ctx, Symbol s);
// Moves symbols added before MAIL into the transaction, once per transaction.
void carry_session_symbols(FilterContext& ctx);

}  // namespace postern
