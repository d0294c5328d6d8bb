// `postern check --config`: one message through the same filter chain the
// live proxy builds from the configuration (build_filter_resources,
// build_filter_chain), stage by stage as a session runs it -- connect, helo,
// mail, each rcpt, data, end of message -- with the session's handling of
// each verdict, so that the offline answer is the live one (DESIGN "postern
// check and postern test run the same code as the live proxy"; issue 17).
// Prints one JSON object: the verdict, the reply the client would hear, the
// deciding rule and stage, symbols and score, every header and envelope
// change, and the authenticity results.
#pragma once

#include <string>
#include <vector>

#include "proxy/config.h"

namespace postern {

struct LiveCheck {
  std::string client_ip;
  unsigned short client_port = 0;
  std::string helo;
  std::string mail_from;            // "a@example.com", or "" for <>
  std::vector<std::string> rcpts;   // at least one
  std::string message;              // CRLF or LF line ends
};

// Blocking; for the command line. The store is a fresh in-process one (a
// check never counts against live rate limits). Throws ConfigError or
// std::runtime_error when the chain cannot be built.
std::string run_live_check(const Config& config, const LiveCheck& check);

}  // namespace postern
