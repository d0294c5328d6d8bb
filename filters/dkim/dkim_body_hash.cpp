// DKIM body canonicalization and hash; see dkim_body_hash.h.
#include "filters/dkim/dkim_body_hash.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#include <openssl/evp.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace postern {

namespace {

// The octets that end a run of ordinary ones in relaxed canonicalization:
// CR, SP and HTAB ("simple" runs end at CR only: memchr).
constexpr std::array<std::uint8_t, 256> relaxed_special_octets() {
  std::array<std::uint8_t, 256> t{};
  t['\r'] = t[' '] = t['\t'] = 1;
  return t;
}
constexpr auto kRelaxedTable = relaxed_special_octets();
const std::uint8_t* const kRelaxedSpecial = kRelaxedTable.data();

#if !defined(__SSE2__)
// The high bit of each octet of `v` that equals `c`, exactly (no false
// positives next to a match, unlike the usual "has zero octet" test).
// Only the scan without SSE2 uses it.
constexpr std::uint64_t octets_equal(std::uint64_t v, unsigned char c) {
  constexpr std::uint64_t kLow7 = 0x7f7f7f7f7f7f7f7full;
  const std::uint64_t t = v ^ (0x0101010101010101ull * c);
  return ~(((t & kLow7) + kLow7) | t) & ~kLow7;
}
#endif

}  // namespace

struct DkimBodyHash::Digest {
  EVP_MD_CTX* ctx = nullptr;
  ~Digest() {
    if (ctx) EVP_MD_CTX_free(ctx);
  }
};

DkimBodyHash::DkimBodyHash(DkimBodyCanon canon, DkimHash hash)
    : canon_(canon), hash_(hash), digest_(std::make_unique<Digest>()) {
  // Fetched once, not implicitly on every EVP_DigestInit_ex (OpenSSL 3
  // providers; bench/README.md).
  static EVP_MD* const sha1 = EVP_MD_fetch(nullptr, "SHA1", nullptr);
  static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  digest_->ctx = EVP_MD_CTX_new();
  const EVP_MD* md = hash == DkimHash::kSha1 ? sha1 : sha256;
  if (!digest_->ctx || !md || EVP_DigestInit_ex(digest_->ctx, md, nullptr) != 1) {
    throw std::runtime_error("dkim: cannot start a body digest");
  }
}

DkimBodyHash::~DkimBodyHash() = default;

// Hashes the buffer up to `w`.
void DkimBodyHash::flush(char* w) {
  const auto n = static_cast<std::size_t>(w - buffer_.data());
  if (n > 0) EVP_DigestUpdate(digest_->ctx, buffer_.data(), n);
  length_ += n;
  used_ = 0;
}

void DkimBodyHash::update(std::string_view body) {
  if (!finished_) run(body, false);
}

// Canonicalizes `body` into the buffer; `at_end`: the body ends after it.
void DkimBodyHash::run(std::string_view body, bool at_end) {
  const bool relaxed = canon_ == DkimBodyCanon::kRelaxed;
  // The state in locals: the octets written through `w` (char) could alias
  // any member, which would make the compiler reload them every octet.
  bool cr = cr_, space = space_, in_line = in_line_;
  std::uint64_t empty_lines = empty_lines_;
  const char* p = body.data();
  const char* const end = p + body.size();
  char* const start = buffer_.data();
  char* w = start + used_;
  // Each turn writes at most 4 octets: CR, SP, the octet, or a CRLF; held
  // back empty lines are written in their own loop.
  char* const limit = start + kBuffer - 8;
  // Before an ordinary octet: the empty lines held back, which were not
  // trailing after all, and one SP for the white space before it (relaxed:
  // each run of WSP becomes one SP).
  auto release = [&] {
    for (; empty_lines > 0; --empty_lines) {
      if (w >= limit) {
        flush(w);
        w = start;
      }
      *w++ = '\r';
      *w++ = '\n';
    }
    if (space) {
      *w++ = ' ';
      space = false;
    }
  };
  while (p < end) {
    if (w >= limit) {
      flush(w);
      w = start;
    }
    const char c = *p++;
    if (cr) {
      cr = false;
      if (c == '\n') {
        // CRLF: white space before it goes (relaxed); an empty line is held
        // back, since empty lines at the end of the body are not hashed.
        space = false;
        if (in_line) {
          *w++ = '\r';
          *w++ = '\n';
          in_line = false;
        } else {
          ++empty_lines;
        }
        continue;
      }
      // A CR not before LF is an ordinary octet; then c as any other.
      if (empty_lines || space) release();
      *w++ = '\r';
      in_line = true;
    }
    if (c == '\r') {
      cr = true;
      continue;
    }
    if (relaxed && (c == ' ' || c == '\t')) {
      space = true;
      continue;
    }
    if (empty_lines || space) release();
    *w++ = c;
    in_line = true;
    // The octets up to the next CR (or WSP, relaxed) need no state: copied
    // at once, as far as the buffer has room. Each octet consumed writes
    // exactly one, so `stop` stays within the buffer. Relaxed: a single SP or
    // HTAB between two ordinary octets (the space between words) is one SP,
    // stateless too.
    // `w` may be past `limit` here (release() and this octet write up to
    // four after the check at the top): then no room, and the next turn
    // flushes. (limit - w negative, cast to size_t, let the copy below run to
    // the end of the input: a heap overflow of the object.)
    const std::size_t room = w < limit ? static_cast<std::size_t>(limit - w) : 0;
    const char* const stop = p + std::min<std::size_t>(static_cast<std::size_t>(end - p), room);
    if (!relaxed) {
      const void* cr_at = std::memchr(p, '\r', static_cast<std::size_t>(stop - p));
      const char* run_end = cr_at ? static_cast<const char*>(cr_at) : stop;
      std::memcpy(w, p, static_cast<std::size_t>(run_end - p));
      w += run_end - p;
      p = run_end;
      continue;
    }
    for (;;) {
#if defined(__SSE2__)
      // Sixteen octets at a time, with the octet after each one loaded too:
      // copied up to the first CR, HTAB or SP followed by SP, HTAB or CR.
      // Every other SP lies between ordinary octets and stays as it is. (The
      // store may write past the octets taken: `stop` leaves room for it.)
      while (stop - p >= 17) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        const __m128i next = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 1));
        const __m128i sp = _mm_set1_epi8(' '), tab = _mm_set1_epi8('\t'), cr = _mm_set1_epi8('\r');
        const __m128i next_ws = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(next, sp), _mm_cmpeq_epi8(next, tab)),
                                             _mm_cmpeq_epi8(next, cr));
        const __m128i special = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, tab)),
                                             _mm_and_si128(_mm_cmpeq_epi8(v, sp), next_ws));
        const unsigned mask = static_cast<unsigned>(_mm_movemask_epi8(special));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(w), v);
        const unsigned taken = mask == 0 ? 16u : static_cast<unsigned>(std::countr_zero(mask));
        w += taken;
        p += taken;
        if (mask != 0) break;
      }
#else
      // Eight octets at a time while they hold no CR, no HTAB, no two SP in
      // a row and no SP last (the octet after it is not known here): then
      // each SP in them lies between ordinary octets and stays as it is.
      if constexpr (std::endian::native == std::endian::little) {
        while (stop - p >= 8) {
          std::uint64_t v;
          std::memcpy(&v, p, sizeof v);
          const std::uint64_t sp = octets_equal(v, ' ');
          if (octets_equal(v, '\r') | octets_equal(v, '\t') | (sp & (sp >> 8)) | (sp >> 63 << 63)) break;
          std::memcpy(w, p, sizeof v);
          w += sizeof v;
          p += sizeof v;
        }
      }
#endif
      while (p < stop && !kRelaxedSpecial[static_cast<unsigned char>(*p)]) *w++ = *p++;
      if (stop - p < 2 || (*p != ' ' && *p != '\t') || kRelaxedSpecial[static_cast<unsigned char>(p[1])]) break;
      *w++ = ' ';
      ++p;
    }
  }
  if (at_end && cr) {
    // A CR at the very end is an ordinary octet.
    if (empty_lines || space) release();
    *w++ = '\r';
    in_line = true;
    cr = false;
  }
  cr_ = cr;
  space_ = space;
  in_line_ = in_line;
  empty_lines_ = empty_lines;
  used_ = static_cast<std::size_t>(w - start);
}

void DkimBodyHash::finish() {
  if (finished_) return;
  run({}, true);
  char* w = buffer_.data() + used_;
  // A body that does not end with CRLF gets one (both canonicalizations);
  // white space before it goes.
  if (in_line_) {
    *w++ = '\r';
    *w++ = '\n';
  }
  flush(w);
  // §3.4.3: "simple" hashes an empty body as one CRLF; "relaxed" as nothing.
  if (canon_ == DkimBodyCanon::kSimple && length_ == 0) {
    EVP_DigestUpdate(digest_->ctx, "\r\n", 2);
    length_ = 2;
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  EVP_DigestFinal_ex(digest_->ctx, md, &md_len);
  std::string b64(4 * ((md_len + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()), md, static_cast<int>(md_len));
  b64.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  base64_ = std::move(b64);
  finished_ = true;
}

void DkimBodyHashes::add(DkimBodyCanon canon, DkimHash hash) {
  if (!find(canon, hash)) hashes_.push_back(std::make_unique<DkimBodyHash>(canon, hash));
}

void DkimBodyHashes::update(std::string_view body) {
  for (auto& h : hashes_) h->update(body);
}

void DkimBodyHashes::finish() {
  for (auto& h : hashes_) h->finish();
}

const DkimBodyHash* DkimBodyHashes::find(DkimBodyCanon canon, DkimHash hash) const {
  for (const auto& h : hashes_) {
    if (h->canon() == canon && h->hash() == hash) return h.get();
  }
  return nullptr;
}

}  // namespace postern
