"""postern as a milter ([milter_server]) behind a real Postfix: a private
Postfix instance (postfix_instance.py) on loopback with smtpd_milters
pointed at postern, relaying to a recording sink. postern's verdicts reach
Postfix's clients as Postfix's own replies; its changes (header fields,
Authentication-Results, the subject tag, recipients, the sender, a DKIM
signature) are in what Postfix relays. SPF and DMARC are decided on the
client address and HELO Postfix passes on (set here with XCLIENT), against
a real DNS server (dns_server.py). Postfix's milter_default_action applies
while postern is down, and postern serves again after a restart. The last
tests talk the milter protocol to postern directly: garbage closes the
connection with a log line and nothing else."""

import json
import os
import smtplib
import socket
import shutil
import struct
import subprocess
import tempfile

import dkim
import pytest

from auth_setup import GOOD_IP, SPOOF_IP, auth_sections, example_com, example_org
from dns_server import DkimKey, serve
from harness import IO_TIMEOUT, free_port, listener_ports, wait_until, write_config
from postfix_instance import PostfixInstance

RULES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rules", "milter_server.lua")


_POSTFIX_DIRS = []


@pytest.fixture(autouse=True)
def _remove_postfix_dirs():
    yield
    while _POSTFIX_DIRS:
        shutil.rmtree(_POSTFIX_DIRS.pop(), ignore_errors=True)


def _postfix_usable():
    return os.path.exists("/usr/sbin/postfix") and os.geteuid() == 0


pytestmark = pytest.mark.skipif(not _postfix_usable(), reason="needs Postfix and root")


@pytest.fixture(scope="module")
def sign_key(tmp_path_factory):
    """postern's own signing key for signed.example (mail of 127.0.0.0/8)."""
    d = tmp_path_factory.mktemp("sign-key")
    key = DkimKey("signed.example", "pm1")
    path = d / "pm1.key"
    path.write_bytes(key.pem)
    key.path = str(path)
    return key


@pytest.fixture(scope="module")
def dns(dkim_key, sign_key):
    yield from serve(example_com(dkim_key) + example_org() + [sign_key.record()])


def start_postern(postern, tmp_path, dns, sign_key, milter_port, extra=None):
    audit = tmp_path / "audit.jsonl"
    sections = auth_sections(dns.address, audit_path=audit,
                             milter_server={"listen": [f"inet:127.0.0.1:{milter_port}"], "timeout": 30},
                             server={"hostname": "mx.postfix.test"}, lua={"scripts": [RULES]},
                             dkim={"sign_networks": ["127.0.0.0/8"]})
    for k, v in (extra or {}).items():
        sections.setdefault(k, {}).update(v)
    cfg = write_config(tmp_path / "postern.toml", [{}], sections=sections)
    with open(cfg, "a") as f:
        f.write(f'\n[[dkim.sign]]\ndomain = "signed.example"\nselector = "pm1"\nkey_file = "{sign_key.path}"\n')
    p = postern.start(config=cfg, listen=())
    p.wait_for_log("milter-listening")
    p.audit = audit
    return p


def start_postfix(tmp_path, sink, milter_port, default_action="tempfail", name="pf"):
    # Not under pytest's basetemp: any pytest session started meanwhile
    # makes /tmp/pytest-of-USER 0700 again, and Postfix's daemons (user
    # postfix) must traverse to their queue.
    workdir = tempfile.mkdtemp(prefix="postern-milter-pf-", dir="/tmp")
    _POSTFIX_DIRS.append(workdir)
    return PostfixInstance(workdir, relay=sink.address, main={
        "mynetworks": f"127.0.0.0/8 {GOOD_IP}/32 {SPOOF_IP}/32",
        "smtpd_milters": f"inet:127.0.0.1:{milter_port}",
        "milter_default_action": default_action,
        "milter_command_timeout": "10s",
        "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
        # the queue id at MAIL already (postern's transaction id)
        "smtpd_delay_open_until_valid_rcpt": "no",
    }).start()


@pytest.fixture
def stack(postern, sink, tmp_path, dns, sign_key):
    milter_port = free_port()
    p = start_postern(postern, tmp_path, dns, sign_key, milter_port)
    pf = start_postfix(tmp_path, sink, milter_port)
    try:
        yield p, pf, sink
    finally:
        pf.stop()


def msg(subject, sender="a@example.net", to="b@example.net", extra=""):
    return (f"From: Alice <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Date: Sun, 06 Dec 2026 06:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '.')}@test>\r\n"
            f"X-Mailer: foo\r\nX-Remove-Me: 1\r\n{extra}\r\nFirst line.\r\n  indented \r\n\r\n").encode()


def client(pf, xclient=None, helo="client.example"):
    s = smtplib.SMTP("127.0.0.1", pf.port, timeout=IO_TIMEOUT)
    s.ehlo(helo)
    if xclient:
        code, text = s.docmd("XCLIENT", xclient)
        assert code == 220, (code, text)
        s.ehlo(helo)
    return s


def delivered(sink, n=1):
    wait_until(lambda: len(sink.messages) >= n, IO_TIMEOUT, message=f"{n} message(s) at the sink")
    return sink.messages[n - 1]


def head(m):
    return m.content.split(b"\r\n\r\n", 1)[0].decode()


def fields(m):
    return [l for l in head(m).split("\r\n") if l and not l[0].isspace()]


def send_refused(pf, subject, **kw):
    with client(pf) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@example.net", ["b@example.net"], msg(subject, **kw))
    return e.value.smtp_code, e.value.smtp_error.decode()


def test_reject_reaches_the_client_with_postern_code_and_text(stack):
    p, pf, sink = stack
    code, text = send_refused(pf, "reject me")
    assert (code, text) == (554, "5.7.1 Message refused by postern rule")
    pf.wait_log(r"milter-reject: END-OF-MESSAGE .*5.7.1 Message refused by postern rule")
    line = p.wait_for_log("message", result="rejected")
    assert line.get("mode") == "milter"
    assert not sink.messages


def test_tempfail_reaches_the_client_as_4xx(stack):
    p, pf, sink = stack
    assert send_refused(pf, "tempfail me") == (451, "4.7.1 Try again later, says postern")
    assert not sink.messages


def test_recipient_refusals_are_per_recipient(stack):
    p, pf, sink = stack
    with client(pf) as s:
        s.mail("a@example.net")
        assert s.rcpt("nobody@example.net") == (550, b"5.1.1 No such user here (postern)")
        assert s.rcpt("later@example.net") == (450, b"4.2.1 Mailbox busy, try later (postern)")
        assert s.rcpt("b@example.net")[0] == 250
        assert s.data(msg("fine"))[0] == 250
    assert delivered(sink).rcpt_tos == ["b@example.net"]


def test_helo_refusal(stack):
    """Postfix says a milter's HELO refusal to the next command (smtpd_delay_reject)."""
    p, pf, sink = stack
    s = smtplib.SMTP("127.0.0.1", pf.port, timeout=IO_TIMEOUT)
    s.ehlo("refused.example")
    reply = s.mail("a@example.net")
    if reply[0] == 250:
        reply = s.rcpt("b@example.net")
    assert reply == (554, b"5.7.1 HELO refused by postern")
    s.close()
    p.wait_for_log("milter-refused", stage="helo")


def test_subject_tag_and_header_edits(stack):
    p, pf, sink = stack
    with client(pf) as s:
        s.sendmail("a@example.net", ["b@example.net"], msg("tag me"))
        s.sendmail("a@example.net", ["b@example.net"], msg("headers"))
    h = head(delivered(sink, 1))
    assert "Subject: [SPAM] tag me" in h and "Subject: tag me" not in h
    m = delivered(sink, 2)
    h = head(m)
    assert "X-Postern-Added: yes" in h
    assert "X-Mailer: hidden" in h and "X-Mailer: foo" not in h
    assert "X-Remove-Me" not in h
    names = [f.split(":")[0] for f in fields(m)]
    # prepended above Postfix's own Received, in the order postern added them
    assert names.index("X-Postern-Top") < names.index("Received") < names.index("From")
    assert names.index("Authentication-Results") < names.index("X-Postern-Top")


def test_facts_come_from_postfix_macros(stack):
    p, pf, sink = stack
    with client(pf, xclient=f"ADDR={GOOD_IP} NAME=mail.example.com HELO=mail.example.com") as s:
        s.sendmail("a@example.net", ["b@example.net"], msg("facts"))
    h = head(delivered(sink))
    value = [l for l in h.replace("\r\n ", " ").split("\r\n") if l.startswith("X-Postern-Client:")][0]
    assert f"ip={GOOD_IP}" in value and "helo=client.example" in value and "name=mail.example.com" in value
    qid = pf.wait_log(r"[0-9A-F]+: client=mail.example.com")[0].split(": ")[1].split(":")[0]
    assert f"id={qid}" in value, (value, qid)  # the transaction is Postfix's queue id ("i")
    assert "listener=milter:inet:127.0.0.1:" in value


def test_spf_dkim_dmarc_pass_with_authentication_results_on_top(stack, dkim_key):
    p, pf, sink = stack
    content = dkim_key.sign(msg("authentic", sender="alice@example.com"))
    with client(pf, xclient=f"ADDR={GOOD_IP} HELO=mail.example.com") as s:
        s.sendmail("alice@example.com", ["b@example.net"], content)
    m = delivered(sink)
    ar = [f for f in fields(m) if f.startswith("Authentication-Results:")]
    assert len(ar) == 1
    unfolded = head(m).replace("\r\n ", " ").replace("\r\n\t", " ")
    ar_value = [l for l in unfolded.split("\r\n") if l.startswith("Authentication-Results:")][0]
    assert "mx.postfix.test;" in ar_value
    assert "spf=pass smtp.mailfrom=alice@example.com" in ar_value
    assert "dkim=pass" in ar_value and "header.d=example.com" in ar_value
    assert "dmarc=pass" in ar_value
    names = [f.split(":")[0] for f in fields(m)]
    assert names.index("Authentication-Results") < names.index("Received")


def test_dmarc_reject_for_a_spoofer_from_the_client_address_macro(stack):
    p, pf, sink = stack
    with client(pf, xclient=f"ADDR={SPOOF_IP} HELO=spoofer.example") as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("ceo@example.org", ["b@example.net"], msg("spoof", sender="ceo@example.org"))
    assert e.value.smtp_code == 550 and e.value.smtp_error.startswith(b"5.7.1")
    assert not sink.messages
    # The record is written after the reply went out (to Postfix, then its client).
    wait_until(lambda: os.path.exists(p.audit) and open(p.audit).read().strip(), IO_TIMEOUT, message="audit")
    rec = [json.loads(l) for l in open(p.audit).read().splitlines()]
    assert rec[-1]["action"] == "rejected" and rec[-1]["dmarc"]["result"] == "fail", rec[-1]


@pytest.mark.parametrize("subject,expected", [
    ("redirect me", ["abuse-desk@example.net"]),
    ("add rcpt", ["b@example.net", "copy@example.net", "second@example.net"]),
    ("remove rcpt", ["b@example.net"]),
])
def test_recipient_changes(stack, subject, expected):
    p, pf, sink = stack
    with client(pf) as s:
        s.sendmail("a@example.net", ["b@example.net", "second@example.net"], msg(subject))
    wait_until(lambda: sum(len(m.rcpt_tos) for m in sink.messages) >= len(expected), IO_TIMEOUT,
               message="every recipient delivered")
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == expected


def test_sender_change(stack):
    p, pf, sink = stack
    with client(pf) as s:
        s.sendmail("a@example.net", ["b@example.net"], msg("new sender"))
    assert delivered(sink).mail_from == "bounces@example.com"


def test_dkim_signature_inserted_and_verifies_after_postfix(stack, sign_key):
    p, pf, sink = stack
    with client(pf) as s:
        s.sendmail("alice@signed.example", ["b@example.net"], msg("sign me", sender="alice@signed.example"))
    m = delivered(sink)
    assert fields(m)[0].startswith("DKIM-Signature:")  # on top of everything
    txt = "v=DKIM1; k=rsa; p=" + sign_key.public_b64

    def dnsfunc(name, timeout=5):
        return txt.encode() if name.rstrip(b".") == b"pm1._domainkey.signed.example" else None
    assert dkim.verify(m.content, dnsfunc=dnsfunc)
    line = p.wait_for_log("message", result="relayed", dkim="signed")
    assert line.get("mode") == "milter"
    wait_until(lambda: '"signed":true' in open(p.audit).read().replace(" ", ""), IO_TIMEOUT, message="audit")
    rec = [json.loads(l) for l in open(p.audit).read().splitlines()]
    assert rec[-1]["signed"] is True


def test_discard_and_quarantine(stack):
    p, pf, sink = stack
    with client(pf) as s:
        s.sendmail("a@example.net", ["b@example.net"], msg("discard me"))
        s.sendmail("a@example.net", ["b@example.net"], msg("quarantine me"))
    pf.wait_log(r"milter-discard: END-OF-MESSAGE")
    pf.wait_log(r"milter-hold: END-OF-MESSAGE .*milter triggers HOLD action")  # Postfix's quarantine
    assert not sink.messages
    assert not pf.queue_empty()  # held, not delivered


def test_audit_and_metrics_name_the_milter_listener(stack):
    p, pf, sink = stack
    with client(pf) as s:
        s.sendmail("a@example.net", ["b@example.net"], msg("audited"))
    delivered(sink)
    wait_until(lambda: os.path.exists(p.audit) and open(p.audit).read().strip(), IO_TIMEOUT, message="audit")
    rec = json.loads(open(p.audit).read().splitlines()[-1])
    assert rec["action"] == "relayed" and rec["listener"].startswith("milter:inet:127.0.0.1:"), rec


@pytest.mark.parametrize("default_action,expect", [("tempfail", 451), ("accept", 250)])
def test_milter_default_action_while_postern_is_down_and_after_restart(postern, sink, tmp_path, dns, sign_key,
                                                                       default_action, expect):
    milter_port = free_port()
    p = start_postern(postern, tmp_path, dns, sign_key, milter_port)
    pf = start_postfix(tmp_path, sink, milter_port, default_action=default_action)
    try:
        with client(pf) as s:
            s.sendmail("a@example.net", ["b@example.net"], msg("before"))
        assert "Authentication-Results" in head(delivered(sink, 1))
        p.stop()
        with client(pf) as s:
            # tempfail: Postfix answers 451 4.7.1 from MAIL on
            code = s.mail("a@example.net")[0]
            if code == 250:
                code = s.rcpt("b@example.net")[0]
            if code == 250:
                code = s.data(msg("while down"))[0]
        assert code == expect
        if expect == 250:  # delivered without postern's changes
            assert "Authentication-Results" not in head(delivered(sink, 2))
        pf.wait_log(r"milter inet:127.0.0.1:\d+: can't read|Connection refused|connect to Milter service")
        p2 = start_postern(postern, tmp_path, dns, sign_key, milter_port)
        with client(pf) as s:
            s.sendmail("a@example.net", ["b@example.net"], msg("after restart"))
        n = 3 if expect == 250 else 2
        assert "Authentication-Results" in head(delivered(sink, n))
        p2.wait_for_log("message", result="relayed")
    finally:
        pf.stop()


# -- the milter protocol spoken directly -----------------------------------

def packet(cmd, data=b""):
    return struct.pack(">I", len(data) + 1) + cmd + data


def optneg():
    return packet(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF))


def read_packet(s):
    hdr = b""
    while len(hdr) < 4:
        chunk = s.recv(4 - len(hdr))
        if not chunk:
            return None
        hdr += chunk
    n = struct.unpack(">I", hdr)[0]
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data[:1], data[1:]


def closed(s):
    s.settimeout(IO_TIMEOUT)
    try:
        while True:
            if not s.recv(4096):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.mark.parametrize("name,garbage", [
    ("zero length", b"\x00\x00\x00\x00"),
    ("over the packet limit", struct.pack(">I", 64 * 1024 * 1024) + b"O"),
    ("unknown command", packet(b"Z", b"x")),
    ("command before negotiation", packet(b"C", b"host\x004\x00\x19127.0.0.1\x00")),
    ("connect without family", "negotiated"),
    ("header with a bad name", "negotiated"),
])
def test_garbage_from_the_mta_closes_the_connection_with_a_log_line(postern, tmp_path, dns, sign_key, name,
                                                                     garbage):
    milter_port = free_port()
    p = start_postern(postern, tmp_path, dns, sign_key, milter_port)
    with socket.create_connection(("127.0.0.1", milter_port)) as s:
        if garbage == "negotiated":
            s.sendall(optneg())
            assert read_packet(s)[0] == b"O"
            if name == "connect without family":
                garbage = packet(b"C", b"host\x00")
            else:
                s.sendall(packet(b"C", b"host\x004\x00\x19127.0.0.1\x00") + packet(b"H", b"x\x00") +
                          packet(b"M", b"<a@example.org>\x00"))
                for _ in range(3):
                    read_packet(s)
                garbage = packet(b"L", b"Bad Name\x00value\x00")
        s.sendall(garbage)
        assert closed(s), name
    p.wait_for_log("milter-server-garbage")
    # and the server still serves
    with socket.create_connection(("127.0.0.1", milter_port)) as s:
        s.sendall(optneg())
        assert read_packet(s)[0] == b"O"


def test_negotiation_asks_only_for_what_postern_needs(postern, tmp_path, dns, sign_key):
    milter_port = free_port()
    start_postern(postern, tmp_path, dns, sign_key, milter_port)
    with socket.create_connection(("127.0.0.1", milter_port)) as s:
        s.sendall(optneg())
        cmd, data = read_packet(s)
        version, actions, steps = struct.unpack(">III", data[:12])
    assert cmd == b"O" and version == 6
    assert actions == 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20 | 0x40  # no SETSYMLIST, no ADDRCPT_PAR
    # no DATA / unknown; no reply to headers, end of header, body chunks; leading space kept
    assert steps == 0x200 | 0x100 | 0x80 | 0x40000 | 0x80000 | 0x100000


def test_connection_reuse_after_quit_nc(postern, tmp_path, dns, sign_key):
    """SMFIC_QUIT_NC: the MTA keeps the connection for its next client."""
    milter_port = free_port()
    p = start_postern(postern, tmp_path, dns, sign_key, milter_port)
    with socket.create_connection(("127.0.0.1", milter_port)) as s:
        s.settimeout(IO_TIMEOUT)
        s.sendall(optneg())
        read_packet(s)
        for client_ip in (b"192.0.2.10", b"192.0.2.11"):
            s.sendall(packet(b"C", b"host\x004\x00\x19" + client_ip + b"\x00"))
            assert read_packet(s)[0] == b"c"
            s.sendall(packet(b"H", b"refused.example\x00"))
            cmd, data = read_packet(s)
            assert cmd == b"y" and data.startswith(b"554 5.7.1 HELO refused by postern"), data
            s.sendall(packet(b"K"))
        s.sendall(packet(b"Q"))
        assert closed(s)
    assert len(p.events("milter-connect")) == 2
    assert [l.get("client") for l in p.events("milter-connect")] == ["192.0.2.10", "192.0.2.11"]


MILTERTEST = "/usr/bin/miltertest"


@pytest.mark.skipif(not os.path.exists(MILTERTEST), reason="miltertest is not installed")
def test_miltertest_scripts(postern, tmp_path, dns, sign_key):
    """The reference MTA side of libmilter's own test tool (Debian's
    miltertest) drives postern's milter server: reject, tempfail, header
    changes, recipient changes and the DKIM signature."""
    milter_port = free_port()
    start_postern(postern, tmp_path, dns, sign_key, milter_port)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "milters", "postern_server.lua")
    out = subprocess.run([MILTERTEST, "-s", script], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, POSTERN_MILTER=f"inet:{milter_port}@127.0.0.1"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all checks passed" in out.stdout, out.stdout


def _documented_main_cf(name):
    """A main.cf line of docs/milter.md's copy-paste block, as a mail admin copies it."""
    doc = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "milter.md")
    with open(doc) as f:
        for line in f:
            if line.startswith(name + " ="):
                return line.split("=", 1)[1].strip()
    raise AssertionError(f"{name} is not in docs/milter.md")


@pytest.mark.parametrize("ehlo_again", [True, False])
def test_starttls_forgets_the_plaintext_helo_also_without_a_new_ehlo(postern, sink, tmp_path, dns, sign_key,
                                                                       ehlo_again):
    """Postfix lets a client send MAIL straight after STARTTLS (no
    smtpd_helo_required): with the documented milter_mail_macros postern
    learns of TLS at MAIL, and what the plaintext EHLO said is forgotten
    (RFC 3207 §4.2) as it is after a new EHLO."""
    import ssl
    from harness import make_cert
    milter_port = free_port()
    start_postern(postern, tmp_path, dns, sign_key, milter_port)
    workdir = tempfile.mkdtemp(prefix="postern-milter-pf-", dir="/tmp")
    _POSTFIX_DIRS.append(workdir)
    cert, key, _ = make_cert(workdir, cn="mx.postfix.test")
    pf = PostfixInstance(workdir, relay=sink.address, main={
        "mynetworks": "127.0.0.0/8",
        "smtpd_milters": f"inet:127.0.0.1:{milter_port}",
        "milter_default_action": "tempfail",
        "milter_helo_macros": _documented_main_cf("milter_helo_macros"),
        "milter_mail_macros": _documented_main_cf("milter_mail_macros"),
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": cert,
        "smtpd_tls_key_file": key,
    }).start()
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", pf.port, timeout=IO_TIMEOUT) as s:
            s.ehlo("plaintext.example")
            assert s.starttls(context=ctx)[0] == 220
            if ehlo_again:
                s.ehlo("after-tls.example")
            assert s.mail("a@example.net")[0] == 250
            assert s.rcpt("b@example.net")[0] == 250
            assert s.data(msg("tls facts"))[0] == 250
        h = head(delivered(sink))
        value = [l for l in h.replace("\r\n ", " ").split("\r\n") if l.startswith("X-Postern-Client:")][0]
        assert "tls=TLSv1.3" in value, value
        assert "plaintext.example" not in value, value
        assert ("helo=after-tls.example" in value) == ehlo_again, value
    finally:
        pf.stop()
