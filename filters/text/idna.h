// Internationalized domain names (IDNA2008, RFC 5891) as the DNS knows them.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace postern {

// A domain as a comparison key and a DNS name: an ASCII name lower-cased
// without the root's dot (ascii::domain_key); one with U-labels (UTF-8) as
// its A-labels, through libidn2's non-transitional UTS #46 processing (the
// mapping that folds case, NFC), lower-cased. Nothing when it is not valid
// IDNA or, as A-labels, longer than a DNS name can be (253 octets).
std::optional<std::string> domain_a_labels(std::string_view domain);

}  // namespace postern
