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
  std::string name;  // as written
  std::string raw;   // the whole field as received: "Name: value\r\n\tmore\r\n"
  // The value unfolded (CRLF before white space removed), leading space trimmed.
  std::string value() const;
};

class Message {
 public:
  // Header blocks beyond this are not parsed (the rest is treated as body).
  static constexpr std::size_t kMaxHeaderBlock = 1024 * 1024;
  static constexpr std::size_t kMaxHeaderFields = 10000;

  // Parses the header section at the start of `spool` (which must be finished).
  explicit Message(const Spool& spool);

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
  // True when the header section was cut at kMaxHeaderBlock / kMaxHeaderFields.
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
