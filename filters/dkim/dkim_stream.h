// DKIM verification fed as the content streams in (DESIGN "Content"): a
// spool tap that hands libopendkim the header fields once the header section
// is complete and then every body octet as the DATA/BDAT decoder writes it,
// so the body is hashed without a second pass over the spool. Nothing here
// touches DNS: with DKIM_LIBFLAGS_DELAYSIGPROC the key lookups wait for
// finish() at end of message, which runs on the worker pool or, with the key
// records looked up beforehand (key_names()), on the I/O thread.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "filters/dkim/dkim_verifier.h"
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
  // Whether what streamed in stands for `message`, so that finish() gives
  // the results (not nullopt): the header section had its empty line, was
  // no longer than Message parses, and Message parsed its fields the same.
  bool complete(const Message& message);
  // The key records the signatures need ("selector._domainkey.domain",
  // lower case, header order, at most max_signatures), once complete().
  const std::vector<std::string>& key_names() const { return key_names_; }
  // Key lookups and results, the same as DkimVerifier::verify(message) would
  // give; blocking (worker pool) unless `keys` holds the key records (see
  // DkimVerifier::finish). nullopt when !complete(message): the caller then
  // verifies the spool.
  std::optional<std::vector<DkimSignature>> finish(const Message& message, std::chrono::milliseconds budget,
                                                   const DkimKeys* keys = nullptr);

 private:
  void end_of_header(std::size_t end);

  enum class State { kHeader, kBody, kNoSignature, kGaveUp, kFinished };
  std::shared_ptr<const DkimVerifier> verifier_;
  const void* owner_;
  State state_ = State::kHeader;
  std::string header_;           // the header section so far
  std::size_t body_offset_ = 0;  // where the body starts in the content
  std::size_t fields_ = 0;       // header fields fed
  std::vector<std::string> key_names_;
  // The body hashes postern computes itself (dkim_body_hash.h) when every
  // signature allows; else the body goes to libopendkim.
  DkimBodyHashes own_body_;
  bool use_own_body_ = false;
  struct dkim* dkim_ = nullptr;
  int eoh_status_ = 0;
  bool body_error_ = false;      // dkim_body refused: stop feeding, as verify() does
};

}  // namespace postern
