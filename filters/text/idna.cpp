// See idna.h.
#include "filters/text/idna.h"

#include <idn2.h>

#include <algorithm>

#include "filters/text/ascii.h"

namespace postern {

std::optional<std::string> domain_a_labels(std::string_view domain) {
  std::string d = ascii::domain_key(domain);
  if (std::none_of(d.begin(), d.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; })) return d;
  // The limit is on the A-labels (a U-label is longer or shorter than its
  // A-label); the input is bounded only so a hostile one costs little.
  char* converted = nullptr;
  if (d.size() > 1024 || idn2_to_ascii_8z(d.c_str(), &converted, IDN2_NONTRANSITIONAL) != IDN2_OK || !converted) {
    return std::nullopt;
  }
  std::string out = ascii::domain_key(converted);
  idn2_free(converted);
  if (out.size() > 253) return std::nullopt;
  return out;
}

}  // namespace postern
