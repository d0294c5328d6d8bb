// LuaFilter: the Lua state of one I/O thread, loaded with the rule scripts
// (sandbox in lua_sandbox.cpp), and the driver that runs each rule call as a
// coroutine, performing the asynchronous operations it yields for (DNS, the
// store, sleep) under the call's deadline and applying its on_error policy.
#include "filters/lua/lua_filter.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <mutex>

#include <asio/co_spawn.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/post.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/thread_pool.hpp>
#include <asio/use_awaitable.hpp>
#include <fmt/format.h>

#include "filters/filter_stats.h"
#include "filters/store/kv_store.h"
#include "filters/lua/lua_api_util.h"
#include "filters/lua/lua_internal.h"

namespace postern {
namespace {

using namespace asio::experimental::awaitable_operators;
using Clock = std::chrono::steady_clock;

// The error object at `idx` as text; never converts (which could allocate).
std::string error_text(lua_State* L, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING) return std::string(lua_tostring(L, idx)).substr(0, 1024);
  return std::string("(error object is a ") + luaL_typename(L, idx) + " value)";
}

// At most this many idle rule coroutines are kept per Lua state: one per
// rule call in flight at once is what a busy thread needs.
constexpr std::size_t kMaxIdleThreads = 64;

// Keeps a coroutine referenced while it runs and releases it however the
// driver ends (also when the awaiting session is destroyed mid-rule): back
// to the runtime's idle threads when the call ended cleanly, else to the
// garbage collector.
struct ThreadRef {
  LuaRuntime& rt;
  int ref;
  lua_State* co;
  bool reusable = false;
  ~ThreadRef() {
    *static_cast<ThreadTag**>(lua_getextraspace(co)) = &rt.main_tag;
    lua_settop(co, 0);
    if (reusable && lua_status(co) == LUA_OK && rt.idle_threads.size() < kMaxIdleThreads) {
      rt.idle_threads.push_back({co, ref});
    } else {
      luaL_unref(rt.L, LUA_REGISTRYINDEX, ref);
    }
  }
};

template <typename T>
asio::awaitable<std::optional<T>> within(asio::awaitable<T> op, Clock::time_point deadline) {
  auto left = deadline - Clock::now();
  if (left <= Clock::duration::zero()) co_return std::nullopt;
  asio::steady_timer timer(co_await asio::this_coro::executor, left);
  auto result = co_await (std::move(op) || timer.async_wait(asio::use_awaitable));
  if (result.index() == 0) co_return std::move(std::get<0>(result));
  co_return std::nullopt;
}

// What a waiting operation answers, pushed onto the coroutine when it resumes.
struct OpResult {
  enum class Kind {
    kDeadline, kNothing, kList, kNilStatus, kString, kNil, kInteger, kTrue, kFalse, kStoreError, kFailed
  } kind = Kind::kNothing;
  std::vector<std::string> list;
  std::string text;  // kNilStatus: the status; kString: the value; kStoreError, kFailed: why
  std::int64_t integer = 0;
};

OpResult nil_status(std::string status) {
  OpResult r;
  r.kind = OpResult::Kind::kNilStatus;
  r.text = std::move(status);
  return r;
}

std::string dns_status_text(DnsStatus s) {
  switch (s) {
    case DnsStatus::kOk: return "ok";
    case DnsStatus::kNxDomain: return "nxdomain";
    case DnsStatus::kNoData: return "nodata";
    case DnsStatus::kServFail: return "servfail";
    case DnsStatus::kTimeout: return "timeout";
  }
  return "servfail";
}

// The store call a PendingOp asks for.
asio::awaitable<StoreResult> store_op(KeyValueStore& store, const PendingOp& op) {
  using Kind = PendingOp::Kind;
  KeyValueStore::Ttl ttl(op.ttl);
  switch (op.kind) {
    case Kind::kStoreGet: co_return co_await store.get(op.name);
    case Kind::kStoreSet: co_return co_await store.set(op.name, op.value, ttl);
    case Kind::kStoreAdd: co_return co_await store.add(op.name, op.value, ttl);
    case Kind::kStoreIncr: co_return co_await store.incr(op.name, op.by, ttl);
    case Kind::kStoreDel: co_return co_await store.del(op.name);
    default: co_return StoreResult::failed("not a store operation");
  }
}

// What a DNS answer gives the rule: the records; for a DNSBL query "not
// listed" (an empty list) on NXDOMAIN/NODATA; else nil and the status.
OpResult dns_result(const PendingOp& op, DnsAnswer answer) {
  OpResult r;
  if (answer.status == DnsStatus::kOk) {
    r.kind = OpResult::Kind::kList;
    r.list = std::move(answer.records);
    return r;
  }
  if (op.kind == PendingOp::Kind::kDnsbl &&
      (answer.status == DnsStatus::kNxDomain || answer.status == DnsStatus::kNoData)) {
    r.kind = OpResult::Kind::kList;  // not listed
    return r;
  }
  return nil_status(dns_status_text(answer.status));
}

// What a store answer gives the rule.
OpResult store_result(const PendingOp& op, StoreResult answer) {
  using Kind = PendingOp::Kind;
  OpResult r;
  if (!answer.ok()) {
    r.kind = OpResult::Kind::kStoreError;
    r.text = std::move(answer.error);
    return r;
  }
  switch (op.kind) {
    case Kind::kStoreGet:
      r.kind = answer.value ? OpResult::Kind::kString : OpResult::Kind::kNil;
      if (answer.value) r.text = std::move(*answer.value);
      break;
    case Kind::kStoreAdd: r.kind = answer.added ? OpResult::Kind::kTrue : OpResult::Kind::kFalse; break;
    case Kind::kStoreIncr:
      r.kind = OpResult::Kind::kInteger;
      r.integer = answer.integer;
      break;
    default: r.kind = OpResult::Kind::kTrue; break;
  }
  return r;
}

// The in-process store's answer, which never waits.
StoreResult store_now(MemoryStore& store, const PendingOp& op) {
  using Kind = PendingOp::Kind;
  KeyValueStore::Ttl ttl(op.ttl);
  StoreResult r;
  switch (op.kind) {
    case Kind::kStoreGet: r.value = store.get_now(op.name); break;
    case Kind::kStoreSet: store.set_now(op.name, op.value, ttl); break;
    case Kind::kStoreAdd: r.added = store.add_now(op.name, op.value, ttl); break;
    case Kind::kStoreIncr: r.integer = store.incr_now(op.name, op.by, ttl); break;
    case Kind::kStoreDel: store.del_now(op.name); break;
    default: return StoreResult::failed("not a store operation");
  }
  return r;
}

// Reads the structure of op.spool on `pool` into *op.structure while the
// rule's coroutine waits, at most `limit` (lua.structure_timeout), queued
// behind other messages' walks included; false when the limit passed first.
// The walk reads the session's spool: when the limit passes, the walk is
// told to stop and its current block waited for (asynchronously); when this
// frame is destroyed first (the process stopping), the same, blocking; a
// walk not started yet never starts.
asio::awaitable<bool> walk_elsewhere(asio::thread_pool& pool, const PendingOp& op, std::chrono::milliseconds limit) {
  struct Walk {
    explicit Walk(const asio::any_io_executor& executor) : ended(executor) {}
    std::atomic<bool> stop{false};
    std::atomic<bool> done{false};  // `result` is the walk's
    std::mutex reading;             // held while the walk reads the spool
    mime::Structure result;
    asio::steady_timer ended;  // the wait; cancelled on the rule's thread when the walk is done
  };
  struct StopOnExit {
    Walk& walk;
    ~StopOnExit() {
      walk.stop = true;
      std::lock_guard<std::mutex> wait_for_the_walk(walk.reading);
    }
  };
  const asio::any_io_executor executor = co_await asio::this_coro::executor;
  auto walk = std::make_shared<Walk>(executor);
  walk->ended.expires_after(limit);
  StopOnExit guard{*walk};
  asio::post(pool, [walk, spool = op.spool, budget = op.budget, executor] {
    {
      std::lock_guard<std::mutex> reading(walk->reading);
      if (walk->stop) return;
      walk->result = read_spool_structure(*spool, budget, &walk->stop);
    }
    walk->done = true;
    asio::post(executor, [walk] { walk->ended.cancel(); });
  });
  std::error_code ec;
  co_await walk->ended.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  if (!walk->done) {
    filter_stats().mime_structure_late();
    walk->stop = true;
    // A walk still queued now never reads; one reading stops between two
    // blocks and says so through `ended`: waited for here without holding
    // the I/O thread (the guard's lock then finds it done).
    std::unique_lock<std::mutex> idle(walk->reading, std::try_to_lock);
    if (!idle.owns_lock()) {
      walk->ended.expires_at(asio::steady_timer::time_point::max());
      co_await walk->ended.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    co_return false;
  }
  *op.structure = std::make_shared<const mime::Structure>(std::move(walk->result));
  filter_stats().mime_structure_read(true);
  co_return true;
}

// Performs `op`; kDeadline when the rule's deadline passed first.
asio::awaitable<OpResult> perform(const PendingOp& op, LuaRuntime& rt, Clock::time_point deadline) {
  using Kind = PendingOp::Kind;
  OpResult r;
  KeyValueStore* store = rt.options.store.get();
  try {
    switch (op.kind) {
      case Kind::kDns:
      case Kind::kDnsbl: {
        if (!rt.dns) co_return nil_status("servfail");
        auto answer = co_await within(rt.dns->query(op.name, op.type), deadline);
        if (!answer) break;
        co_return dns_result(op, std::move(*answer));
      }
      case Kind::kSleep: {
        auto wanted = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(op.seconds));
        asio::steady_timer timer(co_await asio::this_coro::executor, std::min(wanted, deadline));
        co_await timer.async_wait(asio::use_awaitable);
        if (wanted > deadline) break;
        co_return r;
      }
      case Kind::kStoreGet:
      case Kind::kStoreSet:
      case Kind::kStoreAdd:
      case Kind::kStoreIncr:
      case Kind::kStoreDel: {
        if (!store) co_return nil_status("no store configured");
        auto answer = co_await within(store_op(*store, op), deadline);
        if (!answer) break;
        co_return store_result(op, std::move(*answer));
      }
      case Kind::kStructure:
        if (co_await walk_elsewhere(*rt.options.walk_pool, op, rt.options.structure_timeout)) co_return r;
        // A failure of postern's, not an error the rule could catch and take
        // for a message too complex to check: the rule's on_error applies.
        r.kind = OpResult::Kind::kFailed;
        r.text = fmt::format("MIME structure not read within lua.structure_timeout ({} s): the worker threads are busy",
                             std::chrono::duration<double>(rt.options.structure_timeout).count());
        co_return r;
      case Kind::kNone:
        co_return r;
    }
  } catch (const std::exception& e) {
    co_return nil_status(std::string("error: ") + e.what());
  }
  r.kind = OpResult::Kind::kDeadline;
  co_return r;
}

// Pushes an OpResult's values; returns how many.
int push_values(lua_State* L, const OpResult& r) {
  const int base = lua_gettop(L);
  switch (r.kind) {
    case OpResult::Kind::kList:
      lua_createtable(L, static_cast<int>(r.list.size()), 0);
      for (std::size_t i = 0; i < r.list.size(); ++i) {
        lua_pushlstring(L, r.list[i].data(), r.list[i].size());
        lua_rawseti(L, -2, static_cast<lua_Integer>(i + 1));
      }
      break;
    case OpResult::Kind::kNilStatus:
      lua_pushnil(L);
      lua_pushlstring(L, r.text.data(), r.text.size());
      break;
    case OpResult::Kind::kString: lua_pushlstring(L, r.text.data(), r.text.size()); break;
    case OpResult::Kind::kNil: lua_pushnil(L); break;
    case OpResult::Kind::kInteger: lua_pushinteger(L, static_cast<lua_Integer>(r.integer)); break;
    case OpResult::Kind::kTrue: lua_pushboolean(L, 1); break;
    case OpResult::Kind::kFalse: lua_pushboolean(L, 0); break;
    case OpResult::Kind::kStoreError:
    case OpResult::Kind::kFailed:
    case OpResult::Kind::kDeadline:
    case OpResult::Kind::kNothing: break;
  }
  return lua_gettop(L) - base;
}

// Builds an OpResult's values on the main thread (protected: it allocates).
int push_op_result(lua_State* L) {
  const auto& r = *static_cast<const OpResult*>(lua_touserdata(L, 1));
  lua_settop(L, 0);
  return push_values(L, r);
}

// Moves the result's values onto the suspended coroutine; -1 when memory ran out.
int deliver(lua_State* L, lua_State* co, const OpResult& r) {
  int base = lua_gettop(L);
  lua_pushcfunction(L, push_op_result);
  lua_pushlightuserdata(L, const_cast<OpResult*>(&r));
  if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK) {
    lua_settop(L, base);
    return -1;
  }
  int n = lua_gettop(L) - base;
  if (!lua_checkstack(co, n + 1)) {
    lua_settop(L, base);
    return -1;
  }
  lua_xmove(L, co, n);
  return n;
}

// Creates the coroutine of one rule call and anchors it in the registry
// (protected: both allocate). Returns the thread and its reference.
int new_rule_thread(lua_State* L) {
  lua_State* co = lua_newthread(L);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, co);
  lua_pushinteger(L, ref);
  return 2;
}

// Pushes the rule's function and its ctx onto a fresh coroutine (protected).
int start_rule_call(lua_State* co) {
  Invocation& inv = *thread_tag(co)->inv;
  lua_rawgeti(co, LUA_REGISTRYINDEX, inv.rule->fn_ref);
  push_ctx(co, inv);
  return 2;
}

// Builds the sandbox on the main thread (protected).
int build_sandbox_protected(lua_State* L) {
  build_sandbox(L, *thread_tag(L)->rt);
  return 0;
}

// Compiles and runs one script's top level (protected); the path is a light
// userdata so that nothing allocates outside the protected call.
int load_script_protected(lua_State* L) {
  const auto& path = *static_cast<const std::string*>(lua_touserdata(L, 1));
  lua_settop(L, 0);
  if (!load_chunk(L, path)) return lua_error(L);
  lua_call(L, 0, 0);
  return 0;
}

}  // namespace

int answer_now(lua_State* L, LuaRuntime& rt, const PendingOp& op) {
  using Kind = PendingOp::Kind;
  switch (op.kind) {
    case Kind::kDns:
    case Kind::kDnsbl: {
      if (!rt.dns) return -1;
      std::optional<DnsAnswer> answer = rt.dns->answer_now(op.name, op.type);
      if (!answer) return -1;
      return push_values(L, dns_result(op, std::move(*answer)));
    }
    case Kind::kStoreGet:
    case Kind::kStoreSet:
    case Kind::kStoreAdd:
    case Kind::kStoreIncr:
    case Kind::kStoreDel: {
      MemoryStore* memory = rt.options.store ? rt.options.store->in_memory() : nullptr;
      if (!memory) return -1;
      return push_values(L, store_result(op, store_now(*memory, op)));
    }
    default: return -1;
  }
}

std::optional<Stage> stage_from_name(std::string_view name) {
  for (Stage s : {Stage::kConnect, Stage::kHelo, Stage::kMail, Stage::kRcpt, Stage::kData, Stage::kEom, Stage::kClose}) {
    if (name == stage_name(s)) return s;
  }
  return std::nullopt;
}

LuaFilter::LuaFilter(const LuaOptions& options, Resolver* dns) : rt_(std::make_unique<LuaRuntime>()) {
  LuaRuntime& rt = *rt_;
  rt.options = options;
  rt.dns = dns;
  rt.alloc.limit = options.memory_limit;
  rt.L = lua_newstate(capped_alloc, &rt.alloc);
  if (!rt.L) throw LuaLoadError("lua: cannot create a state within lua.memory_limit");
  rt.main_tag.rt = &rt;
  rt.busy.threshold = options.busy_threshold;
  if (options.log) rt.busy.log = [log = options.log](std::string_view line) { log(LuaLogLevel::kWarning, line); };
  rt.idle_threads.reserve(kMaxIdleThreads);  // ThreadRef's destructor must not allocate
  *static_cast<ThreadTag**>(lua_getextraspace(rt.L)) = &rt.main_tag;
  lua_State* L = rt.L;
  lua_sethook(L, count_hook, LUA_MASKCOUNT, kHookInterval);
  // The sandbox is built under an unlimited budget; only scripts are counted.
  rt.main_tag.budget = UINT64_MAX;
  rt.main_tag.deadline = Clock::time_point::max();
  try {
    lua_pushcfunction(L, build_sandbox_protected);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) throw LuaLoadError("lua: cannot build the sandbox: " + error_text(L, -1));
    for (const std::string& path : expand_scripts(options.scripts)) {
      rt.loading_script = path;
      rt.main_tag.instructions = 0;
      rt.main_tag.killed = nullptr;
      rt.main_tag.budget = options.instruction_budget;
      rt.main_tag.deadline = Clock::now() + options.timeout;
      lua_pushcfunction(L, load_script_protected);
      lua_pushlightuserdata(L, const_cast<std::string*>(&path));
      if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        std::string msg = error_text(L, -1);
        if (msg.rfind(path, 0) != 0) msg = path + ": " + msg;
        throw LuaLoadError(msg);
      }
    }
    rt.loading_script.clear();
    if (rt.busy.threshold.count() > 0) watch_busy(&rt.busy);
  } catch (...) {
    lua_close(L);
    rt.L = nullptr;
    throw;
  }
}

LuaFilter::~LuaFilter() {
  if (rt_) unwatch_busy(&rt_->busy);
  if (rt_ && rt_->L) lua_close(rt_->L);
}

bool LuaFilter::wants(Stage stage) const { return (rt_->stage_mask & stage_bit(stage)) != 0; }

std::vector<LuaRuleInfo> LuaFilter::rules() const {
  std::vector<LuaRuleInfo> out;
  for (const Rule& r : rt_->rules) out.push_back(r.info);
  return out;
}

std::size_t LuaFilter::memory_used() const { return rt_->alloc.used; }
std::size_t LuaFilter::idle_rule_threads() const { return rt_->idle_threads.size(); }

namespace {

// How a rule call failed, for the metrics: a limit the sandbox enforced
// (`killed`, named in lua_sandbox.cpp), the deadline while waiting, memory,
// or an error of the script itself.
FilterStats::RuleFailure failure_kind(const char* killed, const std::string& failure) {
  std::string_view why = killed ? std::string_view(killed) : std::string_view(failure);
  if (why.starts_with("time limit")) return FilterStats::RuleFailure::kTimeout;
  if (why.starts_with("instruction budget")) return FilterStats::RuleFailure::kBudget;
  if (why.starts_with("memory limit") || why == "not enough memory") return FilterStats::RuleFailure::kMemory;
  return FilterStats::RuleFailure::kError;
}

// [store] on_error: a store that did not answer skips the rule (continue)
// or defers the command (tempfail), whatever the rule's own on_error says:
// the rule never saw an answer to decide on.
Verdict store_failure_verdict(const LuaRuntime& rt, const Rule& rule, const std::string& why) {
  if (rt.options.store_on_error == LuaOptions::OnError::kContinue) return Verdict::proceed();
  return Verdict{Verdict::Action::kTempfail, 451, "4.3.0", "Temporary local problem, please try again later",
                 "lua rule " + rule.info.name + ": store failed: " + why, rule.info.name};
}

Verdict failure_verdict(const Rule& rule, const std::string& why) {
  if (rule.info.on_error == LuaOptions::OnError::kContinue) return Verdict::proceed();
  return Verdict{Verdict::Action::kTempfail, 451, "4.7.0", "Temporary local problem, please try again later",
                 "lua rule " + rule.info.name + " failed: " + why, rule.info.name};
}

asio::awaitable<Verdict> run_rule(LuaRuntime& rt, const Rule& rule, FilterContext& ctx) {
  lua_State* L = rt.L;
  Invocation inv;
  inv.id = rt.next_invocation++;
  inv.ctx = &ctx;
  inv.rule = &rule;
  inv.tag.rt = &rt;
  inv.tag.inv = &inv;
  inv.tag.budget = rt.options.instruction_budget;
  const auto started = Clock::now();
  inv.tag.deadline = started + rt.options.timeout;

  std::string failure;
  Verdict verdict;
  bool hit = false;
  lua_State* co = nullptr;
  int co_ref = LUA_NOREF;
  if (!rt.idle_threads.empty()) {
    co = rt.idle_threads.back().co;
    co_ref = rt.idle_threads.back().ref;
    rt.idle_threads.pop_back();
  } else {
    lua_pushcfunction(L, new_rule_thread);
    if (lua_pcall(L, 0, 2, 0) != LUA_OK) {
      lua_pop(L, 1);
      filter_stats().lua_rule_failed(rule.info.name, rule.info.script, FilterStats::RuleFailure::kMemory);
      co_return failure_verdict(rule, "not enough memory");
    }
    co = static_cast<lua_State*>(lua_touserdata(L, -2));
    co_ref = static_cast<int>(lua_tointeger(L, -1));
    lua_pop(L, 2);
  }
  ThreadRef guard{rt, co_ref, co};
  *static_cast<ThreadTag**>(lua_getextraspace(co)) = &inv.tag;
  lua_sethook(co, count_hook, LUA_MASKCOUNT, kHookInterval);

  int status = LUA_ERRRUN;
  int nres = 0;
  // Each stretch the rule runs on this thread, between two waits, is watched.
  auto resume = [&](int nargs) {
    busy_begin(rt.busy, rule.info.name, rule.info.script);
    int st = lua_resume(co, nullptr, nargs, &nres);
    busy_end(rt.busy);
    return st;
  };
  lua_pushcfunction(co, start_rule_call);
  if (lua_pcall(co, 0, 2, 0) != LUA_OK) {
    failure = error_text(co, -1);
  } else {
    status = resume(1);
    while (status == LUA_YIELD) {
      lua_pop(co, nres);
      if (inv.pending.kind == PendingOp::Kind::kNone) {
        failure = "yield outside the postern API";
        break;
      }
      PendingOp op = std::move(inv.pending);
      inv.pending = PendingOp{};
      const auto asked = Clock::now();
      OpResult result = co_await perform(op, rt, inv.tag.deadline);
      // Reading a large message's structure is postern's work, bounded by the
      // message's size, not the rule's: its time is not the rule's to spend
      // (else a big enough message would time a rule with on_error =
      // "continue" out, and past its check).
      if (op.kind == PendingOp::Kind::kStructure) inv.tag.deadline += Clock::now() - asked;
      if (result.kind == OpResult::Kind::kDeadline) {
        failure = "time limit exceeded while waiting";
        break;
      }
      if (result.kind == OpResult::Kind::kFailed) {
        failure = result.text;
        break;
      }
      if (result.kind == OpResult::Kind::kStoreError) {
        const char* policy = rt.options.store_on_error == LuaOptions::OnError::kContinue ? "continue" : "tempfail";
        rt.log(LuaLogLevel::kWarning, "store-error rule=" + rule.info.name + " stage=" + stage_name(ctx.stage) +
                                          " backend=" + std::string(rt.options.store->backend()) +
                                          " policy=" + policy + " error=" + quoted_text(result.text, 1024));
        co_return store_failure_verdict(rt, rule, result.text);
      }
      int nargs = deliver(L, co, result);
      if (nargs < 0) {
        failure = "not enough memory";
        break;
      }
      status = resume(nargs);
    }
    if (failure.empty() && status != LUA_OK) failure = error_text(co, -1);
  }

  if (failure.empty()) {
    int first = lua_gettop(co) - nres + 1;
    if (nres == 0 || lua_isnil(co, first) || (lua_isboolean(co, first) && !lua_toboolean(co, first))) {
      verdict = Verdict::proceed();
    } else if (lua_isboolean(co, first)) {
      add_symbol(ctx, Symbol{rule.info.name, rule.info.score, rule.info.description});
      hit = true;
    } else if (auto v = to_verdict(co, first)) {
      hit = true;
      verdict = std::move(*v);
      if (verdict.reason.empty()) verdict.reason = "lua rule " + rule.info.name;
      verdict.rule = rule.info.name;
    } else {
      failure = std::string("rule returned a ") + luaL_typename(co, first) +
                "; expected a postern verdict, true or nothing";
    }
  }
  guard.reusable = failure.empty();
  filter_stats().lua_rule_run(rule.info.name, (hit || inv.added_symbol) && failure.empty(),
                              std::chrono::duration<double>(Clock::now() - started).count());
  if (!failure.empty()) {
    filter_stats().lua_rule_failed(rule.info.name, rule.info.script, failure_kind(inv.tag.killed, failure));
    const char* policy = rule.info.on_error == LuaOptions::OnError::kContinue ? "continue" : "tempfail";
    rt.log(LuaLogLevel::kError, "lua-rule-error rule=" + rule.info.name + " script=" + rule.info.script +
                                    " stage=" + stage_name(ctx.stage) + " policy=" + policy +
                                    " error=" + quoted_text(failure, 1024));
    co_return failure_verdict(rule, failure);
  }
  co_return verdict;
}

}  // namespace

asio::awaitable<Verdict> LuaFilter::run(FilterContext& ctx) {
  LuaRuntime& rt = *rt_;
  if (ctx.stage >= Stage::kMail && ctx.stage <= Stage::kEom) carry_session_symbols(ctx);
  unsigned bit = stage_bit(ctx.stage);
  for (const Rule& rule : rt.rules) {
    if (!(rule.stage_mask & bit)) continue;
    Verdict v = co_await run_rule(rt, rule, ctx);
    if (v.decisive()) co_return v;
  }
  co_return Verdict::proceed();
}

std::shared_ptr<Filter> make_lua_filter(const LuaOptions& options, Resolver* dns) {
  return std::make_shared<LuaFilter>(options, dns);
}

}  // namespace postern
