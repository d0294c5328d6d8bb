// UTF-8 well-formedness (RFC 3629 §4), shared by the audit log writer,
// its reader and the report.
#pragma once

#include <cstddef>
#include <string_view>

namespace postern {

// Length of the well-formed UTF-8 sequence at s[i] (RFC 3629 §4: no
// overlongs, no surrogates, nothing past U+10FFFF); 0 when ill-formed or ASCII.
std::size_t utf8_sequence_length(std::string_view s, std::size_t i);

// True when every octet of `s` is ASCII or part of a well-formed UTF-8
// sequence (RFC 3629 §4): no overlong form, surrogate, code point past
// U+10FFFF, lone continuation octet or truncated sequence.
bool valid_utf8(std::string_view s);

}  // namespace postern
