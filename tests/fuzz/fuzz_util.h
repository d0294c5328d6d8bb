// Shared by the fuzz targets: an invariant check that prints what was expected
// and what the parser gave (escaped) before aborting, so libFuzzer saves the
// input as a crash and the report says which property broke.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace postern::fuzz {

// Hostile bytes made readable: \r, \n, \t, \0, \\, \xNN.
inline std::string escape(std::string_view s, std::size_t max = 400) {
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < max; ++i) {
    unsigned char c = s[i];
    switch (c) {
      case '\r': out += "\\r"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\0': out += "\\0"; break;
      case '\\': out += "\\\\"; break;
      default:
        if (c < 32 || c >= 127) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\x%02X", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  if (s.size() > max) out += "...(" + std::to_string(s.size()) + " bytes)";
  return out;
}

[[noreturn]] inline void fail(const char* file, int line, const char* what, const std::string& detail) {
  std::fprintf(stderr, "\n==postern-fuzz== INVARIANT VIOLATED at %s:%d\n  %s\n%s\n", file, line, what,
               detail.c_str());
  std::abort();
}

}  // namespace postern::fuzz

// FUZZ_CHECK(condition, detail): `detail` is a std::string built only on failure.
#define FUZZ_CHECK(cond, detail)                                              \
  do {                                                                        \
    if (!(cond)) ::postern::fuzz::fail(__FILE__, __LINE__, #cond, (detail)); \
  } while (0)
#define FUZZ_EQ(actual, expected)                                                             \
  FUZZ_CHECK((actual) == (expected), "  expected: \"" + ::postern::fuzz::escape(expected) + \
                                         "\"\n  actual:   \"" + ::postern::fuzz::escape(actual) + "\"")

namespace postern::fuzz {

// True when the invariant `name` is waived: listed in $POSTERN_FUZZ_WAIVE
// (comma-separated; tests/fuzz/run fills it from tests/fuzz/waivers). A waiver
// is for a finding reported but not yet fixed in the parser, so the rest of the
// target keeps running; fixing the parser removes the line from `waivers`.
inline bool waived(std::string_view name) {
  static const std::string list = [] {
    const char* v = std::getenv("POSTERN_FUZZ_WAIVE");
    return "," + std::string(v ? v : "") + ",";
  }();
  return list.find("," + std::string(name) + ",") != std::string::npos;
}

// A deterministic stream of numbers derived from the input, for choices that
// should not eat bytes of a readable seed (chunk sizes, limits).
class Choices {
 public:
  explicit Choices(std::string_view data) {
    state_ = 0x9E3779B97F4A7C15ull ^ data.size();
    for (unsigned char c : data) state_ = (state_ ^ c) * 0x100000001B3ull;
  }
  std::uint64_t next() {  // splitmix64
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // In [lo, hi].
  std::size_t range(std::size_t lo, std::size_t hi) { return lo + next() % (hi - lo + 1); }

 private:
  std::uint64_t state_;
};

}  // namespace postern::fuzz

// A named invariant that tests/fuzz/waivers may waive (see waived()).
#define FUZZ_CHECK_NAMED(name, cond, detail) \
  do {                                       \
    if (!::postern::fuzz::waived(name)) FUZZ_CHECK(cond, std::string("  [") + (name) + "]\n" + (detail)); \
  } while (0)
