// The HTML page of `postern report`: one static file a mail admin opens to
// see who sends as which domain: per-day trend, pass rates, DKIM signers with
// their alignment, sources by network and PTR, the DMARC policy published vs
// what postern applied, and each failing source's messages. Inline CSS and SVG only: no script, no
// font, no image or style sheet from anywhere else, so it opens offline and
// leaks nothing. Every text from the logs is HTML-escaped.
#include <algorithm>
#include <cstdio>
#include <string>

#include "filters/audit/audit_report.h"
#include "filters/audit/json_reader.h"
#include "filters/text/bidi.h"
#include "filters/text/markup.h"
#include "filters/text/utf8.h"

namespace postern {

namespace {

constexpr std::size_t kMaxChartDomains = 30;  // bars in the overview chart

// Text content or attribute value: markup characters escaped, control
// characters, ill-formed UTF-8 and the characters that reorder or hide text
// (bidi controls, CVE-2021-42574) replaced by U+FFFD, cut at `max` octets.
std::string esc(std::string_view s, std::size_t max = 200) {
  std::string out;
  std::size_t octets = 0;
  for (const utf8::Unit& u : utf8::Units(s)) {
    if (octets >= max) break;
    if (!u.well_formed || bidi::hides_or_reorders(u.code_point)) {
      out += "&#xfffd;";
      octets += u.octets.size();
      continue;
    }
    if (u.code_point >= 0x80 && u.code_point < 0xa0) {  // a C1 control: one U+FFFD per octet
      out += "&#xfffd;";
      if (++octets < max) {
        out += "&#xfffd;";
        ++octets;
      }
      continue;
    }
    octets += u.octets.size();
    if (!u.ascii()) {
      out.append(u.octets);
      continue;
    }
    if (!markup::append_escaped(out, u.octets[0], markup::Dialect::kHtml)) out += "&#xfffd;";
  }
  if (octets < s.size()) out += "&#8230;";
  return out;
}

std::string fmt_num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

double ratio(std::size_t part, std::size_t whole) {
  return whole ? static_cast<double>(part) / static_cast<double>(whole) : 0;
}

const char* action_color(const std::string& a) {
  if (a == "relayed") return "#2e7d32";
  if (a == "rejected") return "#c62828";
  if (a == "tempfailed") return "#ef6c00";
  if (a == "quarantined") return "#6a1b9a";
  if (a == "discarded") return "#455a64";
  if (a == "redirected") return "#1565c0";
  return "#9e9e9e";
}

constexpr const char* kStyle = R"(
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c6cbd6}
main{padding:20px 28px;max-width:1500px}
section{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:16px 20px;margin:0 0 18px;overflow-x:auto}
h2{font-size:17px;margin:0 0 10px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceef2;white-space:nowrap}
th{font-weight:600;color:#4a5263;background:#fafbfc}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.good{color:#2e7d32}.warn{color:#ef6c00}.bad{color:#c62828}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:5px;border-radius:2px}
.muted{color:#6b7385}
.grid{display:grid;grid-template-columns:minmax(280px,420px) 1fr;gap:20px;align-items:start}
svg text{font:12px system-ui,sans-serif;fill:#1d2330}
h3{font-size:15px;margin:16px 0 6px}
h4{font-size:14px;margin:10px 0 4px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:20px}
.msgs{margin:8px 0;padding:6px 10px;border-left:3px solid #dde1e8}
.msgs:target{border-left-color:#1565c0;background:#f0f5fc}
td{max-width:420px;overflow:hidden;text-overflow:ellipsis}
)";

std::string rate_class(std::size_t part, std::size_t whole) {
  if (whole == 0) return "muted";
  double r = ratio(part, whole);
  return r >= 0.95 ? "good" : r >= 0.7 ? "warn" : "bad";
}

// Overview: one bar per domain, split into DMARC pass / fail / not checked.
void overview_chart(const AuditReport& r, std::ostream& out) {
  std::size_t n = std::min(r.domains.size(), kMaxChartDomains);
  std::size_t most = 1;
  for (std::size_t i = 0; i < n; ++i) most = std::max(most, r.domains[i].messages);
  const int label_w = 220, bar_w = 520, row_h = 22, top = 6;
  const int height = top + static_cast<int>(n) * row_h + 6;
  out << "<svg role=\"img\" aria-label=\"messages per From domain\" width=\"" << label_w + bar_w + 80
      << "\" height=\"" << height << "\" viewBox=\"0 0 " << label_w + bar_w + 80 << ' ' << height << "\">\n";
  for (std::size_t i = 0; i < n; ++i) {
    const DomainReport& d = r.domains[i];
    int y = top + static_cast<int>(i) * row_h;
    double scale = static_cast<double>(bar_w) / static_cast<double>(most);
    double pass = static_cast<double>(d.dmarc_pass) * scale;
    double fail = static_cast<double>(d.dmarc_checked - d.dmarc_pass) * scale;
    double rest = static_cast<double>(d.messages - d.dmarc_checked) * scale;
    out << "<text x=\"" << label_w - 8 << "\" y=\"" << y + 14 << "\" text-anchor=\"end\">" << esc(d.domain, 30)
        << "</text>";
    double x = label_w;
    for (auto [w, color] : {std::pair<double, const char*>{pass, "#2e7d32"}, {fail, "#c62828"}, {rest, "#b0b7c3"}}) {
      if (w <= 0) continue;
      out << "<rect x=\"" << fmt_num(x) << "\" y=\"" << y + 3 << "\" width=\"" << fmt_num(w)
          << "\" height=\"" << row_h - 6 << "\" fill=\"" << color << "\"/>";
      x += w;
    }
    out << "<text x=\"" << fmt_num(x + 6) << "\" y=\"" << y + 14 << "\">" << d.messages << "</text>\n";
  }
  out << "</svg>\n<p class=\"legend\"><span><i style=\"background:#2e7d32\"></i>DMARC pass</span>"
         "<span><i style=\"background:#c62828\"></i>DMARC not passing</span>"
         "<span><i style=\"background:#b0b7c3\"></i>DMARC not checked</span></p>\n";
}

// One domain: a gauge per check (pass rate) and alignment, then the actions.
void domain_chart(const DomainReport& d, std::ostream& out) {
  struct Gauge {
    const char* label;
    std::size_t part, whole;
  };
  const Gauge gauges[] = {{"SPF pass", d.spf_pass, d.spf_checked},
                          {"DKIM pass", d.dkim_pass, d.dkim_checked},
                          {"DMARC pass", d.dmarc_pass, d.dmarc_checked},
                          {"SPF aligned", d.spf_aligned, d.dmarc_checked},
                          {"DKIM aligned", d.dkim_aligned, d.dmarc_checked}};
  const int label_w = 100, bar_w = 240, row_h = 22;
  const int height = 5 * row_h + 40;
  out << "<svg role=\"img\" aria-label=\"pass rates\" width=\"" << label_w + bar_w + 70 << "\" height=\"" << height
      << "\" viewBox=\"0 0 " << label_w + bar_w + 70 << ' ' << height << "\">\n";
  int y = 2;
  for (const Gauge& g : gauges) {
    double r = ratio(g.part, g.whole);
    const char* color = g.whole == 0 ? "#b0b7c3" : r >= 0.95 ? "#2e7d32" : r >= 0.7 ? "#ef6c00" : "#c62828";
    out << "<text x=\"0\" y=\"" << y + 14 << "\">" << g.label << "</text>"
        << "<rect x=\"" << label_w << "\" y=\"" << y + 3 << "\" width=\"" << bar_w << "\" height=\"" << row_h - 6
        << "\" fill=\"#eceef2\"/>"
        << "<rect x=\"" << label_w << "\" y=\"" << y + 3 << "\" width=\"" << fmt_num(r * bar_w) << "\" height=\""
        << row_h - 6 << "\" fill=\"" << color << "\"/>"
        << "<text x=\"" << label_w + bar_w + 6 << "\" y=\"" << y + 14 << "\">" << esc(percent(g.part, g.whole))
        << "</text>\n";
    y += row_h;
  }
  // Actions: one stacked bar.
  y += 8;
  double x = label_w;
  out << "<text x=\"0\" y=\"" << y + 14 << "\">actions</text>";
  for (const auto& [a, count] : d.actions) {
    double w = ratio(count, d.messages) * bar_w;
    out << "<rect x=\"" << fmt_num(x) << "\" y=\"" << y + 3 << "\" width=\"" << fmt_num(w) << "\" height=\""
        << row_h - 6 << "\" fill=\"" << action_color(a) << "\"><title>" << esc(a, 40) << ": " << count
        << "</title></rect>";
    x += w;
  }
  out << "\n</svg>\n<p class=\"legend\">";
  for (const auto& [a, count] : d.actions) {
    out << "<span><i style=\"background:" << action_color(a) << "\"></i>" << esc(a, 40) << " " << count << "</span>";
  }
  out << "</p>\n";
}

// Per-day trend: one stacked bar per UTC day (DMARC pass / not passing /
// not checked), the day under every few bars.
void trend_chart(const std::vector<ReportDay>& days, std::ostream& out) {
  constexpr std::size_t kMaxDays = 120;  // the last ones when there are more
  std::size_t first = days.size() > kMaxDays ? days.size() - kMaxDays : 0;
  std::size_t n = days.size() - first;
  std::size_t most = 1;
  for (std::size_t i = first; i < days.size(); ++i) most = std::max(most, days[i].messages);
  const int chart_h = 120, bar_w = n > 60 ? 6 : n > 20 ? 12 : 34, gap = n > 20 ? 3 : 8, left = 40, top = 8;
  const int width = left + static_cast<int>(n) * (bar_w + gap) + 20, height = top + chart_h + 34;
  out << "<svg role=\"img\" aria-label=\"messages per day\" width=\"" << width << "\" height=\"" << height
      << "\" viewBox=\"0 0 " << width << ' ' << height << "\">\n";
  out << "<text x=\"" << left - 6 << "\" y=\"" << top + 10 << "\" text-anchor=\"end\">" << most << "</text>"
      << "<text x=\"" << left - 6 << "\" y=\"" << top + chart_h << "\" text-anchor=\"end\">0</text>"
      << "<line x1=\"" << left << "\" y1=\"" << top + chart_h << "\" x2=\"" << width - 10 << "\" y2=\"" << top + chart_h
      << "\" stroke=\"#b0b7c3\"/>\n";
  const std::size_t label_every = n > 60 ? 14 : n > 20 ? 7 : 1;
  for (std::size_t i = 0; i < n; ++i) {
    const ReportDay& d = days[first + i];
    const int x = left + static_cast<int>(i) * (bar_w + gap);
    double scale = static_cast<double>(chart_h) / static_cast<double>(most);
    double y = top + chart_h;
    const std::size_t rest = d.messages - d.dmarc_pass - d.dmarc_fail;
    for (auto [count, color] : {std::pair<std::size_t, const char*>{d.dmarc_pass, "#2e7d32"},
                                {d.dmarc_fail, "#c62828"}, {rest, "#b0b7c3"}}) {
      if (count == 0) continue;
      double h = static_cast<double>(count) * scale;
      y -= h;
      out << "<rect x=\"" << x << "\" y=\"" << fmt_num(y) << "\" width=\"" << bar_w << "\" height=\"" << fmt_num(h)
          << "\" fill=\"" << color << "\"/>";
    }
    out << "<rect x=\"" << x << "\" y=\"" << top << "\" width=\"" << bar_w << "\" height=\"" << chart_h
        << "\" fill=\"transparent\"><title>" << esc(d.day, 12) << ": " << d.messages << " messages, " << d.dmarc_pass
        << " DMARC pass, " << d.dmarc_fail << " not passing</title></rect>";
    if (i % label_every == 0) {
      out << "<text x=\"" << x << "\" y=\"" << top + chart_h + 16 << "\" font-size=\"11\">" << esc(d.day.substr(5), 6)
          << "</text>";
    }
    out << "\n";
  }
  out << "</svg>\n<p class=\"legend\"><span><i style=\"background:#2e7d32\"></i>DMARC pass</span>"
         "<span><i style=\"background:#c62828\"></i>DMARC not passing</span>"
         "<span><i style=\"background:#b0b7c3\"></i>DMARC not checked</span>"
      << (first ? "<span class=\"muted\">the last " + std::to_string(kMaxDays) + " days</span>" : std::string())
      << "</p>\n";
}

// The page title: what the report covers, never "your domains" for a list
// that is simply every From domain seen (spammers' included).
std::string report_title(const AuditReport& r) {
  if (r.domain_filter.empty()) return "Who sends as which From domain: all From domains";
  std::string list;
  for (std::size_t i = 0; i < r.domain_filter.size() && i < 5; ++i) list += (i ? ", " : "") + r.domain_filter[i];
  if (r.domain_filter.size() > 5) list += " and " + std::to_string(r.domain_filter.size() - 5) + " other domains";
  return r.domains_from_signing ? "Who sends as the domains postern signs for: " + list : "Who sends as " + list;
}

void groups_table(const char* title, const char* what, const std::vector<ReportGroup>& groups, std::ostream& out) {
  out << "<div><h3>" << title << "</h3>\n<table>\n<tr><th>" << what
      << "</th><th class=\"n\">addresses</th><th class=\"n\">messages</th><th class=\"n\">failing</th></tr>\n";
  for (const ReportGroup& g : groups) {
    out << "<tr><td>" << esc(g.name, 100) << "</td><td class=\"n\">" << g.addresses << "</td><td class=\"n\">"
        << g.messages << "</td><td class=\"n " << (g.failing ? "bad" : "good") << "\">" << g.failing << "</td></tr>\n";
  }
  out << "</table></div>\n";
}

void domain_details(const DomainReport& d, std::size_t index, std::ostream& out) {
  // Policy published vs applied.
  if (!d.policy.empty()) {
    out << "<h3>DMARC policy published and what postern applied</h3>\n<table>\n<tr><th>published</th>"
           "<th>result, disposition, override and action taken</th><th class=\"n\">messages</th></tr>\n";
    for (const auto& [published, applied] : d.policy) {
      for (const auto& [what, count] : applied) {
        out << "<tr><td>" << esc(published, 80) << "</td><td>" << esc(what, 200) << "</td><td class=\"n\">" << count
            << "</td></tr>\n";
      }
    }
    out << "</table>\n";
  }
  // DKIM signers.
  out << "<h3>DKIM signers</h3>\n";
  if (d.signers.empty()) {
    out << "<p class=\"muted\">No DKIM signature on these messages"
        << (d.signed_out ? "; " + std::to_string(d.signed_out) + " outbound messages signed by postern itself" : "")
        << ".</p>\n";
  } else {
    out << "<table>\n<tr><th>d= (signing domain)</th><th>s= (selector)</th><th>aligned with the From domain</th>"
           "<th class=\"n\">verified</th><th class=\"n\">failed</th></tr>\n";
    for (const ReportSigner& s : d.signers) {
      out << "<tr><td>" << esc(s.domain, 100) << "</td><td>" << esc(s.selector, 100) << "</td><td class=\""
          << (s.aligned ? "good\">aligned" : "warn\">no: third-party signer, does not count for DMARC") << "</td><td class=\"n\">"
          << s.pass << "</td><td class=\"n " << (s.fail ? "bad" : "") << "\">" << s.fail << "</td></tr>\n";
    }
    out << "</table>\n";
  }
  // Sources grouped.
  out << "<div class=\"cols\">\n";
  groups_table("Sources by network", "network (/24, /64)", d.networks, out);
  groups_table("Sources by verified PTR", "PTR domain", d.ptrs, out);
  out << "</div>\n";
  // Failing sources and their messages.
  out << "<h3>Failing sources</h3>\n";
  if (d.sources.empty()) {
    out << "<p class=\"good\">No failing sources.</p>\n";
    return;
  }
  out << "<table>\n<tr><th class=\"n\">messages</th><th>client IP</th><th>verified PTR / HELO</th><th>last results</th></tr>\n";
  for (std::size_t i = 0; i < d.sources.size(); ++i) {
    const ReportSource& s = d.sources[i];
    out << "<tr><td class=\"n\"><a href=\"#m-" << index << '-' << i << "\">" << s.count << "</a></td><td>"
        << esc(s.ip, 60) << "</td><td>" << esc(s.name, 100) << "</td><td>" << esc(s.results, 120) << "</td></tr>\n";
  }
  out << "</table>\n<p class=\"muted\">Client addresses whose messages did not pass; the count links to the messages.</p>\n";
  for (std::size_t i = 0; i < d.sources.size(); ++i) {
    const ReportSource& s = d.sources[i];
    out << "<div class=\"msgs\" id=\"m-" << index << '-' << i << "\"><h4>Messages from " << esc(s.ip, 60)
        << (s.count > s.messages.size() ? " (the first " + std::to_string(s.messages.size()) + " of " +
                                              std::to_string(s.count) + ")"
                                        : std::string())
        << "</h4>\n<table>\n<tr><th>time</th><th>queue id</th><th>Message-ID</th><th>action</th><th>results</th></tr>\n";
    for (const ReportMessage& m : s.messages) {
      out << "<tr><td>" << esc(m.time, 30) << "</td><td>" << esc(m.queue_id, 60) << "</td><td>"
          << esc(m.message_id, 120) << "</td><td>" << esc(m.action, 30) << "</td><td>" << esc(m.results, 120)
          << "</td></tr>\n";
    }
    out << "</table></div>\n";
  }
}

}  // namespace

void write_report_html(const AuditReport& r, std::ostream& out) {
  const std::string title = report_title(r);
  out << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
         "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
         "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
         "<title>postern report: "
      << esc(title, 400) << "</title>\n<style>" << kStyle << "</style>\n</head>\n<body>\n<header><h1>" << esc(title, 400)
      << "</h1><p>" << r.records << " audit records from " << r.files << " file" << (r.files == 1 ? "" : "s");
  if (!r.first_time.empty()) out << ", " << esc(r.first_time, 40) << " to " << esc(r.last_time, 40);
  if (!r.domain_filter.empty()) out << "; " << r.skipped << " records of other From domains left out";
  out << "; " << r.malformed << " malformed line" << (r.malformed == 1 ? "" : "s") << "</p></header>\n<main>\n";

  if (r.domains.empty()) {
    out << "<section><p>No audit records" << (r.domain_filter.empty() ? "" : " for these domains") << ".</p></section>\n";
  } else {
    out << "<section><h2>Messages per day</h2>\n";
    trend_chart(r.days, out);
    out << "</section>\n<section><h2>Messages per From domain</h2>\n";
    overview_chart(r, out);
    out << "<table>\n<tr><th>From domain</th><th class=\"n\">messages</th><th class=\"n\">SPF</th>"
           "<th class=\"n\">DKIM</th><th class=\"n\">DMARC</th><th class=\"n\">SPF aligned</th>"
           "<th class=\"n\">DKIM aligned</th><th class=\"n\">failing</th><th class=\"n\">signed by postern</th>"
           "<th>actions</th></tr>\n";
    for (const DomainReport& d : r.domains) {
      out << "<tr><td><a href=\"#d-" << &d - r.domains.data() << "\">" << esc(d.domain, 100) << "</a></td><td class=\"n\">"
          << d.messages << "</td>";
      for (auto [part, whole] : {std::pair{d.spf_pass, d.spf_checked}, {d.dkim_pass, d.dkim_checked},
                                 {d.dmarc_pass, d.dmarc_checked}, {d.spf_aligned, d.dmarc_checked},
                                 {d.dkim_aligned, d.dmarc_checked}}) {
        out << "<td class=\"n " << rate_class(part, whole) << "\">" << esc(percent(part, whole)) << "</td>";
      }
      out << "<td class=\"n\">" << d.failing << "</td><td class=\"n\">" << d.signed_out << "</td><td>";
      bool first = true;
      for (const auto& [a, count] : d.actions) {
        out << (first ? "" : ", ") << esc(a, 40) << " " << count;
        first = false;
      }
      out << "</td></tr>\n";
    }
    out << "</table>\n<p class=\"muted\">Pass rates among the messages checked; alignment among the "
           "DMARC-checked. Failing: did not pass DMARC (or, without DMARC, neither SPF nor DKIM). Signed by "
           "postern: outbound messages postern signed when relaying them; they are not in the DKIM rate "
           "(their signature is added after the checks).</p></section>\n";
    for (const DomainReport& d : r.domains) {
      const std::size_t index = static_cast<std::size_t>(&d - r.domains.data());
      out << "<section id=\"d-" << index << "\"><h2>" << esc(d.domain, 200) << " <span class=\"muted\">" << d.messages
          << " message" << (d.messages == 1 ? "" : "s") << "</span></h2>\n<div class=\"grid\"><div>\n";
      domain_chart(d, out);
      out << "</div><div>\n";
      if (d.days.size() > 1) trend_chart(d.days, out);
      out << "</div></div>\n";
      domain_details(d, index, out);
      out << "</section>\n";
    }
  }
  if (r.malformed > 0) {
    out << "<section><h2>Malformed lines: " << r.malformed << "</h2><ul>\n";
    for (const std::string& m : r.malformed_examples) out << "<li><code>" << esc(m, 300) << "</code></li>\n";
    out << "</ul></section>\n";
  }
  out << "</main>\n</body>\n</html>\n";
}

}  // namespace postern
