// The MIME reading rules need (RFC 2045-2047, 2231): encoded-word decoding of
// header values, base64 and quoted-printable bodies, and the leaf parts of a
// multipart message with their type, charset and file name. I/O-free; every
// output is bounded by the caller's limit and bad input never throws.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace postern::mime {

// A header value with its RFC 2047 encoded-words decoded and converted to
// UTF-8 (undecodable words stay as written); cut at `limit` octets.
std::string decode_header_value(std::string_view value, std::size_t limit);

std::string decode_base64(std::string_view in, std::size_t limit);
std::string decode_quoted_printable(std::string_view in, std::size_t limit);
// Converts `text` in `charset` to UTF-8; returns `text` unchanged when the
// charset is unknown, already UTF-8/ASCII, or the text does not convert.
std::string to_utf8(std::string_view charset, std::string_view text);

// The value of parameter `name` of a structured field such as
// Content-Type ("text/plain; charset=utf-8"); RFC 2231 "name*=" too.
std::string header_parameter(std::string_view field_value, std::string_view name);

struct Part {
  std::string type = "text/plain";  // lower case "type/subtype"
  std::string charset;              // lower case; may be empty
  std::string transfer_encoding;    // lower case: "base64", "quoted-printable", ...
  std::string disposition;          // lower case: "attachment", "inline" or empty
  std::string filename;             // from Content-Disposition or Content-Type name=
  std::string_view body;            // encoded body, a view into the scanned text
};

// The leaf parts of `message` (a whole message with CRLF or LF line ends),
// depth first, at most `max_parts`, nesting at most 16 deep.
std::vector<Part> leaf_parts(std::string_view message, std::size_t max_parts);

// The part's body decoded from its transfer encoding and converted to UTF-8.
std::string decoded_text(const Part& part, std::size_t limit);

}  // namespace postern::mime
