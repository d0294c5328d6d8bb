"""Fault injection (issue 7): a broken MTA, a failing DNS server, careless
Lua rules and a full spool disk, each through a real session.

In every case: postern stays up and serves the next session, no message is
acked (250) that the MTA did not accept, and a log line names the fault.
Covered in test_upstream_failures.py and not repeated: the MTA refusing the
connection, dropping it at each stage (FIN), stalling before 354 and after
the final dot, answering 354/250 where the other belongs.
"""

import os
import pathlib
import socket
import struct
import subprocess
import time

import pytest

from faulty_dns import FaultyDns
from harness import (ASAN, HOSTNAME, IO_TIMEOUT, POSTERN_BIN, SCALE, PosternProcess, ScriptedServer, SmtpClient,
                     check_reply, data_payload, make_message, postern_run_args, wait_until, write_config)

QUEUED = "250 2.0.0 Ok: queued as ABC123"
MSG = make_message("fault", b"body\r\n")


def session(p):
    c = SmtpClient(p.port)
    c.ehlo()
    return c


CLIENT_IP = "192.0.2.10"   # libspf2 passes loopback clients without a lookup


def proxied_session(p):
    """A session that claims CLIENT_IP through the PROXY protocol (v1)."""
    c = SmtpClient(p.port, greeting=False)
    c.send(f"PROXY TCP4 {CLIENT_IP} 127.0.0.1 40000 25\r\n")
    c.greeting = c.read_reply()
    c.ehlo()
    return c


def deliver(p, content=MSG, sender="a@example.org", proxied=False):
    """One whole transaction; returns the replies to MAIL and to the content."""
    with (proxied_session(p) if proxied else session(p)) as c:
        r = c.cmd(f"MAIL FROM:<{sender}>")
        if r.code != 250:
            return r, None
        check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
        check_reply(c.cmd("DATA"), 354)
        c.send(data_payload(content))
        return r, c.read_reply()


def still_serving(p, sink, proxied=False):
    """postern is alive and relays a fresh message to the (good) sink."""
    assert p.alive(), "postern died\n" + p.log_tail()
    before = len(sink.messages)
    _, r = deliver(p, make_message("after the fault"), proxied=proxied)
    assert str(r) == QUEUED, r
    assert len(sink.messages) == before + 1


# ---------------------------------------------------------------- a scripted, broken MTA

class BrokenMta(ScriptedServer):
    """A loopback SMTP server that behaves until told otherwise.

    replies: {"GREETING"|"EHLO"|"MAIL"|"RCPT"|"DATA"|"END": bytes} sent instead
    of the normal reply; rst_after_content: reset (RST) the connection after
    this many content octets; stall_after_354: read nothing after the 354."""

    def __init__(self, replies=None, rst_after_content=None, stall_after_354=False):
        self.replies = dict(replies or {})
        self.rst_after_content = rst_after_content
        self.stall_after_354 = stall_after_354
        self.accepted = []            # contents answered 250 by this MTA
        super().__init__()

    def _say(self, conn, stage, normal):
        conn.sendall(self.replies.get(stage, normal))

    def session(self, conn):
        conn.settimeout(30)
        buf = b""

        def line():
            nonlocal buf
            while b"\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    raise EOFError
                buf += chunk
            out, buf = buf.split(b"\r\n", 1)
            return out

        try:
            self._say(conn, "GREETING", b"220 broken.test ESMTP\r\n")
            while True:
                verb = line()[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    self._say(conn, "EHLO", b"250-broken.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == b"MAIL":
                    self._say(conn, "MAIL", b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT":
                    self._say(conn, "RCPT", b"250 2.1.5 Ok\r\n")
                elif verb == b"DATA":
                    self._say(conn, "DATA", b"354 go ahead\r\n")
                    if self.stall_after_354:
                        time.sleep(60)
                        return
                    got = 0
                    while b"\r\n.\r\n" not in buf:
                        if self.rst_after_content is not None and got >= self.rst_after_content:
                            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                            return
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        got += len(chunk)
                        buf += chunk
                    content, buf = buf.split(b"\r\n.\r\n", 1)
                    reply = self.replies.get("END", b"250 2.0.0 Ok: queued as BROKEN\r\n")
                    if reply.startswith(b"250"):
                        self.accepted.append(content)
                    conn.sendall(reply)
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 2.0.0 Ok\r\n")
        except (OSError, EOFError):
            pass
        finally:
            conn.close()


GARBAGE = {
    "greeting-http": ("GREETING", b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
    "greeting-binary": ("GREETING", b"\x00\xff\x16\x03\x01\x02\x00\r\n"),
    "mail-text": ("MAIL", b"hello there, this is not SMTP\r\n"),
    "mail-mixed-codes": ("MAIL", b"250-ok so far\r\n550 but not really\r\n"),
    "mail-long-line": ("MAIL", b"250 " + b"x" * 200000 + b"\r\n"),
    "mail-endless-multiline": ("MAIL", b"250-more\r\n" * 5000 + b"250 done\r\n"),
    "rcpt-bad-code": ("RCPT", b"999 what\r\n"),
    "data-nul": ("DATA", b"3\x0054 go\r\n"),
    "end-garbage": ("END", b"\xde\xad\xbe\xef garbage\r\n"),
    "end-bare-lf": ("END", b"250 queued\n"),
    "end-two-replies": ("END", b"550 5.7.1 no\r\n250 2.0.0 yes\r\n"),
    "end-1xx": ("END", b"100 continue\r\n"),
}


@pytest.mark.parametrize("case", list(GARBAGE))
def test_mta_answers_garbage(postern, sink, case):
    stage, junk = GARBAGE[case]
    mta = BrokenMta({stage: junk})
    try:
        p = postern.start(upstream=mta.address, sets={"timeouts.upstream_greeting": 2,
                                                      "timeouts.upstream_mail": 2,
                                                      "timeouts.upstream_rcpt": 2,
                                                      "timeouts.upstream_data_init": 2,
                                                      "timeouts.upstream_data_term": 2})
        with session(p) as c:
            replies = [c.cmd("MAIL FROM:<a@example.org>")]
            if replies[-1].code == 250:
                replies.append(c.cmd("RCPT TO:<b@example.com>"))
            if replies[-1].code == 250:
                check_reply(c.cmd("DATA"), 354)
                c.send(data_payload(MSG))
                replies.append(c.read_reply())
            final = replies[-1]
            # the step the MTA garbled is never a success, and nothing is acked
            if case == "end-bare-lf":   # the MTA did say 250: a lenient parse, a true ack
                check_reply(final, 250)
                assert len(mta.accepted) == 1
            elif case == "end-two-replies":
                # a reply behind the final one explains nothing (test_upstream_injection)
                check_reply(final, 451, "4.4.0", "two replies to the end of data")
                p.wait_for_log("upstream-protocol-error", reason="unexplained_bytes")
            else:
                assert final.code // 100 == 4, f"{case}: {replies}"
            check_reply(c.cmd("NOOP"), 250, what="session alive")
            # a second message in the same session: a stale reply left in the
            # upstream buffer must not become an ack
            acks = int(final.code == 250)
            r = c.cmd("MAIL FROM:<a@example.org>")
            if r.code == 250 and c.cmd("RCPT TO:<b@example.com>").code == 250:
                if c.cmd("DATA").code == 354:
                    c.send(data_payload(make_message("second")))
                    acks += int(c.read_reply().code == 250)
            assert acks <= len(mta.accepted), f"{case}: {acks} acks, MTA accepted {len(mta.accepted)}"
        if case != "end-bare-lf":
            wait_until(lambda: p.events("upstream-error") + p.events("upstream-closed")
                       + p.events("upstream-probe-failed"), IO_TIMEOUT,
                       message="a log line naming the upstream fault\n" + p.log_tail())
        assert p.alive()
    finally:
        mta.close()


def test_mta_resets_mid_data(postern, sink):
    mta = BrokenMta(rst_after_content=1)
    try:
        p = postern.start(upstream=mta.address)
        big = make_message("reset", (b"r" * 998 + b"\r\n") * 2000)     # 2 MB: spans many writes
        _, r = deliver(p, big)
        check_reply(r, 451, "4.4.2", "MTA reset the connection during DATA")
        assert mta.accepted == []
        line = p.wait_for_log("message", result="tempfailed")
        assert "250" not in line.get("upstream", "")
        wait_until(lambda: p.events("upstream-error") or p.events("upstream-closed"), IO_TIMEOUT,
                   message="upstream-error or upstream-closed")
        assert p.alive()
    finally:
        mta.close()


def test_mta_stalls_after_354(postern, sink):
    """The MTA says 354 and reads nothing more: the content write times out
    (timeouts.upstream_data_block), the client hears 451, nothing is acked."""
    mta = BrokenMta(stall_after_354=True)
    try:
        p = postern.start(upstream=mta.address, sets={"timeouts.upstream_data_block": 1,
                                                      "timeouts.upstream_data_term": 2})
        big = make_message("stall", (b"s" * 998 + b"\r\n") * 8000)     # 8 MB: more than socket buffers
        _, r = deliver(p, big)
        assert r.code == 451 and r.enhanced.startswith("4.4."), r
        assert mta.accepted == []
        p.wait_for_log("upstream-error")
        assert p.wait_for_log("message", result="tempfailed")
        assert p.alive()
    finally:
        mta.close()


# ---------------------------------------------------------------- DNS faults

SENDER_ZONE = [f'example.org. 300 IN TXT "v=spf1 ip4:{CLIENT_IP} -all"',
               f'example.net. 300 IN TXT "v=spf1 ip4:{CLIENT_IP} -all"',
               '_dmarc.example.org. 300 IN TXT "v=DMARC1; p=reject"']


def auth_config(tmp_path, upstream, dns, tempfail=False):
    return write_config(tmp_path / "auth.toml", [{"proxy_protocol": True}], upstream=upstream, sections={
        "dns": {"servers": [dns.server], "timeout": 1, "retries": 0, "cache_entries": 0},
        "spf": {"enabled": True, "timeout": 4, "tempfail_temperror": tempfail},
        "dkim": {"enabled": True, "timeout": 4},
        "dmarc": {"enabled": True, "timeout": 4},
        "authentication_results": {"enabled": True},
    })


def our_ar(content):
    head = content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    ars = [h for h in head.split(b"\r\n") if h.lower().startswith(b"authentication-results: " + HOSTNAME.encode())]
    assert len(ars) == 1, head
    return ars[0].decode()


DNS_FAULTS = {
    "drop": ("drop", "drop"),
    "servfail": ("servfail", "servfail"),
    "refused": ("refused", "refused"),
    "udp-garbage": ("garbage", "garbage"),
    "truncated-tcp-garbage": ("truncate", "garbage"),
    "truncated-tcp-drop": ("truncate", "drop"),
}


@pytest.mark.parametrize("fault", list(DNS_FAULTS))
def test_dns_fault_is_temperror_and_mail_flows(postern, sink, tmp_path, fault):
    """spf.tempfail_temperror = false: SPF (and DMARC) say temperror, the
    message is relayed with that in Authentication-Results."""
    udp, tcp = DNS_FAULTS[fault]
    dns = FaultyDns(SENDER_ZONE, udp_mode=udp, tcp_mode=tcp)
    try:
        p = postern.start(config=auth_config(tmp_path, sink.address, dns), listen=())
        mail, r = deliver(p, proxied=True)
        assert str(r) == QUEUED, r
        ar = our_ar(sink.wait_messages(1)[0].content)
        assert "spf=temperror" in ar, ar
        assert "dmarc=temperror" in ar or "dmarc=none" in ar, ar
        line = p.wait_for_log("message", result="relayed")
        assert "SPF_TEMPERROR" in line.get("symbols", ""), line.raw
        assert dns.count() > 0, "the resolver never asked the faulty server"
        still_serving(p, sink, proxied=True)
    finally:
        dns.stop()


@pytest.mark.parametrize("fault", ["drop", "servfail"])
def test_dns_fault_tempfails_mail_when_configured(postern, sink, tmp_path, fault):
    dns = FaultyDns(SENDER_ZONE, udp_mode=fault, tcp_mode=fault)
    try:
        p = postern.start(config=auth_config(tmp_path, sink.address, dns, tempfail=True), listen=())
        mail, r = deliver(p, proxied=True)
        check_reply(mail, 451, "4.7.24", f"SPF temperror ({fault}), tempfail_temperror = true")
        line = p.wait_for_log("mail-refused")
        assert "spf=temperror" in line.get("reason", ""), line.raw
        assert sink.messages == [] and sink.commands("MAIL") == []
        assert p.alive()
    finally:
        dns.stop()


def test_truncated_udp_answer_is_retried_over_tcp(postern, sink, tmp_path):
    """TC=1 over UDP, the full answer over TCP: SPF passes (RFC 7766)."""
    dns = FaultyDns(SENDER_ZONE, udp_mode="truncate", tcp_mode="answer")
    try:
        p = postern.start(config=auth_config(tmp_path, sink.address, dns), listen=())
        _, r = deliver(p, proxied=True)
        assert str(r) == QUEUED
        ar = our_ar(sink.wait_messages(1)[0].content)
        assert "spf=pass" in ar, ar
        assert dns.count("tcp") > 0
    finally:
        dns.stop()


def test_dns_recovers_after_fault(postern, sink, tmp_path):
    """Once the server answers again, new names resolve (libunbound itself may
    keep the failed name for a while: a second domain is asked)."""
    dns = FaultyDns(SENDER_ZONE, udp_mode="servfail", tcp_mode="servfail")
    try:
        p = postern.start(config=auth_config(tmp_path, sink.address, dns), listen=())
        _, r = deliver(p, proxied=True)
        assert str(r) == QUEUED
        dns.udp_mode = dns.tcp_mode = "answer"
        _, r = deliver(p, make_message("second"), sender="a@example.net", proxied=True)
        assert str(r) == QUEUED
        ars = [our_ar(m.content) for m in sink.wait_messages(2)]
        assert "spf=temperror" in ars[0] and "spf=pass" in ars[1], ars
    finally:
        dns.stop()


# ---------------------------------------------------------------- Lua rules that break

RULES = {
    "error": 'error("boom: the rule author made a mistake")',
    "loop": "while true do end",
    "memory": 'local t = {} for i = 1, 1e9 do t[i] = string.rep("x", 4096) .. i end',
    "string-bomb": 'local s = "x" for i = 1, 64 do s = s .. s end',
    "pattern": 'return string.find(string.rep("a", 60000), string.rep("a?", 5000) .. string.rep("a", 5000))',
    "bad-return": "return 42",
}


def lua_rule(tmp_path, kind, policy):
    path = tmp_path / f"{kind}_{policy}.lua"
    path.write_text(f"""
postern.rule{{
  name = "BROKEN_{kind.upper().replace('-', '_')}",
  stage = "eom",
  on_error = "{policy}",
  fn = function(ctx)
    if ctx.headers:first("Subject") == "after the fault" then return nil end
    {RULES[kind]}
  end,
}}
""")
    return path


@pytest.mark.parametrize("policy", ["tempfail", "continue"])
@pytest.mark.parametrize("kind", list(RULES))
def test_lua_rule_failure_follows_policy(postern, sink, tmp_path, kind, policy):
    script = lua_rule(tmp_path, kind, policy)
    p = postern.start(upstream=sink.address, sets={
        "lua.scripts": f'["{script}"]', "lua.instruction_budget": 2000000,
        "lua.memory_limit": 16 * 1024 * 1024, "lua.timeout": 2})
    _, r = deliver(p)
    if policy == "tempfail":
        check_reply(r, 451, "4.7.0", f"rule {kind}, on_error = tempfail")
        assert sink.messages == []
    else:
        assert str(r) == QUEUED, r
        assert len(sink.messages) == 1
    # the rule's error line (a slow rule may log io-thread-busy first, under the same event)
    line = wait_until(lambda: next((l for l in p.events("lua") if "lua-rule-error" in l.get("line", "")), None),
                      IO_TIMEOUT, message="a lua-rule-error line")
    text = line.get("line", "")
    assert str(script) in text and f"policy={policy}" in text, line.raw
    still_serving(p, sink)


def test_lua_memory_exhaustion_leaves_the_state_usable(postern, sink, tmp_path):
    """Ten sessions in a row hit the memory cap; the eleventh message passes."""
    script = lua_rule(tmp_path, "memory", "tempfail")
    p = postern.start(upstream=sink.address, sets={
        "lua.scripts": f'["{script}"]', "lua.memory_limit": 16 * 1024 * 1024, "server.threads": 1})
    for _ in range(10):
        _, r = deliver(p)
        check_reply(r, 451, "4.7.0")
    rss = p.status_kb("VmRSS")
    bound = (1024 if ASAN else 256) * 1024     # ASan keeps freed memory in quarantine
    assert rss < bound, f"RSS {rss} kB after ten capped rules"
    still_serving(p, sink)


# ---------------------------------------------------------------- spool disk full

def start_on_small_spool(tmp_path, upstream, size="64k"):
    """postern in its own mount namespace with a small tmpfs as spool_dir."""
    spool = tmp_path / "spool"
    spool.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    ns = ["--mount"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--mount"]
    inner = postern_run_args(upstream=upstream, sets={
        "server.hostname": HOSTNAME, "server.shutdown_timeout": 3,
        "data.spool_memory": 16384, "data.spool_dir": str(spool)})
    args = ns + ["sh", "-c", f'mount -t tmpfs -o size={size},mode=0700 tmpfs "{spool}" && exec "$0" "$@"',
                 POSTERN_BIN] + inner
    p = PosternProcess(args, cwd=str(work), binary="/usr/bin/unshare")
    return p.start()


def test_spool_disk_full_tempfails_and_acks_nothing(tmp_path, sink):
    p = start_on_small_spool(tmp_path, sink.address)
    try:
        big = make_message("too big for the disk", (b"d" * 998 + b"\r\n") * 200)   # 200 kB > 64 kB
        mail, r = deliver(p, big)
        check_reply(mail, 250)
        check_reply(r, 451, "4.3.0", "spool write failed (ENOSPC)")
        assert sink.messages == [] and sink.refused_messages == []
        line = p.wait_for_log("spool-error")
        assert "space" in line.get("error", "").lower(), line.raw
        assert p.wait_for_log("message", result="tempfailed")
        # a message that fits in memory still goes through, the next big one fails again
        still_serving(p, sink)
        _, r = deliver(p, big)
        check_reply(r, 451, "4.3.0")
        assert len(sink.messages) == 1
    finally:
        p.stop()


def test_spool_disk_full_with_bdat(tmp_path, sink):
    p = start_on_small_spool(tmp_path, sink.address)
    try:
        chunk = (b"c" * 998 + b"\r\n") * 50
        with session(p) as c:
            check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
            check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
            head = b"Subject: bdat\r\n\r\n"
            for i in range(3):
                data = (head if i == 0 else b"") + chunk
                c.send(f"BDAT {len(data)}\r\n".encode() + data)
                check_reply(c.read_reply(), 250)
            c.send(b"BDAT 0 LAST\r\n")
            check_reply(c.read_reply(), 451, "4.3.0", "BDAT spool write failed")
        assert sink.messages == []
        p.wait_for_log("spool-error")
        still_serving(p, sink)
    finally:
        p.stop()
