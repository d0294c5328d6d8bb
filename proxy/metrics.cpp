// Metrics registry and its text exposition; see metrics.h (the HTTP
// endpoint is metrics_http.cpp).
#include "proxy/metrics.h"

#include <fmt/format.h>

#include <cmath>
#include <ctime>
#include <initializer_list>
#include <utility>
#include <vector>

#include "filters/auth/auth_results.h"
#include "filters/filter_stats.h"
#include "filters/store/redis_connection.h"
#include "version.h"

namespace postern::metrics {
namespace {
constexpr std::string_view kStageNames[] = {"connect", "helo", "mail", "rcpt", "data", "eom"};
constexpr std::string_view kRefusalNames[] = {"limit", "proxy_protocol", "tls", "filter"};
constexpr std::string_view kUpstreamErrorNames[] = {"connect_refused", "connect_failed", "resolve", "timeout",
                                                    "tls",             "protocol",       "closed"};
constexpr std::string_view kProtocolErrorNames[] = {"malformed", "unexpected_reply", "unexplained_bytes", "greeting",
                                                    "helo"};
constexpr std::string_view kCommandNames[] = {"greeting", "ehlo", "starttls", "xclient", "xforward", "auth",
                                              "mail",     "rcpt", "data",     "eom",     "rset",     "other"};
constexpr std::string_view kDnsNames[] = {"ok", "nxdomain", "nodata", "servfail", "timeout"};
constexpr std::string_view kRuleFailureNames[] = {"error", "timeout", "budget", "memory"};
static_assert(std::size(kRefusalNames) == n<Refusal>());
static_assert(std::size(kUpstreamErrorNames) == n<UpstreamError>());
static_assert(std::size(kCommandNames) == n<UpstreamCommand>());
static_assert(std::size(kProtocolErrorNames) == n<UpstreamProtocolError>());

using Labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;

// Writes families in the text format: HELP and TYPE once, then the samples.
class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}

  void family(std::string_view name, std::string_view type, std::string_view help) {
    fmt::format_to(std::back_inserter(out_), "# HELP {} {}\n# TYPE {} {}\n", name, escape_help(help), name, type);
  }
  template <typename T>
  void sample(std::string_view name, Labels labels, T value, std::string_view le = {}) {
    out_ += name;
    if (labels.size() || !le.empty()) {
      out_ += '{';
      bool first = true;
      for (const auto& [k, v] : labels) {
        if (!first) out_ += ',';
        first = false;
        fmt::format_to(std::back_inserter(out_), "{}=\"{}\"", k, escape_label_value(v));
      }
      if (!le.empty()) fmt::format_to(std::back_inserter(out_), "{}le=\"{}\"", first ? "" : ",", le);
      out_ += '}';
    }
    fmt::format_to(std::back_inserter(out_), " {}\n", value);
  }
  void counter(std::string_view name, std::string_view help, std::uint64_t value) {
    family(name, "counter", help);
    sample(name, {}, value);
  }
  void histogram(std::string_view name, Labels labels, const Histogram& h) {
    Histogram::Snapshot s = h.snapshot();
    std::string bucket = fmt::format("{}_bucket", name);
    for (std::size_t i = 0; i < kBuckets.size(); ++i) {
      sample(bucket, labels, s.cumulative[i], fmt::format("{}", kBuckets[i]));
    }
    sample(bucket, labels, s.count, "+Inf");
    sample(fmt::format("{}_sum", name), labels, s.sum);
    sample(fmt::format("{}_count", name), labels, s.count);
  }

 private:
  std::string& out_;
};

// Splits a LabelTable key into its label values.
std::vector<std::string_view> split_key(std::string_view key) {
  std::vector<std::string_view> parts;
  for (;;) {
    std::size_t sep = key.find(kKeySep);
    parts.push_back(key.substr(0, sep));
    if (sep == std::string_view::npos) return parts;
    key.remove_prefix(sep + 1);
  }
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// "X.Y.Z" at the start of `text` (RFC 3463 §2: class, 1-3 digit subject and
// detail), followed by a space or the end; false when absent.
bool parse_enhanced(std::string_view text, int& klass, int& subject, int& detail) {
  std::size_t i = 0;
  auto number = [&](int& out) {
    std::size_t start = i;
    out = 0;
    while (i < text.size() && is_digit(text[i]) && i - start < 3) out = out * 10 + (text[i++] - '0');
    return i > start && (i >= text.size() || !is_digit(text[i]));
  };
  if (text.size() < 5 || !is_digit(text[0]) || text[1] != '.') return false;
  klass = text[0] - '0';
  i = 2;
  if (!number(subject) || i >= text.size() || text[i] != '.') return false;
  ++i;
  if (!number(detail)) return false;
  return i == text.size() || text[i] == ' ' || text[i] == '\r' || text[i] == '\n';
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

class ProxyFilterStats final : public FilterStats {
 public:
  void dns_answer(DnsStatus status, bool from_cache, double seconds) override {
    Registry& r = registry();
    std::size_t i = static_cast<std::size_t>(status);
    if (i < r.dns_lookups.size()) r.dns_lookups[i].inc();
    if (from_cache) r.dns_cache_hits.inc();
    else r.dns_query_duration.observe(seconds);
  }
  void lua_rule_run(std::string_view rule, bool hit, double seconds) override {
    std::string scratch;
    RuleStats& s = registry().rules.at(clean_label_value(rule, scratch));
    s.duration.observe(seconds);
    if (hit) s.hits.inc();
  }
  void lua_rule_failed(std::string_view rule, std::string_view script, RuleFailure why) override {
    std::string key = clean_label_value(rule);
    key += kKeySep;
    key += clean_label_value(script);
    key += kKeySep;
    key += kRuleFailureNames[static_cast<std::size_t>(why)];
    registry().rule_failures.at(key).inc();
  }
  void lua_log_dropped(std::string_view rule) override {
    std::string scratch;
    registry().lua_log_dropped.at(clean_label_value(rule, scratch)).inc();
  }
  void lua_thread_busy(std::string_view rule) override {
    std::string scratch;
    registry().lua_thread_busy.at(clean_label_value(rule, scratch)).inc();
  }
  void mime_structure_read(bool on_worker) override { registry().mime_structure_reads[on_worker ? 1 : 0].inc(); }
  void mime_structure_late() override { registry().mime_structure_late.inc(); }
};
}  // namespace

// ---- values ---------------------------------------------------------------

void Histogram::observe(double seconds) {
  if (!(seconds >= 0)) seconds = 0;  // NaN and clock oddities
  std::size_t i = 0;
  while (i < kBuckets.size() && seconds > kBuckets[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(static_cast<std::uint64_t>(std::llround(std::min(seconds, 1e9) * 1e9)), std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  std::uint64_t running = 0;
  for (std::size_t i = 0; i < kBuckets.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative[i] = running;
  }
  s.count = running + buckets_[kBuckets.size()].load(std::memory_order_relaxed);
  s.sum = static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9;
  return s;
}

std::string_view clean_label_value(std::string_view v, std::string& scratch) {
  bool clean = v.size() <= kMaxLabelValue;
  for (char c : v) clean = clean && c >= 0x20 && c <= 0x7e;
  if (clean) return v;
  scratch = clean_label_value(v);
  return scratch;
}

std::string clean_label_value(std::string_view v) {
  std::string out(v.substr(0, kMaxLabelValue));
  for (char& c : out) {
    if (c < 0x20 || c > 0x7e) c = '?';
  }
  return out;
}

std::string escape_label_value(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string escape_help(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

Registry::Registry() : start_time(unix_now()) {}

Registry& registry() {
  static Registry r;
  return r;
}

// ---- updates --------------------------------------------------------------

SessionGauge::SessionGauge(std::string_view listener) : stats_(registry().listeners.at(clean_label_value(listener, scratch_))) {
  stats_.total.inc();
  stats_.open.add(1);
}

SessionGauge::~SessionGauge() { stats_.open.add(-1); }

void declare_listener(std::string_view listener) {
  std::string scratch;
  registry().listeners.at(clean_label_value(listener, scratch));
}

void session_refused(std::string_view listener, Refusal why) {
  std::string scratch;
  registry().listeners.at(clean_label_value(listener, scratch)).refused[idx(why)].inc();
}

void count_reply(int code, std::string_view text, Registry& r) {
  int k = code / 100;
  if (k < 0 || k > 5) return;
  r.replies_by_class[static_cast<std::size_t>(k)].inc();
  if (k != 4 && k != 5) return;
  std::size_t c = static_cast<std::size_t>(k - 4);
  if (std::size_t lf = text.rfind('\n'); lf != std::string_view::npos) text.remove_prefix(lf + 1);
  int klass = 0, subject = 0, detail = 0;
  if (!parse_enhanced(text, klass, subject, detail)) {
    r.enhanced_none[c].inc();
  } else if ((klass == 4 || klass == 5) && subject >= 0 && static_cast<std::size_t>(subject) < kEnhancedSubjects &&
             detail >= 0 && static_cast<std::size_t>(detail) < kEnhancedDetails) {
    r.enhanced[static_cast<std::size_t>(klass - 4)][static_cast<std::size_t>(subject)]
              [static_cast<std::size_t>(detail)].inc();
  } else {
    r.enhanced_other[c].inc();
  }
}

void message_done(Outcome result, std::uint64_t size, double eod_seconds, double transaction_seconds) {
  Registry& r = registry();
  r.messages[idx(result)].inc();
  r.message_received_bytes.inc(size);
  r.message_duration.observe(eod_seconds);
  r.transaction_duration.observe(transaction_seconds);
}

void transaction_done(const TransactionFacts& t, Registry& r) {
  std::string scratch;
  for (const Symbol& s : t.symbols) r.symbols.at(clean_label_value(s.name, scratch)).inc();
  const AuthResults& a = auth_results(t);
  if (a.spf) r.spf_results[static_cast<std::size_t>(a.spf->result)].inc();
  if (a.dkim_checked) {
    if (a.dkim.empty()) r.dkim_results[static_cast<std::size_t>(DkimResult::kNone)].inc();
    for (const DkimSignature& d : a.dkim) r.dkim_results[static_cast<std::size_t>(d.result)].inc();
  }
  if (a.dmarc) r.dmarc_results[static_cast<std::size_t>(a.dmarc->result)].inc();
}

void filter_time(Stage stage, double seconds) {
  std::size_t i = static_cast<std::size_t>(stage);
  if (i < registry().filter_duration.size()) registry().filter_duration[i].observe(seconds);
}

void upstream_error(UpstreamError kind) { registry().upstream_errors[idx(kind)].inc(); }

void upstream_protocol_error(UpstreamProtocolError why) {
  registry().upstream_protocol_errors[idx(why)].inc();
  upstream_error(UpstreamError::kProtocol);
}

std::string_view upstream_protocol_error_name(UpstreamProtocolError why) { return kProtocolErrorNames[idx(why)]; }

std::string_view pool_discard_name(PoolDiscard why) {
  constexpr std::array<std::string_view, n<PoolDiscard>()> kNames = {"expired", "closed",   "unexplained",
                                                                      "reidentify", "reload", "full"};
  return kNames[idx(why)];
}

std::string_view upstream_command_name(UpstreamCommand command) { return kCommandNames[idx(command)]; }

void upstream_reply(UpstreamCommand command, int code, double seconds) {
  Registry& r = registry();
  int k = code / 100;
  if (k >= 0 && k <= 5) r.upstream_replies_by_class[static_cast<std::size_t>(k)].inc();
  r.upstream_reply_duration[idx(command)].observe(seconds);
}

void tls_handshake(bool ok, bool timed_out) {
  Registry& r = registry();
  r.tls_handshakes.inc();
  if (!ok) r.tls_failures[timed_out ? 1 : 0].inc();
}

void install_filter_stats() {
  static ProxyFilterStats sink;
  set_filter_stats(&sink);
}

// ---- exposition -------------------------------------------------------------

std::string Registry::render() const {
  std::string out;
  out.reserve(64 * 1024);
  Writer w(out);

  w.family("postern_build_info", "gauge", "Always 1; the version of the running binary.");
  w.sample("postern_build_info", {{"version", kVersion}}, 1);
  w.family("process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch, in seconds.");
  w.sample("process_start_time_seconds", {}, fmt::format("{:.3f}", start_time));

  // Sessions, by listener.
  w.family("postern_sessions_total", "counter", "Client connections accepted, by listener.");
  listeners.for_each([&](std::string_view l, const ListenerStats& s) {
    w.sample("postern_sessions_total", {{"listener", l}}, s.total.value());
  });
  w.family("postern_sessions_open", "gauge", "Client connections open now, by listener.");
  listeners.for_each([&](std::string_view l, const ListenerStats& s) {
    w.sample("postern_sessions_open", {{"listener", l}}, s.open.value());
  });
  w.family("postern_sessions_refused_total", "counter",
           "Client connections closed before the SMTP dialogue, by listener and reason.");
  listeners.for_each([&](std::string_view l, const ListenerStats& s) {
    for (std::size_t i = 0; i < s.refused.size(); ++i) {
      w.sample("postern_sessions_refused_total", {{"listener", l}, {"reason", kRefusalNames[i]}}, s.refused[i].value());
    }
  });

  // Messages.
  w.family("postern_messages_total", "counter", "Messages that reached their end of data, by what became of them.");
  for (std::size_t i = 0; i < messages.size(); ++i) {
    w.sample("postern_messages_total", {{"action", outcome_name(static_cast<Outcome>(i))}}, messages[i].value());
  }
  w.family("postern_recipients_total", "counter", "RCPT commands, by whether the recipient was accepted.");
  w.sample("postern_recipients_total", {{"result", "accepted"}}, recipients[0].value());
  w.sample("postern_recipients_total", {{"result", "refused"}}, recipients[1].value());
  w.counter("postern_message_received_bytes_total", "Octets of message content received (after dot-unstuffing).",
            message_received_bytes.value());
  w.counter("postern_message_relayed_bytes_total",
            "Octets of messages the MTA accepted, as relayed (header changes included).", message_relayed_bytes.value());
  w.counter("postern_received_bytes_total", "Octets read from clients, commands included.", bytes_received.value());

  // Replies.
  w.family("postern_replies_total", "counter", "Replies sent to clients, by class.");
  for (std::size_t k = 2; k < 6; ++k) {
    w.sample("postern_replies_total", {{"class", fmt::format("{}xx", k)}}, replies_by_class[k].value());
  }
  w.family("postern_replies_enhanced_total", "counter",
           "4xx and 5xx replies sent to clients, by enhanced status code (RFC 3463).");
  for (std::size_t c = 0; c < 2; ++c) {
    for (std::size_t s = 0; s < kEnhancedSubjects; ++s) {
      for (std::size_t d = 0; d < kEnhancedDetails; ++d) {
        if (std::uint64_t v = enhanced[c][s][d].value()) {
          w.sample("postern_replies_enhanced_total", {{"code", fmt::format("{}.{}.{}", c + 4, s, d)}}, v);
        }
      }
    }
    std::string klass = fmt::format("{}", c + 4);
    if (std::uint64_t v = enhanced_other[c].value()) {
      w.sample("postern_replies_enhanced_total", {{"code", klass + ".other"}}, v);
    }
    if (std::uint64_t v = enhanced_none[c].value()) w.sample("postern_replies_enhanced_total", {{"code", klass + ".none"}}, v);
  }
  w.counter("postern_client_errors_total", "Bad commands from clients.", client_errors.value());
  w.counter("postern_timeouts_total", "Client sessions ended by a time-out.", timeouts.value());
  w.counter("postern_tls_handshakes_total", "TLS handshakes with clients started (STARTTLS and implicit TLS).",
            tls_handshakes.value());
  w.family("postern_tls_handshake_failures_total", "counter", "TLS handshakes with clients that failed, by reason.");
  w.sample("postern_tls_handshake_failures_total", {{"reason", "error"}}, tls_failures[0].value());
  w.sample("postern_tls_handshake_failures_total", {{"reason", "timeout"}}, tls_failures[1].value());

  // Upstream.
  w.counter("postern_upstream_connections_total", "Connections opened to the MTA (probes included).",
            upstream_connections.value());
  w.counter("postern_upstream_connections_reused_total",
            "Idle pooled connections to the MTA handed to a new client session instead of a new connection.",
            upstream_connections_reused.value());
  w.counter("postern_upstream_data_aborts_total",
            "Connections to the MTA closed in DATA sent ahead (early_data) because the message was not relayed.",
            upstream_data_aborts.value());
  w.family("postern_upstream_pool_discards_total", "counter",
           "Idle pooled connections to the MTA closed instead of reused, by reason.");
  for (std::size_t i = 0; i < upstream_pool_discards.size(); ++i) {
    w.sample("postern_upstream_pool_discards_total", {{"reason", pool_discard_name(static_cast<PoolDiscard>(i))}},
             upstream_pool_discards[i].value());
  }
  w.family("postern_upstream_errors_total", "counter", "Failures of connections to the MTA, by kind.");
  for (std::size_t i = 0; i < upstream_errors.size(); ++i) {
    w.sample("postern_upstream_errors_total", {{"kind", kUpstreamErrorNames[i]}}, upstream_errors[i].value());
  }
  w.family("postern_upstream_protocol_errors_total", "counter",
           "Protocol errors of the MTA (each also counted as upstream_errors kind=protocol), by reason.");
  for (std::size_t i = 0; i < upstream_protocol_errors.size(); ++i) {
    w.sample("postern_upstream_protocol_errors_total", {{"reason", kProtocolErrorNames[i]}},
             upstream_protocol_errors[i].value());
  }
  w.family("postern_upstream_replies_total", "counter", "Replies received from the MTA, by class.");
  for (std::size_t k = 2; k < 6; ++k) {
    w.sample("postern_upstream_replies_total", {{"class", fmt::format("{}xx", k)}}, upstream_replies_by_class[k].value());
  }
  w.family("postern_upstream_reply_duration_seconds", "histogram",
           "Time the MTA took to answer, by what it answered.");
  for (std::size_t i = 0; i < upstream_reply_duration.size(); ++i) {
    w.histogram("postern_upstream_reply_duration_seconds", {{"command", kCommandNames[i]}}, upstream_reply_duration[i]);
  }
  w.family("postern_upstream_up", "gauge", "1 when the last probe reached the MTA, else 0.");
  w.sample("postern_upstream_up", {}, upstream_reachable.load(std::memory_order_relaxed) ? 1 : 0);
  w.family("postern_upstream_probe_timestamp_seconds", "gauge", "When the MTA was last probed (Unix time; 0: never).");
  w.sample("postern_upstream_probe_timestamp_seconds", {}, upstream_probe_time.load(std::memory_order_relaxed));

  // Filters.
  w.family("postern_filter_duration_seconds", "histogram", "Time in the filter chain, by SMTP stage.");
  for (std::size_t i = 0; i < filter_duration.size(); ++i) {
    w.histogram("postern_filter_duration_seconds", {{"stage", kStageNames[i]}}, filter_duration[i]);
  }
  w.family("postern_dns_lookups_total", "counter", "DNS lookups of the filters, by result (cache hits included).");
  for (std::size_t i = 0; i < dns_lookups.size(); ++i) {
    w.sample("postern_dns_lookups_total", {{"result", kDnsNames[i]}}, dns_lookups[i].value());
  }
  w.counter("postern_dns_cache_hits_total", "DNS lookups answered from postern's own cache.", dns_cache_hits.value());
  if (const RedisStats* r = redis.load(std::memory_order_acquire)) {
    constexpr auto relaxed = std::memory_order_relaxed;
    w.counter("postern_store_calls_total", "postern.store calls sent to Redis.", r->calls.load(relaxed));
    w.counter("postern_store_errors_total",
              "Store calls that got no answer (Redis down, connection lost, protocol); [store] on_error applied.",
              r->errors.load(relaxed));
    w.counter("postern_store_timeouts_total", "Store calls past [store] redis_timeout.", r->timeouts.load(relaxed));
    w.counter("postern_store_reconnects_total", "Connections to Redis established again after one was lost.",
              r->reconnects.load(relaxed));
    w.family("postern_store_redis_connections", "gauge", "Connections to Redis up now (one per I/O thread).");
    w.sample("postern_store_redis_connections", {}, r->connections.load(relaxed));
  }
  w.family("postern_dns_query_duration_seconds", "histogram",
           "Time libunbound took for lookups not in postern's cache (retries included).");
  w.histogram("postern_dns_query_duration_seconds", {}, dns_query_duration);
  w.family("postern_auth_results_total", "counter",
           "SPF, DKIM (per signature) and DMARC results, by method and result.");
  for (std::size_t i = 0; i < spf_results.size(); ++i) {
    w.sample("postern_auth_results_total", {{"method", "spf"}, {"result", spf_result_name(static_cast<SpfResult>(i))}},
             spf_results[i].value());
  }
  for (std::size_t i = 0; i < dkim_results.size(); ++i) {
    w.sample("postern_auth_results_total", {{"method", "dkim"}, {"result", dkim_result_name(static_cast<DkimResult>(i))}},
             dkim_results[i].value());
  }
  for (std::size_t i = 0; i < dmarc_results.size(); ++i) {
    w.sample("postern_auth_results_total",
             {{"method", "dmarc"}, {"result", dmarc_result_name(static_cast<DmarcResult>(i))}}, dmarc_results[i].value());
  }
  w.family("postern_symbols_total", "counter", "Symbols (rule hits) added to transactions, by symbol.");
  symbols.for_each([&](std::string_view s, const Counter& c) {
    w.sample("postern_symbols_total", {{"symbol", s}}, c.value());
  });
  w.family("postern_lua_log_dropped_total", "counter", "Lines rules logged past lua.log_rate, dropped, by rule.");
  lua_log_dropped.for_each([&](std::string_view rule, const Counter& c) {
    w.sample("postern_lua_log_dropped_total", {{"rule", rule}}, c.value());
  });
  w.family("postern_lua_thread_busy_total", "counter",
           "Rule calls that held their I/O thread past lua.busy_threshold, by rule.");
  lua_thread_busy.for_each([&](std::string_view rule, const Counter& c) {
    w.sample("postern_lua_thread_busy_total", {{"rule", rule}}, c.value());
  });
  w.family("postern_mime_structure_reads_total", "counter",
           "Messages whose MIME structure was read for the rules, by where: the I/O thread, or a worker (over 1 MiB).");
  w.sample("postern_mime_structure_reads_total", {{"where", "io_thread"}}, mime_structure_reads[0].value());
  w.sample("postern_mime_structure_reads_total", {{"where", "worker"}}, mime_structure_reads[1].value());
  w.family("postern_mime_structure_late_total", "counter",
           "MIME structure reads on a worker a rule gave up waiting for past lua.structure_timeout.");
  w.sample("postern_mime_structure_late_total", {}, mime_structure_late.value());
  w.family("postern_lua_rule_hits_total", "counter",
           "Lua rule calls that added a symbol or returned true or a verdict, by rule.");
  rules.for_each([&](std::string_view rule, const RuleStats& s) {
    w.sample("postern_lua_rule_hits_total", {{"rule", rule}}, s.hits.value());
  });
  w.family("postern_lua_rule_errors_total", "counter", "Lua rule calls that failed, by rule, script and kind.");
  rule_failures.for_each([&](std::string_view key, const Counter& c) {
    auto parts = split_key(key);
    while (parts.size() < 3) parts.push_back(kOverflowKey);
    w.sample("postern_lua_rule_errors_total", {{"rule", parts[0]}, {"script", parts[1]}, {"kind", parts[2]}},
             c.value());
  });
  w.family("postern_lua_rule_duration_seconds", "histogram", "Time of one Lua rule call, by rule.");
  rules.for_each([&](std::string_view rule, const RuleStats& s) {
    w.histogram("postern_lua_rule_duration_seconds", {{"rule", rule}}, s.duration);
  });

  // Whole messages.
  w.family("postern_message_duration_seconds", "histogram",
           "From the end of DATA (or the last BDAT) to the final reply to the client.");
  w.histogram("postern_message_duration_seconds", {}, message_duration);
  w.family("postern_transaction_duration_seconds", "histogram", "From MAIL to the final reply to the client.");
  w.histogram("postern_transaction_duration_seconds", {}, transaction_duration);
  return out;
}

}  // namespace postern::metrics
