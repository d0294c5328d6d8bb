// One line of an audit log at a time, never more than a bound in memory: the
// readers of `postern report` and `postern report dmarc` take files an
// attacker may have shaped (a record is mostly network text), and a line of
// gigabytes, or a file without a line end, must cost a bounded buffer and a
// "line longer than" message, not the memory of the machine.
#pragma once

#include <cstddef>
#include <istream>
#include <string>

namespace postern {

class AuditLineReader {
 public:
  AuditLineReader(std::istream& in, std::size_t max_octets) : in_(in), max_(max_octets) {}

  // The next line without its LF; false at the end of the input. A line
  // longer than the bound is read to its end but not kept: `line()` holds
  // its first octets and `too_long()` is true.
  bool next() {
    line_.clear();
    too_long_ = false;
    std::streambuf* buf = in_.rdbuf();
    if (!buf) return false;
    bool any = false;
    for (;;) {
      const auto c = buf->sbumpc();
      if (c == std::char_traits<char>::eof()) {
        in_.setstate(std::ios::eofbit);
        if (any) ++number_;
        return any;
      }
      any = true;
      if (c == '\n') {
        ++number_;
        return true;
      }
      if (line_.size() < max_) {
        line_.push_back(static_cast<char>(c));
      } else {
        too_long_ = true;
      }
    }
  }
  const std::string& line() const { return line_; }
  bool too_long() const { return too_long_; }
  std::size_t number() const { return number_; }  // of the line last read, from 1

 private:
  std::istream& in_;
  std::size_t max_;
  std::string line_;
  bool too_long_ = false;
  std::size_t number_ = 0;
};

}  // namespace postern
