// ESMTP parameters from a filter; see esmtp_param.h.
#include "filters/esmtp_param.h"

#include <algorithm>

#include "filters/text/ascii.h"

namespace postern {
namespace {

bool alnum(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

// esmtp-value = 1*(%d33-60 / %d62-126)
bool value_char(unsigned char c) { return c >= 33 && c <= 126 && c != '='; }

EsmtpParamsParse refused(std::string why) { return EsmtpParamsParse{{}, std::move(why)}; }

}  // namespace

EsmtpParamsParse parse_filter_esmtp_params(std::string_view text) {
  if (text.size() > kMaxFilterEsmtpText) return refused("parameters too long");
  EsmtpParamsParse out;
  std::size_t at = 0;
  while (at < text.size()) {
    if (text[at] == ' ') {
      ++at;
      continue;
    }
    std::size_t end = text.find(' ', at);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view param = text.substr(at, end - at);
    at = end;
    if (out.params.size() >= kMaxFilterEsmtpParams) return refused("too many parameters");
    const std::size_t eq = param.find('=');
    const std::string_view keyword = param.substr(0, eq);
    if (keyword.empty() || keyword.size() > kMaxFilterEsmtpKeyword || !alnum(keyword[0]) ||
        !std::all_of(keyword.begin(), keyword.end(), [](unsigned char c) { return alnum(c) || c == '-'; })) {
      return refused("invalid parameter keyword");
    }
    EsmtpParam p;
    for (char c : keyword) p.keyword.push_back(ascii::to_upper(c));
    if (eq != std::string_view::npos) {
      const std::string_view value = param.substr(eq + 1);
      if (value.empty() || !std::all_of(value.begin(), value.end(), value_char)) {
        return refused("invalid parameter value");
      }
      if (value.size() > kMaxFilterEsmtpValue) return refused("parameter value too long");
      p.value.assign(value);
      p.has_value = true;
    }
    if (std::any_of(out.params.begin(), out.params.end(), [&](const EsmtpParam& q) { return q.keyword == p.keyword; })) {
      return refused("duplicate parameter " + p.keyword);
    }
    out.params.push_back(std::move(p));
  }
  return out;
}

std::string_view esmtp_param_extension(std::string_view k) {
  if (k == "SIZE") return "SIZE";
  if (k == "BODY") return "8BITMIME";
  if (k == "SMTPUTF8") return "SMTPUTF8";
  if (k == "RET" || k == "ENVID" || k == "NOTIFY" || k == "ORCPT") return "DSN";
  return {};
}

bool esmtp_rcpt_param(std::string_view k) { return k == "NOTIFY" || k == "ORCPT"; }

std::string esmtp_params_text(const std::vector<EsmtpParam>& params) {
  std::string out;
  for (const EsmtpParam& p : params) {
    if (!out.empty()) out.push_back(' ');
    out += p.text();
  }
  return out;
}

}  // namespace postern
