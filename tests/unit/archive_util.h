// For the unit tests that build archives: raw deflate (a ZIP file's data),
// gzip with an optional stored file name, a tar header's checksum.
#pragma once

#include <zlib.h>

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstring>
#include <string>

namespace postern::test {

// `data` deflated with zlib's `window_bits` (-15 raw, 16 + 15 gzip), the
// gzip header naming `name` when given.
inline std::string deflated(const std::string& data, int window_bits, const char* name = nullptr) {
  z_stream z{};
  REQUIRE(deflateInit2(&z, 6, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  gz_header h{};
  if (name) {
    h.name = reinterpret_cast<Bytef*>(const_cast<char*>(name));
    deflateSetHeader(&z, &h);
  }
  std::string out(deflateBound(&z, data.size()) + 64 + (name ? std::strlen(name) : 0), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&z, Z_FINISH) == Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

inline std::string gzip(const std::string& data, const char* name = nullptr) {
  return deflated(data, 16 + MAX_WBITS, name);
}

// Sets a 512-octet tar header's checksum field from its octets.
inline void set_tar_checksum(std::string& b) {
  b.replace(148, 8, "        ");
  unsigned sum = 0;
  for (unsigned char c : b) sum += c;
  char digits[8];
  std::snprintf(digits, sizeof digits, "%06o", sum);
  b.replace(148, 7, std::string(digits, 6) + '\0');
}

}  // namespace postern::test
