// An in-process Upstream for unit tests: it answers from a script and writes
// down every call, so delivery and the SASL relay run without an MTA.
#pragma once

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/use_future.hpp>

#include "proxy/upstream.h"

namespace postern::test {

// An Upstream that answers from a script and writes down every call.
class FakeUpstream final : public Upstream {
 public:
  std::vector<std::string> calls;  // "MAIL <a@b>", "RCPT <c@d>", "DATA", "RSET"
  std::string head;                // what data() was given
  std::string content;             // the spool from data()'s offset
  Reply mail_reply{250, "2.1.0 Ok"};
  std::map<std::string, UpstreamReply> rcpt_replies;  // by address; 250 otherwise
  UpstreamReply data_reply{Reply{250, "2.0.0 Ok: queued as 4QxYz"}};

  asio::awaitable<UpstreamReply> mail(const Mailbox& reverse_path, const std::vector<EsmtpParam>& params,
                                      bool) override {
    std::string call = "MAIL <" + reverse_path.str() + ">";
    for (const EsmtpParam& p : params) call += " " + p.keyword + (p.has_value ? "=" + p.value : "");
    calls.push_back(call);
    co_return UpstreamReply{mail_reply};
  }
  asio::awaitable<UpstreamReply> rcpt(const Mailbox& forward_path, const std::vector<EsmtpParam>& params,
                                      bool) override {
    std::string call = "RCPT <" + forward_path.str() + ">";
    for (const EsmtpParam& p : params) call += " " + p.text();
    calls.push_back(call);
    auto it = rcpt_replies.find(forward_path.str());
    co_return it == rcpt_replies.end() ? UpstreamReply{Reply{250, "2.1.5 Ok"}} : it->second;
  }
  asio::awaitable<UpstreamReply> data(const std::string& h, const Spool& spool, std::size_t offset,
                                      const Mailbox&) override {
    calls.push_back("DATA");
    head = h;
    content.assign(spool.size() - std::min(offset, spool.size()), '\0');
    spool.read(offset, content.data(), content.size());
    co_return data_reply;
  }
  // AUTH lines as relayed ("AUTH PLAIN ...", responses), answered from
  // auth_replies in order (454 when it runs out).
  std::vector<std::string> auth_lines;
  std::vector<UpstreamReply> auth_replies;
  asio::awaitable<UpstreamReply> auth(std::string_view line, bool first, std::string_view mechanism) override {
    auth_lines.push_back((first ? "first " : "") + std::string(line) + " [" + std::string(mechanism) + "]");
    if (auth_replies.empty()) co_return UpstreamReply{Reply{454, "4.7.0 no"}, true};
    UpstreamReply r = auth_replies.front();
    auth_replies.erase(auth_replies.begin());
    co_return r;
  }
  asio::awaitable<void> reset() override {
    calls.push_back("RSET");
    co_return;
  }
  asio::awaitable<void> quit() override { co_return; }
  std::vector<std::string> not_offered;  // EHLO keywords this MTA lacks
  bool offers(std::string_view keyword) const override {
    return std::find(not_offered.begin(), not_offered.end(), keyword) == not_offered.end();
  }
};

// Runs a coroutine to its end on a fresh io_context.
template <typename T>
T run(asio::awaitable<T> a) {
  asio::io_context io;
  auto fut = asio::co_spawn(io, std::move(a), asio::use_future);
  io.run();
  return fut.get();
}

}  // namespace postern::test
