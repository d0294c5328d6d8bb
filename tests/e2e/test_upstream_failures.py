"""The MTA refuses, fails, vanishes or stalls: the client hears exactly that,
or a 4xx, and never a 250 for mail the MTA did not take."""

import time

import pytest

from harness import SCALE, SmtpClient, check_reply, data_payload, free_port, make_message

QUEUED = "250 2.0.0 Ok: queued as ABC123"
MSG = make_message("upstream", b"body\r\n")


def start_tx(c, rcpt="b@example.com"):
    c.ehlo()
    check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250, what="MAIL")
    check_reply(c.cmd(f"RCPT TO:<{rcpt}>"), 250, what="RCPT")


def finish_tx(c, content=MSG):
    """DATA + content; returns the reply that decides the message's fate."""
    r = c.cmd("DATA")
    if r.code != 354:
        return r
    c.send(data_payload(content))
    return c.read_reply()


def assert_tempfail_44x(r, what):
    assert r.code == 451 and r.enhanced is not None and r.enhanced.startswith("4.4."), \
        f"{what}: expected 451 4.4.x, got {r}"


REPLIES = [
    ("MAIL", "451 4.3.0 <a@example.org>: Sender address rejected: try again later"),
    ("MAIL", "553 5.7.1 <a@example.org>: Sender address rejected: Access denied"),
    ("MAIL", "550-5.7.1 first line of a multi-line refusal\r\n550 5.7.1 second line"),
    ("RCPT", "450 4.2.1 <b@example.com>: Recipient address rejected: Mailbox busy"),
    ("RCPT", "550 5.1.1 <b@example.com>: Recipient address rejected: User unknown"),
    ("DATA", "451 4.3.0 Error: queue file write error"),
    ("DATA", "554 5.5.1 Error: no valid recipients"),
    ("DATA_END", "452 4.3.1 Insufficient system storage"),
    ("DATA_END", "554 5.7.1 Message rejected as spam"),
    ("DATA_END", "550-5.7.1 Message refused\r\n550-5.7.1 see the policy page\r\n550 5.7.1 goodbye"),
]


@pytest.mark.parametrize("stage,reply", REPLIES, ids=[f"{s}-{r[:3]}" for s, r in REPLIES])
def test_mta_reply_relayed_verbatim(proxy, sink, stage, reply):
    sink.on(stage, reply=reply)
    expected = reply.split("\r\n")
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<a@example.org>")
        if stage == "MAIL":
            assert r.raw_lines == expected
            check_reply(c.cmd("RCPT TO:<b@example.com>"), 503, "5.5.1", "RCPT after refused MAIL")
            return
        check_reply(r, 250)
        r = c.cmd("RCPT TO:<b@example.com>")
        if stage == "RCPT":
            assert r.raw_lines == expected
            return
        check_reply(r, 250)
        # postern answers 354 itself and talks DATA to the MTA after the final dot
        check_reply(c.cmd("DATA"), 354)
        c.send(data_payload(MSG))
        r = c.read_reply()
        assert r.raw_lines == expected
    assert sink.messages == []
    result = "tempfailed" if reply.startswith("4") else "rejected"
    line = proxy.wait_for_log("message", result=result)
    # the log names the MTA's reply (its text; the exact form is test_relay's business)
    assert expected[0][4:] in line.get("upstream", ""), line.raw


@pytest.mark.parametrize("stage,reply", [
    ("MAIL", "354 go ahead"),
    ("DATA", "250 2.0.0 Ok"),
    ("DATA_END", "354 more please"),
])
def test_wrong_class_reply_is_never_relayed(proxy, sink, stage, reply):
    sink.on(stage, reply=reply)
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<a@example.org>")
        if stage == "MAIL":
            check_reply(r, 451, "4.4.0", "MAIL answered 354 by the MTA")
            return
        check_reply(r, 250)
        check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
        check_reply(c.cmd("DATA"), 354)
        c.send(data_payload(MSG))
        check_reply(c.read_reply(), 451, "4.4.0", f"{stage} answered {reply!r} by the MTA")


def test_upstream_not_listening(postern):
    port = free_port()
    p = postern.start(upstream=f"127.0.0.1:{port}", sets={"timeouts.upstream_connect": 2})
    with SmtpClient(p.port) as c:
        c.ehlo()
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 451, "4.4.1", "MAIL, MTA down")
        # the session survives and the next attempt is answered the same way
        check_reply(c.cmd("NOOP"), 250, "2.0.0")
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 451, "4.4.1", "second MAIL, MTA down")
        check_reply(c.cmd("QUIT"), 221)


@pytest.mark.parametrize("stage", ["MAIL", "RCPT"])
def test_connection_lost_at_envelope(proxy, sink, stage):
    sink.on(stage, drop=True)
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<a@example.org>")
        if stage == "MAIL":
            assert_tempfail_44x(r, "MAIL, connection lost")
            return
        check_reply(r, 250)
        check_reply(c.cmd("RCPT TO:<b@example.com>"), 451, "4.4.2", "RCPT, connection lost")
        r = finish_tx(c)
        assert r.code // 100 in (4, 5) and r.code != 250, f"DATA after a lost MTA: {r}"
    assert sink.messages == []


@pytest.mark.parametrize("stage", ["DATA", "DATA_CONTENT", "DATA_END"])
def test_connection_lost_during_data(proxy, sink, stage):
    sink.on(stage, drop=True)
    with SmtpClient(proxy.port) as c:
        start_tx(c)
        check_reply(finish_tx(c), 451, "4.4.2", f"message, MTA dropped at {stage}")
    assert sink.messages == []
    line = proxy.wait_for_log("message", result="tempfailed")
    assert "250" not in line.get("upstream", ""), line.raw


@pytest.mark.parametrize("stage,key", [
    ("CONNECT", "timeouts.upstream_greeting"),
    ("MAIL", "timeouts.upstream_mail"),
    ("RCPT", "timeouts.upstream_rcpt"),
    ("DATA", "timeouts.upstream_data_init"),
    ("DATA_END", "timeouts.upstream_data_term"),
])
def test_upstream_stall_times_out(postern, sink, stage, key):
    sink.on(stage, delay=30)
    p = postern.start(upstream=sink.address, sets={key: 1})
    with SmtpClient(p.port) as c:
        c.ehlo()
        t0 = time.monotonic()
        r = c.cmd("MAIL FROM:<a@example.org>")
        if stage in ("CONNECT", "MAIL"):
            elapsed = time.monotonic() - t0
            assert_tempfail_44x(r, f"MAIL, MTA stalls at {stage}")
        else:
            check_reply(r, 250)
            t0 = time.monotonic()
            r = c.cmd("RCPT TO:<b@example.com>")
            if stage == "RCPT":
                elapsed = time.monotonic() - t0
                check_reply(r, 451, "4.4.2", "RCPT, MTA stalls")
            else:
                check_reply(r, 250)
                check_reply(c.cmd("DATA"), 354)
                t0 = time.monotonic()
                c.send(data_payload(MSG))
                r = c.read_reply()
                elapsed = time.monotonic() - t0
                check_reply(r, 451, "4.4.2", f"message, MTA stalls at {stage}")
    assert 0.8 <= elapsed <= 1 + 4 * SCALE, f"{key}=1 but the reply came after {elapsed:.2f}s"


@pytest.mark.parametrize("failure", ["drop", "stall", "tempfail"])
def test_next_message_after_failure_is_delivered(postern, sink, failure):
    if failure == "drop":
        sink.on("DATA_END", drop=True, times=1)
    elif failure == "stall":
        sink.on("DATA_END", delay=30, times=1)
    else:
        sink.on("DATA_END", reply="451 4.3.0 try again", times=1)
    p = postern.start(upstream=sink.address, sets={"timeouts.upstream_data_term": 1})
    first = make_message("first", b"first\r\n")
    second = make_message("second", b"second\r\n")
    with SmtpClient(p.port) as c:
        start_tx(c)
        r = finish_tx(c, first)
        assert r.code // 100 == 4, f"first message: {r}"
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250, what="MAIL after a failure")
        check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
        assert str(finish_tx(c, second)) == QUEUED
    if failure == "tempfail":
        assert [m.body for m in sink.messages] == [second]
    else:
        # the first never got a 2xx from the MTA: not recorded as accepted
        assert [m.body for m in sink.messages] == [second]
        assert sink.connections == 2


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA", "DATA_END"])
def test_mta_421_ends_the_session(proxy, sink, stage):
    """The MTA says 421 and hangs up (RFC 5321 §3.8): the client hears that
    421 and its session ends, at every stage (docs/operations.md); a new
    session's message goes through. (test_upstream_injection has the
    scripted cases: BDAT, greeting, EHLO, XCLIENT, texts, splits.)"""
    sink.on(stage, reply="421 4.3.2 Service shutting down", times=1, close_after=True)
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<a@example.org>")
        if stage != "MAIL":
            check_reply(r, 250)
            r = c.cmd("RCPT TO:<b@example.com>")
            if stage != "RCPT":
                check_reply(r, 250)
                r = finish_tx(c)
        assert str(r) == "421 4.3.2 Service shutting down", f"{stage}: {r}"
        assert c.wait_closed(), f"session open after the MTA's 421 at {stage}"
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        assert str(c.send_message("a@example.org", ["b@example.com"], MSG)) == QUEUED
    assert [m.body for m in sink.messages] == [MSG]


def test_mta_closes_kept_connection_between_messages(proxy, sink):
    """The MTA drops the idle upstream connection after a message (its own
    idle time-out): the session's next message still gets through."""
    sink.on("DATA_END", times=1, close_after=True)
    first = make_message("first", b"first\r\n")
    second = make_message("second", b"second\r\n")
    with SmtpClient(proxy.port) as c:
        c.ehlo()
        assert str(c.send_message("a@example.org", ["b@example.com"], first)) == QUEUED
        time.sleep(0.2)
        assert str(c.send_message("a@example.org", ["b@example.com"], second)) == QUEUED
    assert [m.body for m in sink.messages] == [first, second]
    assert sink.connections == 2
