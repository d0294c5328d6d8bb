// The configuration: an immutable snapshot built from TOML (the embedded
// default, a file, and command-line overrides). Every error names the file,
// the line, the key and what is allowed.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "filters/audit/audit_log.h"
#include "filters/auth/auth_options.h"
#include "filters/dns/unbound_resolver.h"
#include "filters/filter_chain.h"
#include "filters/lua/lua_options.h"
#include "filters/milter/milter_filter.h"
#include "filters/store/store_options.h"
#include "proxy/data_decoder.h"

namespace postern {

using Seconds = std::chrono::duration<double>;

// [control] socket when the key is not set and the service manager gave
// postern a runtime directory (systemd RuntimeDirectory=postern: /run/postern).
inline constexpr const char* kRuntimeControlSocket = "control.sock";

struct Config {
  struct Server {
    std::string hostname;  // greeting, EHLO, Received; system host name when empty
    unsigned threads = 0;  // I/O threads; 0 = one per core
    Seconds shutdown_timeout{30};
    // Privilege drop after binding (docs/operations.md): empty = stay as started.
    std::string user;
    std::string group;  // empty = the user's primary group
  } server;

  struct Listener {
    std::string address = "127.0.0.1:2525";  // as written, for logs
    std::string host;
    unsigned short port = 2525;
    // "starttls" offers STARTTLS (RFC 3207); "implicit" speaks TLS from the
    // first byte (RFC 8314, port 465); "none" offers no TLS.
    enum class Tls { kNone, kStarttls, kImplicit } tls = Tls::kNone;
    bool require_tls = false;     // 530 5.7.0 to mail commands before STARTTLS
    bool proxy_protocol = false;  // expect a PROXY v1/v2 header (HAProxy) first
    // Peers ("IP/PREFIX") allowed to send that header; others are closed.
    // Loopback by default: HAProxy on the same host; a balancer elsewhere is
    // named, so an open port cannot be told a forged client address.
    std::vector<std::string> proxy_protocol_from{"127.0.0.0/8", "::1/128"};
    // "passthrough" relays SASL PLAIN/LOGIN to the MTA, offered under TLS only.
    enum class Auth { kOff, kPassthrough } auth = Auth::kOff;
    // The filters this listener's sessions run: "inbound" the [lua] rules and
    // the authenticity checks ([submission]'s once a client authenticated),
    // "submission" always [submission]'s, "none" no filter at all (a port
    // for trusted internal senders).
    enum class Policy { kInbound, kSubmission, kNone } policy = Policy::kInbound;
  };
  std::vector<Listener> listeners;

  // The server certificate for inbound TLS; re-read on SIGHUP.
  struct Tls {
    std::string cert_file;  // PEM, leaf first then the chain
    std::string key_file;   // PEM
    std::string min_version = "TLSv1.2";
    std::string ciphers;    // OpenSSL cipher list for TLS <= 1.2; "" = OpenSSL's default
    // Resumption for returning clients (RFC 8446 4.6.1, RFC 5077): tickets
    // sealed with process-wide keys that outlive reloads, or with the keys of
    // ticket_key_file (80 octets each; shared by several postern hosts).
    bool session_tickets = true;
    std::string ticket_key_file;
    Seconds session_lifetime{7200};
  } tls;

  struct Upstream {
    enum class Kind { kSmtp, kMaildir } kind = Kind::kMaildir;
    std::string target;  // as written
    std::string host;    // kSmtp
    unsigned short port = 25;
    std::string maildir;  // kMaildir: absolute path
    std::string helo;     // EHLO name towards the MTA; server.hostname when empty
    // How the MTA learns the real client: XCLIENT, XFORWARD, whichever it
    // offers (auto), or only postern's Received header (none).
    enum class ClientIdentity { kAuto, kXclient, kXforward, kNone } client_identity = ClientIdentity::kAuto;
    // TLS towards the MTA: none; opportunistic (STARTTLS when offered, any
    // certificate); verify (STARTTLS required, certificate and name checked).
    enum class Tls { kNone, kOpportunistic, kVerify } tls = Tls::kNone;
    std::string ca_file;   // verify: CA bundle (PEM); "" = the system's
    std::string tls_name;  // verify: name expected in the certificate; "" = the target host
    Seconds probe_interval{300};  // EHLO/QUIT probe: capabilities and /healthz
    // Connection reuse (proxy/upstream_pool.h): a connection whose last
    // transaction ended cleanly waits, per I/O thread, for the next client
    // session instead of QUIT; at most reuse_pool_size idle ones per thread,
    // each for reuse_idle_timeout, each for reuse_max_messages messages.
    bool reuse = true;
    std::size_t reuse_pool_size = 16;
    Seconds reuse_idle_timeout{5};
    std::size_t reuse_max_messages = 100;
    // BDAT (RFC 3030) towards an MTA that offers CHUNKING; DATA otherwise.
    bool chunking = true;
    // Without CHUNKING: DATA goes to the MTA when the client's DATA is
    // answered, so its 354 comes back while the content arrives; a message
    // not relayed then ends that MTA connection (issue 23).
    bool early_data = true;
  } upstream;

  struct Limits {
    std::size_t message_size = 50u * 1024 * 1024;
    std::size_t recipients = 1000;
    std::size_t messages_per_session = 10000;
    std::size_t errors = 10;
    // Failed AUTH exchanges (5xx, or a refused SASL line) a session may have;
    // the one that reaches it is answered, then 421 4.7.0 and close. Each
    // failure's reply waits auth_failure_delay times the failures so far.
    std::size_t auth_failures = 3;
    Seconds auth_failure_delay{1};
    std::size_t command_line = 2048;
    std::size_t text_line = 1000;
    // The header section (filters/message.h HeaderLimits): octets up to the
    // empty line, and fields; beyond either, 552 5.3.4.
    std::size_t header_section_size = 1024 * 1024;
    std::size_t header_fields = 10000;
    // Concurrent sessions: in all, from one client address, and from one
    // network (IPv4 /network_prefix_v4, IPv6 /network_prefix_v6); 0 = no limit.
    std::size_t sessions = 0;
    std::size_t sessions_per_ip = 50;
    std::size_t sessions_per_network = 0;
    std::size_t network_prefix_v4 = 24;
    std::size_t network_prefix_v6 = 64;
    // Networks ("IP/PREFIX") not limited per address or network (Postfix's
    // smtpd_client_event_limit_exceptions); they still count in `sessions`.
    std::vector<std::string> sessions_exempt{"127.0.0.0/8", "::1/128"};
  } limits;

  // RFC 5321 §4.5.3.2 defaults.
  struct Timeouts {
    Seconds command{300};
    Seconds data{300};
    Seconds upstream_connect{30};
    Seconds upstream_greeting{300};
    Seconds upstream_mail{300};
    Seconds upstream_rcpt{300};
    Seconds upstream_data_init{120};
    Seconds upstream_data_block{180};
    Seconds upstream_data_term{600};
    // Wait before the greeting; a client that talks first is refused (554).
    Seconds greet_pause{0};
  } timeouts;

  struct Data {
    DataDecoder::BareLineEnding bare_line_ending = DataDecoder::BareLineEnding::kReject;
    std::size_t spool_memory = 1024 * 1024;
    std::size_t spool_memory_total = 256 * 1024 * 1024;  // all sessions together; 0 = no bound
    std::string spool_dir;  // $TMPDIR or /tmp when empty
  } data;

  // Where quarantine verdicts put messages: a Maildir, one file per message
  // with its envelope and reason in X-Postern-* headers.
  struct Quarantine {
    std::string dir;  // absolute; default "postern-quarantine" under the working directory
  } quarantine;

  // The filter policy of authenticated sessions (submission, RFC 6409): they
  // run these rules instead of [lua] scripts, and the authenticity checks
  // only when asked (a user's own outgoing mail has no SPF/DMARC to pass).
  struct Submission {
    std::vector<std::string> scripts;
    bool authenticity_checks = false;
  } submission;

  // Prometheus /metrics and /healthz over HTTP; off when the address is empty.
  struct Metrics {
    std::string address;  // "IP:PORT"
    std::string host;
    unsigned short port = 0;
  } metrics;

  struct Log {
    enum class Level { kDebug, kInfo, kWarning, kError } level = Level::kInfo;
    enum class Format { kText, kJson } format = Format::kText;
    std::string output = "stderr";  // "stderr", "journald" or "file:/absolute/path"
  } log;

  // The local control socket of `postern reload` and `postern status`.
  // Key unset: $RUNTIME_DIRECTORY/control.sock under systemd, else
  // `per_listener` (control::listener_socket_name of the first listener's
  // bound port, in the working directory), so that instances started side
  // by side from one directory each get their own (issue 18).
  struct Control {
    std::string socket;    // absolute path; empty = none, or per_listener
    bool per_listener = false;
    unsigned mode = 0600;  // 0600 or 0660
  } control;

  // [lua]: rule scripts and the engine's limits. The proxy sets the runtime
  // fields (log, store) on its own copy before make_lua_filter().
  LuaOptions lua;
  // [store]: the backend of postern.store (memory, optionally persisted to
  // LMDB, or Redis). store.max_entries is [lua] store_max_entries.
  StoreOptions store;
  // [scores]: thresholds mapping the transaction's score to actions.
  ScoreThresholds scores{5, 0, 15, "X-Spam-Status"};
  // [[milter]]: external milters, called in order before the Lua rules
  // (docs/milter.md).
  std::vector<MilterOptions> milters;
  // [milter_server]: postern as a milter behind Postfix or Sendmail
  // (proxy/milter_server.h, docs/milter.md); off when `listen` is empty.
  struct MilterServer {
    struct Address {
      std::string text;  // "inet:HOST:PORT" or "unix:PATH", as written
      bool unix_socket = false;
      std::string path;  // unix
      std::string host;  // inet: an IP address
      unsigned short port = 0;
    };
    std::vector<Address> listen;
    Seconds timeout{600};          // the MTA's silence between two commands
    unsigned socket_mode = 0660;   // a unix socket's permissions
    std::size_t connections = 1000;  // open MTA connections at most; 0 = no bound
    // The filters: "inbound" ([submission]'s once {auth_authen} is set) or "submission".
    Listener::Policy policy = Listener::Policy::kInbound;
  } milter_server;

  // [dns]: postern's resolver (filters/dns/unbound_resolver.h).
  DnsOptions dns;
  // [spf], [dkim], [dmarc], [authentication_results]: the authenticity
  // checks (filters/auth/auth_options.h); auth.hostname is server.hostname,
  // auth.worker_threads is [dns] workers.
  AuthOptions auth;
  // [audit]: one JSON line per message.
  struct Audit {
    std::string path;                                 // empty = no audit log
    std::size_t rotate_size = 100u * 1024 * 1024;     // rotate past this many bytes
    std::size_t rotate_keep = 10;                     // rotated files kept
    AuditLogOptions::Fsync fsync = AuditLogOptions::Fsync::kInterval;
    Seconds fsync_interval{1};                        // kInterval: at most this long unsynced
    std::size_t queue_limit = 64u * 1024 * 1024;      // octets waiting for the writer thread
  } audit;
  // [report]: `postern report` (the HTML page) and `postern report dmarc`
  // (RFC 7489 aggregate reports; docs/authentication.md "Reports").
  struct Report {
    std::string org_name;            // report_metadata/org_name; server.hostname when empty
    std::string email;               // report_metadata/email and the reports' sender
    std::string extra_contact_info;  // report_metadata/extra_contact_info, optional
    Seconds interval{86400};         // the period a run without --from/--to covers
    // The domains the HTML report shows by default: [report] domains, else
    // the [[dkim.sign]] domains (domains_from_signing); empty = all.
    std::vector<std::string> domains;
    bool domains_from_signing = false;
  } report;
};

// A configuration error (or several), already formatted "file:line:col: ...".
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Where the configuration comes from and what the command line overrides.
struct ConfigSource {
  std::string path;                        // empty: the embedded default
  std::vector<std::string> listen;         // --listen, replaces [[listener]]
  std::string upstream;                    // --upstream
  std::vector<std::string> sets;           // --set section.key=value
};

// Builds a snapshot; throws ConfigError listing every problem found.
std::shared_ptr<const Config> load_config(const ConfigSource& source);

}  // namespace postern
