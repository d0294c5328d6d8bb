// `postern report`: who sends as which domain, read back from audit logs.
// Records are grouped by their RFC5322.From domain; each group counts its
// messages, SPF / DKIM / DMARC passes, DMARC alignment, actions, and the
// client addresses whose messages failed. Malformed lines are counted and
// named, never fatal. Rendering: an aligned text table, and one static HTML
// page (inline CSS and SVG, no script, no external resource).
#pragma once

#include <cstddef>
#include <istream>
#include <map>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace postern {

// One message, for the drill-down from a source to what it sent.
struct ReportMessage {
  std::string time, message_id, queue_id, action, results;
};

struct ReportSource {
  std::string ip;
  std::string name;     // reverse DNS name, or the HELO when there is none
  std::string results;  // of its last failing message: "spf=fail dkim=none dmarc=fail"
  std::size_t count = 0;
  std::vector<ReportMessage> messages;  // its first kMaxSourceMessages messages
};

// A DKIM signer (d= / s=) seen on a domain's messages.
struct ReportSigner {
  std::string domain, selector;
  bool aligned = false;  // d= aligns with the From domain (relaxed, or as adkim= says)
  std::size_t pass = 0, fail = 0;  // signatures that verified / did not
};

// A group of sources: a network (/24, /64) or a verified PTR's domain.
struct ReportGroup {
  std::string name;
  std::size_t messages = 0, failing = 0;
  std::size_t addresses = 0;  // distinct client addresses
};

// One day (UTC) of a domain's mail.
struct ReportDay {
  std::string day;  // "2026-12-05"
  std::size_t messages = 0, dmarc_pass = 0, dmarc_fail = 0;
};

inline constexpr std::size_t kMaxSourceMessages = 20;       // listed per failing source
inline constexpr std::size_t kMaxReportMessages = 200000;   // listed in all (memory bound)

struct DomainReport {
  std::string domain;  // "(none)" when the record had no From domain
  std::size_t messages = 0;
  std::size_t spf_checked = 0, spf_pass = 0;
  std::size_t dkim_checked = 0, dkim_pass = 0;  // a message passes with one passing signature
  std::size_t dmarc_checked = 0, dmarc_pass = 0, dmarc_fail = 0;
  std::size_t spf_aligned = 0, dkim_aligned = 0;  // among dmarc_checked
  std::size_t failing = 0;                        // messages counted in `sources`
  std::size_t signed_out = 0;                     // relayed with postern's own DKIM signature (outbound)
  std::map<std::string, std::size_t> actions;
  std::vector<ReportSource> sources;              // failing sources, most messages first (top N)
  std::vector<ReportSigner> signers;              // most signatures first
  std::vector<ReportGroup> networks, ptrs;        // most messages first (top N)
  std::vector<ReportDay> days;                    // in order
  // Policy published vs applied: "p=reject pct=100" -> "disposition=reject
  // override=local_policy action=rejected" -> messages.
  std::map<std::string, std::map<std::string, std::size_t>> policy;
};

struct AuditReport {
  std::vector<DomainReport> domains;  // most messages first
  std::size_t files = 0;
  std::size_t lines = 0;       // non-empty lines read
  std::size_t records = 0;     // parsed audit records
  std::size_t skipped = 0;     // records outside the --domain filter
  std::size_t malformed = 0;
  std::vector<std::string> malformed_examples;  // "FILE:LINE: reason", the first few
  std::string first_time, last_time;            // of the records counted
  std::vector<std::string> domain_filter;
  bool domains_from_signing = false;            // the filter is the [[dkim.sign]] domains
  std::vector<ReportDay> days;                  // every domain counted, in order
};

class AuditReportBuilder {
 public:
  // `domains`: only these From domains (and their subdomains); empty = all.
  explicit AuditReportBuilder(std::vector<std::string> domains = {}, std::size_t top_sources = 10);

  // Reads one file's lines; `name` is used in malformed-line messages.
  void add_stream(std::string_view name, std::istream& in);
  void add_line(std::string_view name, std::size_t line_number, std::string_view line);
  AuditReport finish() const;
  // Says in the report that the domain filter is the signing domains.
  void set_domains_from_signing(bool yes) { totals_.domains_from_signing = yes; }

 private:
  struct SourceTally {
    std::string name, results;
    std::size_t count = 0;
    std::vector<ReportMessage> messages;
  };
  struct GroupTally {
    std::size_t messages = 0, failing = 0;
    std::map<std::string, bool> addresses;
  };
  struct Tally {
    DomainReport report;
    std::map<std::string, SourceTally> sources;  // by client IP
    std::map<std::string, ReportSigner> signers;  // by "d=/s="
    std::map<std::string, GroupTally> networks, ptrs;
    std::map<std::string, ReportDay> days;
  };
  bool wanted(const std::string& domain) const;
  void malformed(std::string_view name, std::size_t line_number, const std::string& why);

  std::vector<std::string> filter_;
  std::size_t top_;
  std::map<std::string, Tally> tallies_;
  std::map<std::string, ReportDay> days_;
  std::size_t listed_messages_ = 0;
  AuditReport totals_;
};

// The aligned text table (hostile text made printable, long fields cut).
void print_report_text(const AuditReport& report, std::ostream& out);
// One self-contained HTML page.
void write_report_html(const AuditReport& report, std::ostream& out);

// Percentage "97.5%" of part/whole, "-" when whole is 0.
std::string percent(std::size_t part, std::size_t whole);

}  // namespace postern
