// The milter server's sockets; see milter_server.h.
#include "proxy/milter_server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <set>
#include <tuple>
#include <type_traits>
#include <vector>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <fmt/format.h>

#include "filters/milter/milter_protocol.h"
#include "proxy/limits.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/milter_dialogue.h"

namespace postern {
namespace {

constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);
using namespace asio::experimental::awaitable_operators;
namespace m = milter;

// A TCP connection, whatever its executor: the accepted socket is bound to
// its worker's io_context, so it is not asio::ip::tcp::socket (comparing
// with that type left TCP_NODELAY and TCP_QUICKACK unset: ~45 ms a message
// behind Postfix, bench/README.md).
template <typename Socket>
constexpr bool kTcp = std::is_same_v<typename Socket::protocol_type, asio::ip::tcp>;

// The handle shutdown keeps on a connection: a drain posted to its thread.
struct Drainable {
  virtual ~Drainable() = default;
  virtual void drain() = 0;
};

// One MTA connection on one I/O thread: read a packet (bounded by
// milter::kMaxPacket, within milter_server.timeout), let the dialogue
// answer, write, until QUIT, EOF, garbage or a drain between messages.
template <typename Socket>
class Connection : public Drainable, public std::enable_shared_from_this<Connection<Socket>> {
 public:
  Connection(Socket socket, std::shared_ptr<const Config> config, std::shared_ptr<const FilterChain> chain,
             std::shared_ptr<const FilterChain> submission, std::string listener)
      : socket_(std::move(socket)),
        config_(config),
        listener_(listener),
        dialogue_(std::move(config), std::move(chain), std::move(submission), std::move(listener)) {
    if constexpr (kTcp<Socket>) {
      std::error_code ignored;
      socket_.set_option(asio::ip::tcp::no_delay(true), ignored);  // each reply is one write, sent at once
    }
  }

  void drain() override {
    asio::post(socket_.get_executor(), [self = this->shared_from_this()] {
      self->draining_ = true;
      if (self->reading_ && self->dialogue_.idle()) {
        std::error_code ignored;
        self->socket_.cancel(ignored);
      }
    });
  }

  asio::awaitable<void> run() {
    metrics::SessionGauge open_gauge(listener_);
    std::string out;
    m::Packet packet;
    const char* end = "eof";
    for (;;) {
      m::PacketReader::Status st = reader_.next(packet);
      if (st == m::PacketReader::Status::kInvalid) {
        log::warning("milter-server-garbage").kv("session", dialogue_.id()).kv("listener", listener_)
            .kv("error", "a packet length of 0 or over the limit").kv("action", "closed");
        end = "garbage";
        break;
      }
      if (st == m::PacketReader::Status::kPacket) {
        MilterDialogue::Next next = co_await dialogue_.handle(packet, out);
        if (!out.empty()) {
          if (!co_await write(out)) {
            end = "write-error";
            break;
          }
          out.clear();
        }
        if (next == MilterDialogue::Next::kClose) {
          end = "closed";
          break;
        }
        continue;
      }
      if (draining_ && dialogue_.idle()) {
        end = "shutdown";
        break;
      }
      if (!co_await read_more(end)) break;
    }
    co_await dialogue_.finish();
    std::error_code ignored;
    socket_.close(ignored);
    log::info("milter-session-end").kv("session", dialogue_.id()).kv("listener", listener_)
        .kv("messages", dialogue_.messages()).kv("end", end);
  }

 private:
  asio::awaitable<bool> read_more(const char*& end) {
    char buf[16 * 1024];
    quick_ack();
    asio::steady_timer timer(socket_.get_executor(),
                             std::chrono::duration_cast<std::chrono::steady_clock::duration>(config_->milter_server.timeout));
    reading_ = true;
    auto r = co_await (socket_.async_read_some(asio::buffer(buf), use_nothrow) || timer.async_wait(use_nothrow));
    reading_ = false;
    if (r.index() == 1) {
      end = "timeout";
      log::warning("milter-server-timeout").kv("session", dialogue_.id()).kv("listener", listener_)
          .kv("in_message", dialogue_.idle() ? "no" : "yes").kv("action", "closed");
      co_return false;
    }
    auto [ec, n] = std::get<0>(r);
    if (ec) {
      end = draining_ ? "shutdown" : ec == asio::error::eof ? "eof" : "read-error";
      co_return false;
    }
    quick_ack();
    reader_.feed(std::string_view(buf, n));
    co_return true;
  }

  // The MTA writes its unanswered commands (header fields, end of header
  // and body chunks under SMFIP_NR_*) one packet at a time, each held by
  // Nagle until the one before is ACKed: a delayed ACK here costs 40 ms a
  // message. Setting TCP_QUICKACK after a read sends the ACK now (Linux
  // clears the flag again, so it is set on every read).
  void quick_ack() {
    if constexpr (kTcp<Socket>) {
      int one = 1;
      ::setsockopt(socket_.native_handle(), IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    }
  }

  asio::awaitable<bool> write(const std::string& bytes) {
    asio::steady_timer timer(socket_.get_executor(),
                             std::chrono::duration_cast<std::chrono::steady_clock::duration>(config_->milter_server.timeout));
    auto r = co_await (asio::async_write(socket_, asio::buffer(bytes), use_nothrow) || timer.async_wait(use_nothrow));
    co_return r.index() == 0 && !std::get<0>(std::get<0>(r));
  }

  Socket socket_;
  std::shared_ptr<const Config> config_;
  std::string listener_;
  MilterDialogue dialogue_;
  m::PacketReader reader_;
  bool reading_ = false;
  bool draining_ = false;
};

}  // namespace

struct MilterServer::Impl {
  asio::io_context& io;
  std::function<Worker()> pick;
  std::function<std::shared_ptr<const Config>()> snapshot;
  std::atomic<long>& open;
  std::vector<std::pair<std::unique_ptr<asio::ip::tcp::acceptor>, std::string>> tcp;
  std::vector<std::pair<std::unique_ptr<asio::local::stream_protocol::acceptor>, std::string>> local;
  std::vector<std::string> unix_paths;  // removed at exit
  std::mutex mutex;
  std::set<std::weak_ptr<Drainable>, std::owner_less<std::weak_ptr<Drainable>>> connections;  // guarded by mutex
  std::atomic<long> count{0};
  std::atomic<bool> draining{false};

  Impl(asio::io_context& i, std::function<Worker()> p, std::function<std::shared_ptr<const Config>()> s,
       std::atomic<long>& o)
      : io(i), pick(std::move(p)), snapshot(std::move(s)), open(o) {}

  // A connection on its worker's thread, built there: the chains are that thread's.
  template <typename Socket>
  void start_connection(Worker worker, Socket socket, std::string listener) {
    auto config = snapshot();
    const std::size_t limit = config->milter_server.connections;
    if (limit && static_cast<std::size_t>(count.load()) >= limit) {
      metrics::session_refused(listener, metrics::Refusal::kLimit);
      log::warning("session-limit").kv("listener", listener).kv("limit", "milter_server.connections")
          .kv("action", "closed");
      return;  // the MTA applies its milter_default_action
    }
    ++open;
    ++count;
    auto run = [this, worker, listener, socket = std::move(socket)]() mutable -> asio::awaitable<void> {
      auto c = std::make_shared<Connection<Socket>>(std::move(socket), *worker.config, *worker.chain,
                                                    *worker.submission_chain, listener);
      {
        std::lock_guard lock(mutex);
        connections.insert(std::weak_ptr<Drainable>(c));
      }
      if (draining) c->drain();
      co_await c->run();
      {
        std::lock_guard lock(mutex);
        connections.erase(std::weak_ptr<Drainable>(c));
      }
      --count;
      --open;
    };
    asio::co_spawn(*worker.context, std::move(run), asio::detached);
  }

  template <typename Acceptor>
  asio::awaitable<void> accept_loop(Acceptor& acceptor, std::string listener) {
    for (;;) {
      Worker worker = pick();
      auto [ec, socket] = co_await acceptor.async_accept(*worker.context, use_nothrow);
      if (!ec) {
        start_connection(worker, std::move(socket), listener);
        continue;
      }
      if (draining || ec == asio::error::operation_aborted) co_return;
      log::warning("accept-error").kv("listener", listener).kv("error", ec.message());
      co_await back_off();
    }
  }

  asio::awaitable<void> back_off() {
    asio::steady_timer pause(io, std::chrono::milliseconds(100));
    co_await pause.async_wait(use_nothrow);
  }
};

MilterServer::MilterServer(asio::io_context& accept_on, std::function<Worker()> pick,
                           std::function<std::shared_ptr<const Config>()> snapshot, std::atomic<long>& open)
    : impl_(std::make_unique<Impl>(accept_on, std::move(pick), std::move(snapshot), open)) {}

MilterServer::~MilterServer() {
  for (const std::string& path : impl_->unix_paths) ::unlink(path.c_str());
}

bool MilterServer::bind(const Config& config) {
  for (const Config::MilterServer::Address& a : config.milter_server.listen) {
    std::error_code ec;
    std::string listener = "milter:" + a.text;
    if (a.unix_socket) {
      // A socket file left by an earlier run is replaced; anything else is not.
      struct stat st{};
      if (::lstat(a.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(a.path.c_str());
      auto acceptor = std::make_unique<asio::local::stream_protocol::acceptor>(impl_->io);
      asio::local::stream_protocol::endpoint endpoint(a.path);
      acceptor->open(endpoint.protocol(), ec);
      if (!ec) acceptor->bind(endpoint, ec);
      if (!ec && ::chmod(a.path.c_str(), config.milter_server.socket_mode) != 0) {
        ec = std::error_code(errno, std::generic_category());
      }
      if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
      if (ec) {
        log::error("listen-failed").kv("address", a.text).kv("what", "milter_server").kv("error", ec.message());
        return false;
      }
      impl_->unix_paths.push_back(a.path);
      impl_->local.emplace_back(std::move(acceptor), listener);
    } else {
      asio::ip::tcp::endpoint endpoint(asio::ip::make_address(a.host), a.port);
      auto acceptor = std::make_unique<asio::ip::tcp::acceptor>(impl_->io);
      acceptor->open(endpoint.protocol(), ec);
      if (!ec) acceptor->set_option(asio::ip::tcp::acceptor::reuse_address(true), ec);
      if (!ec) acceptor->bind(endpoint, ec);
      if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
      if (ec) {
        log::error("listen-failed").kv("address", a.text).kv("what", "milter_server").kv("error", ec.message());
        return false;
      }
      impl_->tcp.emplace_back(std::move(acceptor), listener);
    }
    metrics::declare_listener(listener);
    log::info("milter-listening").kv("address", a.text);
  }
  return true;
}

void MilterServer::chown(unsigned uid, unsigned gid) {
  for (const std::string& path : impl_->unix_paths) {
    if (::chown(path.c_str(), uid, gid) != 0) {
      log::warning("milter-socket-chown-failed").kv("path", path).kv("error", std::strerror(errno));
    }
  }
}

void MilterServer::start() {
  for (auto& [acceptor, listener] : impl_->tcp) {
    asio::co_spawn(impl_->io, impl_->accept_loop(*acceptor, listener), asio::detached);
  }
  for (auto& [acceptor, listener] : impl_->local) {
    asio::co_spawn(impl_->io, impl_->accept_loop(*acceptor, listener), asio::detached);
  }
}

void MilterServer::drain() {
  impl_->draining = true;
  for (auto& [acceptor, listener] : impl_->tcp) {
    std::error_code ignored;
    acceptor->close(ignored);
  }
  for (auto& [acceptor, listener] : impl_->local) {
    std::error_code ignored;
    acceptor->close(ignored);
  }
  std::lock_guard lock(impl_->mutex);
  for (const auto& weak : impl_->connections) {
    if (auto c = weak.lock()) c->drain();
  }
}

}  // namespace postern
