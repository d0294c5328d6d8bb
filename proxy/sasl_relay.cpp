#include "proxy/sasl_relay.h"

#include <algorithm>

#include <fmt/format.h>
#include <openssl/evp.h>

#include "filters/text/ascii.h"

namespace postern {
namespace {

std::string base64_decode(std::string_view in) {
  std::string out((in.size() + 3) / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  if (n < 0) return {};
  std::size_t len = static_cast<std::size_t>(n);
  if (in.size() >= 1 && in.back() == '=') --len;  // EVP_DecodeBlock counts padding
  if (in.size() >= 2 && in[in.size() - 2] == '=') --len;
  out.resize(std::min(len, out.size()));
  return out;
}

}  // namespace

bool is_sasl_response(std::string_view line) {
  if (line == "*" || line == "=") return true;
  return is_base64(line);
}

// RFC 4648 §4 as RFC 4954 §4 uses it: whole quanta of four, "=" only as the
// padding of the last one. Anything laxer is text the MTA may decode one way
// and postern another (the identity it learns from it).
bool is_base64(std::string_view text) {
  if (text.size() % 4 != 0) return false;
  if (text.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") !=
      std::string_view::npos) {
    return false;
  }
  const std::size_t pad = text.find('=');
  if (pad == std::string_view::npos) return true;
  return pad + 2 >= text.size() && text.substr(pad).find_first_not_of('=') == std::string_view::npos;
}

std::string sasl_user(std::string_view mechanism, std::string_view response) {
  std::string raw = base64_decode(response);
  if (mechanism == "PLAIN") {
    std::size_t first = raw.find('\0');
    if (first == std::string::npos) return {};
    std::size_t second = raw.find('\0', first + 1);
    return raw.substr(first + 1, second == std::string::npos ? std::string::npos : second - first - 1);
  }
  return raw;
}

asio::awaitable<SaslRelay::Step> SaslRelay::start(std::string_view args, Upstream& upstream) {
  *this = SaslRelay{};
  std::size_t sp = args.find(' ');
  mechanism_ = ascii::to_upper(args.substr(0, sp));
  if (mechanism_ != "PLAIN" && mechanism_ != "LOGIN") co_return Step{Outcome::kUnknownMechanism, {}, {}};
  const bool initial = sp != std::string_view::npos;
  const std::string_view response = initial ? args.substr(sp + 1) : std::string_view{};
  if (initial && !is_sasl_response(response)) co_return Step{Outcome::kBadResponse, {}, {}};
  active_ = true;
  if (initial) {  // an initial response (RFC 4954 §4): PLAIN's all, LOGIN's the user name
    user_ = sasl_user(mechanism_, response);
    user_known_ = true;
  }
  // The mechanism in upper case, as registered: names are case-insensitive
  // (RFC 4954 §4) but not every MTA compares them so.
  const std::string command = initial ? fmt::format("AUTH {} {}", mechanism_, response) : "AUTH " + mechanism_;
  co_return co_await relay(command, true, upstream);
}

asio::awaitable<SaslRelay::Step> SaslRelay::respond(std::string_view line, Upstream& upstream) {
  if (!is_sasl_response(line)) co_return co_await refuse(upstream);
  if (line != "*" && !user_known_) {  // "*": the client cancels (RFC 4954 §4)
    user_ = sasl_user(mechanism_, line);
    user_known_ = true;
  }
  co_return co_await relay(line, false, upstream);
}

// The exchange the MTA has open is cancelled with "*" and its answer to that dropped.
asio::awaitable<SaslRelay::Step> SaslRelay::refuse(Upstream& upstream) {
  const bool open_upstream = active_;
  active_ = false;
  user_.clear();
  if (open_upstream) (void)co_await upstream.auth("*", false, mechanism_);
  co_return Step{Outcome::kBadResponse, {}, {}};
}

asio::awaitable<SaslRelay::Step> SaslRelay::relay(std::string_view line, bool first, Upstream& upstream) {
  // Not co_await inside the braces: g++ 12 frees a temporary of such an initializer twice.
  UpstreamReply reply = co_await upstream.auth(line, first, mechanism_);
  Step step{Outcome::kContinue, std::move(reply), {}};
  const Reply& r = step.reply.reply;
  if (r.code == 334 && !step.reply.connection_lost) co_return step;
  active_ = false;
  if (r.code == 235) {
    step.outcome = Outcome::kAuthenticated;
    step.user = user_;
  } else {
    step.outcome = r.klass() == 5 ? Outcome::kRefused : Outcome::kUnavailable;
  }
  user_.clear();
  co_return step;
}

}  // namespace postern
