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
#include <thread>
#include <vector>

#include "proxy/filter_setup.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/session.h"
#include "proxy/tls.h"

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
}  // namespace

struct Server::Impl {
  struct Worker {
    asio::io_context context{1};
    SessionRegistry registry;
    std::shared_ptr<const FilterChain> chain;  // touched only on this worker's thread
    std::shared_ptr<const FilterChain> submission_chain;  // for authenticated sessions
  };

  ConfigSource source;
  std::shared_ptr<const Config> config;  // guarded by config_mutex
  std::shared_ptr<asio::ssl::context> tls_context;  // guarded by config_mutex
  std::shared_ptr<UpstreamCapabilities> capabilities = std::make_shared<UpstreamCapabilities>();
  std::shared_ptr<const FilterResources> filter_resources;  // touched on worker 0's thread and at start
  std::mutex config_mutex;
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  std::vector<std::unique_ptr<asio::ip::tcp::acceptor>> acceptors;
  std::vector<asio::ip::tcp::acceptor*> acceptors_extra;  // metrics: closed at shutdown too
  std::atomic<long> open_sessions{0};
  std::atomic<bool> draining{false};
  std::size_t next_worker = 0;

  std::shared_ptr<const Config> snapshot() {
    std::lock_guard lock(config_mutex);
    return config;
  }
  std::shared_ptr<asio::ssl::context> tls_snapshot() {
    std::lock_guard lock(config_mutex);
    return tls_context;
  }

  asio::awaitable<void> accept_loop(asio::ip::tcp::acceptor& acceptor, Config::Listener listener) {
    for (;;) {
      Worker& worker = *workers[next_worker++ % workers.size()];
      auto [ec, socket] = co_await acceptor.async_accept(worker.context, use_nothrow);
      if (ec) {
        if (draining || ec == asio::error::operation_aborted) co_return;
        log::warning("accept-error").kv("error", ec.message());
        // EMFILE and friends: back off instead of spinning.
        asio::steady_timer pause(acceptor.get_executor(), std::chrono::milliseconds(100));
        co_await pause.async_wait(use_nothrow);
        continue;
      }
      ++open_sessions;
      auto run = [this, &worker, &listener, socket = std::move(socket)]() mutable -> asio::awaitable<void> {
        // Built on the worker's thread: the chain (and its Lua state) is that thread's.
        auto session = std::make_shared<Session>(std::move(socket), snapshot(), listener, tls_snapshot(),
                                                 worker.chain, worker.submission_chain, capabilities,
                                                 worker.registry);
        co_await session->run();
        --open_sessions;
      };
      asio::co_spawn(worker.context, std::move(run), asio::detached);
    }
  }

  // Learns what the MTA offers at start-up, then every kProbeInterval and
  // after each reload (a new target may offer something else).
  asio::awaitable<void> probe_loop() {
    static constexpr std::chrono::seconds kProbeInterval{300};
    asio::steady_timer timer(workers[0]->context);
    while (!draining) {
      auto config = snapshot();
      if (!co_await probe_upstream(workers[0]->context.get_executor(), config, *capabilities)) {
        log::warning("upstream-probe-failed").kv("upstream", config->upstream.target)
            .kv("action", "advertising what was learned before");
      }
      timer.expires_after(kProbeInterval);
      co_await timer.async_wait(use_nothrow);
    }
  }
  void reload() {
    try {
      auto fresh = load_config(source);
      auto fresh_tls = make_server_tls_context(fresh->tls);  // certificates re-read
      // Every worker's chain is built first, each on its own thread; only when
      // all compiled does the new configuration take over.
      // The store is kept: greylisting and rate limits survive a reload.
      auto resources = build_filter_resources(*fresh, filter_resources.get());
      std::vector<std::shared_ptr<const FilterChain>> chains(workers.size()), submission(workers.size());
      for (std::size_t i = 0; i < workers.size(); ++i) {
        chains[i] = build_filter_chain(*fresh, *resources);
        submission[i] = build_filter_chain(*fresh, *resources, true);
      }
      filter_resources = resources;
      log::set_level(to_log_level(fresh->log.level));
      {
        std::lock_guard lock(config_mutex);
        config = fresh;
        tls_context = fresh_tls;
      }
      for (std::size_t i = 0; i < workers.size(); ++i) {
        asio::post(workers[i]->context, [w = workers[i].get(), c = chains[i], sc = submission[i]] {
          w->chain = c;
          w->submission_chain = sc;
        });
      }
      log::info("reloaded").kv("config", source.path.empty() ? "(embedded default)" : source.path);
      asio::co_spawn(workers[0]->context, probe_upstream(workers[0]->context.get_executor(), fresh, *capabilities),
                     asio::detached);
    } catch (const ConfigError& e) {
      log::error("reload-failed").kv("error", e.what()).kv("action", "keeping the running configuration");
    }
  }

  asio::awaitable<void> signals(asio::signal_set& set) {
    for (;;) {
      auto [ec, signo] = co_await set.async_wait(use_nothrow);
      if (ec) co_return;
      if (signo == SIGHUP) {
        reload();
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
    log::info("shutdown").kv("open_sessions", open_sessions.load());
    for (auto& a : acceptors) {
      std::error_code ignored;
      a->close(ignored);
    }
    for (auto* a : acceptors_extra) {
      std::error_code ignored;
      a->close(ignored);
    }
    for (auto& w : workers) {
      asio::post(w->context, [w = w.get()] {
        for (Session* s : w->registry.sessions) s->drain();
      });
    }
    auto deadline = std::chrono::steady_clock::now() +
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(snapshot()->server.shutdown_timeout);
    asio::steady_timer tick(workers[0]->context);
    while (open_sessions > 0 && std::chrono::steady_clock::now() < deadline) {
      tick.expires_after(std::chrono::milliseconds(20));
      co_await tick.async_wait(use_nothrow);
    }
    if (open_sessions > 0) log::warning("shutdown-forced").kv("open_sessions", open_sessions.load());
    guards.clear();
    for (auto& w : workers) w->context.stop();
  }
};

Server::Server(ConfigSource source) : impl_(std::make_unique<Impl>()) {
  impl_->source = std::move(source);
  impl_->config = load_config(impl_->source);
  impl_->tls_context = make_server_tls_context(impl_->config->tls);
  log::set_level(to_log_level(impl_->config->log.level));
}

Server::~Server() = default;

int Server::run() {
  Impl& s = *impl_;
  auto config = s.snapshot();
  unsigned n = config->server.threads ? config->server.threads : std::max(1u, std::thread::hardware_concurrency());
  try {
    s.filter_resources = build_filter_resources(*config, nullptr);
  } catch (const ConfigError& e) {
    log::error("filters-failed").kv("error", e.what());
    return 1;
  }
  for (unsigned i = 0; i < n; ++i) {
    s.workers.push_back(std::make_unique<Impl::Worker>());
    s.guards.emplace_back(s.workers.back()->context.get_executor());
    try {
      s.workers.back()->chain = build_filter_chain(*config, *s.filter_resources);
      s.workers.back()->submission_chain = build_filter_chain(*config, *s.filter_resources, true);
    } catch (const ConfigError& e) {
      log::error("filters-failed").kv("error", e.what());
      return 1;
    }
  }
  // Signals are caught from here on, before anyone can know we listen.
  asio::signal_set signal_set(s.workers[0]->context, SIGHUP, SIGTERM, SIGINT);
  for (const Config::Listener& l : config->listeners) {
    asio::ip::tcp::endpoint endpoint(asio::ip::make_address(l.host), l.port);
    auto acceptor = std::make_unique<asio::ip::tcp::acceptor>(s.workers[0]->context);
    std::error_code ec;
    acceptor->open(endpoint.protocol(), ec);
    if (!ec) acceptor->set_option(asio::ip::tcp::acceptor::reuse_address(true), ec);
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
  log::info("started").kv("threads", n).kv("upstream", config->upstream.target)
      .kv("hostname", config->server.hostname);
  for (std::size_t i = 0; i < s.acceptors.size(); ++i) {
    asio::co_spawn(s.workers[0]->context, s.accept_loop(*s.acceptors[i], config->listeners[i]), asio::detached);
  }
  asio::co_spawn(s.workers[0]->context, s.signals(signal_set), asio::detached);
  asio::co_spawn(s.workers[0]->context, s.probe_loop(), asio::detached);

  std::vector<std::thread> threads;
  for (unsigned i = 1; i < n; ++i) {
    threads.emplace_back([w = s.workers[i].get()] { w->context.run(); });
  }
  s.workers[0]->context.run();
  for (auto& t : threads) t.join();
  log::info("stopped");
  return 0;
}

}  // namespace postern
