// DkimStream: libopendkim fed from the spool tap; see dkim_stream.h.
#include "filters/auth/dkim_stream.h"

#include <algorithm>

#include "filters/auth/c_api.h"
#include "filters/message.h"

namespace postern {

DkimStream::DkimStream(std::shared_ptr<const DkimVerifier> verifier, const void* owner)
    : verifier_(std::move(verifier)), owner_(owner) {}

DkimStream::~DkimStream() {
  if (dkim_) dkim_free(dkim_);
}

void DkimStream::on_append(std::string_view data) {
  if (state_ == State::kBody) {
    if (!dkim_ || body_error_ || !DkimVerifier::wants_body(eoh_status_)) return;
    if (use_own_body_) {
      own_body_.update(data);
      return;
    }
    // As verify() does: the first refused chunk ends the body.
    if (dkim_body(dkim_, reinterpret_cast<u_char*>(const_cast<char*>(data.data())), data.size()) != DKIM_STAT_OK) {
      body_error_ = true;
    }
    return;
  }
  if (state_ != State::kHeader) return;
  header_.append(data);
  // The empty line ending the header section: CRLF at the very start, or
  // CRLF CRLF (searched again from just before the new octets).
  std::size_t end = std::string::npos;
  if (header_.compare(0, 2, "\r\n") == 0) {
    end = 0;
  } else {
    std::size_t at = header_.find("\r\n\r\n", scanned_ >= 3 ? scanned_ - 3 : 0);
    if (at != std::string::npos) end = at + 2;
  }
  scanned_ = header_.size();
  if (end == std::string::npos) {
    if (header_.size() > Message::kMaxHeaderBlock) {
      state_ = State::kGaveUp;  // longer than Message parses: finish() says so
      std::string().swap(header_);
    }
    return;
  }
  end_of_header(end + 2);
}

// The header section is header_[0, body_offset): parse it as Message parses
// received content, feed the fields and dkim_eoh (no DNS: DELAYSIGPROC), then
// the octets already received past it as body.
void DkimStream::end_of_header(std::size_t body_offset) {
  Spool head(body_offset + 1, "");
  head.append(std::string_view(header_).substr(0, body_offset));
  head.finish();
  Message parsed(head);
  body_offset_ = body_offset;
  fields_ = parsed.headers().size();
  if (parsed.headers_truncated() || parsed.body_offset() != std::min(body_offset, head.size())) {
    state_ = State::kGaveUp;  // a line Message does not take as a field: verify the spool
    std::string().swap(header_);
    return;
  }
  bool any = false;
  use_own_body_ = true;
  for (const HeaderField& h : parsed.headers()) {
    if (!header_name_equals(h.name, "DKIM-Signature")) continue;
    any = true;
    const std::string value = h.value();
    if (auto spec = DkimVerifier::body_spec(value)) {
      own_body_.add(spec->canon, spec->hash);
    } else {
      use_own_body_ = false;
    }
    std::string name = DkimVerifier::key_name(value);
    if (!name.empty() && key_names_.size() < verifier_->max_signatures() &&
        std::find(key_names_.begin(), key_names_.end(), name) == key_names_.end()) {
      key_names_.push_back(std::move(name));
    }
  }
  if (!any) {
    state_ = State::kNoSignature;
    std::string().swap(header_);
    return;
  }
  dkim_ = verifier_->begin();
  state_ = State::kBody;
  if (dkim_) {
    for (const HeaderField& h : parsed.headers()) {
      std::string_view raw = h.raw;
      if (raw.size() >= 2 && raw.substr(raw.size() - 2) == "\r\n") raw.remove_suffix(2);
      DkimVerifier::feed_header(dkim_, raw);
    }
    eoh_status_ = dkim_eoh(dkim_);
  }
  std::string rest = header_.size() > body_offset ? header_.substr(body_offset) : std::string();
  std::string().swap(header_);
  if (!rest.empty()) on_append(rest);
}

bool DkimStream::complete(const Message& message) {
  // Content without an empty line: a message of header fields only.
  if (state_ == State::kHeader && header_.size() == message.size()) end_of_header(header_.size());
  const bool same = !message.headers_truncated() && message.body_offset() == body_offset_ &&
                    message.headers().size() == fields_;
  return same && (state_ == State::kNoSignature || state_ == State::kBody);
}

std::optional<std::vector<DkimSignature>> DkimStream::finish(const Message& message,
                                                             std::chrono::milliseconds budget,
                                                             const DkimKeys* keys) {
  std::optional<std::vector<DkimSignature>> out;
  if (complete(message)) {
    if (state_ == State::kNoSignature) {
      out.emplace();
    } else {
      // finish() frees the handle (or reports a handle that never started).
      const DkimBodyHashes* body = nullptr;
      if (use_own_body_) {
        own_body_.finish();
        body = &own_body_;
      }
      out = verifier_->finish(dkim_, dkim_ ? eoh_status_ : DKIM_STAT_INTERNAL, message, budget, keys, body);
      dkim_ = nullptr;
    }
  }
  if (dkim_) {
    dkim_free(dkim_);
    dkim_ = nullptr;
  }
  state_ = State::kFinished;
  return out;
}

}  // namespace postern
