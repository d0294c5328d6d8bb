// libunbound behind postern's Resolver interface. libunbound runs its own
// resolver thread (ub_ctx_async(ctx, 1), never a fork: the proxy is
// multi-threaded); its answers arrive on a pipe (ub_fd) that an Asio
// descriptor watches, and ub_process() hands each to the callback, which
// posts the answer to the waiting coroutine's executor.
#include "filters/dns/unbound_resolver.h"
#include "filters/filter_stats.h"
#include "filters/text/ascii.h"

#include <unistd.h>
#include <unbound.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include <asio/experimental/as_tuple.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/executor_work_guard.hpp>

#include <arpa/inet.h>

namespace postern {

namespace {

using Clock = std::chrono::steady_clock;

// A domain name in uncompressed wire format (libunbound decompresses rdata).
bool read_name(const unsigned char* p, std::size_t len, std::size_t& pos, std::string& out) {
  out.clear();
  while (pos < len) {
    unsigned l = p[pos++];
    if (l == 0) return true;
    if (l > 63 || pos + l > len) return false;
    if (!out.empty()) out.push_back('.');
    out.append(reinterpret_cast<const char*>(p + pos), l);
    pos += l;
  }
  return false;
}

bool decode_rdata(DnsType type, const unsigned char* p, std::size_t len, std::string& out) {
  char buf[INET6_ADDRSTRLEN];
  std::size_t pos = 0;
  switch (type) {
    case DnsType::kA:
      if (len != 4 || !inet_ntop(AF_INET, p, buf, sizeof buf)) return false;
      out = buf;
      return true;
    case DnsType::kAaaa:
      if (len != 16 || !inet_ntop(AF_INET6, p, buf, sizeof buf)) return false;
      out = buf;
      return true;
    case DnsType::kTxt:
      out.clear();
      while (pos < len) {
        std::size_t l = p[pos++];
        if (pos + l > len) return false;
        out.append(reinterpret_cast<const char*>(p + pos), l);
        pos += l;
      }
      return true;
    case DnsType::kMx: {
      if (len < 3) return false;
      unsigned pref = (unsigned(p[0]) << 8) | p[1];
      pos = 2;
      std::string host;
      if (!read_name(p, len, pos, host)) return false;
      out = std::to_string(pref) + ' ' + host;
      return true;
    }
    case DnsType::kNs:
    case DnsType::kCname:
    case DnsType::kPtr:
      return read_name(p, len, pos, out);
  }
  return false;
}

DnsAnswer convert(int err, ub_result* r, DnsType type) {
  DnsAnswer a;
  if (err != 0 || r == nullptr) return a;  // kServFail
  a.ttl = static_cast<std::uint32_t>(std::max(r->ttl, 0));
  if (r->rcode == 3 || r->nxdomain) {
    a.status = DnsStatus::kNxDomain;
  } else if (r->rcode != 0 || r->bogus) {
    a.status = DnsStatus::kServFail;
  } else if (!r->havedata) {
    a.status = DnsStatus::kNoData;
  } else {
    a.status = DnsStatus::kOk;
    for (int i = 0; r->data[i] != nullptr; ++i) {
      std::string rec;
      if (decode_rdata(type, reinterpret_cast<const unsigned char*>(r->data[i]),
                       static_cast<std::size_t>(r->len[i]), rec)) {
        a.records.push_back(std::move(rec));
      }
    }
    if (a.records.empty()) a.status = DnsStatus::kServFail;  // malformed answer
  }
  return a;
}

}  // namespace

struct UnboundResolver::Impl : std::enable_shared_from_this<UnboundResolver::Impl> {
  using Callback = std::function<void(DnsAnswer)>;
  struct Pending {
    Impl* impl;
    DnsType type;
    Callback cb;
  };
  struct Entry {
    DnsAnswer answer;
    Clock::time_point expires;
  };

  DnsOptions options;
  ub_ctx* ctx = nullptr;
  // Only when the resolver runs its own thread.
  std::unique_ptr<asio::io_context> own_io;
  std::thread own_thread;
  std::optional<asio::posix::stream_descriptor> fd;

  std::mutex mu;  // cache, pending
  std::unordered_map<std::string, Entry> cache;
  std::unordered_map<Pending*, int> pending;  // -> async id, -1 while starting
  bool stopped = false;
  std::atomic<std::uint64_t> n_queries{0}, n_hits{0}, n_timeouts{0};

  ~Impl() {
    if (ctx) ub_ctx_delete(ctx);
  }

  static void on_result(void* arg, int err, ub_result* result) {
    auto* p = static_cast<Pending*>(arg);
    DnsAnswer a = convert(err, result, p->type);
    if (result) ub_resolve_free(result);
    {
      // Whoever takes `p` out of `pending` owns it; ub_cancel() succeeding
      // means this callback never runs, so only this can take it here.
      std::lock_guard lock(p->impl->mu);
      p->impl->pending.erase(p);
    }
    Callback cb = std::move(p->cb);
    delete p;
    cb(std::move(a));
  }

  void arm() {
    auto self = shared_from_this();
    fd->async_wait(asio::posix::stream_descriptor::wait_read, [self](const std::error_code& ec) {
      if (ec) return;
      ub_process(self->ctx);
      {
        std::lock_guard lock(self->mu);
        if (self->stopped) return;
      }
      self->arm();
    });
  }

  std::optional<DnsAnswer> cached(const std::string& key) {
    if (options.cache_entries == 0) return std::nullopt;
    std::lock_guard lock(mu);
    auto it = cache.find(key);
    if (it == cache.end()) return std::nullopt;
    auto now = Clock::now();
    if (it->second.expires <= now) {
      cache.erase(it);
      return std::nullopt;
    }
    DnsAnswer a = it->second.answer;
    a.ttl = static_cast<std::uint32_t>(
        std::chrono::duration_cast<std::chrono::seconds>(it->second.expires - now).count());
    a.from_cache = true;
    ++n_hits;
    return a;
  }

  void store(const std::string& key, const DnsAnswer& a) {
    if (options.cache_entries == 0) return;
    std::uint32_t ttl = 0;
    if (a.status == DnsStatus::kOk) {
      ttl = std::min(a.ttl, options.max_ttl);
    } else if (a.status == DnsStatus::kNxDomain || a.status == DnsStatus::kNoData) {
      // RFC 2308: negative answers are cached too, for the SOA minimum, capped.
      ttl = a.ttl > 0 ? std::min(a.ttl, options.negative_ttl) : options.negative_ttl;
    }
    if (ttl == 0) return;  // failures and time-outs are not cached
    std::lock_guard lock(mu);
    auto now = Clock::now();
    if (cache.size() >= options.cache_entries) {
      std::erase_if(cache, [&](const auto& kv) { return kv.second.expires <= now; });
      if (cache.size() >= options.cache_entries) cache.clear();
    }
    cache[key] = Entry{a, now + std::chrono::seconds(ttl)};
  }

  // Starts one query; `cb` runs on the descriptor's executor, or never when
  // cancel() succeeds. Returns the async id, or -1 when the query could not
  // start (then `cb` has not run). `p` may be gone by the time this returns:
  // the caller uses it only as a key for cancel().
  int start(const std::string& name, DnsType type, Callback cb, Pending*& out) {
    auto* p = new Pending{this, type, std::move(cb)};
    {
      std::lock_guard lock(mu);
      if (stopped) {
        delete p;
        return -1;
      }
      pending.emplace(p, -1);
    }
    ++n_queries;
    int id = -1;
    int rc = ub_resolve_async(ctx, name.c_str(), static_cast<int>(type), 1, p, &on_result, &id);
    if (rc != 0) {
      std::lock_guard lock(mu);
      pending.erase(p);
      delete p;
      return -1;
    }
    {
      std::lock_guard lock(mu);
      if (auto it = pending.find(p); it != pending.end()) it->second = id;
    }
    out = p;
    return id;
  }

  // After a time-out: the callback will not run once ub_cancel() succeeds.
  void cancel(Pending* p, int id) {
    if (id >= 0 && ub_cancel(ctx, id) == 0) {
      std::lock_guard lock(mu);
      if (pending.erase(p)) delete p;
    }
  }
};

namespace {

// The rendezvous between libunbound's callback and the awaiting coroutine.
// The timer lives in the coroutine's frame; the callback reaches it only
// while the coroutine still waits (`timer` non-null, under `mu`), because an
// answer may arrive after a time-out, when the coroutine -- and perhaps its
// io_context -- are gone. Nothing here touches an executor when destroyed.
struct Waiter {
  std::mutex mu;
  asio::steady_timer* timer = nullptr;  // null once the coroutine stopped waiting
  asio::any_io_executor executor;
  std::optional<DnsAnswer> answer;
};

}  // namespace

// Documentation and special-use reverse zones that unblock-lan-zones leaves
// local (RFC 5737, RFC 3849, RFC 6598, RFC 6890).
constexpr const char* kForwardedLocalZones[] = {
    "2.0.192.in-addr.arpa.", "100.51.198.in-addr.arpa.", "113.0.203.in-addr.arpa.", "8.b.d.0.1.0.0.2.ip6.arpa.",
};

UnboundResolver::UnboundResolver(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

std::shared_ptr<UnboundResolver> UnboundResolver::create(const DnsOptions& options,
                                                         asio::any_io_executor executor) {
  auto impl = std::make_shared<Impl>();
  impl->options = options;
  impl->ctx = ub_ctx_create();
  if (!impl->ctx) throw std::runtime_error("dns: ub_ctx_create failed");
  auto check = [](int rc, const std::string& what) {
    if (rc != 0) throw std::runtime_error("dns: " + what + ": " + ub_strerror(rc));
  };
  check(ub_ctx_async(impl->ctx, 1), "ub_ctx_async");
  // Forwarders on loopback (a local cache, or the tests' server) are allowed.
  check(ub_ctx_set_option(impl->ctx, "do-not-query-localhost:", "no"), "do-not-query-localhost");
  // A server that stopped answering is tried again after a minute, not 15.
  check(ub_ctx_set_option(impl->ctx, "infra-host-ttl:", "60"), "infra-host-ttl");
  if (!options.local_data.empty()) {
    check(ub_ctx_zone_add(impl->ctx, ".", "static"), "local zone");
    for (const auto& rr : options.local_data) check(ub_ctx_data_add(impl->ctx, rr.c_str()), "record \"" + rr + '"');
  } else if (options.servers.empty()) {
    check(ub_ctx_resolvconf(impl->ctx, nullptr), "reading /etc/resolv.conf");
  } else {
    for (const auto& s : options.servers) check(ub_ctx_set_fwd(impl->ctx, s.c_str()), "server \"" + s + '"');
    // libunbound answers the reverse zones of private and documentation
    // prefixes itself (RFC 6303 "locally served zones": NXDOMAIN, never
    // asked). Behind configured forwarders those go to the forwarders, which
    // may hold them (a site's own PTR records for 10/8 or 192.168/16; the
    // SPF conformance suite's 192.0.2.x and 2001:db8::).
    check(ub_ctx_set_option(impl->ctx, "unblock-lan-zones:", "yes"), "unblock-lan-zones");
    for (const char* zone : kForwardedLocalZones) {
      check(ub_ctx_set_option(impl->ctx, "local-zone:", (std::string(zone) + " nodefault").c_str()),
            std::string("local-zone ") + zone);
    }
  }
  if (!executor) {
    impl->own_io = std::make_unique<asio::io_context>(1);
    executor = impl->own_io->get_executor();
  }
  impl->fd.emplace(executor, ::dup(ub_fd(impl->ctx)));
  impl->arm();
  if (impl->own_io) {
    impl->own_thread = std::thread([io = impl->own_io.get()] {
      auto guard = asio::make_work_guard(*io);
      io->run();
    });
  }
  return std::shared_ptr<UnboundResolver>(new UnboundResolver(std::move(impl)));
}

UnboundResolver::~UnboundResolver() { shutdown(); }

void UnboundResolver::shutdown() {
  std::vector<std::pair<Impl::Pending*, int>> outstanding;
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->stopped) return;
    impl_->stopped = true;
    for (auto& [p, id] : impl_->pending) outstanding.emplace_back(p, id);
  }
  for (auto [p, id] : outstanding) impl_->cancel(p, id);
  auto impl = impl_;
  if (impl->own_io) {
    impl->own_io->stop();
    if (impl->own_thread.joinable()) impl->own_thread.join();
    // The thread is gone: cancel here and run the aborted wait, which holds
    // a reference to `impl`.
    std::error_code ec;
    impl->fd->cancel(ec);
    impl->fd->close(ec);
    impl->own_io->restart();
    impl->own_io->poll();
  } else {
    asio::post(impl->fd->get_executor(), [impl] {
      std::error_code ec;
      impl->fd->cancel(ec);
      impl->fd->close(ec);
    });
  }
}

UnboundResolver::Stats UnboundResolver::stats() const {
  return Stats{impl_->n_queries.load(), impl_->n_hits.load(), impl_->n_timeouts.load()};
}

namespace {
std::string cache_key(const std::string& name, DnsType type) {
  return ascii::domain_key(name) + '/' + std::to_string(static_cast<int>(type));
}
}  // namespace

std::optional<DnsAnswer> UnboundResolver::answer_now(const std::string& name, DnsType type) {
  if (!dns_name_valid(name)) return DnsAnswer{DnsStatus::kNxDomain, {}, 0, false};
  auto hit = impl_->cached(cache_key(name, type));
  if (hit) filter_stats().dns_answer(hit->status, true, 0);
  return hit;
}

asio::awaitable<DnsAnswer> UnboundResolver::query(std::string name, DnsType type) {
  if (auto now = answer_now(name, type)) co_return std::move(*now);
  const std::string key = cache_key(name, type);
  const auto started = Clock::now();
  auto ex = co_await asio::this_coro::executor;
  auto impl = impl_;  // keeps libunbound alive while this coroutine waits
  DnsAnswer result{DnsStatus::kServFail, {}, 0, false};
  for (unsigned attempt = 0; attempt <= impl->options.retries; ++attempt) {
    asio::steady_timer timer(ex);
    timer.expires_after(impl->options.timeout);
    auto waiter = std::make_shared<Waiter>();
    waiter->timer = &timer;
    waiter->executor = ex;
    auto on_answer = [waiter](DnsAnswer a) {
      std::lock_guard lock(waiter->mu);
      if (!waiter->timer) return;  // the coroutine gave up: drop the answer
      waiter->answer = std::move(a);
      auto wake = [waiter] {
        std::lock_guard lock(waiter->mu);
        if (waiter->timer) waiter->timer->cancel();
      };
      asio::post(waiter->executor, std::move(wake));
    };
    Impl::Pending* p = nullptr;
    const int id = impl->start(name, type, std::move(on_answer), p);
    if (id < 0) co_return result;
    co_await timer.async_wait(asio::experimental::as_tuple(asio::use_awaitable));
    std::optional<DnsAnswer> got;
    {
      std::lock_guard lock(waiter->mu);
      waiter->timer = nullptr;
      got = std::move(waiter->answer);
    }
    if (!got) {
      impl->cancel(p, id);
      ++impl->n_timeouts;
      result = DnsAnswer{DnsStatus::kTimeout, {}, 0, false};
      continue;
    }
    result = std::move(*got);
    if (result.status != DnsStatus::kServFail) break;
  }
  impl->store(key, result);
  filter_stats().dns_answer(result.status, false, std::chrono::duration<double>(Clock::now() - started).count());
  co_return result;
}

DnsAnswer UnboundResolver::query_blocking(const std::string& name, DnsType type) {
  if (auto now = answer_now(name, type)) return std::move(*now);
  const std::string key = cache_key(name, type);
  const auto started = Clock::now();
  struct Slot {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<DnsAnswer> answer;
  };
  DnsAnswer result{DnsStatus::kServFail, {}, 0, false};
  for (unsigned attempt = 0; attempt <= impl_->options.retries; ++attempt) {
    auto slot = std::make_shared<Slot>();
    auto on_answer = [slot](DnsAnswer a) {
      std::lock_guard lock(slot->mu);
      slot->answer = std::move(a);
      slot->cv.notify_all();
    };
    Impl::Pending* p = nullptr;
    const int id = impl_->start(name, type, std::move(on_answer), p);
    if (id < 0) return result;
    std::unique_lock lock(slot->mu);
    if (!slot->cv.wait_for(lock, impl_->options.timeout, [&] { return slot->answer.has_value(); })) {
      lock.unlock();
      impl_->cancel(p, id);
      ++impl_->n_timeouts;
      result = DnsAnswer{DnsStatus::kTimeout, {}, 0, false};
      continue;
    }
    result = std::move(*slot->answer);
    if (result.status != DnsStatus::kServFail) break;
  }
  impl_->store(key, result);
  filter_stats().dns_answer(result.status, false, std::chrono::duration<double>(Clock::now() - started).count());
  return result;
}

std::shared_ptr<Resolver> make_resolver(const DnsOptions& options, asio::any_io_executor executor) {
  return UnboundResolver::create(options, std::move(executor));
}

std::optional<DnsAnswer> CountingResolver::answer_now(const std::string& name, DnsType type) {
  if (count_ >= limit_) {
    ++count_;
    return DnsAnswer{DnsStatus::kServFail, {}, 0, false};
  }
  auto a = inner_->answer_now(name, type);
  if (a) ++count_;
  return a;
}

asio::awaitable<DnsAnswer> CountingResolver::query(std::string name, DnsType type) {
  if (++count_ > limit_) co_return DnsAnswer{DnsStatus::kServFail, {}, 0, false};
  co_return co_await inner_->query(std::move(name), type);
}

DnsAnswer CountingResolver::query_blocking(const std::string& name, DnsType type) {
  if (++count_ > limit_) return DnsAnswer{DnsStatus::kServFail, {}, 0, false};
  return inner_->query_blocking(name, type);
}

}  // namespace postern
