// Listeners on thread 0 hand each accepted socket to the next I/O thread;
// a session then lives on that thread until it closes (DESIGN "Concurrency").
#include "proxy/server.h"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/post.hpp>
#include <asio/signal_set.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <thread>
#include <tuple>
#include <vector>

#include "filters/audit/audit_log.h"
#include "filters/spool.h"
#include "filters/store/redis_store.h"
#include "filters/text/time_format.h"
#include "proxy/control.h"
#include "proxy/filter_setup.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/milter_server.h"
#include "proxy/process.h"
#include "proxy/session.h"
#include "proxy/tls.h"
#include "version.h"

namespace postern {
namespace {

constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);

log::Level to_log_level(Config::Log::Level level) {
  switch (level) {
    case Config::Log::Level::kDebug: return log::Level::kDebug;
    case Config::Log::Level::kInfo: return log::Level::kInfo;
    case Config::Log::Level::kWarning: return log::Level::kWarning;
    case Config::Log::Level::kError: return log::Level::kError;
  }
  return log::Level::kInfo;
}

// Level, format and output of the log; the output may throw (a file that
// cannot be opened).
void apply_log_settings(const Config& config) {
  log::set_output(config.log.output);
  log::set_format(config.log.format == Config::Log::Format::kJson ? log::Format::kJson : log::Format::kText);
  log::set_level(to_log_level(config.log.level));
}


// A JSON string literal of printable text (sanitized first).
std::string printable_json(std::string_view text) { return json_string(log::sanitize(text)); }

// [audit]: installs the log sessions write through. On SIGHUP (`reload`) the
// same file is reopened (logrotate moved it away) or, when its options
// changed, replaced. Throws std::runtime_error when the file cannot be opened.
void apply_audit_log(const Config& config, bool reload) {
  if (config.audit.path.empty()) {
    install_audit_log(nullptr);
    return;
  }
  AuditLogOptions o;
  o.path = config.audit.path;
  o.rotate_size = config.audit.rotate_size;
  o.rotate_keep = config.audit.rotate_keep;
  o.fsync = config.audit.fsync;
  o.fsync_interval = std::chrono::duration_cast<std::chrono::milliseconds>(config.audit.fsync_interval);
  o.queue_limit = config.audit.queue_limit;
  o.on_error = [](std::string_view what) { log::error("audit-error").kv("error", what); };
  std::shared_ptr<AuditLog> current = current_audit_log();
  if (reload && current && current->options().same_file_policy(o)) {
    current->reopen();
    log::info("audit-reopened").kv("path", o.path);
    return;
  }
  install_audit_log(std::make_shared<AuditLog>(std::move(o)));
  log::info("audit-open").kv("path", config.audit.path);
}
}  // namespace

struct Server::Impl {
  struct Worker {
    // Declared before the context: a session still open at a forced shutdown
    // is destroyed with the context and leaves the registry then.
    SessionRegistry registry;
    asio::io_context context{1};
    // One generation, touched only on this worker's thread and replaced whole
    // by a reload: a session takes the configuration, the TLS context and the
    // chains built from that configuration together, never a new
    // configuration with the previous rules (the chains arrive by a post).
    std::shared_ptr<const Config> config;
    std::shared_ptr<asio::ssl::context> tls_context;
    std::shared_ptr<const FilterChain> chain;
    std::shared_ptr<const FilterChain> submission_chain;  // for authenticated sessions
  };

  ConfigSource source;
  std::shared_ptr<const Config> config;  // guarded by config_mutex
  // The configuration run() started with: what the listeners, threads and
  // sockets really are, whatever reloads have applied since.
  std::shared_ptr<const Config> boot;
  std::shared_ptr<asio::ssl::context> tls_context;  // guarded by config_mutex
  std::string tls_listener;  // a running listener that speaks TLS ("" = none): a reload keeps a certificate for it
  std::shared_ptr<UpstreamCapabilities> capabilities = std::make_shared<UpstreamCapabilities>();
  std::shared_ptr<const FilterResources> filter_resources;  // touched on worker 0's thread and at start
  std::mutex config_mutex;
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  std::vector<std::unique_ptr<asio::ip::tcp::acceptor>> acceptors;
  std::vector<asio::ip::tcp::acceptor*> acceptors_extra;  // metrics: closed at shutdown too
  std::atomic<long> open_sessions{0};
  // Sessions were still open when shutdown_timeout ended the drain: their
  // frames may be read by a DKIM or SPF task on a worker pool right now, so
  // they are never destroyed (run() ends the process without destructors).
  bool shutdown_forced = false;
  std::atomic<bool> draining{false};
  std::size_t next_worker = 0;
  // Operations (status, reload results, service manager); touched on worker 0's thread.
  std::unique_ptr<control::Server> control;
  // [milter_server]: postern as a milter (proxy/milter_server.h); null when off.
  std::unique_ptr<MilterServer> milter_server;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::atomic<unsigned long long> sessions_accepted{0};
  std::string last_reload = "none";  // "ok" or "error: ..."
  std::time_t last_reload_at = 0;
  int upstream_up = -1;  // last probe: 1 reached, 0 failed, -1 not yet
  std::chrono::steady_clock::time_point last_probe;
  bool ready_notified = false;

  std::shared_ptr<const Config> snapshot() {
    std::lock_guard lock(config_mutex);
    return config;
  }
  std::shared_ptr<asio::ssl::context> tls_snapshot() {
    std::lock_guard lock(config_mutex);
    return tls_context;
  }

  asio::awaitable<void> accept_loop(asio::ip::tcp::acceptor& acceptor, Config::Listener listener) {
    // Made once: every session of this listener shares it (issue 23).
    auto info = std::make_shared<ListenerInfo>(ListenerInfo{std::move(listener), {}});
    std::error_code bound_ec;
    const asio::ip::tcp::endpoint bound = acceptor.local_endpoint(bound_ec);
    if (!bound_ec && !bound.address().is_unspecified()) info->local = local_text(bound);
    const std::shared_ptr<const ListenerInfo> shared = std::move(info);
    asio::ip::tcp::endpoint peer;  // filled by accept(): no getpeername per session
    // The listening socket has TCP_NODELAY (run()); Linux hands it on to
    // every accepted socket. Checked on the first one: when it holds, no
    // setsockopt per session, else each session sets it as before.
    bool no_delay_checked = false;
    bool no_delay_inherited = false;
    for (;;) {
      Worker& worker = *workers[next_worker++ % workers.size()];
      std::tuple<std::error_code, asio::ip::tcp::socket> accepted =
          co_await acceptor.async_accept(worker.context, peer, use_nothrow);
      const std::error_code ec = std::get<0>(accepted);
      if (!ec) {
        if (!no_delay_checked) {
          no_delay_checked = true;
          no_delay_inherited = has_no_delay(std::get<1>(accepted));
        }
        start_session(worker, shared, peer, no_delay_inherited, std::move(std::get<1>(accepted)));
        continue;
      }
      if (draining || ec == asio::error::operation_aborted) co_return;
      log::warning("accept-error").kv("error", ec.message());
      co_await back_off(acceptor);  // EMFILE and friends: wait instead of spinning
    }
  }

  // Whether `socket` has TCP_NODELAY (out of accept_loop's body, as below).
  static bool has_no_delay(asio::ip::tcp::socket& socket) {
    asio::ip::tcp::no_delay option;
    std::error_code ec;
    socket.get_option(option, ec);
    return !ec && option.value();
  }

  // Kept out of accept_loop's body, as the session's lambda below: locals and
  // lambdas inside coroutine loops are where g++ 12 goes wrong (STYLE.md).
  asio::awaitable<void> back_off(asio::ip::tcp::acceptor& acceptor) {
    asio::steady_timer pause(acceptor.get_executor(), std::chrono::milliseconds(100));
    co_await pause.async_wait(use_nothrow);
  }

  // One session's coroutine on its worker: built on the worker's thread, as
  // the chain (and its Lua state) is that thread's. The lambda owns a
  // reference to the listener's info and a copy of the peer: accept_loop's
  // frame, which SIGTERM ends while the session may not have started yet on
  // its own thread, holds them (a use-after-free, issue 18). Nothing from a
  // coroutine's frame is captured by reference into work that runs on
  // another thread or later.
  void start_session(Worker& worker, const std::shared_ptr<const ListenerInfo>& listener,
                     const asio::ip::tcp::endpoint& peer, bool no_delay_set, asio::ip::tcp::socket socket) {
    ++open_sessions;
    ++sessions_accepted;
    auto run = [this, &worker, listener = listener, peer = peer, no_delay_set,
                socket = std::move(socket)]() mutable -> asio::awaitable<void> {
      auto session = std::make_shared<Session>(std::move(socket), peer, no_delay_set, worker.config,
                                               std::move(listener), worker.tls_context, worker.chain,
                                               worker.submission_chain, capabilities, worker.registry);
      co_await session->run();
      --open_sessions;
    };
    asio::co_spawn(worker.context, std::move(run), asio::detached);
  }

  // Learns what the MTA offers (and whether it answers, for /healthz) at
  // start-up, then every upstream.probe_interval and after each reload (a
  // new target may offer something else).
  asio::awaitable<void> probe_loop() {
    asio::steady_timer timer(workers[0]->context);
    while (!draining) {
      auto config = snapshot();
      bool reached = co_await probe_upstream(workers[0]->context.get_executor(), config, *capabilities);
      note_probe(reached);
      if (!reached) {
        log::warning("upstream-probe-failed").kv("upstream", config->upstream.target)
            .kv("action", "advertising what was learned before");
      }
      if (!ready_notified) {
        // Listeners are bound and the MTA was asked once: now we serve (sd_notify(3)).
        ready_notified = true;
        process::notify(fmt::format("READY=1\nSTATUS=Serving; upstream {} {}", config->upstream.target,
                                    reached ? "reachable" : "NOT reachable"));
      }
      timer.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(config->upstream.probe_interval));
      co_await timer.async_wait(use_nothrow);
    }
  }
  // An MTA that accepts but never greets holds the first probe for up to
  // timeouts.upstream_greeting; systemd's start time-out is shorter. READY=1
  // then goes out after kReadyAtLatest with the probe still running.
  asio::awaitable<void> ready_at_latest() {
    static constexpr std::chrono::seconds kReadyAtLatest{10};
    asio::steady_timer timer(workers[0]->context, kReadyAtLatest);
    co_await timer.async_wait(use_nothrow);
    if (ready_notified || draining) co_return;
    ready_notified = true;
    process::notify("READY=1\nSTATUS=Serving; upstream probe still running");
  }

  void note_probe(bool reached) {
    upstream_up = reached ? 1 : 0;
    last_probe = std::chrono::steady_clock::now();
  }
  asio::awaitable<void> probe_after_reload(std::shared_ptr<const Config> fresh) {
    note_probe(co_await probe_upstream(workers[0]->context.get_executor(), fresh, *capabilities));
  }

  // Keys a reload cannot apply (the socket is bound, root is gone): say so,
  // in the log and, one "restart needed" line each, in the control answer.
  // The running values stay in force; the rest of the reload applies.
  static std::string note_restart_only_keys(const Config& running, const Config& fresh) {
    std::string notes;
    auto note = [&notes](std::string_view key, const std::string& now) {
      log::warning("restart-needed").kv("key", key).kv("running", now);
      notes += fmt::format("restart needed: {} (running: {})\n", key, now);
    };
    auto listeners = [](const Config& c) {
      std::string all;
      for (const auto& l : c.listeners) {
        std::string from;
        for (const auto& f : l.proxy_protocol_from) from += (from.empty() ? "" : ",") + f;
        // The words the configuration file uses (docs/configuration.md [[listener]]).
        static constexpr const char* kTls[] = {"none", "starttls", "implicit"};
        static constexpr const char* kAuth[] = {"off", "passthrough"};
        static constexpr const char* kPolicy[] = {"inbound", "submission", "none"};
        all += fmt::format("{}{} tls={} require_tls={} proxy_protocol={} from={} auth={} policy={}",
                           all.empty() ? "" : " ", l.address, kTls[static_cast<int>(l.tls)], l.require_tls,
                           l.proxy_protocol, from, kAuth[static_cast<int>(l.auth)],
                           kPolicy[static_cast<int>(l.policy)]);
      }
      return all;
    };
    if (listeners(running) != listeners(fresh)) note("listener", listeners(running));
    if (running.server.threads != fresh.server.threads) {
      note("server.threads", running.server.threads == 0 ? "0, one per core" : std::to_string(running.server.threads));
    }
    if (running.metrics.address != fresh.metrics.address) note("metrics.address", running.metrics.address);
    if (running.control.socket != fresh.control.socket || running.control.mode != fresh.control.mode) {
      note("control", running.control.socket);
    }
    auto milter_listen = [](const Config& c) {
      std::string all;
      for (const auto& a : c.milter_server.listen) all += a.text + " ";
      return all;
    };
    if (milter_listen(running) != milter_listen(fresh)) note("milter_server.listen", milter_listen(running));
    if (running.server.user != fresh.server.user || running.server.group != fresh.server.group) {
      note("server.user", running.server.user);
    }
    // The store lives as long as the process (build_filter_resources keeps it).
    if (!running.store.same_backend(fresh.store)) {
      const auto& store = running.store;
      note("store", store.backend == StoreOptions::Backend::kRedis ? "redis " + store.redis_address
                    : store.persist.empty()                        ? std::string("memory")
                                                                   : "memory persist=" + store.persist);
    }
    return notes;
  }

  // SIGHUP and `postern reload`: the same work, the same answer. Returns
  // "ok ..." or "error ..." followed by the reason (file:line), for the
  // control socket; the service manager hears RELOADING=1 then READY=1.
  std::string reload() {
    process::notify_reloading();
    // The log file is reopened first, whatever becomes of the configuration:
    // logrotate has already renamed it.
    if (!log::reopen()) {
      log::error("log-reopen-failed").kv("error", std::strerror(errno));
    }
    std::string answer = reload_config();
    last_reload_at = std::time(nullptr);
    last_reload = answer.rfind("ok", 0) == 0 ? "ok" : answer.substr(0, answer.find('\n'));
    process::notify(answer.rfind("ok", 0) == 0
                        ? "READY=1\nSTATUS=Serving; reloaded at " + format_utc_iso8601(last_reload_at)
                        : "READY=1\nSTATUS=Serving; reload refused at " + format_utc_iso8601(last_reload_at) +
                              ", the previous configuration keeps running");
    return answer;
  }

  std::string reload_config() {
    try {
      auto fresh = load_config(source);
      process::ensure_open_files(*fresh);
      auto fresh_tls = make_server_tls_context(fresh->tls);  // certificates re-read
      // Listeners change only at a start: one that speaks TLS would be left
      // without a certificate (an implicit-TLS session dereferenced none).
      if (!fresh_tls && !tls_listener.empty()) {
        throw ConfigError(fmt::format("tls: the running listener {} speaks TLS and listeners change only at a "
                                      "start; keep [tls] cert_file and key_file, or restart",
                                      tls_listener));
      }
      // Every worker's chains are built first (here, as at a start: a Lua state
      // is used by one thread at a time, not bound to the one that made it);
      // only when all compiled does the new configuration take over.
      // The store is kept: greylisting and rate limits survive a reload.
      auto resources = build_filter_resources(*fresh, filter_resources.get());
      std::vector<std::shared_ptr<const FilterChain>> chains(workers.size()), submission(workers.size());
      for (std::size_t i = 0; i < workers.size(); ++i) {
        chains[i] = build_filter_chain(*fresh, *resources);
        submission[i] = build_filter_chain(*fresh, *resources, true);
      }
      const std::string restart_notes = note_restart_only_keys(*boot, *fresh);  // only once it applies
      apply_log_settings(*fresh);  // last step that may fail: a log file that cannot be opened
      Spool::set_memory_high_water(fresh->data.spool_memory_total);
      filter_resources = resources;
      try {
        apply_audit_log(*fresh, true);
      } catch (const std::exception& e) {
        log::error("audit-error").kv("error", e.what()).kv("action", "keeping the audit log that was open");
        if (auto current = current_audit_log()) current->reopen();
      }
      {
        std::lock_guard lock(config_mutex);
        config = fresh;
        tls_context = fresh_tls;
      }
      for (std::size_t i = 0; i < workers.size(); ++i) {
        asio::post(workers[i]->context, [w = workers[i].get(), fresh, fresh_tls, c = chains[i], sc = submission[i]] {
          w->config = fresh;
          w->tls_context = fresh_tls;
          w->chain = c;
          w->submission_chain = sc;
        });
      }
      log::info("reloaded").kv("config", source.path.empty() ? "(embedded default)" : source.path);
      asio::co_spawn(workers[0]->context, probe_after_reload(fresh), asio::detached);
      return "ok reloaded " + (source.path.empty() ? std::string("(embedded default)") : source.path) + "\n" +
             restart_notes;
    } catch (const std::exception& e) {
      // ConfigError (file:line), a TLS certificate, a Lua script that does not compile.
      log::error("reload-failed").kv("error", e.what()).kv("action", "keeping the running configuration");
      return std::string("error reload refused, the running configuration stays:\n") + e.what() + "\n";
    }
  }

  // `postern status`: what an operator asks first.
  std::string status(bool json) {
    auto config = snapshot();
    auto& m = metrics::registry();
    unsigned long long messages[static_cast<int>(Outcome::kCount)];
    unsigned long long total = 0;
    for (int i = 0; i < static_cast<int>(Outcome::kCount); ++i) {
      messages[i] = m.messages[static_cast<std::size_t>(i)].value();
      total += messages[i];
    }
    auto since = [](std::chrono::steady_clock::time_point t) {
      return static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(
                                        std::chrono::steady_clock::now() - t).count());
    };
    std::string config_path = source.path.empty() ? "(embedded default)" : source.path;
    std::string upstream = upstream_up < 0 ? "unknown" : upstream_up ? "reachable" : "unreachable";
    using R = Outcome;
    auto count = [&](R r) { return messages[static_cast<int>(r)]; };
    if (json) {
      return fmt::format(
          "{{\"version\":{},\"pid\":{},\"uptime_seconds\":{},\"config\":{},\"workers\":{},"
          "\"sessions_open\":{},\"sessions_total\":{},\"messages_total\":{},\"messages\":{{\"relayed\":{},"
          "\"rejected\":{},\"tempfailed\":{},\"discarded\":{},\"quarantined\":{}}},"
          "\"last_reload\":{{\"result\":{},\"at\":{}}},\"upstream\":{{\"target\":{},\"state\":\"{}\","
          "\"probed_seconds_ago\":{}}},\"draining\":{}}}\n",
          printable_json(kVersion), ::getpid(), since(started), printable_json(config_path), workers.size(),
          open_sessions.load(), sessions_accepted.load(), total, count(R::kRelayed), count(R::kRejected),
          count(R::kTempfailed), count(R::kDiscarded), count(R::kQuarantined), printable_json(last_reload),
          last_reload_at ? printable_json(format_utc_iso8601(last_reload_at)) : "null", printable_json(config->upstream.target),
          upstream, upstream_up < 0 ? "null" : std::to_string(since(last_probe)), draining ? "true" : "false");
    }
    return fmt::format(
        "postern {}\npid: {}\nuptime: {} s\nconfig: {}\nworkers: {}\nsessions open: {}\n"
        "sessions since start: {}\nmessages since start: {} (relayed {}, rejected {}, tempfailed {}, "
        "discarded {}, quarantined {})\nlast reload: {}{}\nupstream: {} {}{}\n{}",
        kVersion, ::getpid(), since(started), config_path, workers.size(), open_sessions.load(),
        sessions_accepted.load(), total, count(R::kRelayed), count(R::kRejected), count(R::kTempfailed),
        count(R::kDiscarded), count(R::kQuarantined), last_reload,
        last_reload_at ? " at " + format_utc_iso8601(last_reload_at) : std::string(), config->upstream.target, upstream,
        upstream_up < 0 ? std::string() : fmt::format(" (probed {} s ago)", since(last_probe)),
        draining ? "state: draining\n" : "");
  }

  asio::awaitable<void> signals(asio::signal_set& set) {
    for (;;) {
      auto [ec, signo] = co_await set.async_wait(use_nothrow);
      if (ec) co_return;
      if (signo == SIGHUP) {
        (void)reload();
        continue;
      }
      co_await drain();
      co_return;
    }
  }

  // Stop accepting, let open sessions finish (idle ones get 421 4.3.2), then
  // stop the I/O threads, at the latest after shutdown_timeout.
  asio::awaitable<void> drain() {
    draining = true;
    process::notify(fmt::format("STOPPING=1\nSTATUS=Draining {} open sessions", open_sessions.load()));
    log::info("shutdown").kv("open_sessions", open_sessions.load());
    for (auto& a : acceptors) {
      std::error_code ignored;
      a->close(ignored);
    }
    for (auto* a : acceptors_extra) {
      std::error_code ignored;
      a->close(ignored);
    }
    if (milter_server) milter_server->drain();
    for (auto& w : workers) {
      asio::post(w->context, [w = w.get()] { w->registry.drain(); });
    }
    auto deadline = std::chrono::steady_clock::now() +
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(snapshot()->server.shutdown_timeout);
    asio::steady_timer tick(workers[0]->context);
    while (open_sessions > 0 && std::chrono::steady_clock::now() < deadline) {
      tick.expires_after(std::chrono::milliseconds(20));
      co_await tick.async_wait(use_nothrow);
    }
    if (open_sessions > 0) {
      log::warning("shutdown-forced").kv("open_sessions", open_sessions.load());
      shutdown_forced = true;
    }
    guards.clear();
    for (auto& w : workers) w->context.stop();
  }
};

Server::Server(ConfigSource source) : impl_(std::make_unique<Impl>()) {
  process::restrict_file_creation();
  process::return_large_buffers_to_os();
  impl_->source = std::move(source);
  impl_->config = load_config(impl_->source);
  impl_->tls_context = make_server_tls_context(impl_->config->tls);
  apply_log_settings(*impl_->config);
  Spool::set_memory_high_water(impl_->config->data.spool_memory_total);
}

Server::~Server() = default;

int Server::run() {
  Impl& s = *impl_;
  auto config = s.snapshot();
  s.boot = config;
  unsigned n = config->server.threads ? config->server.threads : std::max(1u, std::thread::hardware_concurrency());
  process::Account account;
  if (!config->server.user.empty() && !process::resolve_account(*config, account)) return 1;
  try {
    process::ensure_open_files(*config);
  } catch (const ConfigError& e) {
    log::error("open-files").kv("error", e.what());
    return 1;
  }
  metrics::install_filter_stats();
  try {
    s.filter_resources = build_filter_resources(*config, nullptr);
  } catch (const ConfigError& e) {
    log::error("filters-failed").kv("error", e.what());
    return 1;
  }
  // The store lives as long as the process (reloads keep it): its counters too.
  if (const auto* redis = dynamic_cast<const RedisStore*>(s.filter_resources->store.get())) {
    metrics::registry().redis.store(&redis->stats(), std::memory_order_release);
  }
  for (unsigned i = 0; i < n; ++i) {
    s.workers.push_back(std::make_unique<Impl::Worker>());
    s.guards.emplace_back(s.workers.back()->context.get_executor());
    s.workers.back()->config = config;
    s.workers.back()->tls_context = s.tls_snapshot();
    try {
      s.workers.back()->chain = build_filter_chain(*config, *s.filter_resources);
      s.workers.back()->submission_chain = build_filter_chain(*config, *s.filter_resources, true);
    } catch (const ConfigError& e) {
      log::error("filters-failed").kv("error", e.what());
      return 1;
    }
  }
  try {
    apply_audit_log(*config, false);
  } catch (const std::exception& e) {
    log::error("audit-error").kv("error", e.what());
    return 1;
  }
  // Signals are caught from here on, before anyone can know we listen.
  asio::signal_set signal_set(s.workers[0]->context, SIGHUP, SIGTERM, SIGINT);
  for (const Config::Listener& l : config->listeners) {
    asio::ip::tcp::endpoint endpoint(asio::ip::make_address(l.host), l.port);
    auto acceptor = std::make_unique<asio::ip::tcp::acceptor>(s.workers[0]->context);
    std::error_code ec;
    acceptor->open(endpoint.protocol(), ec);
    if (!ec) acceptor->set_option(asio::ip::tcp::acceptor::reuse_address(true), ec);
    if (!ec) {
      std::error_code ignored;  // without it, each session sets TCP_NODELAY itself (accept_loop)
      acceptor->set_option(asio::ip::tcp::no_delay(true), ignored);
    }
    if (!ec) acceptor->bind(endpoint, ec);
    if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      log::error("listen-failed").kv("address", l.address).kv("error", ec.message());
      return 1;
    }
    auto bound = acceptor->local_endpoint();
    std::string shown = bound.address().is_v6() ? "[" + bound.address().to_string() + "]"
                                                : bound.address().to_string();
    log::info("listening").kv("address", shown + ":" + std::to_string(bound.port()))
        .kv("tls", l.tls == Config::Listener::Tls::kImplicit ? "implicit" : l.tls == Config::Listener::Tls::kStarttls ? "starttls" : "none")
        .kv("proxy_protocol", l.proxy_protocol ? "yes" : "no");
    s.acceptors.push_back(std::move(acceptor));
    metrics::declare_listener(l.address);
  }
  if (!config->milter_server.listen.empty()) {
    auto pick = [&s] {
      Impl::Worker& w = *s.workers[s.next_worker++ % s.workers.size()];
      return MilterServer::Worker{&w.context, &w.config, &w.chain, &w.submission_chain};
    };
    s.milter_server = std::make_unique<MilterServer>(s.workers[0]->context, pick, [&s] { return s.snapshot(); },
                                                     s.open_sessions);
    if (!s.milter_server->bind(*config)) return 1;
  }
  std::unique_ptr<asio::ip::tcp::acceptor> metrics_acceptor;
  if (!config->metrics.address.empty()) {
    asio::ip::tcp::endpoint endpoint(asio::ip::make_address(config->metrics.host), config->metrics.port);
    metrics_acceptor = std::make_unique<asio::ip::tcp::acceptor>(s.workers[0]->context);
    std::error_code ec;
    metrics_acceptor->open(endpoint.protocol(), ec);
    if (!ec) metrics_acceptor->set_option(asio::ip::tcp::acceptor::reuse_address(true), ec);
    if (!ec) metrics_acceptor->bind(endpoint, ec);
    if (!ec) metrics_acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      log::error("listen-failed").kv("address", config->metrics.address).kv("what", "metrics").kv("error", ec.message());
      return 1;
    }
    auto bound = metrics_acceptor->local_endpoint();
    log::info("metrics").kv("address", fmt::format("{}:{}", bound.address().to_string(), bound.port()))
        .kv("paths", "/metrics /healthz");
    asio::co_spawn(s.workers[0]->context, metrics::serve_http(*metrics_acceptor), asio::detached);
    s.acceptors_extra.push_back(metrics_acceptor.get());
  }
  if (!config->control.socket.empty() || config->control.per_listener) {
    control::Handlers handlers{[&s] { return s.reload(); }, [&s](bool json) { return s.status(json); }};
    std::string path = config->control.per_listener
                           ? control::listener_socket_name(s.acceptors[0]->local_endpoint().port())
                           : config->control.socket;
    try {
      s.control = std::make_unique<control::Server>(s.workers[0]->context, path,
                                                    config->control.mode, std::move(handlers));
    } catch (const std::exception& e) {
      log::error("control-failed").kv("error", e.what());
      return 1;
    }
    log::info("control").kv("socket", s.control->path());
    asio::co_spawn(s.workers[0]->context, s.control->serve(), asio::detached);
  }
  // Everything that needs root is open (ports below 1024, the log file, the
  // audit log, the control socket): now become server.user.
  if (!config->server.user.empty()) {
    if (::geteuid() == 0) {
      int log_fd = log::file_descriptor();
      if (log_fd >= 0 && ::fchown(log_fd, account.uid, account.gid) != 0) {
        log::warning("log-chown-failed").kv("error", std::strerror(errno));
      }
      if (!config->audit.path.empty()) (void)!::chown(config->audit.path.c_str(), account.uid, account.gid);
      if (s.control) s.control->chown(account.uid, account.gid);
      if (s.milter_server) s.milter_server->chown(account.uid, account.gid);
    }
    if (!process::drop_privileges(account)) return 1;
  }
  process::warn_if_root();
  log::info("started").kv("threads", n).kv("upstream", config->upstream.target)
      .kv("hostname", config->server.hostname);
  for (std::size_t i = 0; i < s.acceptors.size(); ++i) {
    if (config->listeners[i].tls != Config::Listener::Tls::kNone && s.tls_listener.empty()) {
      s.tls_listener = config->listeners[i].address;
    }
    asio::co_spawn(s.workers[0]->context, s.accept_loop(*s.acceptors[i], config->listeners[i]), asio::detached);
  }
  if (s.milter_server) s.milter_server->start();
  asio::co_spawn(s.workers[0]->context, s.signals(signal_set), asio::detached);
  // A SIGHUP that came before the signal set was there (process::defer_hangup):
  // the file may have changed after the start read it.
  if (process::hangup_deferred()) asio::post(s.workers[0]->context, [&s] { (void)s.reload(); });
  asio::co_spawn(s.workers[0]->context, s.probe_loop(), asio::detached);
  asio::co_spawn(s.workers[0]->context, s.ready_at_latest(), asio::detached);

  std::vector<std::thread> threads;
  for (unsigned i = 1; i < n; ++i) {
    threads.emplace_back([w = s.workers[i].get()] { w->context.run(); });
  }
  s.workers[0]->context.run();
  for (auto& t : threads) t.join();
  s.control.reset();  // removes the socket file while its io_context still exists
  install_audit_log(nullptr);  // written out and synced
  log::info("stopped");
  if (s.shutdown_forced) {
    // No session acked by then was lost: a stuck one never heard 250. Ending
    // here, not in ~Server, keeps its frame alive for a pool task still
    // reading its spool (a use-after-free otherwise, issue 18).
    std::_Exit(0);
  }
  return 0;
}

}  // namespace postern
