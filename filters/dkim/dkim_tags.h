// DKIM tag-lists (RFC 6376 §3.2) read one way for every consumer: the
// DKIM-Signature values (verification, the streaming body hash, the key
// names looked up beforehand) and the key records. Also the checks of a
// signature and of its key that libopendkim does not make (RFC 6376, 8301,
// 8463): with them a signature is not "pass", whichever path verified it.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace postern {

struct DkimTag {
  std::string_view name;   // as written, without white space
  std::string_view value;  // white space around it removed; inner FWS kept
};

// The tags of `list`; nullopt when it is not a tag-list: a tag without "=",
// a name that is not ALPHA *(ALPHA / DIGIT / "_"), or a name that occurs
// twice ("the entire tag-list is invalid", §3.2).
std::optional<std::vector<DkimTag>> parse_dkim_tag_list(std::string_view list);

// The value of tag `name` (case-sensitive, §3.2) with all white space
// removed; "" when absent or when the list is invalid.
std::string dkim_tag_value(std::string_view list, std::string_view name);
// The same from a list parsed once, for a caller that reads several tags.
std::string dkim_tag_value(const std::vector<DkimTag>& tags, std::string_view name);

// Why a DKIM-Signature field value cannot pass whatever its cryptography
// says: an invalid tag-list (duplicated tag), b= or bh= not base64, a q=
// without dns/txt, v= other than 1. "" when none of these.
std::string dkim_signature_problem(std::string_view signature_value);
// The same from the value's tag-list parsed once (nullopt: not a tag-list).
std::string dkim_signature_problem(const std::optional<std::vector<DkimTag>>& tags);

// Whether tag `name` is present and its value, white space removed, starts
// with `prefix` (read in place; dkim_tag_value would copy the whole value).
bool dkim_tag_starts_with(const std::vector<DkimTag>& tags, std::string_view name, std::string_view prefix);

// Why the key record cannot verify that signature: an invalid tag-list, v=
// not DKIM1, k= not matching a= (RFC 8463 §3), s= without email, t=s with
// an i= in a subdomain of d= (§3.6.1). `algorithm`, `domain` and
// `identity` are the signature's a=, d= and i=. "" when usable.
std::string dkim_key_problem(std::string_view key_record, std::string_view algorithm, std::string_view domain,
                             std::string_view identity);

}  // namespace postern
