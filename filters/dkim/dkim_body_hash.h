// DKIM body hashes (RFC 6376 §3.7) over the body as it streams in: the
// "simple" (§3.4.3) and "relaxed" (§3.4.4) body canonicalizations in one
// pass with no per-octet calls, fed to OpenSSL's SHA-1/SHA-256 in blocks.
//
// Why not libopendkim's: its canonicalizer appends the body to a buffer one
// octet per function call (its cost: bench/README.md). libopendkim still
// parses the signatures, fetches the keys and checks every header signature;
// the body hash it would compare is this one (DkimVerifier::finish).
// Signatures with l= keep libopendkim's own body pass (DkimStream decides per
// message).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace postern {

enum class DkimBodyCanon { kSimple, kRelaxed };
enum class DkimHash { kSha1, kSha256 };

// One canonicalization and digest over the whole body.
class DkimBodyHash {
 public:
  DkimBodyHash(DkimBodyCanon canon, DkimHash hash);
  ~DkimBodyHash();
  DkimBodyHash(const DkimBodyHash&) = delete;
  DkimBodyHash& operator=(const DkimBodyHash&) = delete;

  DkimBodyCanon canon() const { return canon_; }
  DkimHash hash() const { return hash_; }

  // Body octets as they arrive, cut anywhere (inside a CRLF too).
  void update(std::string_view body);
  // Ends the body; then base64() is the value a bh= tag must have. Once.
  void finish();
  const std::string& base64() const { return base64_; }
  // Canonical octets hashed (after finish()).
  std::uint64_t length() const { return length_; }

 private:
  void run(std::string_view body, bool at_end);
  void flush(char* w);

  DkimBodyCanon canon_;
  DkimHash hash_;
  struct Digest;
  std::unique_ptr<Digest> digest_;
  // Canonicalization state: a CR not yet known to start a CRLF; white space
  // seen since the last other octet of the line (relaxed); empty lines held
  // back until content follows them (trailing ones are dropped); whether the
  // current line has content.
  bool cr_ = false;
  bool space_ = false;
  std::uint64_t empty_lines_ = 0;
  bool in_line_ = false;
  std::uint64_t length_ = 0;
  // Canonical octets not yet hashed; inside the object, which lives on the
  // heap anyway (DkimBodyHashes): one allocation per hash, not two.
  static constexpr std::size_t kBuffer = 16 * 1024;
  std::array<char, kBuffer> buffer_;
  std::size_t used_ = 0;
  std::string base64_;
  bool finished_ = false;
};

// The distinct (canonicalization, digest) pairs of one message's signatures.
class DkimBodyHashes {
 public:
  void add(DkimBodyCanon canon, DkimHash hash);
  void update(std::string_view body);
  void finish();
  // The finished hash for that pair; null when it was never added.
  const DkimBodyHash* find(DkimBodyCanon canon, DkimHash hash) const;
  bool empty() const { return hashes_.empty(); }

 private:
  std::vector<std::unique_ptr<DkimBodyHash>> hashes_;
};

}  // namespace postern
