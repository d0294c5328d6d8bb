// The embedded default's upstream: delivers accepted messages into a local
// Maildir (tmp/ then rename into new/), so postern works with no MTA.
#pragma once

#include "proxy/upstream.h"

namespace postern {

// Writes `head` then the spool from `offset` as one message file into the
// Maildir `root` (tmp/, fsync, rename into new/, fsync new/), CRLF turned into LF.
// Returns the file name, or an empty string after logging the failure.
std::string deliver_to_maildir(const std::string& root, const std::string& hostname,
                               std::string_view head, const Spool& content, std::size_t offset);

class MaildirUpstream final : public Upstream {
 public:
  explicit MaildirUpstream(std::shared_ptr<const Config> config) : config_(std::move(config)) {}

  // Never holds MAIL back: a Maildir answers at once.
  asio::awaitable<UpstreamReply> mail(const Mailbox& reverse_path,
                                      const std::vector<EsmtpParam>& params, bool hold) override;
  asio::awaitable<UpstreamReply> rcpt(const Mailbox& forward_path,
                                      const std::vector<EsmtpParam>& params, bool data_follows) override;
  asio::awaitable<UpstreamReply> data(const std::string& head, const Spool& content,
                                      std::size_t offset, const Mailbox& reverse_path) override;
  asio::awaitable<UpstreamReply> auth(std::string_view, bool, std::string_view) override {
    co_return UpstreamReply{Reply{454, "4.7.0 Temporary authentication failure: no MTA to authenticate with"}, true};
  }
  asio::awaitable<void> reset() override { co_return; }
  asio::awaitable<void> quit() override { co_return; }
  bool offers(std::string_view) const override { return true; }

 private:
  std::shared_ptr<const Config> config_;
};

}  // namespace postern
