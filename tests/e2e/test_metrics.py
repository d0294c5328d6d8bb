"""Prometheus /metrics and /healthz under real load.

smtp-source and raw SMTP clients (plain and STARTTLS) send mail through
postern into a recording aiosmtpd MTA, with Lua rules that reject, tempfail,
fail, tag and redirect; /metrics is scraped while the load runs and after it,
each page parsed by a strict parser of the text format (0.0.4), and the
counters are checked against what the test did. /healthz follows a real
smtp-sink going away and coming back. DNS and SPF/DKIM/DMARC counters come
from a real unbound on loopback (and a socket that never answers).
"""

import os
import re
import subprocess
import time

import pytest

from dns_server import BlackHoleDns, serve
from harness import (IO_TIMEOUT, SCALE, PostfixSink, SmtpClient, check_reply, free_port, make_cert,
                     wait_port, wait_until, write_config)
from prometheus import Exposition, http_get, scrape


def test_the_parser_refuses_what_prometheus_would():
    """The parser is the test's yardstick: it must fail on malformed pages."""
    good = ("# HELP postern_x_total X.\n# TYPE postern_x_total counter\npostern_x_total{a=\"q\\\"\"} 1\n")
    assert Exposition(good).value("postern_x_total", a='q"') == 1
    for bad in [good.replace("\\\"", "\""),                       # unescaped quote
                good.replace("# HELP postern_x_total X.\n", ""),  # TYPE without HELP
                good + "postern_x_total{a=\"q\\\"\"} 2\n",         # duplicate sample
                good.replace("postern_x_total{", "postern_y_total{"),  # outside its family
                good.replace("_total", ""),                        # counter without _total
                "# HELP postern_h_seconds H.\n# TYPE postern_h_seconds histogram\n"
                "postern_h_seconds_bucket{le=\"1\"} 2\npostern_h_seconds_bucket{le=\"+Inf\"} 1\n"
                "postern_h_seconds_sum 0\npostern_h_seconds_count 1\n"]:  # buckets decrease
        with pytest.raises(AssertionError):
            Exposition(bad)


# --------------------------------------------------------------------------
# load: every counter against what the test sent

RULES = """
postern.rule{ name = "METRICS_TAG", stage = "eom", score = 1, fn = function(ctx)
  return (ctx.headers:first("X-Metrics-Case") or "") == "tag"
end }
postern.rule{ name = "METRICS_BROKEN", stage = "eom", fn = function(ctx)
  if (ctx.headers:first("X-Metrics-Case") or "") == "error" then error("broken on purpose") end
end }
postern.rule{ name = "METRICS_POLICY", stage = "eom", fn = function(ctx)
  local case = ctx.headers:first("X-Metrics-Case") or ""
  if case == "reject" then return postern.reject("5.7.1", "refused by the metrics test") end
  if case == "tempfail" then return postern.tempfail("4.7.1", "deferred by the metrics test") end
  if case == "redirect" then ctx:redirect({"archive@example.net"}) end
end }
"""


def message(case):
    return (f"From: a@example.org\r\nTo: b@example.com\r\nSubject: {case}\r\n"
            f"X-Metrics-Case: {case}\r\n\r\nbody of {case}\r\n").encode()


def test_counters_match_the_load(postern, sink, tmp_path):
    rules = tmp_path / "metrics.lua"
    rules.write_text(RULES)
    cert, key, _ = make_cert(tmp_path, "metrics")
    port_a, port_b, metrics_port = free_port(), free_port(), free_port()
    listener_a, listener_b = f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"
    cfg = write_config(tmp_path / "postern.toml",
                       [{"address": listener_a, "tls": "starttls"},
                        {"address": listener_b, "proxy_protocol": True}],
                       upstream=sink.address, tls={"cert_file": cert, "key_file": key},
                       sections={"lua": {"scripts": [str(rules)]},
                                 "metrics": {"address": f"127.0.0.1:{metrics_port}"}})
    p = postern.start(config=cfg, listen=())
    p.wait_for_log("started")

    before = scrape(metrics_port)
    assert before.value("postern_sessions_total", listener=listener_a) == 0
    assert before.value("postern_build_info", version=re.search(
        r'version="([^"]+)"', http_get(metrics_port, "/metrics")[2]).group(1)) == 1
    assert before.value("process_start_time_seconds") <= time.time()

    # smtp-source in four parallel sessions, scraped while it runs
    bulk = 40
    source = subprocess.Popen(["/usr/sbin/smtp-source", "-s", "4", "-m", str(bulk), "-l", "2048",
                               "-f", "a@example.org", "-t", "b@example.com", listener_a],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    scrapes = [before]
    try:
        while source.poll() is None:
            page = scrape(metrics_port)
            page.monotonic_since(scrapes[-1])
            scrapes.append(page)
        out, _ = source.communicate(timeout=60 * SCALE)
    finally:
        if source.poll() is None:
            source.kill()
    assert source.returncode == 0, out

    # one client, one message per Lua case
    c = SmtpClient(port_a)
    c.ehlo()
    expected = {"plain": (250, None), "tag": (250, None), "redirect": (250, None),
                "reject": (554, "5.7.1"), "tempfail": (451, "4.7.1"), "error": (451, "4.7.0")}
    for case, (code, enhanced) in expected.items():
        reply = c.send_message("a@example.org", ["b@example.com"], message(case))
        check_reply(reply, code, enhanced, what=case)
    c.expect("QUIT", 221)
    c.close()

    # a message over STARTTLS, and a handshake that fails
    t = SmtpClient(port_a)
    t.ehlo()
    t.starttls()
    t.ehlo()
    check_reply(t.send_message("a@example.org", ["b@example.com"], message("tls")), 250)
    t.expect("QUIT", 221)
    t.close()
    bad = SmtpClient(port_a)
    bad.ehlo()
    bad.expect("STARTTLS", 220, "2.0.0")
    bad.send(b"this is not a TLS ClientHello\r\n" * 4)
    assert bad.wait_closed()
    bad.close()

    # a connection without the PROXY header its listener expects
    x = SmtpClient(port_b, greeting=False)
    x.send(b"EHLO not-a-proxy\r\n")
    assert x.wait_closed()
    x.close()

    messages = bulk + len(expected) + 1
    relayed = bulk + 3                  # smtp-source, plain, tag, tls
    at_sink = relayed + 1               # and the redirected one
    sink.wait_messages(at_sink)
    p.wait_for_log("message", count=messages)
    wait_until(lambda: scrape(metrics_port).value("postern_sessions_open", listener=listener_a) == 0,
               IO_TIMEOUT, message="sessions_open back to 0")
    wait_until(lambda: scrape(metrics_port).value("postern_sessions_refused_total", listener=listener_b,
                                                  reason="proxy_protocol") == 1,
               IO_TIMEOUT, message="the PROXY refusal counted")
    m = scrape(metrics_port)
    m.monotonic_since(scrapes[-1])

    # sessions
    started_a = len(p.events("session-start", listener=listener_a))
    assert m.value("postern_sessions_total", listener=listener_a) == started_a
    assert started_a >= 4 + 3
    assert m.value("postern_sessions_total", listener=listener_b) == 1
    assert m.value("postern_sessions_open", listener=listener_b) == 0
    assert m.total("postern_sessions_refused_total", listener=listener_a) == 0

    # messages by action, recipients, octets
    assert m.value("postern_messages_total", action="relayed") == relayed
    assert m.value("postern_messages_total", action="redirected") == 1
    assert m.value("postern_messages_total", action="rejected") == 1
    assert m.value("postern_messages_total", action="tempfailed") == 2
    assert m.value("postern_messages_total", action="discarded") == 0
    assert m.value("postern_messages_total", action="quarantined") == 0
    assert m.total("postern_messages_total") == messages
    assert m.value("postern_recipients_total", result="accepted") == messages
    assert m.value("postern_recipients_total", result="refused") == 0
    assert len(sink.messages) == at_sink
    assert m.value("postern_message_relayed_bytes_total") == sum(s.size for s in sink.messages)
    assert m.value("postern_message_received_bytes_total") > bulk * 2048
    assert m.value("postern_received_bytes_total") > m.value("postern_message_received_bytes_total")

    # replies
    assert m.value("postern_replies_total", **{"class": "5xx"}) == 1
    assert m.value("postern_replies_total", **{"class": "4xx"}) == 2
    assert m.value("postern_replies_total", **{"class": "3xx"}) == messages   # one 354 each
    assert m.value("postern_replies_enhanced_total", code="5.7.1") == 1
    assert m.value("postern_replies_enhanced_total", code="4.7.1") == 1   # the rule's own tempfail code
    assert m.value("postern_replies_enhanced_total", code="4.7.0") == 1   # the failed rule (lua.on_error)
    assert m.total("postern_replies_enhanced_total") == 3

    # TLS
    assert m.value("postern_tls_handshakes_total") == 2
    assert m.value("postern_tls_handshake_failures_total", reason="error") == 1
    assert m.value("postern_tls_handshake_failures_total", reason="timeout") == 0

    # upstream: one final reply per message the sink took, no errors
    assert m.value("postern_upstream_connections_total") >= 1
    assert m.total("postern_upstream_errors_total") == 0
    assert m.value("postern_upstream_reply_duration_seconds_count", command="eom") == at_sink
    assert m.value("postern_upstream_replies_total", **{"class": "5xx"}) == 0
    assert m.value("postern_upstream_up") == 1

    # Lua: runs, hits, the error, symbols
    assert m.value("postern_lua_rule_duration_seconds_count", rule="METRICS_TAG") == messages
    assert m.value("postern_lua_rule_duration_seconds_count", rule="METRICS_BROKEN") == messages
    assert m.value("postern_lua_rule_duration_seconds_count", rule="METRICS_POLICY") == messages - 1
    assert m.value("postern_lua_rule_hits_total", rule="METRICS_TAG") == 1
    assert m.value("postern_lua_rule_hits_total", rule="METRICS_POLICY") == 2
    assert m.value("postern_lua_rule_hits_total", rule="METRICS_BROKEN") == 0
    assert m.value("postern_lua_rule_errors_total", rule="METRICS_BROKEN", script=str(rules), kind="error") == 1
    assert m.total("postern_lua_rule_errors_total") == 1
    assert m.value("postern_symbols_total", symbol="METRICS_TAG") == 1

    # histograms: one observation per message
    assert m.value("postern_message_duration_seconds_count") == messages
    assert m.value("postern_transaction_duration_seconds_count") == messages
    assert m.value("postern_filter_duration_seconds_count", stage="eom") == messages
    assert m.value("postern_filter_duration_seconds_count", stage="data") == messages
    assert m.value("postern_filter_duration_seconds_count", stage="rcpt") == messages
    assert m.value("postern_message_duration_seconds_sum") > 0


# --------------------------------------------------------------------------
# /healthz follows the MTA


class FixedPortSmtpSink(PostfixSink):
    """smtp-sink on a chosen port, so it can come back where it was."""

    def __init__(self, port):
        super().__init__()
        self.fixed = port

    def start(self):
        cmd = ["/usr/sbin/smtp-sink"] + (["-u", "nobody"] if os.geteuid() == 0 else [])
        self.proc = subprocess.Popen(cmd + [f"127.0.0.1:{self.fixed}", "100"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_port(self.fixed, 10 * SCALE)
        self.port = self.fixed
        return self


def healthz(port):
    status, ctype, body = http_get(port, "/healthz")
    assert ctype == "text/plain; charset=utf-8"
    return status, body


def test_healthz_follows_the_upstream(postern):
    port, metrics_port = free_port(), free_port()
    mta = FixedPortSmtpSink(port).start()
    try:
        p = postern.start(upstream=f"127.0.0.1:{port}",
                          sets={"metrics.address": f'"127.0.0.1:{metrics_port}"', "upstream.probe_interval": 0.3})
        status, body = healthz(metrics_port)
        assert (status, body) == (200, "ok: the upstream answered the last probe\n")
        assert scrape(metrics_port).value("postern_upstream_up") == 1

        mta.stop()
        wait_until(lambda: healthz(metrics_port)[0] == 503, 10 * SCALE, message="/healthz 503")
        assert healthz(metrics_port) == (503, "unavailable: the upstream failed the last probe\n")
        m = scrape(metrics_port)
        assert m.value("postern_upstream_up") == 0
        assert m.value("postern_upstream_errors_total", kind="connect_refused") >= 1
        assert m.value("postern_upstream_probe_timestamp_seconds") > 0
        # meanwhile a client is deferred, never lost
        c = SmtpClient(p.port)
        c.ehlo()
        c.expect("MAIL FROM:<a@example.org>", 451, "4.4.1")
        c.close()
        assert scrape(metrics_port).value("postern_replies_enhanced_total", code="4.4.1") == 1

        mta = FixedPortSmtpSink(port).start()
        wait_until(lambda: healthz(metrics_port)[0] == 200, 10 * SCALE, message="/healthz 200 again")
        assert scrape(metrics_port).value("postern_upstream_up") == 1
        assert http_get(metrics_port, "/nothing")[0] == 404
    finally:
        mta.stop()


# --------------------------------------------------------------------------
# DNS and SPF/DKIM/DMARC, against a real unbound

DNS_RULES = """
postern.rule{ name = "METRICS_DNS", stage = "eom", fn = function(ctx)
  local a = postern.dns.txt("metrics.example.net")
  local b = postern.dns.txt("metrics.example.net")
end }
"""


@pytest.fixture
def unbound():
    yield from serve(['example.org. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"',
                      '_dmarc.example.org. 300 IN TXT "v=DMARC1; p=reject"',
                      'metrics.example.net. 300 IN TXT "counted"'])


def test_dns_and_authentication_results(postern, sink, tmp_path, unbound):
    rules = tmp_path / "dns.lua"
    rules.write_text(DNS_RULES)
    metrics_port = free_port()
    p = postern.start(upstream=sink.address, sets={
        "metrics.address": f'"127.0.0.1:{metrics_port}"',
        "dns.servers": f'["127.0.0.1@{unbound.port}"]',
        "spf.enabled": "true", "dkim.enabled": "true", "dmarc.enabled": "true",
        "lua.scripts": f'["{rules}"]'})
    c = SmtpClient(p.port)
    c.ehlo()
    for i in range(2):
        check_reply(c.send_message("a@example.org", ["b@example.com"], message(f"dns{i}")), 250)
    c.expect("QUIT", 221)
    sink.wait_messages(2)
    wait_until(lambda: scrape(metrics_port).value("postern_auth_results_total", method="spf", result="pass") == 2,
               IO_TIMEOUT, message="two SPF results")
    m = scrape(metrics_port)
    assert m.value("postern_auth_results_total", method="spf", result="pass") == 2
    assert m.total("postern_auth_results_total", method="spf") == 2
    assert m.value("postern_auth_results_total", method="dkim", result="none") == 2   # unsigned
    assert m.total("postern_auth_results_total", method="dkim") == 2
    assert m.value("postern_auth_results_total", method="dmarc", result="pass") == 2  # SPF aligned
    assert m.total("postern_auth_results_total", method="dmarc") == 2
    assert m.value("postern_symbols_total", symbol="SPF_PASS") == 2
    # the rule's second lookup of a name, and every later one, is a cache hit
    lookups = m.total("postern_dns_lookups_total")
    hits = m.value("postern_dns_cache_hits_total")
    assert hits >= 3
    assert m.value("postern_dns_lookups_total", result="ok") >= 4
    assert m.value("postern_dns_lookups_total", result="timeout") == 0
    assert m.value("postern_dns_query_duration_seconds_count") == lookups - hits
    assert m.value("postern_lua_rule_duration_seconds_count", rule="METRICS_DNS") == 2


def test_dns_timeouts_are_counted(postern, sink, tmp_path):
    with BlackHoleDns() as black_hole:  # takes queries, never answers
        rules = tmp_path / "dns.lua"
        rules.write_text(DNS_RULES)
        metrics_port = free_port()
        p = postern.start(upstream=sink.address, sets={
            "metrics.address": f'"127.0.0.1:{metrics_port}"',
            "dns.servers": f'["{black_hole.address}"]',
            "dns.timeout": 0.2, "dns.retries": 0, "lua.scripts": f'["{rules}"]',
            "dns.client_name": "false"})   # only the rule's two lookups
        c = SmtpClient(p.port)
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], message("timeout")), 250)
        m = scrape(metrics_port)
        # a time-out is not cached: both lookups of the rule went out and timed out
        assert m.value("postern_dns_lookups_total", result="timeout") == 2
        assert m.value("postern_dns_cache_hits_total") == 0
        assert m.value("postern_dns_query_duration_seconds_count") == 2
        assert m.value("postern_dns_query_duration_seconds_sum") >= 0.4


# --------------------------------------------------------------------------
# upstream failures, by kind


def test_upstream_errors_by_kind(postern, sink):
    metrics_port = free_port()
    p = postern.start(upstream=sink.address, sets={"metrics.address": f'"127.0.0.1:{metrics_port}"',
                                                   "timeouts.upstream_data_term": 0.5})
    body = b"Subject: upstream\r\n\r\nx\r\n"
    # the MTA drops the connection at RCPT
    sink.on("RCPT", drop=True, times=1)
    with SmtpClient(p.port) as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@example.org>", 250)
        c.expect("RCPT TO:<b@example.com>", 451, "4.4.2")
    # the MTA never answers the end of data
    sink.on("DATA_END", delay=30, times=1)
    with SmtpClient(p.port) as c:
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], body), 451, "4.4.2")
    # the MTA answers DATA with 250 where 354 belongs
    sink.on("DATA", reply="250 2.0.0 not what DATA expects", times=1)
    with SmtpClient(p.port) as c:
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], body), 451, "4.4.0")
    m = scrape(metrics_port)
    assert m.value("postern_upstream_errors_total", kind="closed") == 1
    assert m.value("postern_upstream_errors_total", kind="timeout") == 1
    assert m.value("postern_upstream_errors_total", kind="protocol") == 1
    assert m.total("postern_upstream_errors_total") == 3
    assert m.value("postern_messages_total", action="tempfailed") == 2
    assert m.value("postern_replies_enhanced_total", code="4.4.2") == 2
    assert m.value("postern_replies_enhanced_total", code="4.4.0") == 1
    assert m.value("postern_upstream_connections_total") == 4   # the probe and one per session
