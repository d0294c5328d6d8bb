// The MIME reading rules need (RFC 2045-2047, 2231): encoded-word decoding of
// header values, base64 and quoted-printable bodies, and the parts of a
// multipart message with their type, charset and file name, read the way a
// mail reader (Thunderbird) reads them, so that a rule sees what the
// recipient will. I/O-free; every output is bounded by the caller's limit or
// by the input, and bad input never throws.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace postern::mime {

// Limits of the structure a rule is shown; past one, Structure::problem says
// so, because a list cut short would hide the rest from the rule (RFC 2046
// sets no limits; real mail stays far below these).
inline constexpr std::size_t kMaxParts = 1000;         // parts listed
inline constexpr int kMaxDepth = 16;                   // multipart and message/rfc822 nesting
inline constexpr std::size_t kMaxFieldValue = 65536;   // octets of one Content-* field, unfolded
inline constexpr std::size_t kMaxFilename = 1024;      // octets of a decoded file name
inline constexpr std::size_t kMaxNames = 16;           // distinct file names of one part
// Octets of a file name in an archive read whole (PATH_MAX); a longer one is
// a problem rather than a name kept: a compressed tar archive could otherwise
// hold 10,000 names of a megabyte each in a few hundred kilobytes.
inline constexpr std::size_t kMaxArchiveName = 4096;
inline constexpr std::size_t kMaxArchiveFiles = 10000;  // files listed from archives (ZIP, RAR, 7z)
                                                       // in one archive, and in the whole message
inline constexpr std::size_t kDecodedFactor = 2;       // encoded attached messages decode to at most
                                                       // this many times the message's size, in all

// A header value with its RFC 2047 encoded-words decoded and converted to
// UTF-8 (undecodable words stay as written); octets that are no well-formed
// UTF-8 become U+FFFD; cut at `limit` octets, never inside a character.
std::string decode_header_value(std::string_view value, std::size_t limit);

std::string decode_base64(std::string_view in, std::size_t limit);
std::string decode_quoted_printable(std::string_view in, std::size_t limit);

// The same decodings fed in pieces split anywhere (an attached message
// decoded while the message streams by); each feed() appends to `out` what
// the input so far decodes to, up to `limit` octets of `out` in all.
class Base64Decoder {
 public:
  void feed(std::string_view in, std::string& out, std::size_t limit);

 private:
  unsigned buffer_ = 0;
  int bits_ = 0;
  bool done_ = false;  // '=' ends the data (RFC 2045 §6.8)
};

class QuotedPrintableDecoder {
 public:
  void feed(std::string_view in, std::string& out, std::size_t limit);
  void finish(std::string& out, std::size_t limit);  // at the end of the input

 private:
  void step(char c, std::string& out);
  void release(std::string& out);
  std::string pending_;  // '=' and what follows it while undecided: hex digit, soft line break
};
std::string decode_q(std::string_view in);        // RFC 2047 §4.2 "Q": like quoted-printable, '_' is a space
std::string decode_percent(std::string_view in);  // RFC 2231 §4 "%xx"

// Converts `text` in `charset` to well-formed UTF-8: an unknown charset is
// read as UTF-8, and every octet that does not convert becomes U+FFFD.
std::string to_utf8(std::string_view charset, std::string_view text);

// Cuts `text` to at most `limit` octets without splitting a UTF-8 sequence.
void cut_utf8(std::string& text, std::size_t limit);

// The value of parameter `name` of a structured field such as
// Content-Type ("text/plain; charset=utf-8"), comments "(...)" ignored.
// An RFC 2231 value ("name*=" or the continuations "name*0*=", "name*1=",
// ...) wins over a plain "name=", as in mail readers; its charset is
// converted to UTF-8. `others`, when given, receives the values other
// readers may show instead: the plain value beside an RFC 2231 one, and
// each further value of the same name.
std::string header_parameter(std::string_view field_value, std::string_view name,
                             std::vector<std::string>* others = nullptr);

// The field value without its RFC 5322 comments (outside quoted strings).
std::string strip_comments(std::string_view field_value);

struct Part {
  std::string type = "text/plain";  // lower case "type/subtype"
  std::string charset;              // lower case; may be empty
  std::string transfer_encoding;    // lower case: "base64", "quoted-printable", ...
  std::string disposition;          // lower case: "attachment", "inline" or empty
  std::string filename;             // from Content-Disposition or Content-Type name=, decoded
  // The other names readers may show for it, decoded, each once: a Content-Type
  // name= beside filename=, a plain filename= beside an RFC 2231 one, a name
  // given twice (at most kMaxNames in all).
  std::vector<std::string> other_filenames;
  std::string archive;              // a file in an archive: the archive's file name (the inner
                                    // one's for a file in an archive inside an archive)
  bool unopened = false;            // a file in an archive, itself an archive postern did not open
                                    // (mime_archive.h): what it holds is not listed
  std::size_t encoded_size = 0;     // octets of the encoded body
  // The encoded body of a text part that is no attachment, kept while the
  // reader's text budget lasts (read_structure); empty for other parts.
  std::string body;
  bool body_whole = false;          // `body` holds the whole encoded body
};

struct Structure {
  // Every leaf part, and every message/rfc822 part before the parts of the
  // message it holds; depth first.
  std::vector<Part> parts;
  // Why `parts` may miss some of what a mail reader shows (too many parts,
  // nested too deep, a part with two different Content-Type fields, ...);
  // empty when the structure was read whole.
  std::string problem;
  // False when a text part's body was not kept whole (the text budget ran
  // out) or past the text_parts_max'th text part: its text is not in `parts`.
  bool text_whole = true;
  // Read with a decompression limit below the message's budget
  // (StructureReader's `decompress_limit`), which a compressed file ran
  // past: `problem` says so, and a read with the whole budget may not.
  bool decompression_limited = false;
};

// What a StructureReader keeps of text parts (text/* and no attachment) for
// the rules: the first `text_parts_max` of them, their encoded bodies up to
// `text_limit` octets in all.
struct TextBudget {
  std::size_t text_limit = static_cast<std::size_t>(-1);
  std::size_t text_parts_max = static_cast<std::size_t>(-1);
};

// Reads the structure of a whole message fed in pieces split anywhere, in
// one pass over it (CPU linear in the message's size, whatever the nesting)
// and in bounded memory: a part's header and the line being read (cut at
// kMaxLine octets), per nesting level, and the text bodies of TextBudget.
// Attached messages encoded in base64 or quoted-printable are decoded as
// they stream by, into kDecodedFactor times `message_size` octets in all;
// compressed files into decompression_budget(message_size) octets in all
// (mime_compressed.h), or `decompress_limit` when that is less.
class StructureReader {
 public:
  StructureReader(std::size_t message_size, TextBudget budget,
                  std::size_t decompress_limit = static_cast<std::size_t>(-1));
  ~StructureReader();
  StructureReader(const StructureReader&) = delete;
  StructureReader& operator=(const StructureReader&) = delete;

  void feed(std::string_view data);
  // The message could not be read on (an I/O error): the structure has a problem.
  void fail(std::string why);
  Structure finish();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Octets of one line the structure reader looks at; the rest of a longer
// line is body text (a boundary delimiter or a Content-* field that long is
// a problem, for readers may not agree on it).
inline constexpr std::size_t kMaxLine = 2 * kMaxFieldValue;

// The structure of `message` (a whole message with CRLF or LF line ends).
Structure read_structure(std::string_view message, TextBudget budget = {});

// The part's body decoded from its transfer encoding and converted to UTF-8,
// cut at `limit` octets; `*cut` (when given) says whether it was.
std::string decoded_text(const Part& part, std::size_t limit, bool* cut = nullptr);

}  // namespace postern::mime
