// DkimStream: libopendkim fed from the spool tap; see dkim_stream.h.
#include "filters/dkim/dkim_stream.h"

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
  // Only the header section is kept here: the empty line that ends it is
  // looked for across the seam with the octets before, and what follows it
  // goes to the body hash straight from `data`, never copied
  // (bench/README.md).
  const std::size_t old = header_.size();
  std::size_t end = std::string::npos;  // offset of the empty line in header_ + data
  if (old < 2 && (header_ + std::string(data.substr(0, 2 - old))) == "\r\n") {
    end = 0;
  } else {
    const std::size_t keep = std::min<std::size_t>(old, 3);
    std::string seam = header_.substr(old - keep);
    seam.append(data.substr(0, 3));
    if (std::size_t at = seam.find("\r\n\r\n"); at != std::string::npos) {
      end = old - keep + at + 2;
    } else if (std::size_t in = data.find("\r\n\r\n"); in != std::string::npos) {
      end = old + in + 2;
    }
  }
  if (end == std::string::npos) {
    header_.append(data);
    if (header_.size() > Message::kMaxHeaderBlock) {
      state_ = State::kGaveUp;  // longer than Message parses: finish() says so
      std::string().swap(header_);
    }
    return;
  }
  const std::size_t taken = end + 2 - old;  // octets of `data` up to the empty line's end
  header_.append(data.substr(0, taken));
  end_of_header(end + 2);
  if (taken < data.size()) on_append(data.substr(taken));
}

// The header section is header_[0, body_offset): parse it as Message parses
// received content, feed the fields and dkim_eoh (no DNS: DELAYSIGPROC). The
// caller passes on the octets past it as body.
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
    const DkimVerifier::TagList tags = parse_dkim_tag_list(value);  // once for both
    if (auto spec = DkimVerifier::body_spec(tags)) {
      own_body_.add(spec->canon, spec->hash);
    } else {
      use_own_body_ = false;
    }
    std::string name = DkimVerifier::key_name(tags);
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
  std::string().swap(header_);
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
