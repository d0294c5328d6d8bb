// The message model filters see: the header fields parsed from the start of
// the spooled content (RFC 5322 §2.2), the body's place in the spool, and the
// rendering of the header block with a filter's edits applied.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "filters/spool.h"

namespace postern {

struct Changes;

struct HeaderField {
  std::string name;  // as written, without the white space an obsolete "Name :" has before the colon
  std::string raw;   // the whole field as received: "Name: value\r\n\tmore\r\n"
  // The value unfolded (CRLF before white space removed), leading space trimmed.
  std::string value() const;
};

// The bounds of the header section (RFC 5322 §2.2): its octets up to the
// empty line, and its number of fields. Beyond either the message is refused
// (552 5.3.4), never relayed with fields nobody read. The defaults are far
// above real mail (Postfix's header_size_limit is 100 kB) and are the
// configuration's ([limits] header_section_size / header_fields).
struct HeaderLimits {
  static constexpr std::size_t kDefaultBytes = 1024 * 1024;
  static constexpr std::size_t kDefaultFields = 10000;
  std::size_t max_bytes = kDefaultBytes;
  std::size_t max_fields = kDefaultFields;
  // For a header block postern composed itself (signing): no bound.
  static HeaderLimits unbounded() { return {~std::size_t(0) >> 1, ~std::size_t(0) >> 1}; }
};

// The length of the field name at the start of `line` when the line starts a
// header field: ftext (RFC 5322 §3.6.8: printable US-ASCII but ':'), then
// optional WSP before the colon (obsolete syntax, §4.5.3, which receivers must
// accept; Postfix does). 0 when it is not a field. `*colon` gets the colon's
// offset.
std::size_t header_field_name_length(std::string_view line, std::size_t* colon = nullptr);

// `name: value` folded (RFC 5322 §2.2.3) at white space so that lines stay
// within `soft` (78) octets where the value allows and never exceed 998 octets: a run
// of more than 990 octets without white space is broken with CRLF SP (it
// then reads back with one added space, the price of staying a valid
// field). Ends with CRLF. Every field postern writes goes through here,
// whatever part of the value the client controls.
std::string fold_header_field(std::string_view name, std::string_view value, std::size_t soft = 78);

class Message {
 public:
  // The default bounds (HeaderLimits); DkimStream buffers at most this.
  static constexpr std::size_t kMaxHeaderBlock = HeaderLimits::kDefaultBytes;
  static constexpr std::size_t kMaxHeaderFields = HeaderLimits::kDefaultFields;

  // Parses the header section at the start of `spool` (which must be finished).
  explicit Message(const Spool& spool, HeaderLimits limits = {});

  const Spool& spool() const { return *spool_; }
  std::size_t size() const { return spool_->size(); }
  const std::vector<HeaderField>& headers() const { return headers_; }
  // Offset in the spool of the first body octet (after the empty line).
  std::size_t body_offset() const { return body_offset_; }
  // True when the body begins right where postern's own fields end and starts
  // with white space: relayed as is, its first line would fold into the last
  // field postern writes. Rendering then adds the empty line that makes the
  // MTA see what the filters saw: no more header fields.
  bool body_would_fold() const;
  // True when the header section is over its limits (HeaderLimits): then
  // headers() holds only the fields before the limit, and the message must
  // be refused, not relayed (DESIGN "What nobody checked is not relayed").
  bool headers_truncated() const { return truncated_; }

  // Unfolded value of the first field named `name` (case-insensitive).
  std::optional<std::string> first(std::string_view name) const;
  std::vector<std::string> all(std::string_view name) const;

 private:
  const Spool* spool_;
  std::vector<HeaderField> headers_;
  std::size_t header_end_ = 0;  // offset just after the last field (before the empty line)
  std::size_t body_offset_ = 0;
  bool truncated_ = false;

  friend std::string render_header_block(const Message&, const Changes&, std::string_view);
};

// The header section to relay: `trace` (postern's Received) first, then the
// message's fields with `changes` applied, then the rest of what preceded the
// body (the empty line). The relay sends this followed by the spool from
// message.body_offset()... minus nothing: the returned text ends where the
// body starts.
std::string render_header_block(const Message& message, const Changes& changes,
                                 std::string_view trace);

bool header_name_equals(std::string_view a, std::string_view b);

}  // namespace postern
