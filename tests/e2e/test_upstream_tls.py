"""STARTTLS from postern to the MTA ([upstream] tls, ca_file, tls_name), tested
against a real Postfix smtpd.

The private Postfix instance of test_xclient.py (own config, queue and log
directories under /tmp, loopback only, relaying to a recording sink) gets a
self-signed certificate for CN=postfix.test and offers STARTTLS
(smtpd_tls_security_level = may, smtpd_tls_loglevel = 1). Its maillog shows
whether the connection from postern was encrypted, and the Received header it
writes says "with ESMTPS" (TLS) or "with ESMTP" (plaintext).

Postern's upstream is the xforward port of that instance (XCLIENT is not
authorized there, so Postfix records the real connection from 127.0.0.1).
"""

import os
import re
import uuid

import pytest

from harness import (SCALE, SmtpClient, check_reply, make_cert, make_message,
                     wait_until)
from test_xclient import postfix_received, private_postfix

TLS_NAME = "postfix.test"

MAIN_CF_TLS = """\
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtpd_tls_received_header = no
smtp_tls_security_level = none
"""

MASTER_CF_TLS = "tlsmgr    unix  - - n 1000? 1 tlsmgr\n"


def add_tls(pf):
    """Gives the instance a certificate (removed with it) and STARTTLS."""
    pf.cert, pf.key, _ = make_cert(pf.etc, name="postfix", cn=TLS_NAME)
    os.chmod(pf.key, 0o600)
    with open(os.path.join(pf.etc, "main.cf"), "a") as f:
        f.write(MAIN_CF_TLS.format(cert=pf.cert, key=pf.key))
    with open(os.path.join(pf.etc, "master.cf"), "a") as f:
        f.write(MASTER_CF_TLS)


@pytest.fixture(scope="module")
def tls_mta():
    yield from private_postfix(add_tls)


def start_postern(postern, mta, **upstream):
    sets = {f"upstream.{k}": v for k, v in upstream.items()}
    sets["upstream.client_identity"] = "none"
    return postern.start(upstream=f"127.0.0.1:{mta.xforward_port}", sets=sets)


def relay_one(postern, mta, **upstream):
    """One message through postern (started with the given [upstream] keys)
    into Postfix. Returns (postern process, queue id, message as relayed)."""
    p = start_postern(postern, mta, **upstream)
    tag = uuid.uuid4().hex[:12]
    with SmtpClient(p.port) as c:
        c.ehlo("client.example")
        r = check_reply(c.send_message("alice@example.org", ["bob@example.com"],
                                       make_message(f"upstream tls {tag}")), 250,
                        what="end of data")
        c.expect("QUIT", 221)
    m = re.search(r"queued as ([0-9A-F]+)", r.text)
    assert m, f"no Postfix queue id in {r}"
    qid = m.group(1)
    wait_until(lambda: any(qid.encode() in (msg.content or b"") for msg in mta.sink.messages),
               20 * SCALE, message=f"Postfix relaying {qid} to the sink")
    msg = next(msg for msg in mta.sink.messages if qid.encode() in msg.content)
    return p, qid, msg


def smtpd_session_lines(mta, qid):
    """smtpd's log lines of the connection that received queue id qid: from its
    `connect from` to its `disconnect from` (an smtpd process serves many
    connections, so the pid alone is not enough)."""
    client = mta.wait_log(rf"postfix/smtpd\[(\d+)\]: {qid}: client=")
    pid = client.group(1)
    mta.smtpd_session(qid)     # waits for the disconnect line
    lines = [l for l in mta.log().splitlines() if f"postfix/smtpd[{pid}]: " in l]
    qline = next(i for i, l in enumerate(lines) if f": {qid}: client=" in l)
    start = max(i for i, l in enumerate(lines[:qline + 1]) if ": connect from " in l)
    end = next(i for i, l in enumerate(lines) if i > qline and ": disconnect from " in l)
    return lines[start:end + 1]


def tls_lines(session):
    """The `TLS connection established` lines (smtpd_tls_loglevel = 1)."""
    out = []
    for l in session:
        m = re.search(r"postfix/smtpd\[\d+\]: (\S+ TLS connection established from .*)$", l)
        if m:
            out.append(m.group(1))
    return out


def received_with(msg, qid):
    rec = postfix_received(msg, qid)
    m = re.search(r"\(Postfix\) with (\S+)", rec)
    assert m, rec
    return m.group(1), rec


def test_opportunistic_uses_starttls(postern, tls_mta):
    p, qid, msg = relay_one(postern, tls_mta, tls="opportunistic")
    session = smtpd_session_lines(tls_mta, qid)
    lines = tls_lines(session)
    assert lines, "no TLS line in the smtpd session:\n" + "\n".join(session)
    assert "127.0.0.1" in lines[0], lines
    # postern presents no client certificate: Postfix calls it Anonymous
    assert lines[0].startswith("Anonymous TLS connection established from"), lines
    with_, rec = received_with(msg, qid)
    assert with_ == "ESMTPS", rec
    assert not p.events("upstream-tls-failed"), p.log_tail()


def test_verify_with_ca_and_name_uses_starttls(postern, tls_mta):
    p, qid, msg = relay_one(postern, tls_mta, tls="verify", ca_file=tls_mta.cert,
                            tls_name=TLS_NAME)
    session = smtpd_session_lines(tls_mta, qid)
    assert tls_lines(session), "no TLS line in the smtpd session:\n" + "\n".join(session)
    with_, rec = received_with(msg, qid)
    assert with_ == "ESMTPS", rec
    assert not p.events("upstream-tls-failed"), p.log_tail()


@pytest.mark.parametrize("case", ["wrong-name", "untrusted-ca"])
def test_verify_failure_tempfails(postern, tls_mta, tmp_path, case):
    """tls = "verify": a certificate for another name, or one not signed by
    ca_file, makes the client's MAIL get 451 4.4.1; nothing is relayed."""
    if case == "wrong-name":
        ca_file, tls_name = tls_mta.cert, "wrong.test"
    else:   # the right name, but ca_file is some other self-signed certificate
        ca_file, tls_name = make_cert(tmp_path, name="other", cn=TLS_NAME)[0], TLS_NAME
    p = start_postern(postern, tls_mta, tls="verify", ca_file=ca_file, tls_name=tls_name)
    before = len(tls_mta.sink.messages)
    log_offset = len(tls_mta.log())
    with SmtpClient(p.port) as c:
        c.ehlo("client.example")
        r = c.cmd("MAIL FROM:<alice@example.org>")
        check_reply(r, 451, "4.4.1", what="MAIL with an unverifiable upstream certificate")
        r = c.cmd("RCPT TO:<bob@example.com>")
        assert r.code >= 400, f"RCPT after a failed MAIL: {r}"
        c.expect("QUIT", 221)
    failed = p.wait_for_log("upstream-tls-failed")
    assert failed.get("upstream") == f"127.0.0.1:{tls_mta.xforward_port}", failed
    # Postfix queued nothing and the sink got nothing
    new_log = tls_mta.log()[log_offset:]
    assert not re.search(r"postfix/smtpd\[\d+\]: [0-9A-F]+: client=", new_log), new_log
    assert len(tls_mta.sink.messages) == before
    assert "verify" in (failed.get("error") or ""), failed


def test_none_stays_plaintext(postern, tls_mta):
    p, qid, msg = relay_one(postern, tls_mta, tls="none")
    session = smtpd_session_lines(tls_mta, qid)
    assert not tls_lines(session), "\n".join(session)
    with_, rec = received_with(msg, qid)
    assert with_ == "ESMTP", rec


def test_reused_connection_keeps_its_tls_and_names_each_client(postern, tls_mta):
    """Upstream connection reuse (issue 23) over postern's own TLS to the MTA:
    one smtpd connection, one TLS handshake, two client sessions, each named
    to Postfix by XFORWARD (this port does not authorize XCLIENT)."""
    p = postern.start(upstream=f"127.0.0.1:{tls_mta.xforward_port}",
                      sets={"upstream.tls": "opportunistic", "server.threads": 1,
                            "upstream.reuse_idle_timeout": 1})
    qids = []
    for n in (31, 32):
        with SmtpClient(p.port, source=f"127.0.0.{n}") as c:
            c.ehlo(f"client-{n}.example")
            r = check_reply(c.send_message("alice@example.org", ["bob@example.com"],
                                           make_message(f"tls reuse {n} {uuid.uuid4().hex[:8]}")), 250)
            c.expect("QUIT", 221)
        qids.append(re.search(r"queued as ([0-9A-F]+)", r.text).group(1))
    session = smtpd_session_lines(tls_mta, qids[0])
    assert any(f": {qids[1]}: client=" in l for l in session), "\n".join(session)
    assert len(tls_lines(session)) == 1, "\n".join(session)
    for n, qid in zip((31, 32), qids):
        client = tls_mta.wait_log(rf"postfix/smtpd\[\d+\]: {qid}: client=(.*)$").group(1)
        assert client.endswith(f"orig_client=unknown[127.0.0.{n}]") or f"orig_client=unknown[127.0.0.{n}]:" in client, client
        wait_until(lambda: any(qid.encode() in (m.content or b"") for m in tls_mta.sink.messages),
                   20 * SCALE, message=f"Postfix relaying {qid}")
        msg = next(m for m in tls_mta.sink.messages if qid.encode() in m.content)
        assert received_with(msg, qid)[0] == "ESMTPS"
    # the idle time-out ended it with QUIT
    assert any(re.search(r"disconnect from .* quit=1", l) for l in session), session[-1]
