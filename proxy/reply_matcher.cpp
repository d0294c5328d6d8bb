// Upstream replies matched to the commands that owe them (reply_matcher.h).
#include "proxy/reply_matcher.h"

#include <algorithm>

namespace postern {

void ReplyMatcher::reset() {
  parser_.reset();
  input_.clear();
  owed_ = 0;
  partial_ = false;
  closing_ = false;
  closing_reply_ = Reply{};
  held_ = false;
  held_reply_ = Reply{};
}

ReplyMatcher::Outcome ReplyMatcher::unsolicited(Reply& reply) {
  if (owed() != 0) return Outcome::kNeedMore;
  if (input_.empty() && !partial_) return Outcome::kQuiet;
  // Only a whole 421 and nothing after it is the MTA closing (RFC 5321 §3.8).
  if (partial_) return Outcome::kUnexplained;
  ReplyParser probe;
  ReplyParser::Result r = probe.feed(input_);
  if (r.outcome != ReplyParser::Outcome::kComplete || r.consumed != input_.size()) return Outcome::kUnexplained;
  Reply said = probe.take();
  if (said.code != 421) return Outcome::kUnexplained;
  reply = std::move(said);
  return Outcome::kClosing;
}

ReplyMatcher::Outcome ReplyMatcher::trailer() const {
  ReplyParser probe;
  ReplyParser::Result r = probe.feed(input_);
  constexpr std::string_view k421 = "421";
  const std::size_t n = std::min(input_.size(), k421.size());
  if (std::string_view(input_).substr(0, n) != k421.substr(0, n)) return Outcome::kUnexplained;
  switch (r.outcome) {
    case ReplyParser::Outcome::kIncomplete:
      return Outcome::kNeedMore;  // a 421 on its way, perhaps
    case ReplyParser::Outcome::kComplete:
      return r.consumed == input_.size() ? Outcome::kClosing : Outcome::kUnexplained;
    default:
      return Outcome::kUnexplained;
  }
}

ReplyMatcher::Outcome ReplyMatcher::settle(Reply& reply) {
  const Outcome o = trailer();
  if (o == Outcome::kNeedMore) return o;
  held_ = false;
  reply = std::move(held_reply_);
  if (o != Outcome::kClosing) return Outcome::kUnexplained;
  ReplyParser probe;
  probe.feed(input_);
  closing_reply_ = probe.take();
  input_.clear();
  closing_ = true;
  return Outcome::kReply;
}

ReplyMatcher::Outcome ReplyMatcher::next(Reply& reply) {
  closing_ = false;
  if (held_) return settle(reply);
  if (owed_ == 0) {
    Outcome o = unsolicited(reply);
    return o == Outcome::kClosing ? Outcome::kUnexplained : o;
  }
  if (input_.empty()) return Outcome::kNeedMore;
  ReplyParser::Result r = parser_.feed(input_);
  input_.erase(0, r.consumed);
  switch (r.outcome) {
    case ReplyParser::Outcome::kIncomplete:
      partial_ = r.consumed > 0 || partial_;
      return Outcome::kNeedMore;
    case ReplyParser::Outcome::kInvalid:
    case ReplyParser::Outcome::kTooLong:
      return Outcome::kMalformed;
    case ReplyParser::Outcome::kComplete:
      break;
  }
  partial_ = false;
  reply = parser_.take();
  if (--owed_ > 0 || input_.empty()) return Outcome::kReply;
  held_ = true;
  held_reply_ = std::move(reply);
  return settle(reply);
}

}  // namespace postern
