// Fuzz target: DkimBodyHash (filters/dkim/dkim_body_hash.h), postern's own
// DKIM body canonicalization. The input is a message body; the first octet
// picks the canonicalization and digest, the rest of the choices (chunk cuts)
// derive from the input too.
//
// Asserts, for simple and relaxed:
//  - the hash is the same whether the body arrives whole, one octet per
//    update, or in random chunks;
//  - it equals the hash of a reference canonicalization written the plain
//    way from RFC 6376 §3.4.3/§3.4.4 (split at CRLF, rewrite each line, drop
//    the trailing empty lines, one CRLF per line; a lone CR or LF is an
//    ordinary octet);
//  - length() is the reference's length.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <openssl/evp.h>

#include "filters/dkim/dkim_body_hash.h"
#include "fuzz_util.h"

using postern::DkimBodyCanon;
using postern::DkimBodyHash;
using postern::DkimHash;
using postern::fuzz::Choices;

namespace {

std::string reference(std::string_view body, DkimBodyCanon canon) {
  std::vector<std::string> lines;
  std::size_t pos = 0;
  for (;;) {
    std::size_t eol = body.find("\r\n", pos);
    if (eol == std::string_view::npos) break;
    lines.emplace_back(body.substr(pos, eol - pos));
    pos = eol + 2;
  }
  std::string last(body.substr(pos));  // after the last CRLF: a line without one
  if (!last.empty()) lines.push_back(last);
  if (canon == DkimBodyCanon::kRelaxed) {
    for (std::string& line : lines) {
      std::string out;
      bool space = false;
      for (char c : line) {
        if (c == ' ' || c == '\t') {
          space = true;
          continue;
        }
        if (space) out.push_back(' ');
        space = false;
        out.push_back(c);
      }
      line = out;  // white space at the end of the line is gone
    }
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  std::string canonical;
  for (const std::string& line : lines) canonical += line + "\r\n";
  if (canon == DkimBodyCanon::kSimple && canonical.empty()) canonical = "\r\n";
  return canonical;
}

std::string b64_digest(const std::string& data, DkimHash hash) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, hash == DkimHash::kSha1 ? EVP_sha1() : EVP_sha256(), nullptr);
  std::string out(4 * ((len + 2) / 3) + 1, '\0');
  out.resize(static_cast<std::size_t>(
      EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), md, static_cast<int>(len))));
  return out;
}

struct Hashed {
  std::string base64;
  std::uint64_t length;
};

Hashed run(std::string_view body, DkimBodyCanon canon, DkimHash hash, const std::vector<std::size_t>& cuts) {
  DkimBodyHash h(canon, hash);
  std::size_t at = 0;
  for (std::size_t cut : cuts) {
    h.update(body.substr(at, cut - at));
    at = cut;
  }
  h.update(body.substr(at));
  h.finish();
  return {h.base64(), h.length()};
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const DkimBodyCanon canon = data[0] & 1 ? DkimBodyCanon::kRelaxed : DkimBodyCanon::kSimple;
  const DkimHash hash = data[0] & 2 ? DkimHash::kSha1 : DkimHash::kSha256;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);

  const Hashed whole = run(body, canon, hash, {});
  const std::string want = reference(body, canon);
  FUZZ_CHECK(whole.base64 == b64_digest(want, hash), "  body:      \"" + postern::fuzz::escape(body) +
                                                        "\"\n  reference: \"" + postern::fuzz::escape(want) + "\"");
  FUZZ_CHECK(whole.length == want.size(), "  length " + std::to_string(whole.length) + ", reference " +
                                              std::to_string(want.size()));

  std::vector<std::size_t> every;
  for (std::size_t i = 1; i < body.size(); ++i) every.push_back(i);
  FUZZ_CHECK(run(body, canon, hash, every).base64 == whole.base64,
             "  one octet per update differs; body: \"" + postern::fuzz::escape(body) + "\"");

  Choices choices(body);
  std::vector<std::size_t> cuts;
  for (std::size_t at = 0; at < body.size();) {
    at += choices.range(1, 64);
    if (at < body.size()) cuts.push_back(at);
  }
  FUZZ_CHECK(run(body, canon, hash, cuts).base64 == whole.base64,
             "  random chunks differ; body: \"" + postern::fuzz::escape(body) + "\"");
  return 0;
}
