"""Attack suite (issue 7): hostile clients against postern, end to end to a
recording sink. Every case asserts what the client heard and exactly what
the MTA (the sink) received -- usually: nothing it should not have.

Covered elsewhere and not repeated here: the eight smuggling variants of
test_smuggling.py (LF.LF, LF.CRLF, CRLF.LF, CR.CR, CRLF.CR, CR.CRLF and two
NUL forms), STARTTLS injection from the client (test_tls.py) and from the MTA
(test_upstream_injection.py), the command-line and text-line limits at their
edges (test_protocol.py).
"""

import os
import shutil
import socket
import tempfile
import time

import pytest

from faulty_dns import FaultyDns
from harness import (HOSTNAME, IO_TIMEOUT, POSTERN_BIN, SCALE, PosternProcess, SmtpClient, check_reply,
                     data_payload, has_bare_line_ending, make_message, normalize_line_endings,
                     parse_received_any, postern_run_args, strip_received, wait_until, write_config)

QUEUED = "250 2.0.0 Ok: queued as ABC123"


def session(p):
    c = SmtpClient(p.port)
    c.ehlo()
    return c


def evil_reached(sink):
    """Anything of the smuggled transaction that reached the MTA."""
    out = [m for m in sink.messages + sink.refused_messages if m.mail_from == "evil@x"]
    out += [e for e in sink.commands("MAIL") if e[2] == "evil@x"]
    out += [e for e in sink.commands("RCPT") if e[2] == "victim@y"]
    return out


# ---------------------------------------------------------------- SMTP smuggling
# SEC Consult (Dec 2023) and the Postfix/Sendmail/Exim advisories: an MTA that
# ends DATA on something other than <CR><LF>.<CR><LF> runs the text after it
# as a second transaction. The sink here is that lenient MTA.

HEAD = make_message("innocent", b"")
SMUGGLED = (b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\n"
            b"From: <admin@bank.example>\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n")

MORE_VARIANTS = {
    "CR.LF": b"\r.\n",
    "LF.CR": b"\n.\r",
    "LF.CR-CRLF": b"\n.\r\r\n",
    "CRLF.CRLF": b"\r\n.\r\n",
    "LF-NUL.LF": b"\n\x00.\n",
    "CRLF.NUL-LF": b"\r\n.\x00\n",
    "CR.NUL-CR": b"\r.\x00\r",
}
# The genuine end marker, kept as a control: a real end must still be one
# (the "smuggled" text is then the client's own next commands).
CONTROL = "CRLF.CRLF"
NUL = {"LF-NUL.LF", "CRLF.NUL-LF", "CR.NUL-CR"}


@pytest.fixture
def lenient_sink(make_sink):
    return make_sink(lenient=True)


@pytest.mark.parametrize("mode", ["reject", "normalize"])
@pytest.mark.parametrize("variant", [v for v in MORE_VARIANTS if v != CONTROL])
def test_smuggling_more_variants(postern, lenient_sink, variant, mode):
    sink = lenient_sink
    p = postern.start(upstream=sink.address, sets={"data.bare_line_ending": mode})
    content = HEAD + b"first body line" + MORE_VARIANTS[variant] + SMUGGLED
    with session(p) as c:
        check_reply(c.cmd("MAIL FROM:<innocent@example.org>"), 250)
        check_reply(c.cmd("RCPT TO:<rcpt@example.com>"), 250)
        check_reply(c.cmd("DATA"), 354)
        c.send(content + b".\r\n")
        r = c.read_reply()
        if mode == "reject":   # every variant here has a bare CR or LF; that is named first
            check_reply(r, 554, "5.5.2", variant)
        elif variant in NUL:
            check_reply(r, 554, "5.6.0", variant)
        else:
            assert str(r) == QUEUED, f"{variant}: {r}"
        check_reply(c.cmd("NOOP"), 250, "2.0.0", "the next reply is NOOP's, not a smuggled one")
    assert evil_reached(sink) == []
    if variant in NUL or mode == "reject":
        assert sink.messages == [] and sink.refused_messages == []
        return
    assert len(sink.messages) == 1
    got = sink.messages[0]
    assert got.mail_from == "innocent@example.org" and got.rcpt_tos == ["rcpt@example.com"]
    assert not got.raw_has_bare_line_ending
    assert got.body in (normalize_line_endings(content),
                        normalize_line_endings(content.replace(b"\r\n.", b"\r\n")))


def test_smuggling_control_real_end_marker(postern, lenient_sink):
    """<CR><LF>.<CR><LF> does end the message: what follows is the client's own
    next transaction, which postern runs itself (with its own checks)."""
    sink = lenient_sink
    p = postern.start(upstream=sink.address)
    content = HEAD + b"first body line" + MORE_VARIANTS[CONTROL] + SMUGGLED
    with session(p) as c:
        check_reply(c.cmd("MAIL FROM:<innocent@example.org>"), 250)
        check_reply(c.cmd("RCPT TO:<rcpt@example.com>"), 250)
        check_reply(c.cmd("DATA"), 354)
        c.send(content + b".\r\n")
        assert [str(c.read_reply()) for _ in range(5)] == [
            QUEUED, "250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>", QUEUED]
    assert [m.mail_from for m in sink.messages] == ["innocent@example.org", "evil@x"]


# -- BDAT mixes: RFC 3030 chunks carry octets, never end markers. The lenient
# sink offers no CHUNKING, so postern must turn chunks into dot-stuffed DATA.

def bdat(c, chunk, last=False):
    c.send(f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode() + chunk)
    return c.read_reply()


def test_bdat_end_marker_inside_a_chunk_is_data(postern, lenient_sink):
    sink = lenient_sink
    p = postern.start(upstream=sink.address)
    content = HEAD + b"line\r\n.\r\n" + SMUGGLED + b".\r\nQUIT\r\n"
    with session(p) as c:
        check_reply(c.cmd("MAIL FROM:<innocent@example.org>"), 250)
        check_reply(c.cmd("RCPT TO:<rcpt@example.com>"), 250)
        assert str(bdat(c, content, last=True)) == QUEUED
        check_reply(c.cmd("NOOP"), 250)
    assert evil_reached(sink) == []
    assert [m.body for m in sink.messages] == [content]


def test_bdat_end_marker_across_chunks_is_data(postern, lenient_sink):
    sink = lenient_sink
    p = postern.start(upstream=sink.address)
    one, two = HEAD + b"line\r\n", b".\r\n" + SMUGGLED
    with session(p) as c:
        check_reply(c.cmd("MAIL FROM:<innocent@example.org>"), 250)
        check_reply(c.cmd("RCPT TO:<rcpt@example.com>"), 250)
        check_reply(bdat(c, one), 250, "2.0.0")
        assert str(bdat(c, two, last=True)) == QUEUED
    assert evil_reached(sink) == []
    assert [m.body for m in sink.messages] == [one + two]


@pytest.mark.parametrize("marker", [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n"],
                         ids=["LF.LF", "CR.CR", "CRLF.LF", "LF.CRLF"])
def test_bdat_bare_line_end_marker(postern, lenient_sink, marker):
    sink = lenient_sink
    p = postern.start(upstream=sink.address)
    with session(p) as c:
        check_reply(c.cmd("MAIL FROM:<innocent@example.org>"), 250)
        check_reply(c.cmd("RCPT TO:<rcpt@example.com>"), 250)
        check_reply(bdat(c, HEAD + b"line" + marker + SMUGGLED, last=True), 554, "5.5.2")
        check_reply(c.cmd("NOOP"), 250)
    assert evil_reached(sink) == [] and sink.messages == []


def test_data_smuggling_then_bdat(postern, lenient_sink):
    """A refused smuggling DATA followed by a BDAT transaction in one write."""
    sink = lenient_sink
    p = postern.start(upstream=sink.address)
    clean = make_message("clean", b"clean\r\n")
    with session(p) as c:
        c.send(b"MAIL FROM:<innocent@example.org>\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n")
        assert [c.read_reply().code for _ in range(3)] == [250, 250, 354]
        c.send(HEAD + b"x\n.\n" + SMUGGLED + b".\r\n"
               + b"MAIL FROM:<innocent@example.org>\r\nRCPT TO:<rcpt@example.com>\r\n"
               + f"BDAT {len(clean)} LAST\r\n".encode() + clean)
        check_reply(c.read_reply(), 554, "5.5.2")
        assert [c.read_reply().code for _ in range(2)] == [250, 250]
        assert str(c.read_reply()) == QUEUED
    assert evil_reached(sink) == []
    assert [m.body for m in sink.messages] == [clean]


# ---------------------------------------------------------------- early talkers

def test_early_talker_gets_554(postern, sink):
    p = postern.start(upstream=sink.address, sets={"timeouts.greet_pause": 2})
    whole = (b"EHLO bot.example\r\nMAIL FROM:<spam@x>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
             + data_payload(make_message("spam")) + b"QUIT\r\n")
    c = SmtpClient(p.port, greeting=False)
    c.send(whole)
    check_reply(c.read_reply(), 554, "5.5.0", "client talked before the greeting")
    assert c.wait_closed(), "connection open after 554"
    c.close()
    line = p.wait_for_log("early-talker")
    assert int(line.get("octets")) > 0
    # a polite client on the same instance is served after the pause
    with SmtpClient(p.port) as c:
        check_reply(c.greeting, 220)
        c.ehlo()
        assert str(c.send_message("a@example.org", ["b@example.com"], make_message("polite"))) == QUEUED
    assert [m.mail_from for m in sink.messages] == ["a@example.org"]
    assert [e[2] for e in sink.commands("MAIL")] == ["a@example.org"]


def test_early_talker_behind_proxy_protocol(postern, sink, tmp_path):
    """Behind HAProxy the PROXY header comes first; only what the client sends
    after it, before the greeting, makes an early talker."""
    cfg = write_config(tmp_path / "pp.toml", [{"proxy_protocol": True}], upstream=sink.address,
                       sections={"timeouts": {"greet_pause": 1}})
    p = postern.start(config=cfg, listen=())
    header = b"PROXY TCP4 192.0.2.50 127.0.0.1 40050 25\r\n"
    with SmtpClient(p.port, greeting=False) as c:
        c.send(header + b"EHLO bot.example\r\n")
        check_reply(c.read_reply(), 554, "5.5.0", "early talker behind PROXY")
        assert c.wait_closed()
    with SmtpClient(p.port, greeting=False) as c:
        c.send(header)
        check_reply(c.read_reply(), 220)
        c.ehlo()
        assert str(c.send_message("a@example.org", ["b@example.com"], make_message("pp"))) == QUEUED
    assert [m.mail_from for m in sink.messages] == ["a@example.org"]
    assert p.wait_for_log("early-talker").get("client") == "192.0.2.50"


# ---------------------------------------------------------------- long lines, NUL, 8-bit

def test_megabyte_command_line_without_end(proxy, sink):
    with session(proxy) as c:
        c.send(b"MAIL FROM:<" + b"a" * (4 << 20))
        c.send(b"@example.org>\r\n")
        check_reply(c.read_reply(), 500, "5.5.2", "4 MB command line")
        check_reply(c.cmd("NOOP"), 250, "2.0.0", "the tail was not taken as commands")
    assert sink.connections == 0


def test_huge_header_line_refused(proxy, sink):
    msg = make_message("long header", extra_headers=b"X-Long: " + b"h" * 200000 + b"\r\n")
    with session(proxy) as c:
        check_reply(c.send_message("a@example.org", ["b@example.com"], msg), 554, "5.6.0")
        assert str(c.send_message("a@example.org", ["b@example.com"], make_message("ok"))) == QUEUED
    assert [m.body for m in sink.messages] == [make_message("ok")]
    assert sink.refused_messages == []


@pytest.mark.parametrize("line", [b"NOOP\x00", b"EHLO a\x00b.example", b"MAIL FROM:<a\x00@example.org>",
                                  b"\x00\x00\x00\x00"], ids=["noop", "ehlo", "mail", "only-nul"])
def test_nul_in_commands(proxy, sink, line):
    with SmtpClient(proxy.port) as c:
        if not line.startswith(b"EHLO"):
            c.ehlo()
        check_reply(c.cmd(line), 500, "5.5.2", repr(line))
        check_reply(c.cmd("NOOP"), 250)
        c.ehlo("fine.example")
        assert str(c.send_message("a@example.org", ["b@example.com"], make_message("after nul"))) == QUEUED
    for verb in ("EHLO", "HELO", "MAIL", "RCPT"):
        assert not [e for e in sink.commands(verb) if "\x00" in str(e)], verb
    assert [m.mail_from for m in sink.messages] == ["a@example.org"]


@pytest.mark.parametrize("line,code", [
    (b"M\xc1IL FROM:<a@example.org>", 500),
    (b"\xff\xfe\xfd", 500),
    (b"MAIL FROM:<j\xe9r\xf4me@example.org>", 553),
    (b"MAIL FROM:<a@ex\xe4mple.org>", 553),
    (b"MAIL FROM:<a@example.org> X\xe9=1", (501, 555)),
])
def test_8bit_in_commands(proxy, sink, line, code):
    with session(proxy) as c:
        r = c.cmd(line)
        assert r.code in (code if isinstance(code, tuple) else (code,)), f"{line!r}: {r}"
        assert r.enhanced and r.enhanced[0] == str(r.code)[0], r
        check_reply(c.cmd("NOOP"), 250)
    assert sink.commands("MAIL") == []


def test_8bit_helo_never_reaches_received(proxy, sink):
    with SmtpClient(proxy.port) as c:
        r = c.cmd(b"EHLO h\xe9llo.example")
        assert r.code in (250, 501), r
        if r.code != 250:
            c.ehlo("hello.example")
        assert str(c.send_message("a@example.org", ["b@example.com"], make_message("8bit helo"))) == QUEUED
    got = sink.wait_messages(1)[0]
    assert all(b < 0x80 for b in got.received), got.received
    parse_received_any(got.received)


# ---------------------------------------------------------------- header injection

INJECT = b"X-Injected: yes"


@pytest.mark.parametrize("commands", [
    [b"EHLO evil.example\r" + INJECT],
    [b"EHLO evil.example\rX", b"EHLO x\r\r" + INJECT],
    [b"EHLO client.example", b"MAIL FROM:<\"a\r" + INJECT + b"\"@example.org>"],
    [b"EHLO client.example", b"MAIL FROM:<a@example.org>", b"RCPT TO:<\"b\r" + INJECT + b"\"@example.com>"],
    [b"EHLO client.example", b"MAIL FROM:<a@example.org> ENVID=x\r" + INJECT],
    [b"EHLO client.example", b"MAIL FROM:<a@example.org> ENVID=x+0D+0A" + INJECT.replace(b" ", b"+20")],
], ids=["helo-cr", "helo-cr-twice", "mail-cr", "rcpt-cr", "param-cr", "param-xtext-crlf"])
def test_envelope_header_injection(proxy, sink, commands):
    """CR (or an xtext-encoded CRLF) inside HELO, MAIL, RCPT or a parameter
    must not become a header: the MTA gets one clean Received and the message."""
    msg = make_message("inject")
    with SmtpClient(proxy.port) as c:
        replies = [c.cmd(line) for line in commands]
        for line, r in zip(commands, replies):
            assert r.code in (250, 500, 501, 553, 555), f"{line!r}: {r}"
        if replies[0].code != 250:
            c.ehlo("client.example")
        if len(commands) < 2 or replies[1].code != 250:
            check_reply(c.cmd("RSET"), 250)
            check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        if len(commands) < 3 or replies[2].code != 250:
            check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
        check_reply(c.cmd("DATA"), 354)
        c.send(data_payload(msg))
        assert str(c.read_reply()) == QUEUED
    got = sink.wait_messages(1)[0]
    assert not got.raw_has_bare_line_ending
    received, rest = strip_received(got.content)
    parse_received_any(received)
    assert rest == msg, "something was added between Received and the message"
    assert b"\r\nx-injected:" not in got.content.lower() and not got.content.lower().startswith(b"x-injected")
    for verb in ("MAIL", "RCPT"):
        assert not [e for e in sink.commands(verb) if "\r" in str(e[2]) or "\n" in str(e[2])]


# ---------------------------------------------------------------- many recipients, huge headers

def test_ten_thousand_recipients(proxy, sink):
    """Pipelined: 1000 (the limit) get 250, the other 9000 get 452 4.5.3, the
    message goes to exactly the 1000, none lost, none twice."""
    n, limit = 10000, 1000
    rcpts = [f"r{i}@example.com" for i in range(n)]
    msg = make_message("many")
    with session(proxy) as c:
        out = b"MAIL FROM:<a@example.org>\r\n" + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts)
        c.send(out + b"DATA\r\n")
        check_reply(c.read_reply(), 250)
        codes = [c.read_reply(timeout=60 * SCALE) for _ in range(n)]
        assert [r.code for r in codes[:limit]] == [250] * limit
        assert {(r.code, r.enhanced) for r in codes[limit:]} == {(452, "4.5.3")}
        check_reply(c.read_reply(), 354)
        c.send(data_payload(msg))
        assert str(c.read_reply(timeout=60 * SCALE)) == QUEUED
        check_reply(c.cmd("NOOP"), 250, what="session alive after 9000 refusals")
    assert len(sink.messages) == 1
    assert sink.messages[0].rcpt_tos == rcpts[:limit]
    assert sink.messages[0].body == msg


def test_ten_thousand_recipients_all_accepted(postern, sink):
    n = 10000
    p = postern.start(upstream=sink.address, sets={"limits.recipients": n})
    rcpts = [f"r{i}@example.com" for i in range(n)]
    with session(p) as c:
        c.send(b"MAIL FROM:<a@example.org>\r\n" + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts)
               + b"DATA\r\n")
        codes = [c.read_reply(timeout=60 * SCALE).code for _ in range(n + 2)]
        assert codes == [250] * (n + 1) + [354]
        c.send(data_payload(make_message("all")))
        assert str(c.read_reply(timeout=60 * SCALE)) == QUEUED
    assert sink.messages[0].rcpt_tos == rcpts


def test_hundred_thousand_header_lines(proxy, sink):
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(100000))
    msg = make_message("headers", extra_headers=headers)
    with session(proxy) as c:
        r = c.send_message("a@example.org", ["b@example.com"], msg)
        assert r.code in (250, 552, 554), r
        if r.code == 250:
            assert str(r) == QUEUED
        check_reply(c.cmd("NOOP"), 250)
    assert proxy.alive()
    if sink.messages:
        assert sink.messages[0].body == msg, "header block changed on the way"
    else:
        assert sink.refused_messages == []


def test_hundred_thousand_folded_lines_one_header(proxy, sink):
    fold = b"X-Folded: start" + b"".join(b"\r\n\tpart%d" % i for i in range(100000)) + b"\r\n"
    msg = make_message("folded", extra_headers=fold)
    with session(proxy) as c:
        r = c.send_message("a@example.org", ["b@example.com"], msg)
        assert r.code in (250, 552, 554), r
        check_reply(c.cmd("NOOP"), 250)
    if sink.messages:
        assert sink.messages[0].body == msg


# ---------------------------------------------------------------- SIZE edge

def sized_message(size):
    base = make_message("size", b"")
    body_len = size - len(base)
    lines, left = [], body_len
    while left > 0:
        n = min(left, 78)
        if n < 2:            # keep every line CRLF-terminated
            lines[-1] = lines[-1][:-2] + b"z" * n + b"\r\n"
            break
        lines.append(b"z" * (n - 2) + b"\r\n")
        left -= n
    msg = base + b"".join(lines)
    assert len(msg) == size
    return msg


@pytest.mark.parametrize("how", ["DATA", "BDAT"])
def test_message_exactly_at_and_one_over_size(postern, sink, how):
    limit = 20000
    p = postern.start(upstream=sink.address, sets={"limits.message_size": limit})
    at, over = sized_message(limit), sized_message(limit + 1)
    with session(p) as c:
        for msg, expect in ((at, 250), (over, 552)):
            check_reply(c.cmd(f"MAIL FROM:<a@example.org> SIZE={len(msg)}"),
                        250 if len(msg) <= limit else 552)
            if len(msg) > limit:
                check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)   # lies by omission
            check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
            if how == "DATA":
                check_reply(c.cmd("DATA"), 354)
                c.send(data_payload(msg))
                r = c.read_reply()
            else:
                r = bdat(c, msg, last=True)
            if expect == 250:
                assert str(r) == QUEUED, f"message of exactly {limit} octets: {r}"
            else:
                check_reply(r, 552, "5.3.4", f"message of {limit + 1} octets")
    assert [m.body for m in sink.messages] == [at]
    assert sink.refused_messages == []


# ---------------------------------------------------------------- slowloris

def trickle(c, data, interval):
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(data)):
        try:
            c.send(data[i:i + 1])
        except OSError:
            return i
        time.sleep(interval)
    return len(data)


@pytest.mark.parametrize("what", ["command", "long-line", "auth-free-ehlo"])
def test_slowloris_command_line(postern, sink, what):
    """One octet every 0.4 s against timeouts.command = 2: the session ends
    with 421 4.4.2 although every single read came in time."""
    p = postern.start(upstream=sink.address, sets={"timeouts.command": 2, "limits.command_line": 512})
    line = {"command": b"MAIL FROM:<slow@example.org>\r\n",
            "long-line": b"NOOP " + b"x" * 600 + b"\r\n",
            "auth-free-ehlo": b"EHLO " + b"s" * 40 + b".example\r\n"}[what]
    c = SmtpClient(p.port)
    if what != "auth-free-ehlo":
        c.ehlo()
    sent = trickle(c, line, 0.4)
    assert sent < len(line), "the whole line went through: no deadline on the line"
    r = c.read_reply() if what != "long-line" else None
    if r is None:       # the over-long line may get its 500 first only if it ended
        r = c.read_reply()
    check_reply(r, 421, "4.4.2", "slowloris")
    assert c.wait_closed()
    c.close()
    assert p.wait_for_log("timeout").get("state") == "command"
    assert sink.commands("MAIL") == []
    with session(p) as c2:      # still serving
        check_reply(c2.cmd("NOOP"), 250)


# ---------------------------------------------------------------- connection floods

def test_flood_of_idle_connections(postern, sink):
    # one client address for all: the per-address limit (test_limits.py) is off here
    p = postern.start(upstream=sink.address, sets={"limits.sessions_per_ip": 0})
    flood = []
    try:
        for _ in range(300):
            flood.append(SmtpClient(p.port))
        assert all(c.greeting.code == 220 for c in flood)
        with session(p) as c:
            assert str(c.send_message("a@example.org", ["b@example.com"], make_message("flood"))) == QUEUED
    finally:
        for c in flood:
            c.close()
    assert [m.mail_from for m in sink.messages] == ["a@example.org"]
    assert sink.connections == 1, "idle flood connections cost upstream connections"


def test_flood_past_the_file_descriptor_limit(tmp_path, sink):
    """RLIMIT_NOFILE 64, no session limit (so the start-up check of the
    open-file limit has nothing to size) and 150 connections: accept fails
    with EMFILE, postern logs it, backs off, survives, and serves again once
    the flood is gone."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    args = ["--nofile=64:64", POSTERN_BIN] + postern_run_args(
        upstream=sink.address, sets={"server.hostname": HOSTNAME, "server.shutdown_timeout": 3,
                                     "server.threads": 1, "limits.sessions": 0,
                                     "limits.sessions_per_ip": 0})
    p = PosternProcess(args, cwd=str(workdir), binary="/usr/bin/prlimit")
    p.start()
    flood = []
    try:
        for _ in range(150):
            s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
            flood.append(s)
        p.wait_for_log("accept-error", timeout=10 * SCALE)
        assert p.alive()
        for s in flood:
            s.close()
        flood = []

        def served():
            try:
                with session(p) as c:
                    return str(c.send_message("a@example.org", ["b@example.com"],
                                              make_message("after flood"))) == QUEUED
            except (OSError, AssertionError):
                return False
        wait_until(served, 30 * SCALE, interval=0.5, message="a session served after the flood")
    finally:
        for s in flood:
            s.close()
        p.stop()
    assert [m.mail_from for m in sink.messages] == ["a@example.org"]
    assert "Too many open files" in p.events("accept-error")[0].get("error")


# ---------------------------------------------------------------- Authentication-Results forgery

SENDER_ZONE = ['example.org. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"',
               '_dmarc.example.org. 300 IN TXT "v=DMARC1; p=none"']


def test_authentication_results_forgery(postern, sink, tmp_path):
    """Forged Authentication-Results with our authserv-id (any case, with a
    version, folded) are removed; a foreign one stays; ours comes first."""
    dns = FaultyDns(SENDER_ZONE)
    try:
        cfg = write_config(tmp_path / "p.toml", [{}], upstream=sink.address,
                           sections={"dns": {"servers": [dns.server], "timeout": 2},
                                     "spf": {"enabled": True}, "dkim": {"enabled": True},
                                     "dmarc": {"enabled": True},
                                     "authentication_results": {"enabled": True}})
        p = postern.start(config=cfg, listen=())
        forged = (b"Authentication-Results: mx.postern.test; spf=pass smtp.mailfrom=bank.example;"
                  b" dkim=pass header.d=bank.example; dmarc=pass header.from=bank.example\r\n"
                  b"Authentication-Results: MX.POSTERN.TEST; dkim=pass header.d=bank.example\r\n"
                  b"Authentication-Results: mx.postern.test 1; spf=pass\r\n"
                  b"Authentication-Results:\r\n mx.postern.test;\r\n\tdmarc=pass\r\n"
                  b"Authentication-Results: relay.other.example; spf=fail\r\n")
        msg = make_message("forged", extra_headers=forged)
        with session(p) as c:
            assert str(c.send_message("a@example.org", ["b@example.com"], msg)) == QUEUED
        got = sink.wait_messages(1)[0].content
        headers = got.split(b"\r\n\r\n", 1)[0]
        unfolded = headers.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ").split(b"\r\n")
        ars = [h for h in unfolded if h.lower().startswith(b"authentication-results:")]
        ours = [h for h in ars if h.split(b":", 1)[1].strip().lower().startswith(b"mx.postern.test")]
        assert len(ours) == 1, ars
        assert b"spf=pass smtp.mailfrom=a@example.org" in ours[0] or b"spf=pass" in ours[0], ours[0]
        assert b"bank.example" not in ours[0]
        assert b"Authentication-Results: relay.other.example; spf=fail" in unfolded
        assert unfolded.index(ours[0]) < unfolded.index(b"Authentication-Results: relay.other.example; spf=fail")
        assert b"header.d=bank.example" not in got
    finally:
        dns.stop()


# ---------------------------------------------------------------- local attackers: privileges, file modes

# Running as server.user after binding: test_privileges.py.


def test_spool_file_is_unlinked_and_private(postern, sink, tmp_path):
    """A message past spool_memory goes to an unlinked 0600 file: nothing in the
    spool directory for a local user to read or to swap."""
    spool = tmp_path / "spool"
    spool.mkdir()
    p = postern.start(upstream=sink.address, sets={"data.spool_memory": 4096, "data.spool_dir": str(spool)})
    with session(p) as c:
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
        check_reply(c.cmd("DATA"), 354)
        c.send(make_message("private", (b"p" * 998 + b"\r\n") * 100))    # 100 kB, no end yet

        def spill_fds():
            out = []
            for fd in os.listdir(f"/proc/{p.pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{p.pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith(str(spool)):
                    out.append((fd, target))
            return out
        fds = wait_until(spill_fds, IO_TIMEOUT, message="a spool file open in the spool dir")
        for fd, target in fds:
            mode = os.stat(f"/proc/{p.pid}/fd/{fd}").st_mode & 0o777
            assert mode == 0o600, f"{target}: mode {oct(mode)}"
            assert target.endswith("(deleted)"), target
        assert os.listdir(spool) == []
        c.send(b".\r\n")
        assert str(c.read_reply()) == QUEUED


def test_quarantine_files_are_private(postern, sink, tmp_path):
    rule = tmp_path / "quarantine.lua"
    rule.write_text('postern.rule{ name = "Q", stage = "eom", fn = function(ctx) '
                    'return postern.quarantine("test") end }\n')
    qdir = tmp_path / "quarantine"
    p = postern.start(upstream=sink.address, sets={"lua.scripts": f'["{rule}"]', "quarantine.dir": f'"{qdir}"'})
    with session(p) as c:
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("q")), 250)
    files = [f for sub in ("new", "cur", "tmp") for f in (qdir / sub).glob("*")] if qdir.exists() else []
    assert files, "nothing quarantined"
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o600, f"{f}: {oct(f.stat().st_mode & 0o777)}"
    assert sink.messages == []


def test_slowloris_inside_data(postern, sink):
    """One octet every 0.4 s of a content line against timeouts.data = 2."""
    p = postern.start(upstream=sink.address, sets={"timeouts.data": 2})
    c = session(p)
    check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
    check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
    check_reply(c.cmd("DATA"), 354)
    c.send(b"Subject: slow\r\n\r\n")
    line = b"x" * 40 + b"\r\n.\r\n"
    sent = trickle(c, line, 0.4)
    assert sent < len(line), "the whole content went through: no deadline on the line"
    check_reply(c.read_reply(), 421, "4.4.2", "slowloris in DATA")
    assert c.wait_closed()
    c.close()
    assert p.wait_for_log("timeout").get("state") == "data"
    assert sink.messages == []


def test_slow_but_steady_data_is_not_cut(postern, sink):
    """Lines that each arrive within timeouts.data keep the message going,
    however long the whole takes."""
    p = postern.start(upstream=sink.address, sets={"timeouts.data": 1})
    msg = make_message("steady", b"".join(b"line %d\r\n" % i for i in range(8)))
    with session(p) as c:
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
        check_reply(c.cmd("DATA"), 354)
        for chunk in msg.split(b"\r\n")[:-1]:
            c.send(chunk + b"\r\n")
            time.sleep(0.3)
        c.send(b".\r\n")
        assert str(c.read_reply()) == QUEUED
    assert [m.body for m in sink.messages] == [msg]
