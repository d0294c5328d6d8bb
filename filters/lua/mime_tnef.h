// TNEF (MS-OXTNEF): the winmail.dat part Outlook and Exchange send, whose
// files Outlook and Roundcube show as attachments. Only their names are
// read; the files' data is skipped. I/O-free, bounded, and bad input never
// throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace postern::mime {

// Octets of one TNEF attribute that holds file names (an attachment's
// title or MAPI properties, an embedded message among them) read whole;
// a larger one is a problem, for the names in it would go unread.
inline constexpr std::size_t kMaxTnefAttribute = 4 * 1024 * 1024;
inline constexpr int kMaxTnefDepth = 4;  // messages embedded in messages

// Reads a TNEF stream fed in pieces split anywhere.
class TnefReader {
 public:
  explicit TnefReader(int depth = 0);
  ~TnefReader();
  TnefReader(const TnefReader&) = delete;
  TnefReader& operator=(const TnefReader&) = delete;

  void feed(std::string_view data);
  // The end of the stream.
  void finish();

  // The file names found, converted to UTF-8, in stream order (an
  // attachment may have several: its title, its long and short name).
  const std::vector<std::string>& names() const { return names_; }
  // Why a file name may have gone unread (an attribute over
  // kMaxTnefAttribute, a property list that does not parse, the stream cut
  // inside an attribute holding names); empty when read whole, and for a
  // stream that is no TNEF at all (Outlook shows it as a plain file).
  const std::string& problem() const { return problem_; }

 private:
  enum class State { kSignature, kHeader, kData, kSkip, kChecksum, kDone };
  void step();
  void attribute();
  void fail(std::string why);

  int depth_;
  State state_ = State::kSignature;
  std::string buf_;           // the fixed piece or attribute being read
  std::size_t need_ = 6;      // octets buf_ must reach
  std::uint64_t skip_ = 0;    // octets of an attribute that holds no names, still to skip
  std::uint32_t id_ = 0;      // the attribute being read
  std::vector<std::string> names_;
  std::string problem_;
};

}  // namespace postern::mime
