// The MIME structure of a message as the rule API shows it; see mime.h.
// Read as a mail reader reads it (RFC 2046 §5.1.1 delimiters, first field
// wins), and where readers may disagree (two different Content-Type fields)
// or a limit cuts the walk short, Structure::problem says so rather than a
// list that silently misses a part the recipient sees.
#include "filters/lua/mime.h"

#include <array>
#include <memory>

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

// Reads the header of `text` (a part or a message); `body` is what follows
// the empty line (or the first line that is no field); no empty line = all header.
PartHeader read_header(std::string_view text, std::string_view& body) {
  PartHeader h;
  body = {};
  int current = -1;  // index into kNames of the field being unfolded, -1 for another field
  std::string value;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t eol = text.find('\n', pos);
    std::size_t next = eol == std::string_view::npos ? text.size() : eol + 1;
    std::string_view content = without_line_end(text.substr(pos, next - pos));
    if (content.empty()) {
      body = text.substr(next);
      break;
    }
    if (content[0] == ' ' || content[0] == '\t') {  // folded (RFC 5322 §2.2.3, obsolete folding too)
      if (current >= 0 && value.size() <= kMaxFieldValue) value.append(content.substr(0, kMaxFieldValue + 1 - value.size()));
      pos = next;
      continue;
    }
    std::size_t colon = content.find(':');
    if (colon == std::string_view::npos) {  // not a field: the body starts here
      body = text.substr(pos);
      break;
    }
    finish_field(h, current, value);
    current = -1;
    std::string name = ascii::to_lower(ascii::trim(content.substr(0, colon)));
    for (std::size_t i = 0; i < PartHeader::kNames.size(); ++i) {
      if (name == PartHeader::kNames[i]) current = static_cast<int>(i);
    }
    if (current >= 0) value = std::string(content.substr(colon + 1, kMaxFieldValue + 1));
    pos = next;
  }
  finish_field(h, current, value);
  return h;
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
  std::string head = decoded.substr(0, kMaxFilename / 2);
  cut_utf8(head, kMaxFilename / 2);
  std::size_t from = decoded.size() - kMaxFilename / 2;
  while (from < decoded.size() && (static_cast<unsigned char>(decoded[from]) & 0xC0) == 0x80) ++from;
  return head + decoded.substr(from);
}

class Walker {
 public:
  explicit Walker(std::size_t decoded_budget) : decoded_left_(decoded_budget) {}

  Structure out;

  void collect(std::string_view text, int depth) {
    if (!out.problem.empty()) return;
    if (out.parts.size() >= kMaxParts) {
      out.problem = "more than " + std::to_string(kMaxParts) + " parts";
      return;
    }
    std::string_view body;
    PartHeader h = read_header(text, body);
    if (!h.problem.empty()) {
      out.problem = std::move(h.problem);
      return;
    }
    Part part;
    std::string content_type;
    if (const std::string* v = h.get(0)) {
      content_type = strip_comments(*v);
      std::string type = media_type(content_type);
      if (type.find('/') != std::string::npos) part.type = type;
      part.charset = ascii::to_lower(ascii::trim(header_parameter(content_type, "charset")));
      part.filename = header_parameter(content_type, "name");
    }
    if (const std::string* v = h.get(2)) part.transfer_encoding = ascii::to_lower(ascii::trim(strip_comments(*v)));
    if (const std::string* v = h.get(1)) {
      std::string disposition = strip_comments(*v);
      part.disposition = ascii::to_lower(ascii::trim(std::string_view(disposition).substr(0, disposition.find(';'))));
      std::string name = header_parameter(disposition, "filename");
      if (!name.empty()) part.filename = std::move(name);  // RFC 2183 §2.3 over Content-Type name=
    }
    part.filename = clean_filename(std::move(part.filename));

    if (part.type.rfind("multipart/", 0) == 0) {
      std::string boundary = header_parameter(content_type, "boundary");
      if (!boundary.empty()) {
        if (depth >= kMaxDepth) {
          out.problem = "parts nested deeper than " + std::to_string(kMaxDepth);
          return;
        }
        split_multipart(body, "--" + boundary, depth);
        return;
      }
    }
    part.body = body;
    const bool message = part.type == "message/rfc822" || part.type == "message/global";
    const std::string encoding = part.transfer_encoding;
    out.parts.push_back(std::move(part));
    // The parts of an attached message are shown by readers as well. RFC 2046
    // §5.2.1 forbids base64 and quoted-printable for message/rfc822; a reader
    // that decodes them anyway must not show what the rules never saw.
    if (!message) return;
    if (depth >= kMaxDepth) {
      out.problem = "parts nested deeper than " + std::to_string(kMaxDepth);
      return;
    }
    if (encoding != "base64" && encoding != "quoted-printable") {
      collect(body, depth + 1);
      return;
    }
    // Decoded messages are kept (the parts are views into them) up to
    // kDecodedFactor times the scanned message in all, so nesting cannot
    // multiply the memory.
    if (body.size() > decoded_left_) {
      out.problem = "encoded attached messages nested past " + std::to_string(kDecodedFactor) + " times the message's size";
      return;
    }
    auto decoded = std::make_unique<std::string>(encoding == "base64" ? decode_base64(body, body.size())
                                                                      : decode_quoted_printable(body, body.size()));
    decoded_left_ -= body.size();
    out.decoded.push_back(std::move(decoded));
    collect(*out.decoded.back(), depth + 1);
  }

 private:
  // RFC 2046 §5.1.1: a delimiter line is "--boundary" at the start of a
  // line, then only white space (transport padding); "--boundary--" closes.
  // A line that merely starts with the delimiter ("--boundary--x",
  // "--boundaryX") is body text to a mail reader, and so it is here.
  void split_multipart(std::string_view body, const std::string& delimiter, int depth) {
    std::size_t pos = 0;
    std::size_t part_start = std::string_view::npos;
    while (pos < body.size() && out.problem.empty()) {
      std::size_t eol = body.find('\n', pos);
      std::size_t next = eol == std::string_view::npos ? body.size() : eol + 1;
      std::string_view line = body.substr(pos, next - pos);
      while (!line.empty() && ascii::is_space(line.back())) line.remove_suffix(1);
      std::string_view rest = line.substr(std::min(line.size(), delimiter.size()));
      if (line.size() >= delimiter.size() && line.compare(0, delimiter.size(), delimiter) == 0 &&
          (rest.empty() || rest == "--")) {
        if (part_start != std::string_view::npos) {
          // The line break before a delimiter belongs to it (RFC 2046 §5.1.1).
          std::string_view inner = body.substr(part_start, pos - part_start);
          if (!inner.empty() && inner.back() == '\n') inner.remove_suffix(1);
          if (!inner.empty() && inner.back() == '\r') inner.remove_suffix(1);
          collect(inner, depth + 1);
        }
        if (rest == "--") return;  // close-delimiter; the epilogue is not shown
        part_start = next;
      }
      pos = next;
    }
    if (part_start != std::string_view::npos && part_start < body.size()) {
      collect(body.substr(part_start), depth + 1);  // no close-delimiter: readers show the last part
    }
  }

  std::size_t decoded_left_;  // octets attached messages may still decode to
};

}  // namespace

Structure read_structure(std::string_view message) {
  Walker w(kDecodedFactor * message.size());
  w.collect(message, 0);
  return std::move(w.out);
}

}  // namespace postern::mime
