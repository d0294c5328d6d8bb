// The DATA stream decoder (RFC 5321 §4.1.1.4, §4.5.2): finds the one end of
// data, removes dot-stuffing, and checks line endings, NULs, line lengths and
// size as the bytes stream in. I/O-free; resumes across reads at any byte.
//
// Only <CRLF>.<CRLF> ends the data. A bare LF or bare CR is never a line end
// for finding the end, so "\n.\n", "\r.\r" and the other SMTP smuggling
// markers stay content: postern and the MTA cannot disagree on where a message
// ends. Such content is rejected, or with kNormalize rewritten to CRLF.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace postern {

class DataDecoder {
 public:
  enum class BareLineEnding { kReject, kNormalize };

  struct Options {
    std::size_t max_size;       // content octets; beyond it content is dropped, flagged
    std::size_t max_line;       // octets of one line with its CRLF (RFC: 1000)
    BareLineEnding bare_line_ending;
  };

  // What was wrong with the content; checked at the end of data.
  struct Faults {
    bool bare_lf = false;
    bool bare_cr = false;
    bool nul = false;
    bool line_too_long = false;
    bool too_big = false;
    bool any() const { return bare_lf || bare_cr || nul || line_too_long || too_big; }
  };

  struct Result {
    std::size_t consumed;  // input bytes used
    bool done;             // the end of data was consumed
  };

  explicit DataDecoder(Options options) : options_(options) {}

  // Decodes `input`, appending content to `out` (CRLF line ends, unstuffed).
  // Stops right after the end-of-data marker; bytes after it are not consumed.
  Result feed(std::string_view input, std::string& out);

  // BDAT content (RFC 3030): octets counted by the client, so no dot and no
  // end marker; the same checks (bare CR/LF, NUL, line length, size) apply so
  // DATA and BDAT reach the MTA alike. Appends all of `input` to `out`.
  void feed_chunk(std::string_view input, std::string& out);
  // After the LAST chunk: a final CR without its LF is a bare CR; content
  // whose last line has no CRLF gets one.
  void finish_chunks(std::string& out);

  const Faults& faults() const { return faults_; }
  std::size_t size() const { return size_; }  // content octets seen, dropped included
  void reset();

 private:
  enum class State {
    kLineStart,      // after CRLF (or at the start of data)
    kText,           // inside a line
    kCr,             // saw CR inside a line
    kDot,            // line started with '.'
    kDotCr,          // saw ".\r" at the start of a line
    kBareLineStart,  // after a bare CR/LF under kNormalize: unstuff, but never an end
  };

  void reserve_for(std::string_view in, std::string& out);
  void emit(std::string& out, std::string_view bytes);
  void note_line_length(std::size_t n);
  void bare_line_end(std::string& out, bool lf);

  Options options_;
  State state_ = State::kLineStart;
  Faults faults_;
  std::size_t size_ = 0;
  std::size_t line_length_ = 0;
  bool ends_line_ = true;  // the content emitted so far is empty or ends with CRLF
};

// Dot-stuffs content for the wire (RFC 5321 §4.5.2); streaming across chunks.
class DotStuffer {
 public:
  // Appends `content` to `out` with a '.' doubled at the start of each line.
  void feed(std::string_view content, std::string& out);
  // Appends the end of data: a CRLF if the content did not end with one, and ".\r\n".
  void finish(std::string& out);
  void reset() { line_start_ = true; last_ = '\n'; before_last_ = '\r'; empty_ = true; }

 private:
  bool line_start_ = true;
  char last_ = '\n';         // the last two content octets: the end of data
  char before_last_ = '\r';  // needs a CRLF before it, not a bare LF
  bool empty_ = true;
};

}  // namespace postern
