"""SMTP smuggling: postern and the MTA must agree on where DATA ends.

The sink here is deliberately lenient (like the MTAs exploited in 2023): it
also takes LF.LF, CR.CR, CRLF.LF, ... and NUL-padded dots as the end of DATA.
If postern passed any fake end marker through, the sink would record a
second, smuggled message from evil@x.
"""

import socket
import time

import pytest

from harness import (SmtpClient, check_reply, has_bare_line_ending, make_message,
                     normalize_line_endings)

QUEUED = "250 2.0.0 Ok: queued as ABC123"

VARIANTS = {
    "LF.LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CR": b"\r.\r",
    "CRLF.CR": b"\r\n.\r",
    "CR.CRLF": b"\r.\r\n",
    "CRLF-NUL.CRLF": b"\r\n\x00.\r\n",
    "CRLF.NUL-CRLF": b"\r\n.\x00\r\n",
}
NUL_VARIANTS = {"CRLF-NUL.CRLF", "CRLF.NUL-CRLF"}

HEAD = make_message("innocent", b"")
SMUGGLED = (b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\n"
            b"From: <admin@bank.example>\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n")


def attack_content(variant):
    # ... "body line" <fake end marker> <smuggled transaction>; the client then
    # sends ".\r\n", so the smuggled part ends with the real CRLF.CRLF
    return HEAD + b"first body line" + VARIANTS[variant] + SMUGGLED


def send_attack(c, variant, split=False):
    check_reply(c.cmd("MAIL FROM:<innocent@example.org>"), 250)
    check_reply(c.cmd("RCPT TO:<rcpt@example.com>"), 250)
    check_reply(c.cmd("DATA"), 354)
    payload = attack_content(variant) + b".\r\n"
    if not split:
        c.send(payload)
        return c.read_reply()
    # byte by byte around the fake marker: the parser must keep state across reads
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cut = len(HEAD) + len(b"first body line")
    c.send(payload[:cut - 2])
    for i in range(cut - 2, cut + len(VARIANTS[variant]) + 4):
        c.send(payload[i:i + 1])
        time.sleep(0.005)
    c.send(payload[cut + len(VARIANTS[variant]) + 4:])
    return c.read_reply()


def assert_nothing_smuggled(sink):
    assert not [m for m in sink.messages + sink.refused_messages if m.mail_from == "evil@x"], \
        "a smuggled message reached the MTA"
    assert not [e for e in sink.commands("MAIL") if e[2] == "evil@x"], \
        "smuggled MAIL command reached the MTA"
    assert not [e for e in sink.commands("RCPT") if e[2] == "victim@y"]


@pytest.fixture
def lenient_sink(make_sink):
    return make_sink(lenient=True)


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "byte-by-byte"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reject_mode(postern, lenient_sink, variant, split):
    sink = lenient_sink
    p = postern.start(upstream=sink.address)
    with SmtpClient(p.port) as c:
        c.ehlo()
        r = send_attack(c, variant, split)
        if variant in NUL_VARIANTS:
            check_reply(r, 554, "5.6.0", f"NUL in content ({variant})")
        else:
            check_reply(r, 554, "5.5.2", f"bare CR/LF in content ({variant})")
        # postern did not run the smuggled commands itself: the next reply is NOOP's
        check_reply(c.cmd("NOOP"), 250, "2.0.0", "NOOP after the rejected message")
        # and the session is still usable
        good = make_message("after attack", b"fine\r\n")
        assert str(c.send_message("innocent@example.org", ["rcpt@example.com"], good)) == QUEUED
    assert [m.body for m in sink.messages] == [good]
    assert sink.refused_messages == []
    assert_nothing_smuggled(sink)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_normalize_mode(postern, lenient_sink, variant):
    sink = lenient_sink
    p = postern.start(upstream=sink.address, sets={"data.bare_line_ending": "normalize"})
    with SmtpClient(p.port) as c:
        c.ehlo()
        r = send_attack(c, variant)
        if variant in NUL_VARIANTS:
            check_reply(r, 554, "5.6.0", f"NUL in content ({variant}), normalize mode")
        else:
            assert str(r) == QUEUED, f"{variant}: {r}"
        check_reply(c.cmd("NOOP"), 250, "2.0.0", "NOOP after the message")
    assert_nothing_smuggled(sink)
    if variant in NUL_VARIANTS:
        assert sink.messages == [] and sink.refused_messages == []
        return
    assert len(sink.messages) == 1, sink.messages
    got = sink.messages[0]
    assert got.mail_from == "innocent@example.org"
    assert got.rcpt_tos == ["rcpt@example.com"]
    assert not got.raw_has_bare_line_ending, "bare CR or LF reached the MTA"
    assert not has_bare_line_ending(got.content)
    # Nothing else changed: the content is the attack text with CRLF endings.
    # Whether a "." that starts a CRLF line ended by a bare CR/LF counts as a
    # transparency dot (and is removed) is not specified; both are accepted.
    content = attack_content(variant)
    unstuffed = content.replace(b"\r\n.", b"\r\n")
    assert got.body in (normalize_line_endings(content), normalize_line_endings(unstuffed)), got.body


@pytest.mark.parametrize("ending", [b"\n", b"\r"], ids=["bare-LF", "bare-CR"])
def test_bare_line_ending_plain_message(postern, sink, ending):
    msg = HEAD + b"line one" + ending + b"line two\r\n"
    p = postern.start(upstream=sink.address)
    with SmtpClient(p.port) as c:
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], msg), 554, "5.5.2",
                    "bare line ending, default config")
    assert sink.messages == []


@pytest.mark.parametrize("ending", [b"\n", b"\r"], ids=["bare-LF", "bare-CR"])
def test_bare_line_ending_normalized(postern, sink, ending):
    msg = HEAD + b"line one" + ending + b"line two" + ending + b"line three\r\n"
    p = postern.start(upstream=sink.address, sets={"data.bare_line_ending": "normalize"})
    with SmtpClient(p.port) as c:
        c.ehlo()
        assert str(c.send_message("a@example.org", ["b@example.com"], msg)) == QUEUED
    assert sink.messages[0].body == HEAD + b"line one\r\nline two\r\nline three\r\n"
    assert not sink.messages[0].raw_has_bare_line_ending


def test_nul_in_content(postern, sink):
    p = postern.start(upstream=sink.address, sets={"data.bare_line_ending": "normalize"})
    with SmtpClient(p.port) as c:
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], HEAD + b"nul \x00 here\r\n"),
                    554, "5.6.0", "NUL in content")
    assert sink.messages == [] and sink.refused_messages == []


def test_attack_pipelined_with_quit(postern, lenient_sink):
    sink = lenient_sink
    p = postern.start(upstream=sink.address)
    with SmtpClient(p.port) as c:
        c.ehlo()
        c.send("MAIL FROM:<innocent@example.org>\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n")
        assert [c.read_reply().code for _ in range(3)] == [250, 250, 354]
        c.send(attack_content("LF.LF") + b".\r\nQUIT\r\n")
        check_reply(c.read_reply(), 554, "5.5.2")
        check_reply(c.read_reply(), 221, "2.0.0")
        assert c.wait_closed()
    assert sink.messages == []
    assert_nothing_smuggled(sink)


def test_client_lf_dot_lf_is_not_an_end(postern, sink):
    """A client that ends with LF.LF gets no reply: postern waits for CRLF.CRLF."""
    p = postern.start(upstream=sink.address, sets={"data.bare_line_ending": "normalize"})
    with SmtpClient(p.port) as c:
        c.ehlo()
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
        check_reply(c.cmd("DATA"), 354)
        c.send(HEAD + b"body\n.\n")
        with pytest.raises((socket.timeout, TimeoutError)):
            c.read_reply(timeout=1.0)
        c.send(b"\r\n.\r\n")
        assert str(c.read_reply()) == QUEUED
    assert sink.messages[0].body == HEAD + b"body\r\n.\r\n\r\n"
