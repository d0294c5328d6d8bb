// ARC (RFC 8617) header fields read one way for the verifier, the sealer and
// the fuzz target: the instance of each ARC header field, the ARC sets they
// form (§4.2, §5.2 steps 1-3), and the octets an ARC-Message-Signature or an
// ARC-Seal signs (§4.1.2, §4.1.3, with RFC 6376 §3.4 canonicalization and
// §3.7's b= removal). Pure text, no DNS, no cryptography: I/O-free and
// bounded by the header section it is given.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "filters/message.h"

namespace postern {

// §4.2.1: at most 50 ARC sets; a 51st makes the chain fail.
constexpr unsigned kArcMaxSets = 50;
// Fields one ARC-Message-Signature h= may list (real ones list 10-30);
// beyond, the AMS fails. Keeps the work per AMS linear in the header section.
constexpr std::size_t kArcMaxSignedFields = 200;

enum class ArcFieldKind { kAar, kAms, kSeal };

// The kind of an ARC header field by name (case-insensitive); nullopt for
// any other field.
std::optional<ArcFieldKind> arc_field_kind(std::string_view name);

// The instance (i=, 1..50) of an ARC header field value (unfolded): the
// leading "i=N;" of an ARC-Authentication-Results (§4.1.1), the i= tag of an
// ARC-Message-Signature or ARC-Seal (tag-list, RFC 6376 §3.2). nullopt when
// absent, malformed, out of range or the tag-list is invalid.
std::optional<unsigned> arc_instance(ArcFieldKind kind, std::string_view value);

// The ARC sets of a header section, in instance order (sets[0] is i=1):
// {AAR, AMS, AS} of each. `error` says why there is no valid structure (§5.2
// steps 1-3: a field without a valid instance, a duplicate or missing member,
// a gap in the numbering, more than kArcMaxSets, cv= not none at i=1 or not
// pass later, a cv=fail anywhere); then `sets` is empty, and the chain fails.
// No ARC field at all: sets empty and error empty (the result is none).
struct ArcStructure {
  std::vector<std::array<const HeaderField*, 3>> sets;
  std::string error;
  std::size_t fields = 0;  // ARC header fields seen
};
ArcStructure arc_structure(const std::vector<HeaderField>& headers);

// RFC 6376 §3.4.2 relaxed header canonicalization of one field, with CRLF.
std::string relaxed_header(std::string_view name, std::string_view raw);
// The field `raw` ("Name: value\r\n") with the value of its b= tag removed
// (RFC 6376 §3.7), everything else as is.
std::string without_b_value(std::string_view raw);

// The octets the ARC-Message-Signature `ams` signs: the fields its h= names,
// chosen bottom-up from `headers` (RFC 6376 §5.4.2), then `ams` itself
// without b= and without its final CRLF, in its c= header canonicalization.
// nullopt when the tag-list is invalid, h= names ARC-Seal (§4.1.2) or more
// than kArcMaxSignedFields fields.
std::optional<std::string> ams_signed_octets(const std::vector<HeaderField>& headers, const HeaderField& ams);

// The octets the ARC-Seal of set `upto` (1-based) signs: every ARC field of
// sets 1..upto in the order AAR, AMS, AS, relaxed, the last (this seal)
// without b= and without its final CRLF (§5.1.1 / §5.2 step 6).
std::string seal_signed_octets(const std::vector<std::array<const HeaderField*, 3>>& sets, std::size_t upto);

// The header fields of a header block as a sealer sees it ("Name: v\r\n
// \tmore\r\n...", the empty line and what follows ignored).
std::vector<HeaderField> split_header_block(std::string_view block);

// One resinfo of an ARC-Authentication-Results / Authentication-Results
// payload (RFC 8601 §2.2): method, result and the ptype.property values.
struct AuthResInfo {
  std::string method;  // lower case: "spf", "dkim", "dmarc", "arc"
  std::string result;  // lower case
  std::vector<std::pair<std::string, std::string>> props;  // ("header.d", "example.com"), names lower case
};
// The resinfos after the authserv-id of `payload` (an AAR value with or
// without its "i=N;"), comments dropped; at most 64.
std::vector<AuthResInfo> parse_auth_res(std::string_view payload);

}  // namespace postern
