// AUTH relayed to the MTA (RFC 4954): the MTA checks the credentials,
// postern carries the exchange line by line and learns who authenticated.
// Only PLAIN (RFC 4616) and LOGIN, whose responses name the user. Every line
// the client sends is checked to be base64 or "*" before it is relayed: a CR,
// LF or NUL in it would reach the MTA as a line postern did not read.
// Credentials are never logged. The session decides what a step means for
// the dialogue (the reply, the log line, the failure count).
#pragma once

#include <string>
#include <string_view>

#include <asio/awaitable.hpp>

#include "proxy/upstream.h"

namespace postern {

// RFC 4954 §4: a SASL response (or initial response) is base64 (RFC 4648's
// alphabet; "=" alone is an empty initial response) or "*" to cancel.
bool is_sasl_response(std::string_view line);
// Strict base64 (RFC 4648 §4): whole quanta, padding only at the end; "" too.
bool is_base64(std::string_view text);
// The identity a SASL response names: PLAIN's authcid (RFC 4616), LOGIN's user.
std::string sasl_user(std::string_view mechanism, std::string_view response);

class SaslRelay {
 public:
  enum class Outcome {
    kUnknownMechanism,  // neither PLAIN nor LOGIN: nothing relayed
    kBadResponse,       // not base64 or "*": never relayed; an open exchange cancelled with "*"
    kContinue,          // the MTA's 334: the client's next line is a response
    kAuthenticated,     // the MTA's 235
    kRefused,           // the MTA's 5xx: the credentials are wrong
    kUnavailable,       // any other end (4xx, the MTA gone): says nothing of the credentials
  };
  struct Step {
    Outcome outcome;
    UpstreamReply reply;  // the MTA's, to relay (not for kUnknownMechanism, kBadResponse)
    std::string user;     // kAuthenticated: who, as the client named it (unsanitized)
  };

  // AUTH's arguments: the mechanism and an optional initial response.
  asio::awaitable<Step> start(std::string_view args, Upstream& upstream);
  // The client's next line while active().
  asio::awaitable<Step> respond(std::string_view line, Upstream& upstream);
  // A line that could not be read as a response at all (a bare LF in it).
  asio::awaitable<Step> refuse(Upstream& upstream);

  // An exchange is under way: the client's lines are responses, not commands.
  bool active() const { return active_; }
  const std::string& mechanism() const { return mechanism_; }

 private:
  asio::awaitable<Step> relay(std::string_view line, bool first, Upstream& upstream);

  bool active_ = false;
  std::string mechanism_;  // PLAIN or LOGIN
  std::string user_;       // learned from the client's first response
  bool user_known_ = false;
};

}  // namespace postern
