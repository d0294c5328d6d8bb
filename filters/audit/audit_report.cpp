// Reading audit logs and the text report; see audit_report.h.
#include "filters/audit/audit_report.h"

#include <algorithm>
#include <cctype>
#include <cstdio>

#include <arpa/inet.h>

#include "filters/audit/json_reader.h"
#include "filters/audit/line_reader.h"
#include "filters/dmarc/dmarc.h"
#include "filters/text/ascii.h"
#include "filters/text/bidi.h"
#include "filters/text/utf8.h"

namespace postern {

namespace {

constexpr std::size_t kMaxExamples = 10;      // malformed lines named in the report
constexpr std::size_t kMaxLine = kJsonMaxInput;
constexpr std::size_t kMaxDomains = 100000;   // distinct From domains tallied; more go to "(other)"
constexpr std::size_t kMaxGroups = 10000;     // signers, networks, PTR domains, days per From domain

// Terminal-safe: control characters (C0, DEL, C1: ESC [ / OSC sequences,
// BEL, a CR that overwrites the line), ill-formed UTF-8 and the characters
// that reorder or hide text (bidi controls, CVE-2021-42574) become a visible
// '?', the text is cut at `max` octets.
std::string printable(std::string_view s, std::size_t max) {
  std::string out;
  for (const utf8::Unit& u : utf8::Units(s)) {
    if (out.size() >= max) {
      out += "...";
      break;
    }
    const char32_t cp = u.code_point;
    if (cp >= 0x80 && cp < 0xa0 && u.well_formed) {  // a C1 control: one '?' per octet
      out.push_back('?');
      if (out.size() >= max) {
        out += "...";
        break;
      }
      out.push_back('?');
    } else if (!u.well_formed || cp < 0x20 || cp == 0x7f || bidi::hides_or_reorders(cp)) {
      out.push_back('?');
    } else {
      out.append(u.octets);
    }
  }
  return out;
}

// Display width of UTF-8 text: one column per character.
std::size_t columns(std::string_view s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xc0) != 0x80;
  return n;
}

std::string pad(std::string_view s, std::size_t width, bool right = false) {
  std::size_t w = columns(s);
  std::string fill(w < width ? width - w : 0, ' ');
  return right ? fill + std::string(s) : std::string(s) + fill;
}

// "192.0.2.0/24" or "2001:db8:1:2::/64" for a client address; the text
// itself when it is not an address.
std::string network_of(const std::string& ip) {
  unsigned char b[16] = {};
  char buf[64];
  if (inet_pton(AF_INET, ip.c_str(), b) == 1) {
    b[3] = 0;
    inet_ntop(AF_INET, b, buf, sizeof buf);
    return std::string(buf) + "/24";
  }
  if (inet_pton(AF_INET6, ip.c_str(), b) == 1) {
    std::fill(b + 8, b + 16, 0);
    inet_ntop(AF_INET6, b, buf, sizeof buf);
    return std::string(buf) + "/64";
  }
  return ip.empty() ? "?" : ip;
}

// Adds `key` to a bounded map: past kMaxGroups new keys go to "(other)".
template <typename M>
typename M::mapped_type& bounded(M& m, const std::string& key) {
  if (m.size() >= kMaxGroups && !m.count(key)) return m["(other)"];
  return m[key];
}

}  // namespace

std::string percent(std::size_t part, std::size_t whole) {
  if (whole == 0) return "-";
  char buf[16];
  std::snprintf(buf, sizeof buf, "%.1f%%", 100.0 * static_cast<double>(part) / static_cast<double>(whole));
  return buf;
}

AuditReportBuilder::AuditReportBuilder(std::vector<std::string> domains, std::size_t top_sources)
    : top_(top_sources) {
  for (auto& d : domains) filter_.push_back(ascii::to_lower(d));
  totals_.domain_filter = filter_;
}

bool AuditReportBuilder::wanted(const std::string& domain) const {
  if (filter_.empty()) return true;
  for (const std::string& f : filter_) {
    if (domain == f) return true;
    if (domain.size() > f.size() && domain.compare(domain.size() - f.size(), f.size(), f) == 0 &&
        domain[domain.size() - f.size() - 1] == '.') {
      return true;
    }
  }
  return false;
}

void AuditReportBuilder::malformed(std::string_view name, std::size_t line_number, const std::string& why) {
  ++totals_.malformed;
  if (totals_.malformed_examples.size() < kMaxExamples) {
    totals_.malformed_examples.push_back(std::string(name) + ":" + std::to_string(line_number) + ": " + why);
  }
}

void AuditReportBuilder::add_stream(std::string_view name, std::istream& in) {
  ++totals_.files;
  AuditLineReader reader(in, kMaxLine);
  while (reader.next()) {
    if (reader.too_long()) {
      ++totals_.lines;
      malformed(name, reader.number(), "line longer than " + std::to_string(kMaxLine) + " octets");
      continue;
    }
    add_line(name, reader.number(), reader.line());
  }
}

void AuditReportBuilder::add_line(std::string_view name, std::size_t number, std::string_view line) {
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
  if (line.empty()) return;
  ++totals_.lines;
  if (line.size() > kMaxLine) {
    malformed(name, number, "line longer than " + std::to_string(kMaxLine) + " octets");
    return;
  }
  JsonParse p = parse_json(line);
  if (!p.ok) {
    malformed(name, number, "not JSON (" + p.error + " at octet " + std::to_string(p.offset) + ")");
    return;
  }
  const JsonValue& r = p.value;
  if (r.type != JsonValue::Type::kObject || !r.get("action") || !r.get("client")) {
    malformed(name, number, "not an audit record (no \"action\" or \"client\")");
    return;
  }
  ++totals_.records;
  std::string domain = ascii::to_lower(r.str("from_domain"));
  if (domain.empty()) domain = "(none)";
  if (!wanted(domain)) {
    ++totals_.skipped;
    return;
  }
  if (tallies_.size() >= kMaxDomains && !tallies_.count(domain)) domain = "(other)";
  std::string time = r.str("time");
  if (!time.empty()) {
    if (totals_.first_time.empty() || time < totals_.first_time) totals_.first_time = time;
    if (time > totals_.last_time) totals_.last_time = time;
  }
  Tally& t = tallies_[domain];
  DomainReport& d = t.report;
  d.domain = domain;
  ++d.messages;
  const std::string action = r.str("action", "unknown");
  ++d.actions[action];
  // Outbound mail postern signed: its DKIM is postern's own signature, added
  // after the checks; counted as signed, not in the DKIM pass rate.
  const bool signed_out = r.flag("signed");
  if (signed_out) ++d.signed_out;

  std::string spf = "none", dkim = "none", dmarc = "none";
  std::string dkim_pass_aligned, dkim_pass_unaligned;  // a passing signature's d=, by alignment
  if (const JsonValue* s = r.get("spf"); s && s->type == JsonValue::Type::kObject) {
    ++d.spf_checked;
    spf = s->str("result", "none");
    if (spf == "pass") ++d.spf_pass;
  }
  const JsonValue* m = r.get("dmarc");
  if (m && m->type != JsonValue::Type::kObject) m = nullptr;
  const bool adkim_strict = m && m->get("published") && m->get("published")->str("adkim") == "s";
  if (const JsonValue* k = r.get("dkim"); k && k->type == JsonValue::Type::kArray && !(signed_out && k->array.empty())) {
    ++d.dkim_checked;
    for (const JsonValue& sig : k->array) {
      std::string res = sig.str("result", "none");
      if (res == "pass") dkim = "pass";
      else if (dkim != "pass") dkim = res;
      std::string sd = ascii::to_lower(sig.str("domain")), ss = sig.str("selector");
      ReportSigner& signer = bounded(t.signers, sd + "\x1f" + ss);
      signer.domain = sd;
      signer.selector = ss;
      signer.aligned = !sd.empty() && domain != "(none)" && domains_aligned(sd, domain, adkim_strict);
      ++(res == "pass" ? signer.pass : signer.fail);
      if (res == "pass") (signer.aligned ? dkim_pass_aligned : dkim_pass_unaligned) = sd;
    }
    if (dkim == "pass") ++d.dkim_pass;
  }
  bool dmarc_checked = false;
  if (m) {
    dmarc_checked = true;
    ++d.dmarc_checked;
    dmarc = m->str("result", "none");
    if (dmarc == "pass") ++d.dmarc_pass;
    if (dmarc == "fail") ++d.dmarc_fail;
    if (m->flag("spf_aligned")) ++d.spf_aligned;
    if (m->flag("dkim_aligned")) ++d.dkim_aligned;
  }
  // Failing: DMARC did not pass where it was checked; otherwise neither SPF
  // nor DKIM passed where one of them was checked.
  bool checked = dmarc_checked || r.get("spf") || r.get("dkim");
  bool failing = !signed_out && (dmarc_checked ? dmarc != "pass" : checked && spf != "pass" && dkim != "pass");
  // A passing third-party signature says so: "dkim=pass" alone reads as if it counted for DMARC.
  const std::string dkim_shown = dkim == "pass" && dkim_pass_aligned.empty() && !dkim_pass_unaligned.empty()
                                     ? "pass (d=" + dkim_pass_unaligned + ", unaligned)"
                                     : dkim;
  const std::string results = "spf=" + spf + " dkim=" + dkim_shown + " dmarc=" + dmarc;
  const JsonValue* client = r.get("client");
  const std::string ip = client ? client->str("ip", "?") : "?";
  const std::string ptr = ascii::to_lower(client ? client->str("name") : "");

  // Sources by network and by the organizational domain of their verified PTR.
  for (auto [groups, key] : {std::pair{&t.networks, network_of(ip)},
                             {&t.ptrs, ptr.empty() ? std::string("(no verified PTR)") : organizational_domain(ptr)}}) {
    GroupTally& g = bounded(*groups, key);
    ++g.messages;
    if (failing) ++g.failing;
    if (g.addresses.size() < kMaxGroups) g.addresses[ip] = true;
  }
  if (time.size() >= 10 && time[4] == '-' && time[7] == '-') {
    for (auto* days : {&t.days, &days_}) {
      ReportDay& day = bounded(*days, time.substr(0, 10));
      day.day = time.substr(0, 10);
      ++day.messages;
      if (dmarc == "pass") ++day.dmarc_pass;
      else if (dmarc_checked) ++day.dmarc_fail;
    }
  }
  if (m && m->get("published")) {
    const JsonValue* pub = m->get("published");
    const JsonValue* pct = pub->get("pct");
    std::string published = "p=" + pub->str("p", "none") + " sp=" + pub->str("sp", "none") + " pct=" +
                            (pct && pct->type == JsonValue::Type::kNumber && pct->number >= 0 && pct->number <= 100
                                 ? std::to_string(static_cast<int>(pct->number))
                                 : std::string("100"));
    std::string applied = "dmarc=" + dmarc + ", disposition " + m->str("disposition", "none");
    if (const JsonValue* o = m->get("override"); o && o->type == JsonValue::Type::kObject) {
      applied += ", override " + o->str("type");
      if (!o->str("comment").empty()) applied += " (" + o->str("comment") + ")";
    }
    applied += " -> " + action;
    auto& row = bounded(d.policy, published);
    if (row.size() < kMaxGroups || row.count(applied)) ++row[applied];
  }
  if (failing) {
    ++d.failing;
    SourceTally& src = bounded(t.sources, ip);
    if (src.count == 0 || src.name.empty()) {
      src.name = ptr;
      if (src.name.empty()) src.name = r.str("helo");
    }
    src.results = results;
    ++src.count;
    if (src.messages.size() < kMaxSourceMessages && listed_messages_ < kMaxReportMessages) {
      ++listed_messages_;
      // Cut as the page shows them: a line can hold a megabyte.
      src.messages.push_back(ReportMessage{time.substr(0, 40), r.str("message_id").substr(0, 256),
                                           r.str("queue_id").substr(0, 128), action.substr(0, 40), results.substr(0, 256)});
    }
  }
}

AuditReport AuditReportBuilder::finish() const {
  AuditReport out = totals_;
  for (const auto& [domain, t] : tallies_) {
    DomainReport d = t.report;
    for (const auto& [ip, s] : t.sources) d.sources.push_back(ReportSource{ip, s.name, s.results, s.count, s.messages});
    std::stable_sort(d.sources.begin(), d.sources.end(),
                     [](const ReportSource& a, const ReportSource& b) { return a.count > b.count; });
    if (d.sources.size() > top_) d.sources.resize(top_);
    for (const auto& [key, s] : t.signers) d.signers.push_back(s);
    std::stable_sort(d.signers.begin(), d.signers.end(), [](const ReportSigner& a, const ReportSigner& b) {
      return a.pass + a.fail > b.pass + b.fail;
    });
    for (auto [from, to] : {std::pair{&t.networks, &d.networks}, {&t.ptrs, &d.ptrs}}) {
      for (const auto& [name, g] : *from) to->push_back(ReportGroup{name, g.messages, g.failing, g.addresses.size()});
      std::stable_sort(to->begin(), to->end(),
                       [](const ReportGroup& a, const ReportGroup& b) { return a.messages > b.messages; });
      if (to->size() > top_) to->resize(top_);
    }
    for (const auto& [day, v] : t.days) d.days.push_back(v);
    out.domains.push_back(std::move(d));
  }
  for (const auto& [day, v] : days_) out.days.push_back(v);
  std::stable_sort(out.domains.begin(), out.domains.end(),
                   [](const DomainReport& a, const DomainReport& b) { return a.messages > b.messages; });
  return out;
}

void print_report_text(const AuditReport& r, std::ostream& out) {
  out << "postern report: " << r.files << " file" << (r.files == 1 ? "" : "s") << ", " << r.records
      << " records, " << r.malformed << " malformed line" << (r.malformed == 1 ? "" : "s");
  if (!r.domain_filter.empty()) out << ", " << r.skipped << " outside the --domain filter";
  out << "\n";
  if (!r.first_time.empty()) out << "period: " << printable(r.first_time, 40) << " .. " << printable(r.last_time, 40) << "\n";
  out << "\n";
  if (r.domains.empty()) {
    out << "no audit records" << (r.domain_filter.empty() ? "" : " for the given domains") << "\n";
  } else {
    std::size_t dw = 6;
    for (const DomainReport& d : r.domains) dw = std::max(dw, columns(printable(d.domain, 60)));
    out << pad("DOMAIN", dw) << "  " << pad("MESSAGES", 8, true) << "  " << pad("SPF", 6, true) << "  "
        << pad("DKIM", 6, true) << "  " << pad("DMARC", 6, true) << "  " << pad("SPF-ALN", 7, true) << "  "
        << pad("DKIM-ALN", 8, true) << "  " << pad("FAILING", 7, true) << "  " << pad("SIGNED", 6, true)
        << "  ACTIONS\n";
    for (const DomainReport& d : r.domains) {
      std::string actions;
      for (const auto& [a, n] : d.actions) actions += (actions.empty() ? "" : " ") + printable(a, 20) + "=" + std::to_string(n);
      out << pad(printable(d.domain, 60), dw) << "  " << pad(std::to_string(d.messages), 8, true) << "  "
          << pad(percent(d.spf_pass, d.spf_checked), 6, true) << "  " << pad(percent(d.dkim_pass, d.dkim_checked), 6, true)
          << "  " << pad(percent(d.dmarc_pass, d.dmarc_checked), 6, true) << "  "
          << pad(percent(d.spf_aligned, d.dmarc_checked), 7, true) << "  "
          << pad(percent(d.dkim_aligned, d.dmarc_checked), 8, true) << "  " << pad(std::to_string(d.failing), 7, true)
          << "  " << pad(std::to_string(d.signed_out), 6, true) << "  " << actions << "\n";
    }
    out << "\nSPF, DKIM, DMARC: pass rate among the messages checked; SPF-ALN, DKIM-ALN: aligned\n"
           "with the From domain among the DMARC-checked; FAILING: messages that did not pass DMARC\n"
           "(or, without DMARC, neither SPF nor DKIM); SIGNED: outbound messages postern signed itself\n"
           "(not counted in the DKIM rate).\n";
    for (const DomainReport& d : r.domains) {
      if (d.sources.empty()) continue;
      out << "\n" << printable(d.domain, 60) << ": top failing sources\n";
      std::size_t iw = 9, nw = 9;
      for (const ReportSource& s : d.sources) {
        iw = std::max(iw, columns(printable(s.ip, 45)));
        nw = std::max(nw, columns(printable(s.name, 50)));
      }
      out << "  " << pad("MESSAGES", 8, true) << "  " << pad("CLIENT IP", iw) << "  " << pad("NAME/HELO", nw)
          << "  LAST RESULTS\n";
      for (const ReportSource& s : d.sources) {
        out << "  " << pad(std::to_string(s.count), 8, true) << "  " << pad(printable(s.ip, 45), iw) << "  "
            << pad(printable(s.name, 50), nw) << "  " << printable(s.results, 80) << "\n";
      }
    }
  }
  if (r.malformed > 0) {
    out << "\nmalformed lines (" << r.malformed << "):\n";
    for (const std::string& m : r.malformed_examples) out << "  " << printable(m, 200) << "\n";
    if (r.malformed > r.malformed_examples.size()) {
      out << "  ... and " << r.malformed - r.malformed_examples.size() << " more\n";
    }
  }
}

}  // namespace postern
