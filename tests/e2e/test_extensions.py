"""SMTPUTF8 (RFC 6531) and DSN (RFC 3461) pass-through.

postern probes the MTA once at start (upstream-capabilities smtputf8=...
dsn=...) and offers each extension only when the MTA behind can carry it.

- SMTPUTF8: aiosmtpd with enable_SMTPUTF8=True (RecordingSink(smtputf8=True))
  against a plain aiosmtpd.
- DSN: Postfix's smtp-sink offers DSN; its -D dump file records each
  message's MAIL and RCPT arguments (X-Mail-Args, X-Rcpt-Args) as received.
  aiosmtpd offers no DSN.
"""

import os
import shutil
import tempfile

import pytest

from harness import SmtpClient, check_reply, data_payload, make_message, wait_until

UTF8_FROM = "jörg@exämple.org"
UTF8_RCPT = "ü@example.com"


# --------------------------------------------------------------------------
# SMTPUTF8


def test_smtputf8_relayed(postern, make_sink):
    sink = make_sink(smtputf8=True)
    p = postern.start(upstream=sink.address)
    caps = p.wait_for_log("upstream-capabilities")
    assert caps.get("smtputf8") == "yes", caps
    content = make_message("utf8", body="Grüße\r\n".encode())
    with SmtpClient(p.port) as c:
        r = c.ehlo()
        assert "SMTPUTF8" in r.lines, r
        c.expect(f"MAIL FROM:<{UTF8_FROM}> SMTPUTF8", 250)
        c.expect(f"RCPT TO:<{UTF8_RCPT}>", 250)
        c.expect("DATA", 354)
        c.send(data_payload(content))
        check_reply(c.read_reply(), 250, what="end of data")
    msg = sink.wait_messages(1)[0]
    assert msg.mail_from == UTF8_FROM, msg
    assert msg.rcpt_tos == [UTF8_RCPT], msg
    assert "SMTPUTF8" in msg.mail_options, msg.mail_options
    assert msg.content.endswith(content)


def test_utf8_address_needs_smtputf8_param(postern, make_sink):
    sink = make_sink(smtputf8=True)
    p = postern.start(upstream=sink.address)
    with SmtpClient(p.port) as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{UTF8_FROM}>", 553, "5.6.7")
        # ASCII sender, transaction without SMTPUTF8: a UTF-8 recipient is refused too
        c.expect("MAIL FROM:<alice@example.org>", 250)
        r = c.cmd(f"RCPT TO:<{UTF8_RCPT}>")
        assert r.code in (553, 501) and r.code != 250, r
        c.expect("RSET", 250)
    assert [e[2] for e in sink.commands("MAIL")] == ["alice@example.org"], sink.events


# Ill-formed UTF-8 (RFC 3629 §4), one of each kind (issue 18).
BAD_UTF8 = {
    "overlong-2": b"\xc0\xaf", "overlong-2-c1": b"\xc1\xbf", "overlong-3": b"\xe0\x80\xaf",
    "overlong-4": b"\xf0\x80\x80\xaf", "surrogate-high": b"\xed\xa0\x80", "surrogate-low": b"\xed\xbf\xbf",
    "truncated-2": b"\xc3", "truncated-3": b"\xe2\x82", "truncated-4": b"\xf0\x9f\x98",
    "past-10ffff": b"\xf4\x90\x80\x80", "f5": b"\xf5\x80\x80\x80", "ff": b"\xff",
    "lone-continuation": b"\x80", "lone-continuation-bf": b"\xbf", "latin1": "jörg".encode("latin-1"),
}


def utf8_session(p):
    c = SmtpClient(p.port)
    r = c.ehlo()
    assert "SMTPUTF8" in r.lines, r
    return c


@pytest.mark.parametrize("bad", list(BAD_UTF8.values()), ids=list(BAD_UTF8))
def test_invalid_utf8_in_envelope_is_refused(postern, make_sink, bad):
    """Under SMTPUTF8, an address that is not well-formed UTF-8 gets 553
    5.6.7 at MAIL and at RCPT (local part and domain); without SMTPUTF8 any
    8-bit address does; the MTA never hears of it."""
    sink = make_sink(smtputf8=True)
    p = postern.start(upstream=sink.address)
    with utf8_session(p) as c:
        c.expect(b"MAIL FROM:<j" + bad + b"rg@example.org> SMTPUTF8", 553, "5.6.7")
        c.expect(b"MAIL FROM:<jorg@ex" + bad + b"mple.org> SMTPUTF8", 553, "5.6.7")
        c.expect(b"MAIL FROM:<j" + bad + b"rg@example.org>", 553, "5.6.7")
        c.expect(f"MAIL FROM:<{UTF8_FROM}> SMTPUTF8", 250)
        c.expect(b"RCPT TO:<" + bad + b"@example.com>", 553, "5.6.7")
        c.expect(b"RCPT TO:<u@" + bad + b".example.com>", 553, "5.6.7")
        c.expect(f"RCPT TO:<{UTF8_RCPT}>", 250)
        c.expect("RSET", 250)
        c.expect("MAIL FROM:<alice@example.org>", 250)  # no SMTPUTF8: 8-bit at all is refused
        c.expect(b"RCPT TO:<" + bad + b"@example.com>", 553, "5.6.7")
        c.expect("RSET", 250)
    assert [e[2] for e in sink.commands("MAIL")] == [UTF8_FROM, "alice@example.org"], sink.events
    assert [e[2] for e in sink.commands("RCPT")] == [UTF8_RCPT], sink.events


@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
@pytest.mark.parametrize("bad", list(BAD_UTF8.values()), ids=list(BAD_UTF8))
def test_invalid_utf8_in_header_is_refused(postern, make_sink, bad, chunking):
    """Under SMTPUTF8 the header section must be UTF-8 (RFC 6532): a field
    with an ill-formed sequence gets 554 5.6.7 at the end of the message
    and the MTA gets nothing; the same octets in the body are the body's
    business (MIME charsets) and pass."""
    sink = make_sink(smtputf8=True)
    p = postern.start(upstream=sink.address)
    bad_header = b"From: <a@example.org>\r\nSubject: caf" + bad + b"\r\n\r\nbody\r\n"
    bad_body = b"From: <a@example.org>\r\nSubject: ok\r\n\r\nbody " + bad + b"\r\n"
    with utf8_session(p) as c:
        for content, code in ((bad_header, 554), (bad_body, 250)):
            c.expect(f"MAIL FROM:<{UTF8_FROM}> SMTPUTF8", 250)
            c.expect(f"RCPT TO:<{UTF8_RCPT}>", 250)
            if chunking:
                c.send(f"BDAT {len(content)} LAST\r\n".encode() + content)
            else:
                c.expect("DATA", 354)
                c.send(data_payload(content))
            check_reply(c.read_reply(), code, "5.6.7" if code == 554 else None, f"content {content!r}")
    msgs = sink.wait_messages(1)
    assert msgs[0].content.endswith(bad_body), msgs[0].content


def test_valid_utf8_header_passes(postern, make_sink):
    sink = make_sink(smtputf8=True)
    p = postern.start(upstream=sink.address)
    content = "From: Jörg <jörg@exämple.org>\r\nSubject: Grüße 😀 ✓\r\n\r\nbody\r\n".encode()
    with utf8_session(p) as c:
        c.expect(f"MAIL FROM:<{UTF8_FROM}> SMTPUTF8", 250)
        c.expect(f"RCPT TO:<{UTF8_RCPT}>", 250)
        c.expect("DATA", 354)
        c.send(data_payload(content))
        check_reply(c.read_reply(), 250)
    assert sink.wait_messages(1)[0].content.endswith(content)


def test_no_smtputf8_when_mta_lacks_it(proxy, sink):
    caps = proxy.wait_for_log("upstream-capabilities")
    assert caps.get("smtputf8") == "no", caps
    with SmtpClient(proxy.port) as c:
        r = c.ehlo()
        assert "SMTPUTF8" not in r.lines, r
        c.expect("MAIL FROM:<alice@example.org> SMTPUTF8", 555, "5.5.4")
        # both the parameter (555 5.5.4) and the address (553 5.6.7) are
        # unacceptable here; either refusal is right, 250 is not
        r = c.cmd(f"MAIL FROM:<{UTF8_FROM}> SMTPUTF8")
        assert (r.code, r.enhanced) in ((555, "5.5.4"), (553, "5.6.7")), r
        c.expect(f"MAIL FROM:<{UTF8_FROM}>", 553, "5.6.7")
        c.expect("NOOP", 250)
    assert not sink.commands("MAIL")


# --------------------------------------------------------------------------
# DSN


@pytest.fixture
def dsn_sink(postfix_sink):
    d = tempfile.mkdtemp(prefix="postern-dsn-")
    os.chmod(d, 0o777)            # smtp-sink writes as nobody
    dump = os.path.join(d, "dump")
    s = postfix_sink(["-D", dump])
    s.dump = dump
    try:
        yield s
    finally:
        s.stop()
        shutil.rmtree(d, ignore_errors=True)


def read_dump(s):
    try:
        with open(s.dump, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def dump_lines(s, name):
    return [l.split(":", 1)[1].strip() for l in read_dump(s).splitlines() if l.startswith(name + ":")]


def test_dsn_params_forwarded_unchanged(postern, dsn_sink):
    p = postern.start(upstream=dsn_sink.address)
    caps = p.wait_for_log("upstream-capabilities")
    assert caps.get("dsn") == "yes", caps
    with SmtpClient(p.port) as c:
        r = c.ehlo()
        assert "DSN" in r.lines, r
        c.expect("MAIL FROM:<alice@example.org> RET=HDRS ENVID=abc+2Bdef", 250)
        c.expect("RCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@y.example", 250)
        c.expect("RCPT TO:<carol@example.com> NOTIFY=NEVER", 250)
        c.expect("DATA", 354)
        c.send(data_payload(make_message("dsn")))
        check_reply(c.read_reply(), 250, what="end of data")
    wait_until(lambda: "Subject: dsn" in read_dump(dsn_sink), 10, message="smtp-sink dump")
    assert dump_lines(dsn_sink, "X-Mail-Args") == ["<alice@example.org> RET=HDRS ENVID=abc+2Bdef"], \
        read_dump(dsn_sink)
    assert dump_lines(dsn_sink, "X-Rcpt-Args") == [
        "<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@y.example",
        "<carol@example.com> NOTIFY=NEVER"], read_dump(dsn_sink)


@pytest.mark.parametrize("verb,line", [
    ("RCPT", "RCPT TO:<bob@example.com> NOTIFY=SOMETIMES"),
    ("RCPT", "RCPT TO:<bob@example.com> NOTIFY=NEVER,SUCCESS"),
    ("RCPT", "RCPT TO:<bob@example.com> NOTIFY="),
    ("RCPT", "RCPT TO:<bob@example.com> ORCPT=x@y.example"),
    ("MAIL", "MAIL FROM:<alice@example.org> RET=ALL"),
    ("MAIL", "MAIL FROM:<alice@example.org> ENVID=abc+ZZdef"),
    ("MAIL", "MAIL FROM:<alice@example.org> ENVID=abc=def"),
])
def test_dsn_bad_values_501(postern, dsn_sink, verb, line):
    p = postern.start(upstream=dsn_sink.address)
    with SmtpClient(p.port) as c:
        c.ehlo()
        if verb == "RCPT":
            c.expect("MAIL FROM:<alice@example.org>", 250)
        c.expect(line, 501, "5.5.4")
        c.expect("NOOP", 250)


def test_envid_with_space(postern, dsn_sink):
    """A space cannot be inside a parameter value: "ENVID=abc def" is ENVID=abc
    and an unknown parameter "def" (555); the space encoded as xtext is fine."""
    p = postern.start(upstream=dsn_sink.address)
    with SmtpClient(p.port) as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<alice@example.org> ENVID=abc def")
        assert (r.code, r.enhanced) in ((501, "5.5.4"), (555, "5.5.4")), r
        c.expect("MAIL FROM:<alice@example.org> ENVID=abc+20def", 250)
        c.expect("RCPT TO:<bob@example.com>", 250)
        c.expect("DATA", 354)
        c.send(data_payload(make_message("envid")))
        check_reply(c.read_reply(), 250, what="end of data")
    wait_until(lambda: "Subject: envid" in read_dump(dsn_sink), 10, message="smtp-sink dump")
    assert dump_lines(dsn_sink, "X-Mail-Args") == ["<alice@example.org> ENVID=abc+20def"], read_dump(dsn_sink)


def test_dsn_refused_when_mta_lacks_it(proxy, sink):
    caps = proxy.wait_for_log("upstream-capabilities")
    assert caps.get("dsn") == "no", caps
    with SmtpClient(proxy.port) as c:
        r = c.ehlo()
        assert "DSN" not in r.lines, r
        c.expect("MAIL FROM:<alice@example.org> RET=HDRS", 555, "5.5.4")
        c.expect("MAIL FROM:<alice@example.org> ENVID=abc", 555, "5.5.4")
        c.expect("MAIL FROM:<alice@example.org>", 250)
        c.expect("RCPT TO:<bob@example.com> NOTIFY=SUCCESS", 555, "5.5.4")
        c.expect("RCPT TO:<bob@example.com> ORCPT=rfc822;bob@example.com", 555, "5.5.4")
        c.expect("RCPT TO:<bob@example.com>", 250)
    assert [e[3] for e in sink.commands("MAIL")] == [[]], sink.events
    assert [e[3] for e in sink.commands("RCPT")] == [[]], sink.events
