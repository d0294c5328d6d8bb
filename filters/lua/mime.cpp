// The MIME structure of a message as the rule API shows it; see mime.h.
// Read as a mail reader reads it (RFC 2046 §5.1.1 delimiters, first field
// wins), and where readers may disagree (two different Content-Type fields)
// or a limit cuts the walk short, Structure::problem says so rather than a
// list that silently misses a part the recipient sees.
//
// One pass over the lines of the whole message, however large: an
// attachment hidden after megabytes of padding is still listed. The nesting
// is a stack of open containers; every line is matched against the
// delimiters of all of them at once (an outer delimiter ends the inner
// parts, as in a reader that splits the outer multipart first), so the work
// per line does not grow with the depth of the part it is in.
#include "filters/lua/mime.h"

#include <algorithm>
#include <array>
#include <memory>

#include "filters/lua/mime_archive.h"
#include "filters/lua/mime_compressed.h"
#include "filters/lua/mime_tnef.h"
#include "filters/text/ascii.h"

namespace postern::mime {
namespace {

// The Content-* fields of one part header; the other fields are skipped
// unstored, so neither their number nor their size can push these out.
struct PartHeader {
  static constexpr std::array<std::string_view, 3> kNames = {"content-type", "content-disposition",
                                                             "content-transfer-encoding"};
  std::array<std::string, 3> values;  // unfolded, as kNames
  std::array<bool, 3> seen{};
  std::string problem;

  const std::string* get(std::size_t i) const { return seen[i] ? &values[i] : nullptr; }
};

std::string_view without_line_end(std::string_view line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
  return line;
}

// Adds the field being read to `h`, or records why the part is ambiguous.
void finish_field(PartHeader& h, int index, std::string& value) {
  if (index < 0) return;
  const auto i = static_cast<std::size_t>(index);
  std::string_view name = PartHeader::kNames[i];
  if (value.size() > kMaxFieldValue) {
    if (h.problem.empty()) h.problem = std::string(name) + " field longer than " + std::to_string(kMaxFieldValue) + " octets";
    return;
  }
  if (!h.seen[i]) {
    h.seen[i] = true;
    h.values[i] = std::move(value);
  } else if (ascii::trim(h.values[i]) != ascii::trim(value) && h.problem.empty()) {
    // RFC 2045 allows one; readers differ on which of two counts.
    h.problem = "a part with two different " + std::string(name) + " fields";
  }
}

// "multipart/mixed" from a comment-free Content-Type value; white space
// around the '/' is allowed (RFC 2045 §5.1 with RFC 5322 CFWS).
std::string media_type(std::string_view content_type) {
  std::string type;
  for (char c : content_type.substr(0, content_type.find(';'))) {
    if (!ascii::is_space(c)) type.push_back(ascii::to_lower(c));
  }
  return type;
}

// The file name as a recipient's system would store it: cut at a NUL (C
// strings end there), and when longer than kMaxFilename, its start and its
// end kept, so the extension still shows.
std::string clean_filename(std::string name) {
  name = name.substr(0, name.find('\0'));
  // Decoded whole (at most 3 octets for each one written: U+FFFD), then cut.
  std::string decoded = decode_header_value(name, 3 * name.size());
  decoded = decoded.substr(0, decoded.find('\0'));  // a NUL from an encoded-word
  if (decoded.size() <= kMaxFilename) return decoded;
  std::string head = decoded.substr(0, kMaxFilename / 2 + 1);  // cut_utf8 looks at the octet past the cut
  cut_utf8(head, kMaxFilename / 2);
  std::size_t from = decoded.size() - kMaxFilename / 2;
  while (from < decoded.size() && (static_cast<unsigned char>(decoded[from]) & 0xC0) == 0x80) ++from;
  return head + decoded.substr(from);
}

// A Content-Type of an archive archive_name() names (mime_nested.h).
bool archive_type(std::string_view type) {
  for (std::string_view t : {"application/zip", "application/x-zip-compressed", "application/x-zip", "application/vnd.rar",
                             "application/x-rar-compressed", "application/x-rar", "application/x-7z-compressed",
                             "application/vnd.ms-cab-compressed", "application/x-tar", "application/x-gtar",
                             "application/gzip", "application/x-gzip",
                             "application/x-compressed", "application/x-compressed-tar", "application/x-bzip2",
                             "application/x-bzip", "application/x-bzip-compressed-tar", "application/x-xz",
                             "application/x-xz-compressed-tar", "application/zstd", "application/x-zstd",
                             "application/x-zstd-compressed-tar"}) {
    if (type == t) return true;
  }
  return false;
}

bool tnef_name(std::string_view name) { return ascii::to_lower(name) == "winmail.dat"; }

// What all the readers of one message share: the structure being built and
// the budgets that hold across attached messages.
struct Shared {
  Structure out;
  std::size_t decoded_left;  // octets encoded attached messages may still decode from
  TextBudget text;
  std::size_t text_left;       // octets of text bodies still kept
  std::size_t text_parts = 0;  // text parts seen
  std::size_t archive_files = 0;  // files listed from archives
  std::size_t nested_files_left = kMaxArchiveFiles;  // files archives inside archives may still list
  std::size_t decompressed_left;  // octets compressed files may still decompress to (mime_compressed.h)
  bool decompress_limited = false;  // decompressed_left started below the message's budget
};

// Reads one stream of lines: the message, or an encoded attached message
// decoded from it (then `depth` is that of its top part).
class Reader {
 public:
  Reader(Shared& shared, int depth) : sh_(shared) { open_part(depth, 0, true); }

  void feed(std::string_view data) {
    while (!data.empty() && sh_.out.problem.empty()) {
      if (at_body_line()) {
        // Body text in bulk: what a line at a time would read the same way.
        const std::size_t plain = plain_body(data);
        if (plain > 0) {
          std::string_view text = data.substr(0, plain);
          if (open_.active) body_bytes(text);
          pos_ += plain;
          prev_break_ = text.ends_with("\r\n") ? 2 : text.ends_with("\n") ? 1 : 0;
          data.remove_prefix(plain);
          continue;
        }
      }
      const std::size_t nl = data.find('\n');
      const std::size_t n = nl == std::string_view::npos ? data.size() : nl + 1;
      std::string_view piece = data.substr(0, n);
      data.remove_prefix(n);
      const bool ends = nl != std::string_view::npos;
      if (long_line_) {
        if (open_.active && !open_.in_header) body_bytes(piece);
        long_length_ += piece.size();
        const bool cr = piece.size() >= 2 ? piece[piece.size() - 2] == '\r' : last_cr_;
        last_cr_ = !piece.empty() && piece.back() == '\r';
        if (ends) {
          last_break_ = cr ? 2 : 1;
          end_long_line();
        }
        continue;
      }
      if (carry_.empty() && ends && piece.size() <= kMaxLine) {
        line(piece);  // the common case: a whole line in the data, read in place
        continue;
      }
      if (carry_.size() + piece.size() <= kMaxLine) {
        carry_.append(piece);
        if (ends) {
          line(carry_);
          carry_.clear();
        }
        continue;
      }
      const std::size_t take = kMaxLine - carry_.size();
      carry_.append(piece.substr(0, take));
      last_cr_ = carry_.back() == '\r';
      last_break_ = 0;
      start_long_line();
      data = std::string_view(piece.substr(take).data(), piece.size() - take + data.size());
    }
  }

  // The end of the stream: the open parts end with it.
  void finish() {
    if (!sh_.out.problem.empty()) return;
    if (long_line_) end_long_line();
    if (!carry_.empty()) {
      line(carry_);
      carry_.clear();
    }
    if (!sh_.out.problem.empty()) return;
    end_open(pos_, false);
    while (!levels_.empty()) pop_level(pos_);
  }

 private:
  // An open container: a multipart (its delimiter) or an attached message
  // whose parts are in the same stream.
  struct Level {
    std::string delimiter;  // "--boundary"; empty for an attached message
    int depth = 0;          // of the container
    bool closed = false;    // after its close-delimiter: the epilogue, not shown
    std::size_t index = 0;  // attached message: its entry in out.parts
    std::size_t body_start = 0;
  };

  // The part whose lines are being read.
  struct Open {
    bool active = false;
    bool always = false;  // shown even when empty: a whole stream or an attached message's body
    int depth = 0;
    std::size_t start = 0;  // stream offset of its first octet
    bool in_header = true;
    PartHeader header;
    int field = -1;  // index into PartHeader::kNames of the field being unfolded
    std::string value;
    std::size_t body_start = 0;
    std::size_t index = std::string_view::npos;  // its entry in out.parts
    bool text = false;                           // a text part, counted in Shared::text_parts
    bool capture = false;                        // keeps its body
    bool cut = false;                            // ... but the text budget ran out in it
    // An attached message in base64 or quoted-printable: decoded into a reader.
    bool base64 = false;
    Base64Decoder base64_decoder;
    QuotedPrintableDecoder qp_decoder;
    std::unique_ptr<Reader> inner;
    std::string held;  // the line break that ended the body so far, not yet decoded
    // A text/plain part's text is searched for files embedded in it
    // (uuencode, yEnc), and a TNEF part read for the files it holds, both
    // decoded first when base64 or quoted-printable.
    bool embedded = false;
    std::unique_ptr<TnefReader> tnef;
    // An archive: its files are listed after it (mime_archive.h).
    std::unique_ptr<ArchiveReader> archive;
    int text_encoding = 0;  // 0 as is, 1 base64, 2 quoted-printable
    std::string line;       // the text line read so far, its first kMaxLine octets
    bool in_line = false;   // `line` holds the start of an unfinished line
  };

  void fail(std::string why) {
    if (sh_.out.problem.empty()) sh_.out.problem = std::move(why);
  }

  void open_part(int depth, std::size_t start, bool always) {
    open_ = Open{};
    open_.active = true;
    open_.always = always;
    open_.depth = depth;
    open_.start = start;
  }

  // At the start of a line of a body, a preamble or an epilogue, read as it
  // comes (an encoded attached message's body is decoded a line at a time).
  bool at_body_line() const {
    return carry_.empty() && !long_line_ && !open_.inner && !(open_.active && open_.in_header);
  }

  // Octets at the start of `data` that are body text whatever follows: the
  // whole lines that are no boundary delimiter (they do not start with
  // "--"), or all of `data` when no multipart is open, for then no line can
  // end the part (a new part starts only at a delimiter).
  std::size_t plain_body(std::string_view data) const {
    const bool open = std::any_of(levels_.begin(), levels_.end(),
                                  [](const Level& l) { return !l.delimiter.empty() && !l.closed; });
    if (!open) return data.size();
    std::size_t n = 0;
    while (n + 2 <= data.size() && !(data[n] == '-' && data[n + 1] == '-')) {
      const std::size_t nl = data.find('\n', n);
      if (nl == std::string_view::npos) break;
      n = nl + 1;
    }
    return n;
  }

  // A whole line (with its line end) at pos_.
  void line(std::string_view text) {
    if (!delimiter(text) && open_.active) {
      if (open_.in_header) header_line(text);
      else body_bytes(text);
    }
    pos_ += text.size();
    prev_break_ = text.ends_with("\r\n") ? 2 : text.ends_with("\n") ? 1 : 0;
  }

  // RFC 2046 §5.1.1: a delimiter line is "--boundary" at the start of a
  // line, then only white space (transport padding); "--boundary--" closes.
  // A line that merely starts with the delimiter ("--boundary--x",
  // "--boundaryX") is body text to a mail reader, and so it is here. The
  // outermost container whose delimiter the line is wins.
  std::size_t match(std::string_view text) const {
    if (text.size() < 2 || text[0] != '-' || text[1] != '-') return std::string_view::npos;
    while (!text.empty() && ascii::is_space(text.back())) text.remove_suffix(1);
    for (std::size_t k = 0; k < levels_.size(); ++k) {
      const Level& l = levels_[k];
      if (l.delimiter.empty() || l.closed || !text.starts_with(l.delimiter)) continue;
      std::string_view rest = text.substr(l.delimiter.size());
      if (rest.empty() || rest == "--") return k;
    }
    return std::string_view::npos;
  }

  bool delimiter(std::string_view text) {
    const std::size_t k = match(text);
    if (k == std::string_view::npos) return false;
    // The line break before a delimiter belongs to it (RFC 2046 §5.1.1).
    const std::size_t end = pos_ - std::min(pos_, prev_break_);
    end_open(end, k + 1 == levels_.size());
    while (levels_.size() > k + 1) pop_level(end);
    if (!sh_.out.problem.empty()) return true;
    Level& l = levels_[k];
    std::string_view trimmed = text;
    while (!trimmed.empty() && ascii::is_space(trimmed.back())) trimmed.remove_suffix(1);
    if (trimmed.size() > l.delimiter.size()) {
      l.closed = true;  // close-delimiter; the epilogue is not shown
      return true;
    }
    open_part(l.depth + 1, pos_ + text.size(), false);
    return true;
  }

  // The open part ends at stream offset `end`; `own` when at a delimiter of
  // its own multipart. An empty part ended by an outer delimiter or by the
  // end of the stream is not shown (there was no part), an empty one
  // between two delimiters is.
  void end_open(std::size_t end, bool own) {
    while (open_.active && open_.in_header) {
      if (!open_.always && !own && end <= open_.start) {
        open_ = Open{};
        return;
      }
      finish_header(end);  // a header without an empty line: all header, the body empty
      // A multipart's level is popped by the caller; an attached message's
      // body (the part inside it, empty) is read the same way.
      if (!sh_.out.problem.empty()) return;
    }
    if (!open_.active) return;
    Open o = std::move(open_);
    open_ = Open{};
    if (o.index == std::string_view::npos) return;
    if (!o.always && !own && end <= o.start) {
      if (o.index + 1 == sh_.out.parts.size()) sh_.out.parts.pop_back();
      if (o.text) --sh_.text_parts;
      return;
    }
    if (o.embedded || o.tnef || o.archive) end_scan(o);
    if (!sh_.out.problem.empty()) return;
    Part& p = sh_.out.parts[o.index];
    p.encoded_size = end > o.body_start ? end - o.body_start : 0;
    if (o.capture) {
      if (p.body.size() > p.encoded_size) p.body.resize(p.encoded_size);
      p.body_whole = p.body.size() == p.encoded_size;  // a cut past the body's end (its delimiter's break) keeps it whole
      if (!p.body_whole) sh_.out.text_whole = false;
    }
    if (o.inner) {
      // The held line break, unless it is the one before the delimiter.
      std::string decoded;
      o.held.resize(o.held.size() - std::min(o.held.size(), pos_ - end));
      const bool within = decode(o, o.held, decoded);
      if (!o.base64) o.qp_decoder.finish(decoded, static_cast<std::size_t>(-1));
      if (!decoded.empty()) o.inner->feed(decoded);
      if (!within) return over_budget();
      o.inner->finish();
    }
  }

  void pop_level(std::size_t end) {
    Level l = std::move(levels_.back());
    levels_.pop_back();
    if (l.delimiter.empty()) {
      Part& p = sh_.out.parts[l.index];
      p.encoded_size = end > l.body_start ? end - l.body_start : 0;
    }
  }

  // One line of the open part's header (RFC 5322 §2.2.3 folding, obsolete
  // folding too); the header ends at an empty line or at a line that is no field.
  void header_line(std::string_view text) {
    std::string_view content = without_line_end(text);
    if (content.empty()) {
      finish_field(open_.header, open_.field, open_.value);
      open_.field = -1;
      finish_header(pos_ + text.size());
      return;
    }
    if (content[0] == ' ' || content[0] == '\t') {
      if (open_.field >= 0 && open_.value.size() <= kMaxFieldValue) {
        open_.value.append(content.substr(0, kMaxFieldValue + 1 - open_.value.size()));
      }
      return;
    }
    std::size_t colon = content.find(':');
    if (colon == std::string_view::npos) {  // not a field: the body starts here
      finish_field(open_.header, open_.field, open_.value);
      open_.field = -1;
      finish_header(pos_);
      // The line is read again as the first of the body: a multipart's
      // delimiter, the header of an attached message's part, or body text.
      if (!sh_.out.problem.empty() || delimiter(text) || !open_.active) return;
      if (open_.in_header) header_line(text);
      else body_bytes(text);
      return;
    }
    finish_field(open_.header, open_.field, open_.value);
    open_.field = -1;
    std::string name = ascii::to_lower(ascii::trim(content.substr(0, colon)));
    for (std::size_t i = 0; i < PartHeader::kNames.size(); ++i) {
      if (name == PartHeader::kNames[i]) open_.field = static_cast<int>(i);
    }
    if (open_.field >= 0) open_.value = std::string(content.substr(colon + 1, kMaxFieldValue + 1));
  }

  // The open part's header is read; its body starts at `body_start`.
  void finish_header(std::size_t body_start) {
    finish_field(open_.header, open_.field, open_.value);
    open_.field = -1;
    open_.in_header = false;
    open_.body_start = body_start;
    if (!sh_.out.problem.empty()) return;
    if (sh_.out.parts.size() - sh_.archive_files >= kMaxParts) return fail("more than " + std::to_string(kMaxParts) + " parts");
    PartHeader& h = open_.header;
    if (!h.problem.empty()) return fail(std::move(h.problem));
    Part part;
    std::string content_type;
    std::string type_name;
    std::string disposition_name;
    std::vector<std::string> others;  // the names other readers may show
    if (const std::string* v = h.get(0)) {
      content_type = strip_comments(*v);
      std::string type = media_type(content_type);
      if (type.find('/') != std::string::npos) part.type = type;
      part.charset = ascii::to_lower(ascii::trim(header_parameter(content_type, "charset")));
      type_name = header_parameter(content_type, "name", &others);
    }
    if (const std::string* v = h.get(2)) part.transfer_encoding = ascii::to_lower(ascii::trim(strip_comments(*v)));
    if (const std::string* v = h.get(1)) {
      std::string disposition = strip_comments(*v);
      part.disposition = ascii::to_lower(ascii::trim(std::string_view(disposition).substr(0, disposition.find(';'))));
      disposition_name = header_parameter(disposition, "filename", &others);
    }
    // RFC 2183 §2.3: filename= over Content-Type name=, as Thunderbird reads
    // them; other readers show name=, or what header_parameter() did not
    // prefer, so each different name is kept too.
    part.filename = clean_filename(disposition_name.empty() ? type_name : disposition_name);
    if (!disposition_name.empty()) others.push_back(std::move(type_name));
    for (std::string& other : others) {
      if (other.empty()) continue;
      std::string name = clean_filename(std::move(other));
      if (name == part.filename || std::find(part.other_filenames.begin(), part.other_filenames.end(), name) !=
                                       part.other_filenames.end()) {
        continue;
      }
      if (part.other_filenames.size() + 1 >= kMaxNames) {
        return fail("a part with more than " + std::to_string(kMaxNames) + " different file names");
      }
      part.other_filenames.push_back(std::move(name));
    }
    const int depth = open_.depth;

    if (part.type.rfind("multipart/", 0) == 0) {
      std::string boundary = header_parameter(content_type, "boundary");
      if (!boundary.empty()) {
        if (depth >= kMaxDepth) return fail("parts nested deeper than " + std::to_string(kMaxDepth));
        Level l;
        l.delimiter = "--" + boundary;
        l.depth = depth;
        levels_.push_back(std::move(l));
        open_ = Open{};  // the preamble: not shown
        return;
      }
    }
    const bool message = part.type == "message/rfc822" || part.type == "message/global";
    if (!message && part.type.rfind("text/", 0) == 0 && part.disposition != "attachment") {
      open_.text = true;
      if (sh_.text_parts++ < sh_.text.text_parts_max) open_.capture = true;
      else sh_.out.text_whole = false;
    }
    const std::string encoding = part.transfer_encoding;
    if (part.type == "text/plain" && part.disposition != "attachment") open_.embedded = true;
    // Outlook reads winmail.dat by its type, Roundcube by its type or name.
    auto any_name = [&part](bool (*test)(std::string_view)) {
      return test(part.filename) || std::any_of(part.other_filenames.begin(), part.other_filenames.end(), test);
    };
    if (part.type == "application/ms-tnef" || part.type == "application/vnd.ms-tnef" || any_name(tnef_name)) {
      open_.tnef = std::make_unique<TnefReader>();
    } else if (archive_type(part.type) || any_name(archive_name)) {
      open_.archive = std::make_unique<ArchiveReader>(part.filename, &sh_.decompressed_left, &sh_.nested_files_left);
    }
    open_.text_encoding = encoding == "base64" ? 1 : encoding == "quoted-printable" ? 2 : 0;
    open_.index = sh_.out.parts.size();
    sh_.out.parts.push_back(std::move(part));
    // The parts of an attached message are shown by readers as well. RFC 2046
    // §5.2.1 forbids base64 and quoted-printable for message/rfc822; a reader
    // that decodes them anyway must not show what the rules never saw.
    if (!message) return;
    if (depth >= kMaxDepth) return fail("parts nested deeper than " + std::to_string(kMaxDepth));
    if (encoding == "base64" || encoding == "quoted-printable") {
      open_.base64 = encoding == "base64";
      open_.inner = std::make_unique<Reader>(sh_, depth + 1);
      return;
    }
    Level l;
    l.depth = depth;
    l.index = open_.index;
    l.body_start = body_start;
    levels_.push_back(std::move(l));
    open_part(depth + 1, body_start, true);
  }

  // Octets of the open part's body, in order.
  void body_bytes(std::string_view bytes) {
    if (open_.capture && !open_.cut) {
      std::string& body = sh_.out.parts[open_.index].body;
      const std::size_t take = std::min(bytes.size(), sh_.text_left);
      body.append(bytes.substr(0, take));
      sh_.text_left -= take;
      open_.cut = take < bytes.size();  // the budget is spent: kept cut, not whole
    }
    if (open_.embedded || open_.tnef || open_.archive) scan_bytes(bytes);
    if (!open_.inner) return;
    // The line break at the end is held back until more body comes: before
    // a delimiter it is the delimiter's, and the attached message ends
    // without it (RFC 2046 §5.1.1), as when its body is cut out whole.
    std::size_t hold = bytes.ends_with("\r\n") ? 2 : bytes.ends_with("\n") || bytes.ends_with("\r") ? 1 : 0;
    decoded_.clear();
    if (bytes == "\n" && open_.held == "\r") {
      open_.held = "\r\n";
      return;
    }
    const bool within = decode(open_, open_.held, decoded_) && decode(open_, bytes.substr(0, bytes.size() - hold), decoded_);
    open_.held = bytes.substr(bytes.size() - hold);
    if (!decoded_.empty()) open_.inner->feed(decoded_);
    if (!within) over_budget();
  }

  // Files embedded in a text/plain part's text, which mail readers list as
  // attachments: a uuencoded file, "begin 644 name" anywhere in a line
  // (Roundcube; Thunderbird at a line's start), and yEnc, a line that starts
  // "=ybegin " with "name=" (RFC-less, but read by news and mail readers).
  // The text is read line by line, each line's first kMaxLine octets,
  // whatever the pieces it comes in. A TNEF part's files are listed after
  // it too (mime_tnef.h).
  void scan_bytes(std::string_view bytes) {
    if (open_.text_encoding == 0) return scan_decoded(open_, bytes);
    text_decoded_.clear();
    if (open_.text_encoding == 1) open_.base64_decoder.feed(bytes, text_decoded_, static_cast<std::size_t>(-1));
    else open_.qp_decoder.feed(bytes, text_decoded_, static_cast<std::size_t>(-1));
    scan_decoded(open_, text_decoded_);
  }

  void scan_decoded(Open& o, std::string_view decoded) {
    if (o.tnef) {
      o.tnef->feed(decoded);
    } else if (o.archive) {
      o.archive->feed(decoded);
    } else {
      text_lines(o, decoded);
    }
  }

  void end_scan(Open& o) {
    if (o.text_encoding == 2) {
      text_decoded_.clear();
      o.qp_decoder.finish(text_decoded_, static_cast<std::size_t>(-1));
      scan_decoded(o, text_decoded_);
    }
    if (o.tnef) {
      o.tnef->finish();
      if (!o.tnef->problem().empty()) return fail(o.tnef->problem());
      for (const std::string& name : o.tnef->names()) embedded_file(name, "x-tnef");
      return;
    }
    if (o.archive) {
      ArchiveReader& a = *o.archive;
      a.finish();
      if (a.over_budget() && sh_.decompress_limited) sh_.out.decompression_limited = true;
      if (!a.problem().empty()) return fail(a.problem());
      archive_files(o, a.files());
      return;
    }
    if (o.in_line) embedded_line(o.line);
    o.line.clear();
    o.in_line = false;
  }

  void text_lines(Open& o, std::string_view text) {
    while (!text.empty() && sh_.out.problem.empty()) {
      if (!o.in_line) {
        // Whole lines without "begin " (which "=ybegin " holds too) hold no
        // file: skipped at once, up to the line of the next one.
        const std::size_t marker = std::min(text.find("begin "), text.size());
        const std::size_t nl = marker == 0 ? std::string_view::npos : text.rfind('\n', marker - 1);
        if (nl != std::string_view::npos) text.remove_prefix(nl + 1);
        if (text.empty()) return;
      }
      const std::size_t nl = text.find('\n');
      const std::string_view piece = text.substr(0, nl);
      text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
      if (!o.in_line && nl != std::string_view::npos) {
        embedded_line(piece.substr(0, kMaxLine));  // the common case: a whole line, read in place
        continue;
      }
      if (o.line.size() < kMaxLine) o.line.append(piece.substr(0, kMaxLine - o.line.size()));
      o.in_line = true;
      if (nl != std::string_view::npos) {
        embedded_line(o.line);
        o.line.clear();
        o.in_line = false;
      }
    }
  }

  void embedded_line(std::string_view line) {
    while (!line.empty() && ascii::is_space(line.back())) line.remove_suffix(1);
    if (line.starts_with("=ybegin ")) {
      const std::size_t name = line.find(" name=");
      if (name != std::string_view::npos) return embedded_file(line.substr(name + 6), "x-yenc");
    }
    for (std::size_t at = line.find("begin "); at != std::string_view::npos; at = line.find("begin ", at + 1)) {
      std::size_t i = at + 6;
      std::size_t digits = 0;
      while (i < line.size() && line[i] >= '0' && line[i] <= '7') ++i, ++digits;
      if (digits < 3 || digits > 4 || i == line.size() || (line[i] != ' ' && line[i] != '\t')) continue;
      return embedded_file(line.substr(i), "x-uuencode");
    }
  }

  // The files of an archive, after it: they do not count toward
  // kMaxParts (an archive of photos holds thousands), but toward
  // kMaxArchiveFiles in the whole message.
  void archive_files(const Open& o, const std::vector<ArchiveFile>& files) {
    if (files.size() > kMaxArchiveFiles - sh_.archive_files) {
      return fail("archives of more than " + std::to_string(kMaxArchiveFiles) + " files in all");
    }
    sh_.archive_files += files.size();
    const std::string archive = sh_.out.parts[o.index].filename;  // a copy: parts grows below
    for (const ArchiveFile& file : files) {
      list_file(file.name, file.encoding, file.archive.empty() ? archive : file.archive);
      sh_.out.parts.back().unopened = file.unopened;
    }
  }

  // A file embedded in text or held in a TNEF part: one of the parts.
  void embedded_file(std::string_view name, const char* encoding) {
    name = ascii::trim(name);
    if (name.empty()) return;
    if (sh_.out.parts.size() - sh_.archive_files >= kMaxParts) return fail("more than " + std::to_string(kMaxParts) + " parts");
    list_file(name, encoding, {});
  }

  // A file a reader shows from inside the part just read, listed after it.
  void list_file(std::string_view name, const char* encoding, const std::string& archive) {
    Part part;
    part.type = "application/octet-stream";
    part.transfer_encoding = encoding;
    part.disposition = "attachment";
    part.filename = clean_filename(std::string(name));
    part.archive = archive;
    sh_.out.parts.push_back(std::move(part));
  }

  // Decoded attached messages come to at most kDecodedFactor times the
  // message in all, so nesting cannot multiply the work. Decodes `encoded`
  // up to what is left of it (the same octets however the message is fed);
  // false when that cut it.
  bool decode(Open& o, std::string_view encoded, std::string& out) {
    const bool within = encoded.size() <= sh_.decoded_left;
    encoded = encoded.substr(0, sh_.decoded_left);
    sh_.decoded_left -= encoded.size();
    if (o.base64) o.base64_decoder.feed(encoded, out, static_cast<std::size_t>(-1));
    else o.qp_decoder.feed(encoded, out, static_cast<std::size_t>(-1));
    return within;
  }

  void over_budget() {
    fail("encoded attached messages nested past " + std::to_string(kDecodedFactor) + " times the message's size");
  }

  // A line longer than kMaxLine: its first kMaxLine octets are in carry_.
  // A delimiter or a Content-* field that long is a problem (readers may cut
  // it differently); another header line is skipped; a body line is body.
  void start_long_line() {
    long_line_ = true;
    long_length_ = carry_.size();
    if (match(carry_) != std::string_view::npos) {
      return fail("a boundary delimiter line longer than " + std::to_string(kMaxLine) + " octets");
    }
    if (!open_.active) return;
    if (open_.in_header) {
      std::string_view content = carry_;
      const std::size_t colon = content.find(':');
      if (content[0] == ' ' || content[0] == '\t') {
        if (open_.field >= 0) return fail(std::string(PartHeader::kNames[static_cast<std::size_t>(open_.field)]) +
                                          " field longer than " + std::to_string(kMaxFieldValue) + " octets");
        return;
      }
      if (colon != std::string_view::npos) {
        finish_field(open_.header, open_.field, open_.value);
        open_.field = -1;
        std::string name = ascii::to_lower(ascii::trim(content.substr(0, colon)));
        for (std::string_view known : PartHeader::kNames) {
          if (name == known) return fail(std::string(known) + " field longer than " + std::to_string(kMaxFieldValue) + " octets");
        }
        return;
      }
      finish_field(open_.header, open_.field, open_.value);
      open_.field = -1;
      finish_header(pos_);  // not a field: the body starts here, and the line is read again in it
      if (sh_.out.problem.empty()) start_long_line();
      return;
    }
    body_bytes(carry_);
  }

  void end_long_line() {
    long_line_ = false;
    pos_ += long_length_;
    prev_break_ = last_break_;
    carry_.clear();
  }

  Shared& sh_;
  std::vector<Level> levels_;
  Open open_;
  std::size_t pos_ = 0;         // stream offset of the line being read
  std::size_t prev_break_ = 0;  // octets of the previous line's line end
  std::string carry_;           // a line split across feed() calls, at most kMaxLine octets
  bool long_line_ = false;      // reading past kMaxLine octets of a line
  std::size_t long_length_ = 0;
  std::size_t last_break_ = 0;  // of the long line, once read
  bool last_cr_ = false;        // the long line's last octet read is a CR
  std::string decoded_;         // scratch for an attached message's decoded octets
  std::string text_decoded_;    // scratch for a text part's decoded text
};

}  // namespace

struct StructureReader::State {
  Shared shared;
  std::unique_ptr<Reader> reader;
};

StructureReader::StructureReader(std::size_t message_size, TextBudget budget, std::size_t decompress_limit)
    : state_(std::make_unique<State>()) {
  state_->shared.decoded_left = kDecodedFactor * message_size;
  state_->shared.decompressed_left = std::min(decompression_budget(message_size), decompress_limit);
  state_->shared.decompress_limited = decompress_limit < decompression_budget(message_size);
  state_->shared.text = budget;
  state_->shared.text_left = budget.text_limit;
  state_->reader = std::make_unique<Reader>(state_->shared, 0);
}

StructureReader::~StructureReader() = default;

void StructureReader::feed(std::string_view data) { state_->reader->feed(data); }

void StructureReader::fail(std::string why) {
  if (state_->shared.out.problem.empty()) state_->shared.out.problem = std::move(why);
}

Structure StructureReader::finish() {
  state_->reader->finish();
  return std::move(state_->shared.out);
}

Structure read_structure(std::string_view message, TextBudget budget) {
  StructureReader r(message.size(), budget);
  r.feed(message);
  return r.finish();
}

}  // namespace postern::mime
