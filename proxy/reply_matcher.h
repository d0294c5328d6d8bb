// Matches what the MTA sends to the commands postern wrote (DESIGN "Every
// byte from the MTA is explained"): an I/O-free buffer of the MTA's octets
// and the number of replies still owed. A reply is taken only while one is
// owed; octets beyond the last reply owed, or arriving while none is, answer
// nothing and are a protocol error, never the next command's reply (the
// stale-reply desynchronisation an MTA that answers twice would cause).
// The one unsolicited reply RFC 5321 §3.8 allows is a 421 before the MTA
// closes the connection: it is reported as such.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "proxy/smtp_reply.h"

namespace postern {

class ReplyMatcher {
 public:
  enum class Outcome {
    kReply,        // `reply` is the next reply owed
    kNeedMore,     // a reply is owed and not complete yet: read more
    kQuiet,        // nothing owed, nothing buffered
    kMalformed,    // not an SMTP reply, or past the reply limits
    kUnexplained,  // octets that no command owed a reply explains
    kClosing,      // nothing owed and the buffer holds exactly one 421: the MTA is closing
  };

  // `n` more replies are owed: commands were written.
  void expect(std::size_t n = 1) { owed_ += n; }
  // Replies owed and not given yet (one waiting for what follows it included).
  std::size_t owed() const { return owed_ + (held_ ? 1 : 0); }
  // Octets read from the MTA are appended here.
  std::string& input() { return input_; }
  // What is buffered, for a log line.
  std::string_view buffered() const { return input_; }

  // The next reply owed, once the buffer holds all of it. After the last
  // reply owed the buffer must be empty (kUnexplained otherwise), except for
  // one complete 421 behind it (kReply, then closing() is true); while what
  // follows may still become that 421, the reply waits (kNeedMore).
  Outcome next(Reply& reply);
  // With nothing owed (about to write a new command): kQuiet, or what the
  // buffered octets are (kClosing with the 421 in `reply`, or kUnexplained).
  Outcome unsolicited(Reply& reply);
  // The last reply taken was followed by a 421: the MTA is closing.
  bool closing() const { return closing_; }
  const Reply& closing_reply() const { return closing_reply_; }
  // The connection is gone: nothing owed, nothing buffered.
  void reset();

 private:
  // What follows the last reply owed: kClosing, kNeedMore or kUnexplained.
  Outcome trailer() const;
  // Gives out the last reply owed once what follows it is settled.
  Outcome settle(Reply& reply);

  ReplyParser parser_;
  std::string input_;
  std::size_t owed_ = 0;
  bool partial_ = false;  // the parser holds lines of an incomplete reply
  bool closing_ = false;
  Reply closing_reply_;
  bool held_ = false;  // the last reply owed, taken, waits in held_reply_ for what follows it
  Reply held_reply_;
};

}  // namespace postern
