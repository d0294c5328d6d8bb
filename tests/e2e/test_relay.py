"""Byte-exact relaying: smtplib, swaks and smtp-source through postern to real sinks.

postern may add exactly one Received: header; every other byte of the message
must reach the MTA unchanged, and the MTA's replies must reach the client verbatim.
"""

import smtplib
import subprocess

import pytest

from harness import (HOSTNAME, IO_TIMEOUT, SCALE, SmtpClient, check_reply, make_message,
                     parse_received, sha256)

QUEUED = "250 2.0.0 Ok: queued as ABC123"

BIG_BODY = b"".join(b"line %07d " % i + b"abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
                    for i in range(45000))          # ~3.2 MB: beyond spool_memory

MESSAGES = {
    "simple": (make_message("simple", b"Hello world.\r\nSecond line.\r\n"), []),
    "dot-lines": (make_message("dots", b".leading dot\r\n..two dots\r\n...three\r\n.\r\n..\r\n"
                                       b" .space dot\r\nend\r\n"), []),
    "starts-with-dot": (b".first line is a dot line\r\n\r\nbody\r\n", []),
    "8bit": (make_message("8bit", "Grüße aus Köln, ½ €\r\n".encode("utf-8")
                          + b"latin1 \xe9\xe8\xff\r\n",
                          extra_headers=b"Content-Type: text/plain; charset=utf-8\r\n"
                                        b"Content-Transfer-Encoding: 8bit\r\n"),
             ["BODY=8BITMIME"]),
    "empty-body": (make_message("empty body", b""), []),
    "no-trailing-crlf": (make_message("no crlf", b"the last line has no CRLF"), []),
    "long-lines": (make_message("long", b"a" * 998 + b"\r\n" + b"." + b"b" * 996 + b"\r\n"), []),
    "blank-lines": (make_message("blank", b"\r\n\r\n\r\nafter blanks\r\n\r\n"), []),
    "big-spooled": (make_message("big", BIG_BODY), []),
}


def expected_content(msg):
    """smtplib appends CRLF when the message does not end with one."""
    return msg if msg.endswith(b"\r\n") else msg + b"\r\n"


@pytest.mark.parametrize("name", list(MESSAGES))
def test_smtplib_byte_exact(proxy, sink, name):
    msg, options = MESSAGES[name]
    with smtplib.SMTP("127.0.0.1", proxy.port, local_hostname="client.example",
                      timeout=IO_TIMEOUT) as s:
        code, _ = s.ehlo()
        assert code == 250
        assert s.mail("sender@example.org", options) == (250, b"2.1.0 Ok")
        assert s.rcpt("rcpt@example.com") == (250, b"2.1.5 Ok")
        assert s.rcpt("second@example.net") == (250, b"2.1.5 Ok")
        # the MTA's final reply, queue id included, comes back verbatim
        assert s.data(msg) == (250, b"2.0.0 Ok: queued as ABC123")

    assert len(sink.messages) == 1, sink.messages
    got = sink.messages[0]
    assert got.mail_from == "sender@example.org"
    assert got.rcpt_tos == ["rcpt@example.com", "second@example.net"]
    for opt in options:
        assert opt in got.mail_options, f"{opt} not passed upstream: {got.mail_options}"
    want = expected_content(msg)
    if len(want) < 100000:
        assert got.body == want
    assert got.body_size == len(want)
    assert got.body_sha256 == sha256(want)
    m = parse_received(got.received)
    assert m.group(1) == HOSTNAME


def test_received_header_is_the_only_change(proxy, sink):
    """Exactly one header is prepended; it is a well-formed Received header."""
    msg = make_message("received", b"body\r\n",
                       extra_headers=b"Received: from earlier.example by relay.example; "
                                     b"Mon, 1 Jan 2024 00:00:00 +0000\r\n")
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        check_reply(c.send_message("s@example.org", ["r@example.com"], msg), 250)
    got = sink.messages[0]
    assert got.content.endswith(msg)
    head = got.content[:len(got.content) - len(msg)]
    assert head == got.received
    assert head.count(b"\r\nReceived:") == 0 and head.lower().startswith(b"received: from ")
    for line in head.split(b"\r\n")[1:-1]:
        assert line[:1] in (b" ", b"\t"), f"non-continuation line in the added header: {line!r}"


def test_empty_message(proxy, sink):
    """A message of zero octets (the final dot right after 354)."""
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        c.expect("MAIL FROM:<s@example.org>", 250)
        c.expect("RCPT TO:<r@example.com>", 250)
        c.expect("DATA", 354)
        c.send(b".\r\n")
        check_reply(c.read_reply(), 250)
    assert len(sink.messages) == 1
    assert sink.messages[0].body == b""


def test_null_sender(proxy, sink):
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        r = c.send_message("", ["r@example.com"], make_message("bounce"))
        check_reply(r, 250)
    assert sink.messages[0].mail_from == "<>"


def test_multiline_final_reply_relayed_verbatim(proxy, sink):
    sink.final_reply = "250-2.0.0 first line of the reply\r\n250 2.0.0 Ok: queued as MULTI1"
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        r = c.send_message("s@example.org", ["r@example.com"], make_message("multi"))
    assert r.raw_lines == ["250-2.0.0 first line of the reply", "250 2.0.0 Ok: queued as MULTI1"]


def test_message_log_line(proxy, sink):
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        check_reply(c.send_message("s@example.org", ["r@example.com", "t@example.com"],
                                   make_message("log")), 250)
        c.expect("QUIT", 221)
    line = proxy.wait_for_log("message", result="relayed")
    assert line.get("upstream") == QUEUED, line.raw
    assert line.get("from") == "<s@example.org>", line.raw
    assert line.get("to") == "<r@example.com>,<t@example.com>", line.raw
    assert int(line.get("size")) >= len(make_message("log")), line.raw
    assert int(line.get("duration_ms")) >= 0, line.raw
    session = line.get("session")
    assert proxy.events("session-start", session=session), proxy.log_tail()
    end = proxy.wait_for_log("session-end", session=session)
    assert end.get("messages") == "1", end.raw


def run_swaks(port, *args):
    cmd = ["swaks", "--server", "127.0.0.1", "--port", str(port), "--helo", "client.example",
           "--timeout", str(int(IO_TIMEOUT))] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30 * SCALE)


@pytest.mark.parametrize("pipeline", [False, True])
def test_swaks(proxy, sink, pipeline):
    extra = ["--pipeline"] if pipeline else []
    res = run_swaks(proxy.port, "--from", "swaks@example.org",
                    "--to", "one@example.com,two@example.com",
                    "--header", "Subject: swaks through postern",
                    "--body", "swaks body token 7f3a", *extra)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "<-  " + QUEUED in res.stdout, res.stdout
    assert len(sink.messages) == 1
    got = sink.messages[0]
    assert got.mail_from == "swaks@example.org"
    assert got.rcpt_tos == ["one@example.com", "two@example.com"]
    assert b"Subject: swaks through postern\r\n" in got.body
    assert b"swaks body token 7f3a" in got.body
    parse_received(got.received)


def test_smtp_source_into_postfix_smtp_sink(postern, postfix_sink):
    """50 messages over 5 parallel sessions into Postfix's smtp-sink."""
    ps = postfix_sink()
    p = postern.start(upstream=ps.address)
    res = subprocess.run(["/usr/sbin/smtp-source", "-s", "5", "-m", "50", "-l", "10240",
                          "-M", "client.example", "-f", "source@example.org",
                          "-t", "sink@example.com", f"127.0.0.1:{p.port}"],
                         capture_output=True, text=True, timeout=60 * SCALE)
    assert res.returncode == 0, res.stdout + res.stderr
    relayed = p.wait_for_log("message", result="relayed", count=50, timeout=10 * SCALE)
    assert len(relayed) == 50
    assert not p.events("message", result="tempfailed")
    assert not p.events("message", result="rejected")
