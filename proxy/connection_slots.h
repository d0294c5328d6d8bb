// A bound on the connections an operational endpoint (the metrics HTTP
// server, the control socket) holds at once. Every connection takes a slot
// for its whole life; when all are taken, a new connection cuts off the
// oldest one. Idle or slow clients (slowloris) therefore never hold more than
// `max` descriptors — the SMTP listeners share the process's open-file limit —
// and never lock a scraper out: a scraper sends its request at once and is
// answered long before its connection is the oldest.
// Not thread-safe: the endpoint and all its connections run on one thread.
#pragma once

#include <cstddef>
#include <list>
#include <memory>
#include <system_error>

namespace postern {

template <typename Socket>
class ConnectionSlots {
  struct Entry {
    Socket* socket;
    bool cut;  // closed by take() for a newer connection; kept in cut_
  };

 public:
  // Frees the slot when the connection's coroutine ends.
  class Slot {
   public:
    Slot(std::shared_ptr<ConnectionSlots> owner, typename std::list<Entry>::iterator entry)
        : owner_(std::move(owner)), entry_(entry) {}
    ~Slot() { (entry_->cut ? owner_->cut_ : owner_->open_).erase(entry_); }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;

   private:
    std::shared_ptr<ConnectionSlots> owner_;
    typename std::list<Entry>::iterator entry_;
  };

  explicit ConnectionSlots(std::size_t max) : max_(max) {}

  // A slot for `socket`, which must outlive it; closes the oldest open
  // connection first when every slot is taken (its pending operations end
  // with operation_aborted, and its coroutine frees its slot).
  static Slot take(const std::shared_ptr<ConnectionSlots>& self, Socket& socket) {
    if (self->open_.size() >= self->max_ && !self->open_.empty()) {
      Entry& oldest = self->open_.front();
      std::error_code ignored;
      oldest.socket->close(ignored);
      oldest.cut = true;
      self->cut_.splice(self->cut_.end(), self->open_, self->open_.begin());
    }
    self->open_.push_back(Entry{&socket, false});
    return Slot(self, std::prev(self->open_.end()));
  }

  std::size_t open() const { return open_.size(); }

 private:
  std::size_t max_;
  std::list<Entry> open_;  // oldest first
  std::list<Entry> cut_;   // closed, their coroutines not yet ended
};

}  // namespace postern
