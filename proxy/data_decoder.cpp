// DATA decoder and dot-stuffer; see data_decoder.h for the contract.
#include "proxy/data_decoder.h"

#include <bit>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace postern {

namespace {

// The first CR, LF or NUL in [p, end), or end: sixteen octets at a time
// with SSE2 (x86-64 baseline), else eight with plain 64-bit arithmetic, not
// a byte loop (bench/README.md).
const char* find_cr_lf_nul(const char* p, const char* end) {
#if defined(__SSE2__)
  const __m128i cr = _mm_set1_epi8('\r');
  const __m128i lf = _mm_set1_epi8('\n');
  const __m128i nul = _mm_setzero_si128();
  while (end - p >= 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)), _mm_cmpeq_epi8(v, nul));
    if (const int mask = _mm_movemask_epi8(hit)) return p + std::countr_zero(static_cast<unsigned>(mask));
    p += 16;
  }
#else
  constexpr std::uint64_t kOnes = 0x0101010101010101ull;
  constexpr std::uint64_t kHigh = 0x8080808080808080ull;
  const auto has_zero = [](std::uint64_t v) { return (v - kOnes) & ~v & kHigh; };
  while (end - p >= 8) {
    std::uint64_t v;
    std::memcpy(&v, p, sizeof v);
    if (has_zero(v) | has_zero(v ^ (kOnes * '\r')) | has_zero(v ^ (kOnes * '\n'))) break;
    p += 8;
  }
#endif
  while (p < end && *p != '\r' && *p != '\n' && *p != '\0') ++p;
  return p;
}

}  // namespace

void DataDecoder::reset() {
  state_ = State::kLineStart;
  faults_ = {};
  size_ = 0;
  line_length_ = 0;
  ends_line_ = true;
}

void DataDecoder::emit(std::string& out, std::string_view bytes) {
  if (!bytes.empty()) ends_line_ = bytes.back() == '\n';  // every LF emitted ends a CRLF
  size_ += bytes.size();
  if (size_ > options_.max_size) {
    faults_.too_big = true;
    return;  // keep reading to the end of data, drop the content
  }
  out.append(bytes);
}

// What `in` decodes to is mostly its own size (less the stuffed dots):
// room for it at once, not a copy of `out` each time it outgrows its
// capacity (bench/README.md).
void DataDecoder::reserve_for(std::string_view in, std::string& out) {
  if (size_ <= options_.max_size) out.reserve(out.size() + in.size());
}

void DataDecoder::note_line_length(std::size_t n) {
  line_length_ += n;
  if (line_length_ > options_.max_line) faults_.line_too_long = true;
}

// A CR or LF that is not part of a CRLF pair (RFC 5321 §2.3.8).
void DataDecoder::bare_line_end(std::string& out, bool lf) {
  (lf ? faults_.bare_lf : faults_.bare_cr) = true;
  if (options_.bare_line_ending == BareLineEnding::kNormalize) {
    emit(out, "\r\n");
    line_length_ = 0;
    state_ = State::kBareLineStart;
  } else {
    state_ = State::kText;
  }
}

DataDecoder::Result DataDecoder::feed(std::string_view in, std::string& out) {
  reserve_for(in, out);
  const bool normalize = options_.bare_line_ending == BareLineEnding::kNormalize;
  std::size_t i = 0;
  const std::size_t n = in.size();
  // Input octets [span, i) that go out as they are: lines of ordinary octets
  // ending in CRLF and not starting with a dot. They are appended at once
  // when anything else is to be written or the call returns, not line by
  // line (bench/README.md).
  std::size_t span = std::string_view::npos;
  auto flush = [&](std::size_t upto) {
    if (span != std::string_view::npos) emit(out, in.substr(span, upto - span));
    span = std::string_view::npos;
  };
  while (i < n) {
    char c = in[i];
    if (state_ != State::kText && !(state_ == State::kLineStart && c != '.')) flush(i);
    switch (state_) {
      case State::kText: {
        // Hot path: a run of ordinary bytes, with its CRLF when one ends it
        // here, joins the span.
        std::size_t start = i;
        i = static_cast<std::size_t>(find_cr_lf_nul(in.data() + i, in.data() + n) - in.data());
        if (i + 1 < n && in[i] == '\r' && in[i + 1] == '\n') {
          i += 2;
          if (span == std::string_view::npos) span = start;
          note_line_length(i - start);
          line_length_ = 0;
          state_ = State::kLineStart;
          break;
        }
        if (i > start) {
          if (span == std::string_view::npos) span = start;
          note_line_length(i - start);
        }
        flush(i);
        if (i == n) break;
        c = in[i];
        if (c == '\r') {
          state_ = State::kCr;
        } else if (c == '\n') {
          note_line_length(1);
          bare_line_end(out, true);
        } else {  // NUL
          faults_.nul = true;
          emit(out, std::string_view(&in[i], 1));
          note_line_length(1);
        }
        ++i;
        break;
      }
      case State::kCr:
        if (c == '\n') {
          emit(out, "\r\n");
          note_line_length(2);
          line_length_ = 0;
          state_ = State::kLineStart;
          ++i;
        } else {
          // Bare CR: the byte after it is examined again in the new state.
          note_line_length(1);
          if (!normalize) emit(out, "\r");
          bare_line_end(out, false);
        }
        break;
      case State::kLineStart:
        if (c == '.') {
          // The line's first dot counts once: either it is content, or it is the
          // stuffing dot that §4.5.3.1.6 does not count.
          state_ = State::kDot;
          note_line_length(1);
          ++i;
        } else {
          state_ = State::kText;
        }
        break;
      case State::kDot:
        if (c == '\r') {
          state_ = State::kDotCr;
          ++i;
        } else if (c == '.') {
          emit(out, ".");  // "..x" is a stuffed ".x": one dot counted, above
          state_ = State::kText;
          ++i;
        } else {
          // "\r\n.\n" and other dot lines without CRLF: the stuffing dot goes,
          // the rest is content (§4.5.2); a bare LF is caught in kText.
          state_ = State::kText;
        }
        break;
      case State::kDotCr:
        if (c == '\n') {
          state_ = State::kLineStart;
          line_length_ = 0;
          return {i + 1, true};
        }
        // ".\r" + other: a bare CR after a lone dot, never the end.
        note_line_length(1);
        if (!normalize) emit(out, ".\r");
        else emit(out, ".");
        bare_line_end(out, false);
        break;
      case State::kBareLineStart:
        // After a normalized bare line end: a dot here is stuffing only if doubled;
        // a lone dot line is content, never the end of data.
        if (c == '.' && i + 1 < n && in[i + 1] == '.') {
          emit(out, ".");
          note_line_length(1);
          i += 2;
        } else if (c == '.' && i + 1 == n) {
          // Cannot tell yet; wait for the next byte.
          return {i, false};
        }
        state_ = State::kText;
        break;
    }
  }
  flush(i);
  return {i, false};
}

void DataDecoder::feed_chunk(std::string_view in, std::string& out) {
  reserve_for(in, out);
  std::size_t i = 0;
  while (i < in.size()) {
    if (state_ == State::kCr) {
      if (in[i] == '\n') {
        emit(out, "\r\n");
        note_line_length(2);
        line_length_ = 0;
        state_ = State::kText;
        ++i;
      } else {
        note_line_length(1);
        if (options_.bare_line_ending == BareLineEnding::kReject) emit(out, "\r");
        bare_line_end(out, false);
        state_ = State::kText;
      }
      continue;
    }
    std::size_t start = i;
    i = static_cast<std::size_t>(find_cr_lf_nul(in.data() + i, in.data() + in.size()) - in.data());
    if (i > start) {
      emit(out, in.substr(start, i - start));
      note_line_length(i - start);
    }
    if (i == in.size()) break;
    char c = in[i++];
    if (c == '\r') {
      state_ = State::kCr;
    } else if (c == '\n') {
      note_line_length(1);
      bare_line_end(out, true);
      state_ = State::kText;
    } else {
      faults_.nul = true;
      emit(out, std::string_view("\0", 1));
      note_line_length(1);
    }
  }
}

void DataDecoder::finish_chunks(std::string& out) {
  if (state_ == State::kCr) {
    note_line_length(1);
    if (options_.bare_line_ending == BareLineEnding::kReject) emit(out, "\r");
    bare_line_end(out, false);
    state_ = State::kLineStart;
  }
  // Content that does not end its last line: the line ends here, as DATA's
  // end marker ends it, so every reader -- DKIM verification and signing,
  // a relay by DATA (which must add it) or by BDAT -- has the same body
  // (issue 15: a signature over a body then relayed with a CRLF added).
  if (!ends_line_) emit(out, "\r\n");
}

void DotStuffer::feed(std::string_view content, std::string& out) {
  if (content.empty()) return;
  empty_ = false;
  // Only a '.' that starts a line gets a second one: the spans between those
  // are copied whole (bench/README.md).
  if (line_start_ && content.front() == '.') out.push_back('.');
  const char* const begin = content.data();
  const char* const end = begin + content.size();
  const char* from = begin;
  for (const char* p = begin; p < end;) {
    const void* lf = std::memchr(p, '\n', static_cast<std::size_t>(end - p));
    if (!lf) break;
    p = static_cast<const char*>(lf) + 1;
    if (p < end && *p == '.') {
      out.append(from, p);
      out.push_back('.');
      from = p;
    }
  }
  out.append(from, end);
  line_start_ = content.back() == '\n';
  before_last_ = content.size() >= 2 ? content[content.size() - 2] : last_;
  last_ = content.back();
}

void DotStuffer::finish(std::string& out) {
  if (!empty_ && !(before_last_ == '\r' && last_ == '\n')) out.append("\r\n");
  out.append(".\r\n");
}

}  // namespace postern
