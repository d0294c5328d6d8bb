// DMARC aggregate reports (RFC 7489 §7.2, Appendix C) built from postern's
// audit log: one report per policy domain (the domain whose DMARC record was
// found), its records grouped by source IP, disposition, the DMARC-aligned
// DKIM/SPF results, overrides, identifiers and the raw DKIM/SPF results.
// I/O-free: the caller feeds audit lines and gets XML, a gzip file and its
// RFC file name (§7.2.1.1); `postern report dmarc` (proxy/report_dmarc.cpp)
// looks up rua= and mails the reports.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ctime>
#include <istream>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace postern {

struct DmarcReportMeta {
  std::string org_name;             // report_metadata/org_name
  std::string email;                // report_metadata/email
  std::string extra_contact_info;   // optional
  std::string receiver;             // the generator's domain: file name, Submitter
  std::int64_t begin = 0, end = 0;  // date_range, seconds since the epoch (end inclusive)
};

struct DmarcReportRow {
  // The grouping key.
  std::string source_ip;  // IPv6 in full form (the schema's IPAddress)
  std::string disposition, dkim, spf;  // policy_evaluated: none/quarantine/reject; pass/fail
  std::vector<std::pair<std::string, std::string>> reasons;  // override type, comment
  std::string header_from, envelope_from;
  struct Dkim {
    std::string domain, selector, result;
  };
  std::vector<Dkim> dkim_results;
  struct Spf {
    std::string domain, scope, result;  // scope: mfrom or helo
  };
  std::vector<Spf> spf_results;
  std::size_t count = 0;
};

struct DmarcAggregateReport {
  std::string domain;  // policy_published/domain
  std::string p = "none", sp = "none", adkim = "r", aspf = "r";
  int pct = 100;
  std::string fo = "0";  // not in the audit log: the caller sets it from the current record
  std::vector<DmarcReportRow> rows;  // most messages first
  std::size_t messages = 0;
};

class DmarcAggregateBuilder {
 public:
  // Records whose time is in [begin, end] (seconds since the epoch, UTC);
  // `domains`: only these policy domains (empty = all).
  DmarcAggregateBuilder(std::int64_t begin, std::int64_t end, std::vector<std::string> domains = {});

  // One audit line; `name` and `number` say where it is in malformed-line
  // messages ("FILE:LINE: reason").
  void add_line(std::string_view line, std::string_view name = "(input)", std::size_t number = 0);
  // Every line of one file, each read within kJsonMaxInput octets.
  void add_stream(std::string_view name, std::istream& in);
  std::vector<DmarcAggregateReport> finish() const;

  std::size_t lines() const { return lines_; }
  std::size_t malformed() const { return malformed_; }
  // "FILE:LINE: reason" for the first few malformed lines.
  const std::vector<std::string>& malformed_examples() const { return malformed_examples_; }
  std::size_t in_range() const { return in_range_; }     // records in the time window
  std::size_t without_record() const { return no_record_; }  // of those: no DMARC record found

 private:
  std::int64_t begin_, end_;
  std::vector<std::string> filter_;
  std::map<std::string, DmarcAggregateReport> reports_;    // by policy domain
  std::map<std::string, std::map<std::string, std::size_t>> row_index_;  // domain -> key -> index
  std::map<std::string, std::string> published_time_;      // the newest record's time per domain
  void malformed(std::string_view name, std::size_t number, const std::string& why);

  std::size_t lines_ = 0, malformed_ = 0, in_range_ = 0, no_record_ = 0;
  std::vector<std::string> malformed_examples_;
};

// The Appendix C XML document (namespace http://dmarc.org/dmarc-xml/0.1).
std::string dmarc_report_xml(const DmarcAggregateReport& report, const DmarcReportMeta& meta,
                             const std::string& report_id);
// "receiver!policy-domain!begin!end.xml.gz" (RFC 7489 §7.2.1.1).
std::string dmarc_report_filename(const DmarcReportMeta& meta, const std::string& policy_domain);
// The report's unique id: "<policy-domain>.<begin>.<end>@<receiver>".
std::string dmarc_report_id(const DmarcReportMeta& meta, const std::string& policy_domain);

// gzip (RFC 1952) of `data`, with `name` as the member's file name.
std::string gzip_compress(std::string_view data, const std::string& name = "");

// "2026-12-05", "2026-12-05T10:00:00Z" (or with an offset +HH:MM) or an
// integer of seconds since the epoch; nullopt when it is none of these.
std::optional<std::int64_t> parse_report_time(std::string_view text);

// An IP address in the form the schema's IPAddress accepts: IPv4 dotted
// quad, IPv6 as eight groups; "" when `ip` is not an address.
std::string schema_ip(const std::string& ip);

// A DMARC record's rua= destinations (mailto: only), each with its size
// limit in octets (0 = none), from the TXT record text.
struct DmarcRua {
  std::string address;  // local@domain
  std::uint64_t limit = 0;
};
std::vector<DmarcRua> parse_dmarc_rua(std::string_view record);
// The record's fo= (RFC 7489 §6.3: "0", "1", "d", "s" joined by ':'), "0"
// when absent or not valid.
std::string parse_dmarc_fo(std::string_view record);

}  // namespace postern
