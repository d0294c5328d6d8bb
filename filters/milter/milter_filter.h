// The milter client filter: postern calls an external milter (Sendmail's
// milter protocol version 6, as Postfix does) at each stage of the chain and
// turns its replies into postern's own verdicts and changes (docs/milter.md).
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter.h"
#include "filters/milter/milter_protocol.h"

namespace postern {

struct MilterOptions {
  enum class OnError { kTempfail, kAccept, kReject };
  std::string name;
  std::string socket;  // "inet:HOST:PORT" or "unix:PATH", as configured
  // From `socket` (parse_milter_socket).
  bool unix_socket = false;
  std::string path;
  std::string host;  // an IP address
  unsigned short port = 0;
  std::chrono::milliseconds connect_timeout{10'000};
  std::chrono::milliseconds command_timeout{30'000};
  std::chrono::milliseconds eom_timeout{120'000};
  OnError on_error = OnError::kTempfail;
  std::vector<std::string> macros;  // sent, each at the stage it belongs to
  std::size_t max_body = 50u * 1024 * 1024;  // a replaced body past this is an error
  std::string hostname;  // the "j" macro
  // Told of each failure (the proxy logs it): session id, stage, error.
  std::function<void(const MilterOptions&, std::string_view session, std::string_view stage,
                     std::string_view error)>
      on_failure;
};

// Parses "inet:HOST:PORT" (HOST an IP address, "[v6]" or "localhost") or
// "unix:PATH" into `out`; returns an error text, empty when valid.
std::string parse_milter_socket(std::string_view text, MilterOptions& out);
// The macros postern can send; an unknown name is a configuration error.
const std::vector<std::string>& milter_known_macros();

// A known macro's value for this stage's context, and the stage it is sent
// before (milter_options.cpp); nullopt for an unknown name.
std::string milter_macro_value(std::string_view name, const FilterContext& ctx, const std::string& hostname);
std::optional<milter::MacroStage> milter_macro_stage(std::string_view name);

std::shared_ptr<Filter> make_milter_filter(MilterOptions options);

}  // namespace postern
