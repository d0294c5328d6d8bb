"""postern's own SMTP server side: replies, limits, time-outs of the contract."""

import time

import pytest

from harness import (HOSTNAME, SCALE, SmtpClient, check_reply, data_payload, make_message)

QUEUED = "250 2.0.0 Ok: queued as ABC123"


def session(p):
    c = SmtpClient(p.port)
    c.ehlo()
    return c


# ---------------------------------------------------------------- greeting, EHLO

def test_greeting_and_ehlo_keywords(proxy):
    with SmtpClient(proxy.port) as c:
        assert c.greeting.raw_lines == [f"220 {HOSTNAME} ESMTP postern"]
        r = c.ehlo()
        assert r.lines[0].split()[0] == HOSTNAME
        keywords = [l.upper() for l in r.lines[1:]]
        for kw in ("PIPELINING", "SIZE 52428800", "8BITMIME", "ENHANCEDSTATUSCODES"):
            assert kw in keywords, f"{kw} missing from EHLO reply {r}"


def test_ehlo_size_follows_config(postern, sink):
    p = postern.start(upstream=sink.address, sets={"limits.message_size": 12345})
    with SmtpClient(p.port) as c:
        assert "SIZE 12345" in [l.upper() for l in c.ehlo().lines[1:]]


def test_helo_session_delivers(proxy, sink):
    with SmtpClient(proxy.port) as c:
        check_reply(c.cmd("HELO client.example"), 250)
        assert str(c.send_message("a@example.org", ["b@example.com"], make_message("helo"))) == QUEUED
    assert len(sink.messages) == 1


def test_lower_case_commands(proxy, sink):
    with SmtpClient(proxy.port) as c:
        check_reply(c.cmd("ehlo client.example"), 250)
        check_reply(c.cmd("mail from:<a@example.org>"), 250)
        check_reply(c.cmd("rcpt to:<b@example.com>"), 250)
        check_reply(c.cmd("data"), 354)
        c.send(data_payload(make_message("lower")))
        assert str(c.read_reply()) == QUEUED


@pytest.mark.parametrize("line", ["EHLO", "HELO"])
def test_helo_without_domain(proxy, line):
    with SmtpClient(proxy.port) as c:
        check_reply(c.cmd(line), 501, "5.5.4", line)


# ---------------------------------------------------------------- simple commands

def test_simple_commands(proxy):
    with session(proxy) as c:
        check_reply(c.cmd("VRFY <someone@example.com>"), 252, "2.5.2", "VRFY")
        check_reply(c.cmd("NOOP"), 250, "2.0.0", "NOOP")
        check_reply(c.cmd("RSET"), 250, "2.0.0", "RSET")
        check_reply(c.cmd("HELP"), 214, "2.0.0", "HELP")
        check_reply(c.cmd("QUIT"), 221, "2.0.0", "QUIT")
        assert c.wait_closed(), "connection still open after QUIT"


@pytest.mark.parametrize("line", ["FOOBAR", "XYZZY plugh", "MAILFROM:<a@example.org>", "EXPLODE now"])
def test_unknown_command(proxy, line):
    with session(proxy) as c:
        check_reply(c.cmd(line), 500, "5.5.2", line)
        check_reply(c.cmd("NOOP"), 250)


# ---------------------------------------------------------------- bad sequence

def test_mail_before_ehlo(proxy):
    with SmtpClient(proxy.port) as c:
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 503, "5.5.1", "MAIL before EHLO")


def test_rcpt_before_mail(proxy):
    with session(proxy) as c:
        check_reply(c.cmd("RCPT TO:<b@example.com>"), 503, "5.5.1", "RCPT before MAIL")


def test_data_before_mail_and_before_rcpt(proxy):
    with session(proxy) as c:
        check_reply(c.cmd("DATA"), 503, "5.5.1", "DATA before MAIL")
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        check_reply(c.cmd("DATA"), 503, "5.5.1", "DATA before RCPT")


def test_nested_mail(proxy):
    with session(proxy) as c:
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        check_reply(c.cmd("MAIL FROM:<again@example.org>"), 503, "5.5.1", "second MAIL")


def test_rset_clears_transaction(proxy):
    with session(proxy) as c:
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
        check_reply(c.cmd("RSET"), 250, "2.0.0")
        check_reply(c.cmd("DATA"), 503, "5.5.1", "DATA after RSET")


# ---------------------------------------------------------------- argument syntax

# A command without a path is a command syntax error (5.5.4); a path whose
# mailbox is malformed is a bad sender / recipient address (RFC 3463 5.1.7 /
# 5.1.3, as Postfix answers).
BAD_MAIL = [
    ("MAIL FROM:user@example.org", "5.5.4"),          # no angle brackets
    ("MAIL FROM:<user@example.org", "5.1.7"),         # unbalanced
    ("MAIL FROM:user@example.org>", "5.5.4"),         # unbalanced
    ("MAIL FROM:<us er@example.org>", "5.1.7"),       # space in local part
    ("MAIL FROM:<user@exa mple.org>", "5.1.7"),       # space in domain
    ("MAIL FROM:<user@@example.org>", "5.1.7"),
    ("MAIL FROM:<user@>", "5.1.7"),
    ("MAIL FROM:", "5.5.4"),
    ("MAIL FROM:<<user@example.org>>", "5.1.7"),
]


@pytest.mark.parametrize("line,enhanced", BAD_MAIL)
def test_bad_mail_syntax(proxy, sink, line, enhanced):
    with session(proxy) as c:
        check_reply(c.cmd(line), 501, enhanced, line)
        # nothing was accepted: a good MAIL still works
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)


BAD_RCPT = [
    ("RCPT TO:b@example.com", "5.5.4"),
    ("RCPT TO:<b@example.com", "5.1.3"),
    ("RCPT TO:<b c@example.com>", "5.1.3"),
    ("RCPT TO:<b@exa mple.com>", "5.1.3"),
    ("RCPT TO:", "5.5.4"),
    ("RCPT TO:<>", "5.1.3"),                 # the null path is a reverse-path only
]


@pytest.mark.parametrize("line,enhanced", BAD_RCPT)
def test_bad_rcpt_syntax(proxy, sink, line, enhanced):
    with session(proxy) as c:
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        check_reply(c.cmd(line), 501, enhanced, line)
        check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
    assert [e[2] for e in sink.commands("RCPT")] == ["b@example.com"]


@pytest.mark.parametrize("line", [
    "MAIL FROM:<a@example.org> FOO=BAR",
    "MAIL FROM:<a@example.org> XYZZY",
    "MAIL FROM:<a@example.org> SIZE=100 FROBNICATE=yes",
])
def test_unknown_mail_parameter(proxy, sink, line):
    with session(proxy) as c:
        check_reply(c.cmd(line), 555, "5.5.4", line)
    time.sleep(0.1)
    assert sink.connections == 0


def test_unknown_rcpt_parameter(proxy, sink):
    with session(proxy) as c:
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        check_reply(c.cmd("RCPT TO:<b@example.com> FOO=1"), 555, "5.5.4", "RCPT FOO=1")


def test_known_mail_parameters_accepted(proxy, sink):
    with session(proxy) as c:
        check_reply(c.cmd("MAIL FROM:<a@example.org> SIZE=1000 BODY=8BITMIME"), 250)
        check_reply(c.cmd("RSET"), 250)
        check_reply(c.cmd("MAIL FROM:<a@example.org> BODY=7BIT"), 250)


def test_non_ascii_address_without_smtputf8(proxy, sink):
    with session(proxy) as c:
        check_reply(c.cmd("MAIL FROM:<jörg@example.org>".encode("utf-8")), 553, "5.6.7",
                    "UTF-8 reverse-path without SMTPUTF8")
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        check_reply(c.cmd("RCPT TO:<zoë@example.com>".encode("utf-8")), 553, "5.6.7",
                    "UTF-8 forward-path without SMTPUTF8")


# ---------------------------------------------------------------- size limits

def test_size_parameter_over_limit(postern, sink):
    p = postern.start(upstream=sink.address, sets={"limits.message_size": 10000})
    with session(p) as c:
        check_reply(c.cmd("MAIL FROM:<a@example.org> SIZE=10001"), 552, "5.3.4", "SIZE over limit")
        time.sleep(0.1)
        assert sink.connections == 0, "a MAIL refused by postern opened an upstream connection"
        check_reply(c.cmd("MAIL FROM:<a@example.org> SIZE=10000"), 250)


def test_message_over_limit_not_delivered(postern, sink):
    p = postern.start(upstream=sink.address, sets={"limits.message_size": 10000})
    big = make_message("big", (b"y" * 78 + b"\r\n") * 250)      # ~20 kB
    small = make_message("small", b"small\r\n")
    with session(p) as c:
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
        check_reply(c.cmd("DATA"), 354)
        c.send(data_payload(big))
        check_reply(c.read_reply(), 552, "5.3.4", "20 kB message, limit 10000")
        assert str(c.send_message("a@example.org", ["b@example.com"], small)) == QUEUED
    assert [m.body for m in sink.messages] == [small]
    assert sink.refused_messages == [], "the oversized content was sent to the MTA"


def test_too_many_recipients(postern, sink):
    p = postern.start(upstream=sink.address, sets={"limits.recipients": 3})
    with session(p) as c:
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        for i in range(3):
            check_reply(c.cmd(f"RCPT TO:<r{i}@example.com>"), 250)
        check_reply(c.cmd("RCPT TO:<r3@example.com>"), 452, "4.5.3", "4th RCPT, limit 3")
        check_reply(c.cmd("RCPT TO:<r4@example.com>"), 452, "4.5.3", "5th RCPT, limit 3")
        check_reply(c.cmd("DATA"), 354)
        c.send(data_payload(make_message("three")))
        assert str(c.read_reply()) == QUEUED
    assert sink.messages[0].rcpt_tos == ["r0@example.com", "r1@example.com", "r2@example.com"]


def test_command_line_limit(postern, sink):
    p = postern.start(upstream=sink.address, sets={"limits.command_line": 512})
    with session(p) as c:
        exact = "NOOP " + "x" * (512 - 7)          # 512 octets with CRLF
        check_reply(c.cmd(exact), 250, "2.0.0", "NOOP of exactly limits.command_line octets")
        check_reply(c.cmd(exact + "x"), 500, "5.5.2", "command line one octet too long")
        check_reply(c.cmd("NOOP"), 250)
        # a very long line is answered once, and its tail is not taken as commands
        c.send(b"MAIL FROM:<" + b"a" * 20000 + b"@example.org>\r\n" + b"QUIT" + b"x" * 3000 + b"\r\n")
        check_reply(c.read_reply(), 500, "5.5.2", "20 kB command line")
        check_reply(c.read_reply(), 500, "5.5.2", "3 kB command line")
        check_reply(c.cmd("NOOP"), 250, "2.0.0", "NOOP after the long lines")


def test_text_line_limit(proxy, sink):
    ok = make_message("line ok", b"z" * 998 + b"\r\n")
    long = make_message("line long", b"z" * 1499 + b"\r\n")
    with session(proxy) as c:
        check_reply(c.send_message("a@example.org", ["b@example.com"], long), 554, "5.6.0",
                    "text line of 1501 octets")
        assert str(c.send_message("a@example.org", ["b@example.com"], ok)) == QUEUED
    assert [m.body for m in sink.messages] == [ok]


def test_messages_per_session(postern, sink):
    p = postern.start(upstream=sink.address, sets={"limits.messages_per_session": 2})
    with session(p) as c:
        for i in range(2):
            assert str(c.send_message("a@example.org", ["b@example.com"],
                                      make_message(f"m{i}"))) == QUEUED
        r = c.cmd("MAIL FROM:<a@example.org>")
        check_reply(r, 421, "4.7.0", "MAIL past limits.messages_per_session")
        assert c.wait_closed(), "connection open after 421"
    assert len(sink.messages) == 2


# ---------------------------------------------------------------- errors, time-outs

def test_too_many_errors(postern, sink):
    limit = 3
    p = postern.start(upstream=sink.address, sets={"limits.errors": limit})
    with session(p) as c:
        replies = []
        for i in range(limit + 1):
            try:
                r = c.cmd(f"BOGUS{i}")
            except Exception as e:  # connection closed before a reply
                raise AssertionError(f"no reply to error #{i + 1}: {e}; replies {replies}")
            replies.append(r)
            if r.code == 421:
                break
        for r in replies[:limit - 1]:
            check_reply(r, 500, "5.5.2", "error below the limit")
        assert replies[-1].code == 421 and len(replies) in (limit, limit + 1), replies
        check_reply(replies[-1], 421, "4.7.0", "too many errors")
        assert c.wait_closed(), "connection open after 421 4.7.0"
    assert sink.connections == 0


def test_idle_timeout(postern, sink):
    p = postern.start(upstream=sink.address, sets={"timeouts.command": 1})
    with SmtpClient(p.port) as c:
        t0 = time.monotonic()
        r = c.read_reply()
        elapsed = time.monotonic() - t0
        check_reply(r, 421, "4.4.2", "idle after greeting")
        assert 0.8 <= elapsed <= 1 + 3 * SCALE, elapsed
        assert c.wait_closed()
    with session(p) as c:
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        t0 = time.monotonic()
        check_reply(c.read_reply(), 421, "4.4.2", "idle inside a transaction")
        assert time.monotonic() - t0 <= 1 + 3 * SCALE
        assert c.wait_closed()


def test_data_timeout(postern, sink):
    p = postern.start(upstream=sink.address, sets={"timeouts.data": 1})
    with session(p) as c:
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
        check_reply(c.cmd("DATA"), 354)
        c.send(b"Subject: stalled\r\n\r\nhalf a mess")
        t0 = time.monotonic()
        check_reply(c.read_reply(), 421, "4.4.2", "client stalls inside DATA")
        assert time.monotonic() - t0 <= 1 + 3 * SCALE
        assert c.wait_closed()
    time.sleep(0.2)
    assert sink.messages == []


def test_refused_client_costs_no_upstream_connection(proxy, sink):
    with session(proxy) as c:
        for line, code in [("FOOBAR", 500), ("VRFY <x@example.com>", 252), ("NOOP", 250),
                           ("RCPT TO:<b@example.com>", 503), ("MAIL FROM:broken", 501),
                           ("MAIL FROM:<a@example.org> FOO=BAR", 555), ("DATA", 503),
                           ("RSET", 250), ("HELP", 214)]:
            check_reply(c.cmd(line), code, what=line)
        check_reply(c.cmd("QUIT"), 221)
    time.sleep(0.3)
    assert sink.connections == 0, "postern opened an upstream connection for a client it refused"
    # the counter works: an accepted MAIL opens exactly one connection
    with session(proxy) as c:
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
    assert sink.connections == 1
