// Base64 (RFC 4648 §4) through OpenSSL's encoder, for every writer of it:
// DKIM key records, ARC signatures, the DMARC report's gzip attachment.
// I/O-free, header-only.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <openssl/evp.h>

namespace postern {

// `wrap` > 0: lines of at most that many characters, each ended by CRLF
// (MIME, RFC 2045 §6.8: 76); 0: one line, no CRLF.
inline std::string base64_encode(std::string_view data, std::size_t wrap = 0) {
  std::string out(4 * ((data.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(data.data()), static_cast<int>(data.size()));
  out.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  if (wrap == 0) return out;
  std::string lines;
  lines.reserve(out.size() + 2 * (out.size() / wrap + 1));
  for (std::size_t i = 0; i < out.size(); i += wrap) lines.append(out, i, wrap).append("\r\n");
  return lines;
}

}  // namespace postern
