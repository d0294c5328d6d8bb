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
