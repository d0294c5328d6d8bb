// DKIM verification fed as the content streams in (DESIGN "Content"): a
// spool tap that hands libopendkim the header fields once the header section
// is complete and then every body octet as the DATA/BDAT decoder writes it,
// so the body is hashed without a second pass over the spool. Nothing here
// touches DNS: with DKIM_LIBFLAGS_DELAYSIGPROC the key lookups wait for
// finish(), which runs on the worker pool at end of message.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "filters/auth/dkim_verifier.h"
#include "filters/spool.h"

namespace postern {

class DkimStream final : public SpoolTap {
 public:
  // `owner` tells the filter that added the tap its own stream at kEom.
  DkimStream(std::shared_ptr<const DkimVerifier> verifier, const void* owner);
  ~DkimStream() override;
  DkimStream(const DkimStream&) = delete;
  DkimStream& operator=(const DkimStream&) = delete;

  // I/O thread, pure CPU: header octets are buffered (up to
  // Message::kMaxHeaderBlock) until the empty line; then body octets go to
  // dkim_body as they come.
  void on_append(std::string_view data) override;

  const void* owner() const { return owner_; }
  // Blocking (worker pool): key lookups and results, the same as
  // DkimVerifier::verify(message) would give. nullopt when what streamed in
  // cannot stand for `message` (no empty line after the header section, a
  // header section longer than Message parses, a field Message does not
  // parse the same way): the caller then verifies the spool.
  std::optional<std::vector<DkimSignature>> finish(const Message& message, std::chrono::milliseconds budget);

 private:
  void end_of_header(std::size_t end);

  enum class State { kHeader, kBody, kNoSignature, kGaveUp, kFinished };
  std::shared_ptr<const DkimVerifier> verifier_;
  const void* owner_;
  State state_ = State::kHeader;
  std::string header_;           // the header section so far
  std::size_t body_offset_ = 0;  // where the body starts in the content
  std::size_t fields_ = 0;       // header fields fed
  std::size_t scanned_ = 0;      // header_ octets searched for the empty line
  struct dkim* dkim_ = nullptr;
  int eoh_status_ = 0;
  bool body_error_ = false;      // dkim_body refused: stop feeding, as verify() does
};

}  // namespace postern
