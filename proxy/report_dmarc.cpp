// `postern report dmarc`; see report_dmarc.h and docs/authentication.md "Reports".
#include "proxy/report_dmarc.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <openssl/ssl.h>

#include <asio/connect.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/read_until.hpp>
#include <asio/ssl.hpp>
#include <asio/streambuf.hpp>
#include <asio/write.hpp>
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>

#include "filters/audit/dmarc_aggregate.h"
#include "filters/dmarc/dmarc.h"
#include "filters/dns/unbound_resolver.h"
#include "filters/text/ascii.h"
#include "filters/text/base64.h"
#include "filters/text/time_format.h"
#include "proxy/config.h"

namespace postern {

namespace {

constexpr const char* kUsage = R"(Usage: postern report dmarc [AUDIT.jsonl...] [--from DATE] [--to DATE] [--config FILE]
                            [--out DIR] [--domain D]... [--send]

Builds one DMARC aggregate report (RFC 7489 Appendix C) per domain whose
DMARC record postern found while checking mail in the period and which
publishes rua= (looked up now, through the [dns] settings). Each report is
written gzip-compressed under its RFC name, receiver!domain!begin!end.xml.gz;
with --send it is also mailed, through the [upstream] MTA, to the domain's
rua= addresses (an address in another organizational domain only when that
domain publishes <domain>._report._dmarc.<its domain>, RFC 7489 §7.1; a
!SIZE limit is kept).

Options:
  --from DATE     start of the period (2026-12-05, 2026-12-05T06:00:00Z or
                  seconds since the epoch); default: the last complete
                  [report] interval
  --to DATE       end of the period, exclusive; default: see --from
  --config FILE   postern's configuration ([report], [dns], [upstream],
                  [audit] path); default: the embedded default
  --out DIR       where the .xml.gz files go (default: the current directory)
  --domain D      only this policy domain (repeatable)
  --send          mail the reports (needs [report] email and an SMTP upstream)
  -h, --help      show this help

Without AUDIT files, the [audit] path and its rotated files are read.
Malformed lines are counted and the first ten named (FILE:LINE: reason); they
do not stop it.
Exit status: 0 done, 1 a report could not be written or sent, 2 bad usage.

Example (the systemd timer config/postern-dmarc-report.timer runs this daily):
  postern report dmarc --config /etc/postern/postern.toml --out /var/lib/postern/dmarc --send
)";

constexpr std::size_t kMaxReplyOctets = 64 * 1024;  // unread reply text held from the upstream

int usage(const std::string& why) {
  std::cerr << "postern report dmarc: " << why << "\n(see postern report dmarc --help)\n";
  return 2;
}

// The report's file name under --out: its RFC name (§7.2.1.1) when that fits
// one path component (NAME_MAX, 255 octets on Linux file systems); past it
// (a 253-octet policy domain is a valid host name), the policy domain is cut
// and a hash of the whole name keeps two such names apart. The mailed
// attachment keeps the RFC name.
std::string file_name_on_disk(const std::string& rfc_name) {
  constexpr std::size_t kMaxFileName = 255;
  if (rfc_name.size() <= kMaxFileName) return rfc_name;
  std::uint64_t hash = 0xcbf29ce484222325ull;  // FNV-1a
  for (unsigned char c : rfc_name) hash = (hash ^ c) * 0x100000001b3ull;
  char tag[24];
  std::snprintf(tag, sizeof tag, "~%016llx", static_cast<unsigned long long>(hash));
  const std::size_t first_bang = rfc_name.find('!'), second_bang = rfc_name.find('!', first_bang + 1);
  const std::string head = rfc_name.substr(0, second_bang), tail = rfc_name.substr(second_bang);
  const std::size_t room = kMaxFileName - tail.size() - std::strlen(tag);
  return head.substr(0, room) + tag + tail;
}

std::string utc(std::int64_t t) { return format_utc_iso8601(static_cast<std::time_t>(t)); }

// The DMARC record's text at _dmarc.DOMAIN: the one TXT record starting
// "v=DMARC1" (RFC 7489 §6.6.3: none or several = no record).
struct Lookup {
  std::string record;
  std::string error;  // a DNS failure, "" when the answer was definite
};

Lookup dmarc_txt(UnboundResolver& dns, const std::string& name) {
  DnsAnswer a = dns.query_blocking(name, DnsType::kTxt);
  if (a.status == DnsStatus::kNxDomain || a.status == DnsStatus::kNoData) return {};
  if (a.status != DnsStatus::kOk) return {"", std::string("DNS ") + dns_status_name(a.status) + " for " + name};
  Lookup out;
  int found = 0;
  for (const std::string& r : a.records) {
    std::string_view v = r;
    while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
    if (v.substr(0, 8) == "v=DMARC1" && (v.size() == 8 || v[8] == ';' || v[8] == ' ')) {
      out.record = r;
      ++found;
    }
  }
  if (found != 1) out.record.clear();
  return out;
}

// The addresses a policy domain's report goes to (RFC 7489 §7.1): its rua=
// destinations in its own organizational domain; one elsewhere only when
// that domain publishes "v=DMARC1" at <policy>._report._dmarc.<its domain>,
// and then the rua= of that record instead when it has one, unless one of
// those is at yet another domain (then neither). Each address once. What is
// refused is said on standard output.
std::vector<DmarcRua> verified_destinations(UnboundResolver& dns, const std::string& policy_domain,
                                            const std::vector<DmarcRua>& ruas) {
  std::vector<DmarcRua> out;
  auto add = [&out](const DmarcRua& rua) {
    for (const DmarcRua& o : out) {
      if (ascii::to_lower(o.address) == ascii::to_lower(rua.address)) return;
    }
    out.push_back(rua);
  };
  const std::string org = organizational_domain(policy_domain);
  for (const DmarcRua& rua : ruas) {
    const std::string rua_domain = rua.address.substr(rua.address.rfind('@') + 1);  // lowered by parse_dmarc_rua
    if (organizational_domain(rua_domain) == org) {
      add(rua);
      continue;
    }
    const std::string check = policy_domain + "._report._dmarc." + rua_domain;
    Lookup ok = dmarc_txt(dns, check);
    if (ok.record.empty()) {
      std::cout << "  not sent to " << rua.address << ": external destination not verified (no v=DMARC1 at " << check
                << (ok.error.empty() ? "" : ": " + ok.error) << ")\n";
      continue;
    }
    const std::vector<DmarcRua> overrides = parse_dmarc_rua(ok.record);
    const bool elsewhere = std::any_of(overrides.begin(), overrides.end(), [&](const DmarcRua& o) {
      return o.address.substr(o.address.rfind('@') + 1) != rua_domain;
    });
    if (elsewhere) {
      std::cout << "  not sent to " << rua.address << ": the authorization at " << check
                << " names a rua= at another domain (RFC 7489 7.1: neither is used)\n";
      continue;
    }
    if (overrides.empty()) add(rua);
    for (const DmarcRua& o : overrides) add(o);
  }
  return out;
}

// A blocking SMTP transaction with the upstream MTA, every read and write
// bounded by the socket's time-out; STARTTLS as [upstream] tls says (none,
// opportunistic, verify: required, certificate and name checked), as
// SmtpUpstream does for relayed mail. "" on success, else what failed.
class ReportMailer {
 public:
  explicit ReportMailer(const Config& config) : config_(config) {}

  std::string send(const std::string& from, const std::string& to, const std::string& message) {
    using Tls = Config::Upstream::Tls;
    const Config::Upstream& up = config_.upstream;
    try {
      asio::io_context io;
      asio::ip::tcp::socket socket(io);
      asio::ip::tcp::resolver resolver(io);
      asio::connect(socket, resolver.resolve(up.host, std::to_string(up.port)));
      timeval tv{60, 0};
      ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      asio::ssl::context context(asio::ssl::context::tls_client);
      std::unique_ptr<asio::ssl::stream<asio::ip::tcp::socket&>> tls;
      asio::streambuf buf(kMaxReplyOctets);  // a reply line without an end fails the read, not the memory
      auto write = [&](const std::string& bytes) {
        if (tls) asio::write(*tls, asio::buffer(bytes));
        else asio::write(socket, asio::buffer(bytes));
      };
      // The reply's lines joined by " / "; throws unless 2xx/3xx (or `code`).
      auto reply = [&](const char* what, int code = 0) -> std::string {
        std::string text;
        for (int lines = 0; lines < 100; ++lines) {
          if (tls) asio::read_until(*tls, buf, "\n");
          else asio::read_until(socket, buf, "\n");
          std::istream in(&buf);
          std::string line;
          std::getline(in, line);
          if (!line.empty() && line.back() == '\r') line.pop_back();
          line.resize(std::min<std::size_t>(line.size(), 200));
          // The MTA's text reaches the admin's terminal: nothing but printable ASCII.
          for (char& c : line) {
            if (c < 0x20 || c > 0x7e) c = '?';
          }
          text += (text.empty() ? "" : " / ") + line;
          if (line.size() < 4 || line[3] != '-') break;
        }
        const bool ok = code ? text.rfind(std::to_string(code), 0) == 0 : !text.empty() && (text[0] == '2' || text[0] == '3');
        if (!ok) throw std::runtime_error(std::string(what) + ": " + text);
        return text;
      };
      auto command = [&](const std::string& line, const char* what) {
        write(line + "\r\n");
        return reply(what);
      };
      reply("greeting");
      const std::string helo = up.helo.empty() ? config_.server.hostname : up.helo;
      std::string ehlo = command("EHLO " + helo, "EHLO");
      if (up.tls != Tls::kNone) {
        const bool offered = ehlo.find("STARTTLS") != std::string::npos || ehlo.find("starttls") != std::string::npos;
        if (!offered && up.tls == Tls::kVerify) throw std::runtime_error("STARTTLS not offered ([upstream] tls = verify)");
        if (offered) {
          write("STARTTLS\r\n");
          reply("STARTTLS", 220);
          if (buf.size() > 0) throw std::runtime_error("octets after the STARTTLS reply");  // RFC 3207 §4.2
          SSL_CTX_set_min_proto_version(context.native_handle(), TLS1_2_VERSION);
          const std::string name = up.tls_name.empty() ? up.host : up.tls_name;
          if (up.tls == Tls::kVerify) {
            if (up.ca_file.empty()) context.set_default_verify_paths();
            else context.load_verify_file(up.ca_file);
            context.set_verify_mode(asio::ssl::verify_peer);
          } else {
            context.set_verify_mode(asio::ssl::verify_none);
          }
          tls = std::make_unique<asio::ssl::stream<asio::ip::tcp::socket&>>(socket, context);
          SSL_set_tlsext_host_name(tls->native_handle(), name.c_str());
          if (up.tls == Tls::kVerify) SSL_set1_host(tls->native_handle(), name.c_str());
          tls->handshake(asio::ssl::stream_base::client);
          command("EHLO " + helo, "EHLO after STARTTLS");
        }
      }
      command("MAIL FROM:<" + from + ">", "MAIL");
      command("RCPT TO:<" + to + ">", "RCPT");
      command("DATA", "DATA");
      // Dot-stuffing (RFC 5321 §4.5.2); the message has CRLF line ends.
      std::string data;
      data.reserve(message.size() + 64);
      bool bol = true;
      for (char c : message) {
        if (bol && c == '.') data += '.';
        data += c;
        bol = c == '\n';
      }
      write(data + ".\r\n");
      reply("end of data");
      command("QUIT", "QUIT");
    } catch (const std::exception& e) {
      return e.what();
    }
    return {};
  }

 private:
  const Config& config_;
};

// The report's mail (RFC 7489 §7.2.1.1): the subject names the domain, the
// submitter and the report id; the report is a gzip attachment.
std::string report_message(const DmarcReportMeta& meta, const std::string& domain, const std::string& to,
                           const std::string& id, const std::string& filename, const std::string& gz) {
  std::mt19937_64 rng(std::random_device{}());
  char boundary[40];
  std::snprintf(boundary, sizeof boundary, "=_postern_%016llx", static_cast<unsigned long long>(rng()));
  std::string m;
  m += "From: " + meta.email + "\r\n";
  m += "To: " + to + "\r\n";
  m += "Date: " + format_rfc5322_date(std::time(nullptr)) + "\r\n";
  m += "Subject: Report Domain: " + domain + " Submitter: " + meta.receiver + " Report-ID: <" + id + ">\r\n";
  char mid[40];
  std::snprintf(mid, sizeof mid, "%016llx", static_cast<unsigned long long>(rng()));
  m += "Message-ID: <dmarc." + std::string(mid) + "@" + meta.receiver + ">\r\n";
  m += "MIME-Version: 1.0\r\n";
  m += "Content-Type: multipart/mixed; boundary=\"" + std::string(boundary) + "\"\r\n\r\n";
  m += "This is a DMARC aggregate report (RFC 7489) in MIME format.\r\n\r\n";
  m += "--" + std::string(boundary) + "\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n";
  m += "DMARC aggregate report for " + domain + " from " + meta.org_name + ",\r\nperiod " + utc(meta.begin) +
       " to " + utc(meta.end) + ".\r\n\r\n";
  m += "--" + std::string(boundary) + "\r\nContent-Type: application/gzip; name=\"" + filename +
       "\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"" + filename +
       "\"\r\n\r\n";
  m += base64_encode(gz, 76);
  m += "--" + std::string(boundary) + "--\r\n";
  return m;
}

}  // namespace

int cmd_report_dmarc(const std::vector<std::string>& args) {
  std::vector<std::string> files, domains;
  std::string from_text, to_text, config_path, out_dir = ".";
  bool send = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      return 0;
    }
    if (a == "--send") {
      send = true;
    } else if (a == "--from" || a == "--to" || a == "--config" || a == "--out" || a == "--domain") {
      if (i + 1 >= args.size()) return usage(a + " needs a value");
      const std::string& v = args[++i];
      if (a == "--from") from_text = v;
      else if (a == "--to") to_text = v;
      else if (a == "--config") config_path = v;
      else if (a == "--out") out_dir = v;
      else domains.push_back(ascii::to_lower(v));
    } else if (a.size() > 1 && a[0] == '-') {
      return usage("unknown option '" + a + "'");
    } else {
      files.push_back(a);
    }
  }
  std::shared_ptr<const Config> config;
  try {
    ConfigSource source;
    source.path = config_path;
    config = load_config(source);
  } catch (const std::exception& e) {
    std::cerr << "postern report dmarc: configuration error:\n" << e.what() << "\n";
    return 2;
  }
  const Config::Report& rc = config->report;
  if (send && rc.email.empty()) return usage("--send needs [report] email (the reports' sender address)");
  if (send && config->upstream.kind != Config::Upstream::Kind::kSmtp) return usage("--send needs an SMTP [upstream]");

  // The period: [from, to), by default the last complete interval.
  const auto interval = static_cast<std::int64_t>(rc.interval.count());
  const std::int64_t now = std::time(nullptr);
  std::int64_t to = now / interval * interval, from = to - interval;
  if (!from_text.empty() || !to_text.empty()) {
    auto f = parse_report_time(from_text), t = parse_report_time(to_text);
    if (!f || !t) return usage("--from and --to both need a date (2026-12-05, 2026-12-05T06:00:00Z, or epoch seconds)");
    from = *f;
    to = *t;
  }
  if (to <= from) return usage("--to must be after --from");

  if (files.empty()) {
    if (config->audit.path.empty()) return usage("no AUDIT.jsonl files given and no [audit] path configured");
    for (std::size_t n = config->audit.rotate_keep; n >= 1; --n) {
      std::string rotated = config->audit.path + "." + std::to_string(n);
      if (std::filesystem::exists(rotated)) files.push_back(rotated);
    }
    files.push_back(config->audit.path);
  }
  DmarcAggregateBuilder builder(from, to - 1, domains);
  for (const std::string& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) {
      std::cerr << "postern report dmarc: cannot read " << f << ": " << std::strerror(errno) << "\n";
      return 2;
    }
    builder.add_stream(f, in);
  }

  DmarcReportMeta meta;
  meta.org_name = rc.org_name;
  meta.email = rc.email.empty() ? "postmaster@" + config->server.hostname : rc.email;
  meta.extra_contact_info = rc.extra_contact_info;
  meta.receiver = ascii::to_lower(meta.email.substr(meta.email.rfind('@') + 1));
  meta.begin = from;
  meta.end = to - 1;

  std::cout << "postern report dmarc: " << utc(from) << " to " << utc(to) << ": " << builder.in_range()
            << " audit records in the period (" << builder.without_record() << " without a DMARC record), "
            << builder.malformed() << " malformed lines\n";
  for (const std::string& m : builder.malformed_examples()) std::cout << "  " << m << "\n";
  if (builder.malformed() > builder.malformed_examples().size()) {
    std::cout << "  ... and " << builder.malformed() - builder.malformed_examples().size() << " more\n";
  }
  std::vector<DmarcAggregateReport> reports = builder.finish();  // fo= is set from the record looked up below
  if (reports.empty()) {
    std::cout << "no domain to report\n";
    return 0;
  }

  asio::io_context io;
  auto guard = asio::make_work_guard(io);
  std::thread dns_thread([&io] { io.run(); });
  int status = 0;
  try {
    auto dns = UnboundResolver::create(config->dns, io.get_executor());
    std::error_code ec;
    std::filesystem::create_directories(out_dir, ec);
    ReportMailer mailer(*config);
    for (DmarcAggregateReport& r : reports) {
      Lookup rec = dmarc_txt(*dns, "_dmarc." + r.domain);
      if (!rec.error.empty()) {
        std::cout << r.domain << ": " << r.messages << " messages; skipped: " << rec.error << "\n";
        status = 1;
        continue;
      }
      std::vector<DmarcRua> ruas = parse_dmarc_rua(rec.record);
      if (ruas.empty()) {
        std::cout << r.domain << ": " << r.messages << " messages; no report (its DMARC record asks for none: no rua=)\n";
        continue;
      }
      r.fo = parse_dmarc_fo(rec.record);
      const std::string id = dmarc_report_id(meta, r.domain);
      const std::string name = dmarc_report_filename(meta, r.domain);
      const std::string gz = gzip_compress(dmarc_report_xml(r, meta, id), name.substr(0, name.size() - 3));
      const std::string path = (std::filesystem::path(out_dir) / file_name_on_disk(name)).string();
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out << gz;
      if (!out.flush()) {
        std::cerr << "postern report dmarc: cannot write " << path << "\n";
        status = 1;
        continue;
      }
      out.close();
      std::cout << r.domain << ": " << r.messages << " messages in " << r.rows.size() << " records: " << path << "\n";
      if (!send) continue;
      for (const DmarcRua& rua : verified_destinations(*dns, r.domain, ruas)) {
        const std::string message = report_message(meta, r.domain, rua.address, id, name, gz);
        if (rua.limit > 0 && message.size() > rua.limit) {
          std::cout << "  not sent to " << rua.address << ": " << message.size() << " octets exceed its limit of "
                    << rua.limit << "\n";
          continue;
        }
        if (std::string err = mailer.send(meta.email, rua.address, message); !err.empty()) {
          std::cout << "  not sent to " << rua.address << ": " << err << "\n";
          status = 1;
          continue;
        }
        std::cout << "  sent to " << rua.address << " (" << message.size() << " octets)\n";
      }
    }
    dns->shutdown();
  } catch (const std::exception& e) {
    std::cerr << "postern report dmarc: " << e.what() << "\n";
    status = 1;
  }
  guard.reset();
  io.stop();
  dns_thread.join();
  return status;
}

}  // namespace postern
