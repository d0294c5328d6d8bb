"""Scale-out as docs/scale-out.md describes it: a real HAProxy (TCP mode,
send-proxy-v2, HTTP health checks on /healthz) in front of two postern
instances that share one real Redis.

Messages through HAProxy reach the sink with the real client address in
Received, both instances carry traffic, and the per-client rate limit of the
shipped rule holds across the two instances as one.
"""

import os
import pathlib
import signal
import subprocess

import pytest

from harness import (SCALE, SmtpClient, check_reply, data_payload, free_port, listener_ports, make_message,
                     parse_received_any, wait_port, write_config)

HAPROXY = "/usr/sbin/haproxy"
CLIENT_IP = "127.0.0.7"
RATELIMIT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "default" / "30_ratelimit.lua"
HAPROXY_CFG = pathlib.Path(__file__).resolve().parents[2] / "config" / "haproxy.cfg"
LIMIT = 10


def start_instance(postern, tmp_path, sink, redis, name):
    cfg = write_config(
        tmp_path / f"{name}.toml", [{"proxy_protocol": True}], upstream=sink.address,
        sections={"metrics": {"address": "127.0.0.1:0"},
                  "lua": {"scripts": [str(RATELIMIT)]},
                  "lua.settings.ratelimit": {"messages": LIMIT, "window": 86400},
                  "store": {"backend": "redis", "redis_address": redis.address}})
    p = postern.start(config=cfg, listen=())
    p.port = listener_ports(p)[0]
    p.metrics_port = int(p.wait_for_log("metrics").get("address").rsplit(":", 1)[1])
    return p


def haproxy_config(shipped, port, servers):
    """config/haproxy.cfg with the test's addresses: the shipped file's
    backend settings (health check, send-proxy-v2) are what is tested."""
    out = []
    for line in shipped.splitlines():
        s = line.strip()
        if s.startswith("log ") or s == "option tcplog":
            continue  # no syslog in the test
        if s.startswith("maxconn "):
            line = "    maxconn 64"  # within the test's file-descriptor limit
        if s.startswith("bind "):
            line = f"    bind 127.0.0.1:{port}"
        if s.startswith("server "):
            continue
        out.append(line)
        if s.startswith("default-server"):
            out += [f"    server postern{i + 1} 127.0.0.1:{smtp} check port {metrics} inter 200ms"
                    for i, (smtp, metrics) in enumerate(servers)]
    return "\n".join(out) + "\n"


@pytest.fixture
def haproxy(tmp_path):
    procs = []

    def start(servers):
        assert os.access(HAPROXY, os.X_OK), f"{HAPROXY} is missing (Debian package haproxy)"
        port = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(haproxy_config(HAPROXY_CFG.read_text(), port, servers))
        log = open(tmp_path / "haproxy.log", "wb")
        proc = subprocess.Popen([HAPROXY, "-f", str(cfg), "-db"], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        procs.append(proc)
        try:
            wait_port(port, 10 * SCALE)
        except OSError:
            raise AssertionError("haproxy did not start:\n" + (tmp_path / "haproxy.log").read_text())
        return port

    try:
        yield start
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


def send(port, n):
    """One message from CLIENT_IP; the reply to MAIL FROM when it is not 250,
    else the final reply."""
    with SmtpClient(port, source=CLIENT_IP) as c:
        c.ehlo()
        reply = c.cmd("MAIL FROM:<sender@example.org>")
        if reply.code != 250:
            return reply
        c.expect("RCPT TO:<rcpt@example.com>", 250)
        c.expect("DATA", 354)
        c.send(data_payload(make_message(subject=f"scale {n}")))
        return c.read_reply()


def test_haproxy_two_posterns_one_redis(postern, sink, redis, haproxy, tmp_path):
    a = start_instance(postern, tmp_path, sink, redis, "a")
    b = start_instance(postern, tmp_path, sink, redis, "b")
    port = haproxy([(a.port, a.metrics_port), (b.port, b.metrics_port)])

    replies = [send(port, i) for i in range(LIMIT + 2)]
    codes = [r.code for r in replies]
    assert codes == [250] * LIMIT + [451, 451], codes
    for r in replies[LIMIT:]:
        check_reply(r, 451, "4.7.1")

    # Every relayed message names the real client, not HAProxy's address.
    messages = sink.wait_messages(LIMIT)
    assert len(messages) == LIMIT
    for m in messages:
        assert parse_received_any(m.received).group(2) == CLIENT_IP, m.received
    # Both instances carried mail (leastconn over sequential sessions spreads them).
    served_a = [l for l in a.events("message") if l.get("client") == CLIENT_IP]
    served_b = [l for l in b.events("message") if l.get("client") == CLIENT_IP]
    assert served_a and served_b, (len(served_a), len(served_b))
    # One counter for the client in the shared Redis, counted by both.
    keys = redis.keys(f"postern:rate:ip:{CLIENT_IP}:*")
    assert len(keys) == 1, keys
    assert int(redis.cli("GET", keys[0])) == LIMIT + 2
