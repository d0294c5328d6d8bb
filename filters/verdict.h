// What a filter answers at a stage (Envoy/Haraka model): continue, or a
// decisive verdict; the first decisive verdict of the chain wins.
#pragma once

#include <optional>
#include <string>

namespace postern {

enum class Stage { kConnect, kHelo, kMail, kRcpt, kData, kEom, kClose };
const char* stage_name(Stage stage);

struct Verdict {
  enum class Action {
    kContinue,    // no opinion: ask the next filter
    kAccept,      // skip the remaining filters of this stage and of later ones
    kReject,      // 5xx (at kRcpt: this recipient only)
    kTempfail,    // 4xx (at kRcpt: this recipient only)
    kDiscard,     // 250 to the client, the message is not relayed
    kQuarantine,  // 250 to the client, the message goes to the quarantine Maildir
    kDisconnect,  // 421 and close
  };
  Action action = Action::kContinue;
  int code = 0;          // reply code; 0 = the action's default
  std::string enhanced;  // enhanced status code ("5.7.1"); empty = the action's default
  std::string text;      // reply text; empty = the action's default
  std::string reason;    // for the log and the quarantine record
  // Who decided: the Lua rule's name, else the filter's (set by the chain),
  // or "score" for a [scores] threshold. For the audit record and `postern check`.
  std::string rule;

  bool decisive() const { return action != Action::kContinue; }
  // Discard and quarantine given at MAIL or RCPT are no reply there but the
  // fate of the whole message, applied at its end of data (docs/lua-api.md).
  bool holds_message() const { return action == Action::kDiscard || action == Action::kQuarantine; }
  static Verdict proceed() { return {}; }
};

// The verdict at a message's end of data, from what the data and eom stages
// said (`at_end`) and a discard or quarantine left pending by MAIL or RCPT.
// That one was decided first and stands against a later accept, discard or
// quarantine (an accept skips the rules after it, it does not undo one
// before it); a later reject, tempfail or disconnect refuses the message
// outright and wins. The proxy, the milter server and `postern check` agree.
inline Verdict end_of_data_verdict(Verdict at_end, const std::optional<Verdict>& pending) {
  if (!pending) return at_end;
  const bool refuses = at_end.action == Verdict::Action::kReject || at_end.action == Verdict::Action::kTempfail ||
                       at_end.action == Verdict::Action::kDisconnect;
  return refuses ? at_end : *pending;
}

const char* action_name(Verdict::Action action);

}  // namespace postern
