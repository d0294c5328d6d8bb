// DMARC aggregate reports from the audit log; see dmarc_aggregate.h.
#include "filters/audit/dmarc_aggregate.h"

#include <arpa/inet.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>

#include "filters/audit/json_reader.h"
#include "filters/audit/line_reader.h"
#include "filters/text/ascii.h"
#include "filters/text/markup.h"
#include "filters/text/utf8.h"

namespace postern {

namespace {

constexpr std::size_t kMaxDomains = 10000;       // policy domains per run
constexpr std::size_t kMaxRowsPerDomain = 100000;  // distinct rows; more are counted in the last
constexpr std::size_t kMaxDkimPerRow = 20;       // DKIM results listed per record
constexpr std::size_t kMaxRua = 10;              // rua= URIs used per record
constexpr std::size_t kMaxField = 255;           // octets of any text in the XML
constexpr std::size_t kMaxExamples = 10;         // malformed lines named

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// XML character data: markup escaped; ill-formed UTF-8 and what XML 1.0
// does not allow as a Char (§2.2: control characters, U+FFFE, U+FFFF) dropped,
// as a parser refuses the whole report for one of them; cut at kMaxField octets.
std::string xml(std::string_view s) {
  std::string out;
  std::size_t octets = 0;
  for (const utf8::Unit& u : utf8::Units(s)) {
    if (octets >= kMaxField) break;
    if (!u.well_formed || u.code_point == 0xfffe || u.code_point == 0xffff) continue;
    octets += u.octets.size();
    if (!u.ascii()) {
      out.append(u.octets);
      continue;
    }
    markup::append_escaped(out, u.octets[0], markup::Dialect::kXml);  // a control character is dropped
  }
  return out;
}

// A host name (LDH labels of 1..63, at most 253 octets): the only policy
// domains reported. The domain becomes a DNS query, a file name and a Subject,
// so an audit line carrying "../x" or a CR LF is not one.
bool host_name(const std::string& d) {
  if (d.empty() || d.size() > 253 || d.front() == '.' || d.back() == '.' || d.find('.') == std::string::npos) return false;
  std::size_t label = 0;
  for (char c : d) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') return false;
    if (++label > 63) return false;
  }
  return true;
}

// Percent-decoding (RFC 3986 §2.1), e.g. "%21" for a "!" in the address.
std::string percent_decoded(std::string_view uri) {
  std::string out;
  for (std::size_t i = 0; i < uri.size(); ++i) {
    if (uri[i] == '%' && i + 2 < uri.size() &&
        std::isxdigit(static_cast<unsigned char>(uri[i + 1])) && std::isxdigit(static_cast<unsigned char>(uri[i + 2]))) {
      out.push_back(static_cast<char>(std::stoi(std::string(uri.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(uri[i]);
    }
  }
  return out;
}

// A rua= destination postern mails a report to: local@domain with a dot-atom
// local part (RFC 5321 §4.1.2, no quoting) and a host-name domain, lowered.
// It becomes RCPT TO, a To: header and a DNS name (§7.1's
// <policy>._report._dmarc.<domain>), so a second '@' ("victim@other@policy",
// whose last '@' would pass the same-organization test), a CR LF, a quote, a
// space or a domain literal is not one.
bool report_mailbox(std::string& addr) {
  static constexpr std::string_view kAtext = "!#$%&'*+-/=^_`{|}~";  // RFC 5322 atext besides ALPHA DIGIT, no '?'
  const auto at = addr.find('@');
  if (at == std::string::npos || at == 0 || at > 64 || addr.size() > 254) return false;
  const std::string local = addr.substr(0, at), domain = ascii::to_lower(addr.substr(at + 1));
  if (local.front() == '.' || local.back() == '.' || local.find("..") != std::string::npos) return false;
  for (char c : local) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && kAtext.find(c) == std::string_view::npos) return false;
  }
  if (!host_name(domain)) return false;
  addr = local + "@" + domain;
  return true;
}

std::string disposition_or_none(const std::string& d) {
  return d == "quarantine" || d == "reject" ? d : "none";
}

std::string one_of(const std::string& v, std::initializer_list<const char*> allowed, const char* fallback) {
  for (const char* a : allowed) {
    if (v == a) return v;
  }
  return fallback;
}

std::string domain_of(const std::string& mailbox) {
  auto at = mailbox.rfind('@');
  return at == std::string::npos ? std::string() : ascii::to_lower(mailbox.substr(at + 1));
}

bool parse_digits(std::string_view s, std::size_t n, int& out) {
  if (s.size() < n) return false;
  out = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
    out = out * 10 + (s[i] - '0');
  }
  return true;
}

}  // namespace

std::optional<std::int64_t> parse_report_time(std::string_view t) {
  t = trim(t);
  if (t.empty() || t.size() > 40) return std::nullopt;
  if (std::all_of(t.begin(), t.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); })) {
    if (t.size() > 12) return std::nullopt;
    return std::stoll(std::string(t));
  }
  std::tm tm{};
  int y, mo, d;
  if (t.size() < 10 || !parse_digits(t, 4, y) || t[4] != '-' || !parse_digits(t.substr(5), 2, mo) || t[7] != '-' ||
      !parse_digits(t.substr(8), 2, d) || mo < 1 || mo > 12 || d < 1 || d > 31) {
    return std::nullopt;
  }
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  std::int64_t offset = 0;
  std::string_view rest = t.substr(10);
  if (!rest.empty()) {
    int h, mi, s;
    if (rest[0] != 'T' && rest[0] != ' ') return std::nullopt;
    rest.remove_prefix(1);
    if (!parse_digits(rest, 2, h) || rest.size() < 8 || rest[2] != ':' || !parse_digits(rest.substr(3), 2, mi) ||
        rest[5] != ':' || !parse_digits(rest.substr(6), 2, s) || h > 23 || mi > 59 || s > 60) {
      return std::nullopt;
    }
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = s;
    rest.remove_prefix(8);
    if (!rest.empty() && rest[0] == '.') {
      rest.remove_prefix(1);
      while (!rest.empty() && std::isdigit(static_cast<unsigned char>(rest[0]))) rest.remove_prefix(1);
    }
    if (rest == "Z" || rest.empty()) {
      offset = 0;
    } else if ((rest[0] == '+' || rest[0] == '-') && rest.size() == 6 && rest[3] == ':') {
      int oh, om;
      if (!parse_digits(rest.substr(1), 2, oh) || !parse_digits(rest.substr(4), 2, om)) return std::nullopt;
      offset = (oh * 3600 + om * 60) * (rest[0] == '+' ? 1 : -1);
    } else {
      return std::nullopt;
    }
  }
  return static_cast<std::int64_t>(timegm(&tm)) - offset;
}

std::string schema_ip(const std::string& ip) {
  unsigned char b[16];
  char buf[64];
  if (inet_pton(AF_INET, ip.c_str(), b) == 1) {
    inet_ntop(AF_INET, b, buf, sizeof buf);
    return buf;
  }
  if (inet_pton(AF_INET6, ip.c_str(), b) != 1) return {};
  static const unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(b, kMapped, 12) == 0) {
    inet_ntop(AF_INET, b + 12, buf, sizeof buf);
    return buf;
  }
  std::string out;
  for (int i = 0; i < 8; ++i) {
    std::snprintf(buf, sizeof buf, "%s%x", i ? ":" : "", (b[2 * i] << 8) | b[2 * i + 1]);
    out += buf;
  }
  return out;
}

std::vector<DmarcRua> parse_dmarc_rua(std::string_view record) {
  std::vector<DmarcRua> out;
  std::string_view rest = record;
  bool first = true;
  while (!rest.empty()) {
    auto semi = rest.find(';');
    std::string_view tag = trim(rest.substr(0, semi));
    rest = semi == std::string_view::npos ? std::string_view() : rest.substr(semi + 1);
    auto eq = tag.find('=');
    if (eq == std::string_view::npos) continue;
    std::string name = ascii::to_lower(std::string(trim(tag.substr(0, eq))));
    std::string_view value = trim(tag.substr(eq + 1));
    if (first) {
      if (name != "v" || value != "DMARC1") return {};  // RFC 7489 §6.4: v= comes first
      first = false;
      continue;
    }
    if (name != "rua") continue;
    while (!value.empty() && out.size() < kMaxRua) {
      auto comma = value.find(',');
      std::string_view uri = trim(value.substr(0, comma));
      value = comma == std::string_view::npos ? std::string_view() : value.substr(comma + 1);
      if (uri.size() < 8 || ascii::to_lower(std::string(uri.substr(0, 7))) != "mailto:") continue;
      uri.remove_prefix(7);
      DmarcRua rua;
      // §6.2: "!" 1*DIGIT [ "k" / "m" / "g" / "t" ] after the URI.
      if (auto bang = uri.rfind('!'); bang != std::string_view::npos) {
        std::string_view size = uri.substr(bang + 1);
        uri = uri.substr(0, bang);
        std::uint64_t n = 0, unit = 1;
        std::size_t i = 0;
        for (; i < size.size() && std::isdigit(static_cast<unsigned char>(size[i])) && i < 12; ++i) n = n * 10 + (size[i] - '0');
        if (i == 0) continue;
        if (i < size.size()) {
          const char u = ascii::to_lower(size[i]);
          unit = u == 'k' ? 1ull << 10 : u == 'm' ? 1ull << 20 : u == 'g' ? 1ull << 30 : u == 't' ? 1ull << 40 : 0;
          if (unit == 0 || i + 1 != size.size()) continue;
        }
        rua.limit = n > UINT64_MAX / unit ? UINT64_MAX : n * unit;  // a limit past 2^64 octets is none
      }
      // RFC 6068 header fields ("?subject=", "?to=", "?bcc=") are not the
      // destination: the report's own headers are fixed, none is taken from DNS.
      uri = uri.substr(0, uri.find('?'));
      std::string addr = percent_decoded(uri);
      if (!report_mailbox(addr)) continue;
      // Each mailbox once (compared without case, as MTAs deliver them): a
      // record listing one address many times gets one report, not many.
      const std::string key = ascii::to_lower(addr);
      if (std::any_of(out.begin(), out.end(), [&](const DmarcRua& r) { return ascii::to_lower(r.address) == key; })) {
        continue;
      }
      rua.address = addr;
      out.push_back(std::move(rua));
    }
  }
  return out;
}

std::string parse_dmarc_fo(std::string_view record) {
  std::string_view rest = record;
  while (!rest.empty()) {
    auto semi = rest.find(';');
    std::string_view tag = trim(rest.substr(0, semi));
    rest = semi == std::string_view::npos ? std::string_view() : rest.substr(semi + 1);
    auto eq = tag.find('=');
    if (eq == std::string_view::npos || ascii::to_lower(std::string(trim(tag.substr(0, eq)))) != "fo") continue;
    std::string value;
    for (char c : trim(tag.substr(eq + 1))) {
      if (c != ' ') value.push_back(ascii::to_lower(c));
    }
    if (value.empty() || value.size() > 16) return "0";
    for (std::size_t i = 0; i < value.size(); ++i) {
      const bool option = i % 2 == 0;
      if (option ? std::string_view("01ds").find(value[i]) == std::string_view::npos : value[i] != ':') return "0";
    }
    return value.back() == ':' ? "0" : value;
  }
  return "0";
}

DmarcAggregateBuilder::DmarcAggregateBuilder(std::int64_t begin, std::int64_t end, std::vector<std::string> domains)
    : begin_(begin), end_(end) {
  for (auto& d : domains) filter_.push_back(ascii::to_lower(d));
}

void DmarcAggregateBuilder::malformed(std::string_view name, std::size_t number, const std::string& why) {
  ++malformed_;
  if (malformed_examples_.size() < kMaxExamples) {
    malformed_examples_.push_back(std::string(name) + ":" + std::to_string(number) + ": " + why);
  }
}

void DmarcAggregateBuilder::add_stream(std::string_view name, std::istream& in) {
  AuditLineReader reader(in, kJsonMaxInput);
  while (reader.next()) {
    if (reader.too_long()) {
      ++lines_;
      malformed(name, reader.number(), "line longer than " + std::to_string(kJsonMaxInput) + " octets");
      continue;
    }
    add_line(reader.line(), name, reader.number());
  }
}

void DmarcAggregateBuilder::add_line(std::string_view line, std::string_view name, std::size_t number) {
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
  if (line.empty()) return;
  ++lines_;
  if (line.size() > kJsonMaxInput) {
    malformed(name, number, "line longer than " + std::to_string(kJsonMaxInput) + " octets");
    return;
  }
  JsonParse p = parse_json(line);
  if (!p.ok) {
    malformed(name, number, "not JSON (" + p.error + " at octet " + std::to_string(p.offset) + ")");
    return;
  }
  if (p.value.type != JsonValue::Type::kObject) {
    malformed(name, number, "not an audit record (not a JSON object)");
    return;
  }
  const JsonValue& r = p.value;
  const std::string time_text = r.str("time");
  auto time = parse_report_time(time_text);
  if (!time || *time < begin_ || *time > end_) return;
  ++in_range_;
  const JsonValue* m = r.get("dmarc");
  if (!m || m->type != JsonValue::Type::kObject) return;
  const JsonValue* pub = m->get("published");
  std::string domain = ascii::to_lower(m->str("record_domain"));
  if (domain.empty() || !pub || pub->type != JsonValue::Type::kObject) {
    ++no_record_;
    return;
  }
  if (!host_name(domain)) {
    malformed(name, number, "dmarc.record_domain is not a host name");
    return;
  }
  if (!filter_.empty() && std::find(filter_.begin(), filter_.end(), domain) == filter_.end()) return;
  if (!reports_.count(domain) && reports_.size() >= kMaxDomains) return;
  const JsonValue* client = r.get("client");
  std::string ip = schema_ip(client ? client->str("ip") : "");
  if (ip.empty()) return;  // no client address (a local submission): nothing to report

  DmarcAggregateReport& rep = reports_[domain];
  rep.domain = domain;
  if (published_time_[domain] <= time_text) {  // the newest record's policy
    published_time_[domain] = time_text;
    rep.p = disposition_or_none(pub->str("p"));
    rep.sp = disposition_or_none(pub->str("sp", rep.p));
    rep.adkim = pub->str("adkim") == "s" ? "s" : "r";
    rep.aspf = pub->str("aspf") == "s" ? "s" : "r";
    const JsonValue* pct = pub->get("pct");
    rep.pct = pct && pct->type == JsonValue::Type::kNumber && pct->number >= 0 && pct->number <= 100
                  ? static_cast<int>(pct->number) : 100;
  }

  DmarcReportRow row;
  row.source_ip = ip;
  const bool pass = m->str("result") == "pass";
  row.disposition = pass ? "none" : disposition_or_none(m->str("disposition"));
  row.dkim = m->flag("dkim_aligned") ? "pass" : "fail";
  row.spf = m->flag("spf_aligned") ? "pass" : "fail";
  if (const JsonValue* o = m->get("override"); o && o->type == JsonValue::Type::kObject) {
    row.reasons.emplace_back(one_of(o->str("type"), {"forwarded", "sampled_out", "trusted_forwarder", "mailing_list",
                                                     "local_policy", "other"}, "other"),
                             o->str("comment"));
  }
  // The disposition is what happened to the messages: a policy postern did
  // not carry out ([dmarc] enforce = "report", or "quarantine" for p=reject)
  // is reported as the milder one postern applied, with the reason.
  const std::string action = r.str("action");
  auto severity = [](const std::string& d) { return d == "reject" ? 2 : d == "quarantine" ? 1 : 0; };
  const std::string applied = action == "rejected" || action == "discarded" ? "reject"
                              : action == "quarantined"                     ? "quarantine"
                              : action == "tempfailed"                      ? row.disposition
                                                                            : "none";
  if (severity(applied) < severity(row.disposition)) {
    row.disposition = applied;
    if (row.reasons.empty()) {
      row.reasons.emplace_back("local_policy", "policy not enforced by the receiver; message " + action);
    }
  }
  row.header_from = ascii::to_lower(m->str("from_domain", r.str("from_domain")));
  row.envelope_from = domain_of(r.str("mail_from"));
  if (const JsonValue* k = r.get("dkim"); k && k->type == JsonValue::Type::kArray) {
    for (const JsonValue& sig : k->array) {
      if (row.dkim_results.size() >= kMaxDkimPerRow) break;
      std::string d = ascii::to_lower(sig.str("domain"));
      if (d.empty()) continue;  // a signature without d= has no domain to report
      row.dkim_results.push_back({d, sig.str("selector"),
                                  one_of(sig.str("result"), {"none", "pass", "fail", "policy", "neutral", "temperror",
                                                             "permerror"}, "permerror")});
    }
  }
  if (const JsonValue* s = r.get("spf"); s && s->type == JsonValue::Type::kObject) {
    std::string d = ascii::to_lower(s->str("domain"));
    row.spf_results.push_back({d.empty() ? row.envelope_from : d, s->str("identity") == "helo" ? "helo" : "mfrom",
                               one_of(s->str("result"), {"none", "neutral", "pass", "fail", "softfail", "temperror",
                                                         "permerror"}, "permerror")});
  } else {
    // The schema wants one SPF result; SPF was not checked: none.
    row.spf_results.push_back({row.envelope_from.empty() ? ascii::to_lower(r.str("helo")) : row.envelope_from, "mfrom", "none"});
  }

  std::string key = row.source_ip + '\x1f' + row.disposition + '\x1f' + row.dkim + '\x1f' + row.spf + '\x1f' +
                    row.header_from + '\x1f' + row.envelope_from;
  for (auto& [t, c] : row.reasons) key += '\x1f' + t + '\x1e' + c;
  for (auto& d : row.dkim_results) key += '\x1f' + d.domain + '\x1e' + d.selector + '\x1e' + d.result;
  for (auto& s : row.spf_results) key += '\x1f' + s.domain + '\x1e' + s.scope + '\x1e' + s.result;
  auto& index = row_index_[domain];
  auto it = index.find(key);
  std::size_t at;
  if (it != index.end()) {
    at = it->second;
  } else if (rep.rows.size() < kMaxRowsPerDomain) {
    at = rep.rows.size();
    index.emplace(key, at);
    rep.rows.push_back(std::move(row));
  } else {
    at = rep.rows.size() - 1;
  }
  ++rep.rows[at].count;
  ++rep.messages;
}

std::vector<DmarcAggregateReport> DmarcAggregateBuilder::finish() const {
  std::vector<DmarcAggregateReport> out;
  for (const auto& [domain, rep] : reports_) {
    DmarcAggregateReport r = rep;
    std::stable_sort(r.rows.begin(), r.rows.end(),
                     [](const DmarcReportRow& a, const DmarcReportRow& b) { return a.count > b.count; });
    out.push_back(std::move(r));
  }
  return out;
}

std::string dmarc_report_id(const DmarcReportMeta& meta, const std::string& policy_domain) {
  return policy_domain + "." + std::to_string(meta.begin) + "." + std::to_string(meta.end) + "@" + meta.receiver;
}

std::string dmarc_report_filename(const DmarcReportMeta& meta, const std::string& policy_domain) {
  return meta.receiver + "!" + policy_domain + "!" + std::to_string(meta.begin) + "!" + std::to_string(meta.end) +
         ".xml.gz";
}

std::string dmarc_report_xml(const DmarcAggregateReport& r, const DmarcReportMeta& meta, const std::string& id) {
  std::string o = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<feedback xmlns=\"http://dmarc.org/dmarc-xml/0.1\">\n";
  o += "  <report_metadata>\n    <org_name>" + xml(meta.org_name) + "</org_name>\n    <email>" + xml(meta.email) +
       "</email>\n";
  if (!meta.extra_contact_info.empty()) {
    o += "    <extra_contact_info>" + xml(meta.extra_contact_info) + "</extra_contact_info>\n";
  }
  o += "    <report_id>" + xml(id) + "</report_id>\n    <date_range>\n      <begin>" + std::to_string(meta.begin) +
       "</begin>\n      <end>" + std::to_string(meta.end) + "</end>\n    </date_range>\n  </report_metadata>\n";
  o += "  <policy_published>\n    <domain>" + xml(r.domain) + "</domain>\n    <adkim>" + r.adkim +
       "</adkim>\n    <aspf>" + r.aspf + "</aspf>\n    <p>" + r.p + "</p>\n    <sp>" + r.sp + "</sp>\n    <pct>" +
       std::to_string(r.pct) + "</pct>\n    <fo>" + xml(r.fo) + "</fo>\n  </policy_published>\n";
  for (const DmarcReportRow& row : r.rows) {
    o += "  <record>\n    <row>\n      <source_ip>" + row.source_ip + "</source_ip>\n      <count>" +
         std::to_string(row.count) + "</count>\n      <policy_evaluated>\n        <disposition>" + row.disposition +
         "</disposition>\n        <dkim>" + row.dkim + "</dkim>\n        <spf>" + row.spf + "</spf>\n";
    for (const auto& [type, comment] : row.reasons) {
      o += "        <reason>\n          <type>" + type + "</type>\n";
      if (!comment.empty()) o += "          <comment>" + xml(comment) + "</comment>\n";
      o += "        </reason>\n";
    }
    o += "      </policy_evaluated>\n    </row>\n    <identifiers>\n      <envelope_from>" + xml(row.envelope_from) +
         "</envelope_from>\n      <header_from>" + xml(row.header_from) + "</header_from>\n    </identifiers>\n"
         "    <auth_results>\n";
    for (const auto& d : row.dkim_results) {
      o += "      <dkim>\n        <domain>" + xml(d.domain) + "</domain>\n";
      if (!d.selector.empty()) o += "        <selector>" + xml(d.selector) + "</selector>\n";
      o += "        <result>" + d.result + "</result>\n      </dkim>\n";
    }
    for (const auto& s : row.spf_results) {
      o += "      <spf>\n        <domain>" + xml(s.domain) + "</domain>\n        <scope>" + s.scope +
           "</scope>\n        <result>" + s.result + "</result>\n      </spf>\n";
    }
    o += "    </auth_results>\n  </record>\n";
  }
  o += "</feedback>\n";
  return o;
}

std::string gzip_compress(std::string_view data, const std::string& name) {
  z_stream z{};
  if (deflateInit2(&z, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) return {};
  gz_header header{};
  std::string fname = name;  // zlib wants a NUL-terminated, writable-typed buffer
  header.name = reinterpret_cast<Bytef*>(fname.data());
  header.time = 0;
  header.os = 3;  // Unix
  deflateSetHeader(&z, &header);
  std::string out;
  out.resize(deflateBound(&z, data.size()) + name.size() + 32);
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  int rc = deflate(&z, Z_FINISH);
  std::size_t produced = out.size() - z.avail_out;
  deflateEnd(&z);
  if (rc != Z_STREAM_END) return {};
  out.resize(produced);
  return out;
}

}  // namespace postern
