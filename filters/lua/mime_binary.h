// Little-endian integers in the binary formats the structure reader looks
// into (TNEF, ZIP). The caller has checked that the octets are there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace postern::mime {

inline std::uint64_t little_endian(std::string_view data, std::size_t at, int octets) {
  std::uint64_t v = 0;
  for (int i = octets - 1; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(data[at + static_cast<std::size_t>(i)]);
  return v;
}

}  // namespace postern::mime
