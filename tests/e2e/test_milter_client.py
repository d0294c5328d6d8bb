"""postern as a milter client: a real libmilter milter (python3-milter,
tests/e2e/milters/test_milter.py) on loopback, called at every stage; its
actions are applied to what the recording MTA receives; a milter that is
down, slow, killed mid-message or answering garbage gets its on_error within
its time-outs, and no message is acked wrongly."""
import json
import os
import pathlib
import re
import socket
import subprocess
import threading
import time

import pytest

from harness import SmtpClient, check_reply, data_payload, free_port, wait_port

MILTER = pathlib.Path(__file__).parent / "milters" / "test_milter.py"
PYTHON = "/usr/bin/python3"

try:
    subprocess.run([PYTHON, "-c", "import Milter"], check=True, capture_output=True)
    HAVE_MILTER = True
except (subprocess.CalledProcessError, FileNotFoundError):
    HAVE_MILTER = False

needs_milter = pytest.mark.skipif(not HAVE_MILTER, reason="python3-milter is not installed")


class MilterProcess:
    def __init__(self, tmp_path, minimal=False):
        self.port = free_port()
        self.log = tmp_path / f"milter-{self.port}.log"
        env = dict(os.environ, MILTER_LOG=str(self.log))
        if minimal:
            env["MILTER_MINIMAL"] = "1"
        self.proc = subprocess.Popen([PYTHON, str(MILTER), str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout=10)

    def events(self, step=None):
        if not self.log.exists():
            return []
        out = [json.loads(l) for l in self.log.read_text().splitlines() if l.strip()]
        return [e for e in out if step is None or e["step"] == step]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def milter(tmp_path):
    m = MilterProcess(tmp_path)
    try:
        yield m
    finally:
        m.stop()


def milter_sets(port, **kw):
    entry = {"name": "test", "socket": f"inet:127.0.0.1:{port}", "command_timeout": 2, "eom_timeout": 1,
             "connect_timeout": 1, "on_error": "tempfail"}
    entry.update(kw)
    body = ", ".join(f'{k} = {json.dumps(v)}' for k, v in entry.items())
    return {"milter": "[{" + body + "}]"}


def start(postern, sink, tmp_path, port, **kw):
    sets = milter_sets(port, **kw)
    sets["quarantine.dir"] = f'"{tmp_path / "quarantine"}"'
    return postern.start(upstream=sink.address, sets=sets)


def message(case, extra=""):
    return (f"From: a@example.org\r\nTo: b@example.com\r\nSubject: hello\r\nX-Test-Case: {case}\r\n"
            f"X-Remove-Me: yes\r\n{extra}\r\nbody line\r\n").encode()


def send(p, case, rcpts=("b@example.com",), sender="a@example.org"):
    c = SmtpClient(p.port)
    c.ehlo()
    return c, c.send_message(sender, list(rcpts), message(case))


def headers_of(msg):
    head = msg.content.split(b"\r\n\r\n", 1)[0].decode()
    return head


@needs_milter
def test_every_stage_reaches_the_milter_with_macros(postern, sink, tmp_path, milter):
    p = start(postern, sink, tmp_path, milter.port)
    c, r = send(p, "none", rcpts=("b@example.com", "c@example.com"))
    check_reply(r, 250)
    c.close()
    assert len(sink.messages) == 1
    steps = [e["step"] for e in milter.events()]
    assert steps[:4] == ["connect", "helo", "mail", "rcpt"]
    assert steps.count("rcpt") == 2
    assert "eoh" in steps and "body" in steps and steps[-1] == "eom" or "eom" in steps
    conn = milter.events("connect")[0]
    assert conn["client_addr"] == "127.0.0.1" and conn["j"]
    assert milter.events("helo")[0]["helo"] == "client.example"
    mail = milter.events("mail")[0]
    assert mail["mailfrom"] == "<a@example.org>" and mail["mail_addr"] == "a@example.org" and mail["i"]
    assert [e["rcpt_addr"] for e in milter.events("rcpt")] == ["b@example.com", "c@example.com"]
    names = [e["name"] for e in milter.events("header")]
    assert names == ["From", "To", "Subject", "X-Test-Case", "X-Remove-Me"]
    assert milter.events("header")[2]["value"] == "hello"
    assert milter.events("eom")[0]["body_bytes"] == len(b"body line\r\n")


@needs_milter
def test_header_actions_are_applied_to_the_relayed_message(postern, sink, tmp_path, milter):
    p = start(postern, sink, tmp_path, milter.port)
    _, r = send(p, "headers")
    check_reply(r, 250)
    head = headers_of(sink.messages[0])
    assert "X-Milter-Added: yes" in head
    assert "Subject: changed by milter" in head and "Subject: hello" not in head
    assert "X-Remove-Me" not in head
    # inserted at the top of the message's fields, below postern's Received
    fields = [l for l in head.split("\r\n") if l and not l[0].isspace()]
    assert fields.index("X-Milter-Top: first") < fields.index("From: a@example.org")


@needs_milter
def test_insheader_index_is_honoured(postern, sink, tmp_path, milter):
    """SMFIR_INSHEADER at index N goes before the message's Nth field (0 =
    the top of what the milter saw, below postern's Received); the later of
    two at one index comes first; past the last field, after it."""
    p = start(postern, sink, tmp_path, milter.port)
    _, r = send(p, "insert-at")
    check_reply(r, 250)
    names = [l.split(":")[0] for l in headers_of(sink.messages[0]).split("\r\n") if l and not l[0].isspace()]
    names = [n for n in names if n not in ("Received",)]
    assert names == ["X-At-Zero", "From", "To", "X-At-Two-Later", "X-At-Two", "Subject", "X-Test-Case",
                     "X-Remove-Me", "X-At-End"], names


@needs_milter
def test_recipient_and_sender_changes_reach_the_mta(postern, sink, tmp_path, milter):
    p = start(postern, sink, tmp_path, milter.port)
    _, r = send(p, "rcpts")
    check_reply(r, 250)
    assert sorted(sink.messages[0].rcpt_tos) == ["added@example.com", "withargs@example.com"]
    _, r = send(p, "from")
    check_reply(r, 250)
    assert sink.messages[1].mail_from == "bounces@example.org"


@needs_milter
def test_replaced_body_is_relayed_with_crlf_and_dot_stuffing(postern, sink, tmp_path, milter):
    p = start(postern, sink, tmp_path, milter.port)
    _, r = send(p, "body")
    check_reply(r, 250)
    content = sink.messages[0].content
    body = content.split(b"\r\n\r\n", 1)[1]
    assert body == b"replaced body\r\nsecond line\r\n.dot line\r\nlast\r\n"
    assert b"body line" not in content


@needs_milter
def test_eom_reject_multiline_reply_tempfail_discard_quarantine(postern, sink, tmp_path, milter):
    p = start(postern, sink, tmp_path, milter.port)
    _, r = send(p, "reject")
    check_reply(r, 554, "5.7.1")
    assert "virus found" in str(r) and "second line" in str(r)
    _, r = send(p, "tempfail")
    check_reply(r, 451)
    _, r = send(p, "discard")
    check_reply(r, 250)
    assert sink.messages == []
    _, r = send(p, "quarantine")
    check_reply(r, 250)
    assert "quarantined" in str(r)
    assert sink.messages == []
    files = list((tmp_path / "quarantine").rglob("*"))
    assert any(f.is_file() for f in files)
    _, r = send(p, "eoh-reject")
    check_reply(r, 554)
    assert sink.messages == []


@needs_milter
def test_quarantine_copy_carries_the_milters_new_body_and_fields(postern, sink, tmp_path, milter):
    p = start(postern, sink, tmp_path, milter.port)
    _, r = send(p, "body-quarantine")
    check_reply(r, 250)
    assert "quarantined" in str(r)
    assert sink.messages == []
    held = [f for f in (tmp_path / "quarantine").rglob("*") if f.is_file()]
    assert len(held) == 1, held
    data = held[0].read_bytes()  # a Maildir file: LF line ends
    head, body = data.split(b"\n\n", 1)
    assert b"X-Milter-Cleaned: yes" in head
    assert b"X-Postern-Quarantine:" in head
    # What the milter replaced is not kept: the copy is what would have gone on.
    assert body == b"cleaned body\n"


@needs_milter
def test_envelope_verdicts_mail_reject_rcpt_tempfail_with_reply(postern, sink, tmp_path, milter):
    p = start(postern, sink, tmp_path, milter.port)
    c = SmtpClient(p.port)
    c.ehlo()
    r = c.cmd("MAIL FROM:<reject@example.org>")
    check_reply(r, 550, "5.7.1")
    assert "sender refused" in str(r)
    check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
    check_reply(c.cmd("RCPT TO:<temp@example.com>"), 451)
    r = c.cmd("RCPT TO:<reply@example.com>")
    check_reply(r, 450, "4.2.1")
    assert "mailbox busy" in str(r)
    check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
    check_reply(c.cmd("DATA"), 354)
    c.send(b"Subject: x\r\nX-Test-Case: none\r\n\r\nhi\r\n.\r\n")
    check_reply(c.read_reply(), 250)
    assert sink.messages[0].rcpt_tos == ["b@example.com"]
    # An aborted transaction (RSET) then a new one: the milter hears SMFIC_ABORT.
    check_reply(c.cmd("MAIL FROM:<a@example.org>"), 250)
    check_reply(c.cmd("RSET"), 250)
    check_reply(c.send_message("a@example.org", ["b@example.com"], message("none")), 250)
    assert milter.events("abort")


@needs_milter
def test_skip_and_accept(postern, sink, tmp_path, milter):
    p = start(postern, sink, tmp_path, milter.port)
    big = "x" * 200 + "\r\n"
    c = SmtpClient(p.port)
    c.ehlo()
    content = message("skip").replace(b"body line\r\n", (big * 1000).encode())
    check_reply(c.send_message("a@example.org", ["b@example.com"], content), 250)
    assert len(milter.events("body")) == 1  # SMFIR_SKIP: no more chunks after the first
    check_reply(c.send_message("a@example.org", ["b@example.com"], message("accept")), 250)
    assert "X-Milter-Accept: yes" in headers_of(sink.messages[1])
    # SMFIR_ACCEPT at MAIL: the milter hears nothing more of that transaction
    before = len(milter.events())
    check_reply(c.send_message("accept@example.org", ["b@example.com"], message("reject")), 250)
    assert [e["step"] for e in milter.events()[before:]] == ["mail"]


@needs_milter
def test_progress_is_taken_within_the_eom_deadline(postern, sink, tmp_path, milter):
    # SMFIR_PROGRESS for 1.8 s: within eom_timeout, which bounds the whole answer
    p = start(postern, sink, tmp_path, milter.port, eom_timeout=5)
    _, r = send(p, "progress")
    check_reply(r, 250)
    assert "X-Milter-Progress: done" in headers_of(sink.messages[0])


@needs_milter
@pytest.mark.parametrize("on_error,code", [("tempfail", 451), ("reject", 554), ("accept", 250)])
def test_slow_milter_times_out_into_on_error(postern, sink, tmp_path, milter, on_error, code):
    p = start(postern, sink, tmp_path, milter.port, on_error=on_error, eom_timeout=1)
    t0 = time.monotonic()
    _, r = send(p, "slow")
    elapsed = time.monotonic() - t0
    check_reply(r, code)
    assert elapsed < 3.5, elapsed
    assert len(sink.messages) == (1 if code == 250 else 0)


@needs_milter
def test_killed_milter_mid_message_tempfails_and_is_not_acked(postern, sink, tmp_path, milter):
    p = start(postern, sink, tmp_path, milter.port)
    _, r = send(p, "kill")
    check_reply(r, 451, "4.7.1")
    assert sink.messages == []
    assert p.wait_for_log(event="milter-error") is not None


@pytest.mark.parametrize("on_error,mail_code", [("tempfail", 451), ("reject", 550), ("accept", 250)])
def test_milter_down_applies_on_error_at_mail(postern, sink, tmp_path, on_error, mail_code):
    port = free_port()  # nothing listens
    p = start(postern, sink, tmp_path, port, on_error=on_error)
    c = SmtpClient(p.port)
    c.ehlo()
    check_reply(c.cmd("MAIL FROM:<a@example.org>"), mail_code)
    if mail_code == 250:
        check_reply(c.cmd("RCPT TO:<b@example.com>"), 250)
        check_reply(c.cmd("DATA"), 354)
        c.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        check_reply(c.read_reply(), 250)
        assert len(sink.messages) == 1
    else:
        assert sink.messages == []


class GarbageMilter:
    """Not a milter: answers each connection with `reply` bytes (after the
    option negotiation when `after_optneg`), or nothing at all."""

    def __init__(self, reply, after_optneg=False):
        self.reply = reply
        self.after_optneg = after_optneg
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn):
        try:
            conn.recv(4096)
            if self.after_optneg:
                conn.sendall(b"\x00\x00\x00\x0dO" + (6).to_bytes(4, "big") + (0x1ff).to_bytes(4, "big") +
                             (0x1fff7f & ~0x800 & ~0x100000).to_bytes(4, "big") * 0 + (0).to_bytes(4, "big"))
                conn.recv(4096)
            conn.sendall(self.reply)
            time.sleep(10)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("reply,after_optneg", [
    (b"\xff\xff\xff\xffgarbage", False),          # a length past the bound
    (b"\x00\x00\x00\x01c", False),                 # a reply where OPTNEG is due
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", False),   # not the milter protocol at all
    (b"\x00\x00\x00\x02zz", True),                 # an unknown reply command
    (b"\x00\x00\x00\x05y250 ", True),              # a reply code that is no 4xx/5xx
    (b"", False),                                   # silence: the command time-out
])
def test_garbage_answers_apply_on_error(postern, sink, tmp_path, reply, after_optneg):
    g = GarbageMilter(reply, after_optneg)
    try:
        p = start(postern, sink, tmp_path, g.port, command_timeout=1)
        c = SmtpClient(p.port)
        c.ehlo()
        t0 = time.monotonic()
        check_reply(c.cmd("MAIL FROM:<a@example.org>"), 451, "4.7.1")
        assert time.monotonic() - t0 < 3
        assert sink.messages == []
    finally:
        g.close()


@needs_milter
def test_a_slow_milter_does_not_delay_other_sessions(postern, sink, tmp_path, milter):
    p = start(postern, sink, tmp_path, milter.port, eom_timeout=3)
    slow = SmtpClient(p.port)
    slow.ehlo()
    slow.expect("MAIL FROM:<a@example.org>", 250)
    slow.expect("RCPT TO:<b@example.com>", 250)
    slow.expect("DATA", 354)
    slow.send(b"Subject: s\r\nX-Test-Case: slow\r\n\r\nx\r\n.\r\n")
    t0 = time.monotonic()
    _, r = send(p, "none")
    check_reply(r, 250)
    assert time.monotonic() - t0 < 1.5
    check_reply(slow.read_reply(timeout=6), 451)


@needs_milter
def test_lua_rules_and_the_audit_log_see_the_milters_actions(postern, sink, tmp_path, milter):
    rule = tmp_path / "seen.lua"
    rule.write_text('postern.rule{ name = "SEEN", stage = "eom", fn = function(ctx)\n'
                    '  ctx:add_header("X-Seen-Milter", ctx.notes["milter.test"] or "nothing")\nend }\n')
    audit = tmp_path / "audit.log"
    sets = milter_sets(milter.port)
    sets["lua.scripts"] = f'["{rule}"]'
    sets["audit.path"] = f'"{audit}"'
    p = postern.start(upstream=sink.address, sets=sets)
    _, r = send(p, "headers")
    check_reply(r, 250)
    # unfolded: postern folds the fields it writes at 78 octets (RFC 5322 §2.1.1)
    head = re.sub(r"\r\n[ \t]+", " ", headers_of(sink.messages[0]))
    assert "X-Seen-Milter: add_header X-Milter-Added; insert_header X-Milter-Top; " \
           "change_header Subject; delete_header X-Remove-Me" in head
    _, r = send(p, "reject")
    check_reply(r, 554)

    def records():
        return [json.loads(l) for l in audit.read_text().splitlines()] if audit.exists() else []
    from harness import wait_until
    wait_until(lambda: len(records()) == 2, 5, message="two audit records")
    first, second = records()
    assert first["milters"]["test"].startswith("add_header X-Milter-Added")
    assert second["milters"]["test"] == "reply 554"
    assert second["action"] == "rejected"


# --------------------------------------------------------------------------
# OpenDKIM in signing mode: its DKIM-Signature (an inserted header field)
# reaches the MTA and verifies with dkimpy.

OPENDKIM = "/usr/sbin/opendkim"


@pytest.mark.skipif(not os.path.exists(OPENDKIM), reason="opendkim is not installed")
def test_opendkim_signs_and_the_relayed_message_verifies(postern, sink, tmp_path):
    import base64
    import dkim
    key = tmp_path / "test.private"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    os.chmod(key, 0o600)
    der = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"], check=True,
                         capture_output=True).stdout
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    port = free_port()
    conf = tmp_path / "opendkim.conf"
    conf.write_text(f"""Mode s
Domain example.org
Selector sel
KeyFile {key}
Socket inet:{port}@127.0.0.1
Canonicalization relaxed/relaxed
Background no
Syslog no
RequireSafeKeys no
InternalHosts 127.0.0.1
SignHeaders From,To,Subject
""")
    proc = subprocess.Popen([OPENDKIM, "-f", "-x", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_port(port, timeout=10)
        p = postern.start(upstream=sink.address, sets=milter_sets(port, name="opendkim", eom_timeout=5))
        content = (b"From: Alice <a@example.org>\r\nTo: b@example.com\r\nSubject: signed\r\n"
                   b"Message-ID: <1@example.org>\r\n\r\nhello\r\n.leading dot\r\n")
        c = SmtpClient(p.port)
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], content), 250)
        relayed = sink.messages[0].content
        assert b"DKIM-Signature:" in relayed
        assert b"d=example.org" in relayed and b"s=sel" in relayed

        def dns(name, timeout=5):
            assert name == b"sel._domainkey.example.org."
            return record
        assert dkim.verify(relayed, dnsfunc=dns)
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------
# clamav-milter with clamd and a signature database the test writes: the
# EICAR test file is rejected, a clean message passes.

CLAMD = "/usr/sbin/clamd"
CLAMAV_MILTER = "/usr/sbin/clamav-milter"
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


@pytest.mark.skipif(not (os.path.exists(CLAMD) and os.path.exists(CLAMAV_MILTER)),
                    reason="clamav-daemon and clamav-milter are not installed")
def test_clamav_milter_rejects_eicar_and_passes_clean_mail(postern, sink, tmp_path):
    import base64
    import hashlib
    db = tmp_path / "db"
    db.mkdir()
    (db / "test.hdb").write_text(f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Postern.Test.EICAR\n")
    sock = tmp_path / "clamd.sock"
    (tmp_path / "clamd.conf").write_text(f"LocalSocket {sock}\nDatabaseDirectory {db}\nForeground yes\n"
                                         f"LogFile {tmp_path / 'clamd.log'}\nTemporaryDirectory {tmp_path}\n")
    port = free_port()
    (tmp_path / "clamav-milter.conf").write_text(
        f"MilterSocket inet:{port}@127.0.0.1\nClamdSocket unix:{sock}\nForeground yes\nOnInfected Reject\n"
        f"OnFail Defer\nLogFile {tmp_path / 'milter.log'}\nTemporaryDirectory {tmp_path}\n")
    procs = [subprocess.Popen([CLAMD, "-c", str(tmp_path / "clamd.conf")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        from harness import wait_until
        wait_until(lambda: sock.exists(), 60, message="clamd socket")
        procs.append(subprocess.Popen([CLAMAV_MILTER, "-c", str(tmp_path / "clamav-milter.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(port, timeout=20)
        p = postern.start(upstream=sink.address, sets=milter_sets(port, name="clamav", eom_timeout=20,
                                                                   command_timeout=10))
        attach = base64.encodebytes(EICAR).replace(b"\n", b"\r\n")
        infected = (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: eicar\r\nMIME-Version: 1.0\r\n"
                    b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\n"
                    b"see attachment\r\n--XX\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=eicar.com\r\n"
                    b"\r\n" + attach + b"--XX--\r\n")
        c = SmtpClient(p.port)
        c.ehlo()
        r = c.send_message("a@example.org", ["b@example.com"], infected)
        assert r.code // 100 == 5, str(r)
        assert sink.messages == []
        wait_until(lambda: "Postern.Test.EICAR" in (tmp_path / "clamd.log").read_text(), 5,
                   message="clamd's FOUND line")
        clean = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: clean\r\n\r\nnothing to see\r\n"
        check_reply(c.send_message("a@example.org", ["b@example.com"], clean), 250)
        assert len(sink.messages) == 1
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@needs_milter
@pytest.mark.parametrize("case", ["body", "headers"])
def test_postern_dkim_signature_covers_the_milters_changes(postern, sink, tmp_path, milter, case):
    import dkim
    from test_dkim_sign import dnsfunc_for, rsa_key
    key_file, txt = rsa_key(tmp_path, "org")
    keys = {"dns": {"sel._domainkey.example.org.": txt}}
    sets = milter_sets(milter.port)
    sets["dkim.sign_networks"] = '["127.0.0.0/8"]'
    sets["dkim.sign"] = f'[{{domain = "example.org", selector = "sel", key_file = "{key_file}"}}]'
    p = postern.start(upstream=sink.address, sets=sets)
    _, r = send(p, case)
    check_reply(r, 250)
    content = sink.messages[0].content
    assert content.startswith(b"DKIM-Signature:")
    assert (b"replaced body" in content) if case == "body" else (b"Subject: changed by milter" in content)
    assert dkim.verify(content, dnsfunc=dnsfunc_for(keys))


class MilterTap:
    """A TCP relay between postern and a milter that records the command
    octet of every packet postern sends."""

    def __init__(self, target_port):
        self.target = target_port
        self.commands = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                down, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(up, down, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(down, up, bytearray()), daemon=True).start()

    def _pump(self, src, dst, buf):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if buf is not None:
                    buf += data
                    while len(buf) >= 5 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                        n = int.from_bytes(buf[:4], "big")
                        self.commands.append(chr(buf[4]))
                        del buf[:4 + n]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


@needs_milter
def test_steps_the_milter_declines_are_not_sent(postern, sink, tmp_path):
    m = MilterProcess(tmp_path, minimal=True)
    tap = MilterTap(m.port)
    try:
        p = start(postern, sink, tmp_path, tap.port)
        c, r = send(p, "none", rcpts=("b@example.com", "c@example.com"))
        check_reply(r, 250)
        assert "X-Minimal: yes" in headers_of(sink.messages[0])
        c.close()
        from harness import wait_until
        wait_until(lambda: "Q" in tap.commands, 5, message="SMFIC_QUIT")
        # OPTNEG, end of message, quit: no connect, HELO, MAIL, RCPT, DATA, header, EOH or body
        assert [x for x in tap.commands if x != "D"] == ["O", "E", "Q"], tap.commands
    finally:
        tap.close()
        m.stop()


@needs_milter
def test_every_command_is_sent_to_a_milter_that_wants_it(postern, sink, tmp_path, milter):
    tap = MilterTap(milter.port)
    try:
        p = start(postern, sink, tmp_path, tap.port)
        c, r = send(p, "none")
        check_reply(r, 250)
        c.close()
        from harness import wait_until
        wait_until(lambda: "Q" in tap.commands, 5, message="SMFIC_QUIT")
        sent = [x for x in tap.commands if x != "D"]
        # the test milter has no DATA callback: libmilter declines it (SMFIP_NODATA)
        assert sent == ["O", "C", "H", "M", "R"] + ["L"] * 5 + ["N", "B", "E", "Q"], sent
        assert "D" in tap.commands  # macros
    finally:
        tap.close()


@needs_milter
def test_unix_socket_milter(postern, sink, tmp_path):
    path = tmp_path / "milter.sock"
    log = tmp_path / "unix-milter.log"
    proc = subprocess.Popen([PYTHON, str(MILTER), str(path)], env=dict(os.environ, MILTER_LOG=str(log)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from harness import wait_until
        wait_until(lambda: path.exists(), 10, message="milter socket")
        p = postern.start(upstream=sink.address, sets={
            "milter": f'[{{name = "u", socket = "unix:{path}", command_timeout = 2, eom_timeout = 2}}]'})
        _, r = send(p, "headers")
        check_reply(r, 250)
        assert "X-Milter-Added: yes" in headers_of(sink.messages[0])
        _, r = send(p, "reject")
        check_reply(r, 554, "5.7.1")
    finally:
        proc.kill()
        proc.wait()


@needs_milter
def test_helo_reject_and_session_wide_accept(postern, sink, tmp_path, milter):
    p = start(postern, sink, tmp_path, milter.port)
    c = SmtpClient(p.port)
    r = c.cmd("EHLO reject.example")
    check_reply(r, 550, "5.7.0")
    assert "go away" in str(r)
    c.close()
    # SMFIR_ACCEPT at HELO: the milter hears nothing more in that session
    c = SmtpClient(p.port)
    c.ehlo("accept.example")
    before = len(milter.events())
    check_reply(c.send_message("a@example.org", ["b@example.com"], message("reject")), 250)
    check_reply(c.send_message("a@example.org", ["b@example.com"], message("tempfail")), 250)
    assert milter.events()[before:] == []
    assert len(sink.messages) == 2


@needs_milter
@pytest.mark.parametrize("case", ["many", "from-and-quarantine-flood"])
def test_too_many_modifications_are_an_error(postern, sink, tmp_path, milter, case):
    p = start(postern, sink, tmp_path, milter.port)
    _, r = send(p, case)
    check_reply(r, 451, "4.7.1")
    assert sink.messages == []
    line = p.wait_for_log(event="milter-error")
    assert line.get("error") == "too many modifications" and line.get("stage") == "eom", line


@needs_milter
def test_esmtp_parameters_reach_the_milter(postern, sink, tmp_path, milter):
    p = start(postern, sink, tmp_path, milter.port)
    c = SmtpClient(p.port)
    c.ehlo()
    content = message("none")
    check_reply(c.send_message("a@example.org", ["b@example.com"], content, mail_params="SIZE=500 BODY=8BITMIME"),
                250)
    assert milter.events("mail")[0]["args"] == ["SIZE=500", "BODY=8BITMIME"]
    assert milter.events("rcpt")[0]["args"] == []


# -- ESMTP parameters of SMFIR_ADDRCPT_PAR and SMFIR_CHGFROM (issue 19) --------

def transaction(p, case, rcpt_lines, mail_line="MAIL FROM:<a@example.org>"):
    """One message with RCPT lines sent as given (parameters included)."""
    c = SmtpClient(p.port)
    c.ehlo()
    c.expect(mail_line, 250)
    for line in rcpt_lines:
        c.expect(line, 250)
    c.expect("DATA", 354)
    c.send(data_payload(message(case)))
    r = c.read_reply()
    c.close()
    return r


def last_envelope(sink):
    """The MAIL and RCPT lines of the sink's last transaction, as received."""
    lines = sink.lines()
    start = max(i for i, l in enumerate(lines) if l.startswith("MAIL "))
    return lines[start], lines[start + 1:]


@needs_milter
def test_milter_recipient_and_sender_parameters_reach_a_dsn_mta(postern, make_sink, tmp_path, milter):
    """SMFIR_ADDRCPT_PAR's NOTIFY=NEVER and SMFIR_CHGFROM's RET/ENVID go on
    the MTA's RCPT and MAIL lines; the client's own recipients keep the
    parameters they came with when the envelope is sent anew."""
    sink = make_sink(dsn=True)
    p = start(postern, sink, tmp_path, milter.port)
    check_reply(transaction(p, "rcpts", ["RCPT TO:<b@example.com>",
                                         "RCPT TO:<c@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@example.com"]),
                250)
    mail, rcpts = last_envelope(sink)
    assert mail == "MAIL FROM:<a@example.org>"
    assert rcpts == ["RCPT TO:<c@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@example.com",
                     "RCPT TO:<added@example.com>", "RCPT TO:<withargs@example.com> NOTIFY=NEVER"], rcpts
    redo = p.wait_for_log(event="envelope-redo")
    assert "<withargs@example.com> NOTIFY=NEVER" in redo.get("to"), redo

    check_reply(transaction(p, "from-args", ["RCPT TO:<b@example.com> NOTIFY=NEVER"],
                            mail_line="MAIL FROM:<a@example.org> RET=FULL BODY=8BITMIME"), 250)
    mail, rcpts = last_envelope(sink)
    # RET is the milter's (it replaces the client's), BODY the client's.
    assert mail == "MAIL FROM:<bounces@example.org> RET=HDRS BODY=8BITMIME ENVID=x", mail
    assert rcpts == ["RCPT TO:<b@example.com> NOTIFY=NEVER"]
    assert sink.messages[-1].mail_from == "bounces@example.org"
    assert not p.events("esmtp-param-dropped")


@needs_milter
def test_milter_dsn_parameters_are_dropped_for_an_mta_without_dsn(postern, sink, tmp_path, milter):
    """aiosmtpd offers no DSN: the added recipient and the new sender arrive,
    without the parameters, and each drop is logged."""
    p = start(postern, sink, tmp_path, milter.port)
    _, r = send(p, "rcpts")
    check_reply(r, 250)
    assert sorted(sink.messages[0].rcpt_tos) == ["added@example.com", "withargs@example.com"]
    rcpt_events = [e for e in sink.events if e[1] == "RCPT" and e[2] == "withargs@example.com"]
    assert rcpt_events and all(e[3] == [] for e in rcpt_events), rcpt_events
    line = p.wait_for_log(event="esmtp-param-dropped", param="NOTIFY=NEVER")
    assert line.get("reason") == "the MTA does not offer DSN" and line.get("to") == "<withargs@example.com>"
    _, r = send(p, "from-args")
    check_reply(r, 250)
    assert sink.messages[1].mail_from == "bounces@example.org"
    mail_events = [e for e in sink.events if e[1] == "MAIL" and e[2] == "bounces@example.org"]
    assert mail_events and all(e[3] == [] for e in mail_events), mail_events
    for param in ("RET=HDRS", "ENVID=x"):
        assert p.wait_for_log(event="esmtp-param-dropped", param=param).get("reason") == "the MTA does not offer DSN"


@needs_milter
def test_milter_parameters_for_the_wrong_command_or_unknown_stay_behind(postern, make_sink, tmp_path, milter):
    """Valid text that is still no parameter for this command or this MTA:
    a RCPT parameter on MAIL, a value its extension does not define, a
    keyword postern does not know. Only the rest is sent."""
    sink = make_sink(dsn=True)
    p = start(postern, sink, tmp_path, milter.port)
    _, r = send(p, "wrong-args")
    check_reply(r, 250)
    mail, rcpts = last_envelope(sink)
    assert mail == "MAIL FROM:<bounces@example.org> BODY=8BITMIME", mail
    assert "RCPT TO:<vendor@example.com> NOTIFY=DELAY" in rcpts, rcpts
    dropped = {(l.get("param"), l.get("reason")) for l in p.events("esmtp-param-dropped")}
    assert dropped == {("NOTIFY=NEVER", "not a MAIL parameter"), ("RET=SOMETIMES", "invalid value"),
                       ("X-VENDOR=1", "unknown keyword"), ("RET=FULL", "not a RCPT parameter"),
                       ("ORCPT=nosemicolon", "invalid value")}, dropped


@needs_milter
def test_hostile_milter_parameters_never_reach_the_mta(postern, make_sink, tmp_path, milter):
    """CR/LF (a second command), bare CR or LF, other controls, an empty
    value, illegal keywords, 100 parameters, values of 800 and 5000 characters, a
    keyword twice, 8-bit octets: the address goes on, its parameters are
    refused whole and logged; no line the MTA reads carries any of them."""
    sink = make_sink(dsn=True)
    p = start(postern, sink, tmp_path, milter.port)
    _, r = send(p, "hostile-args")
    check_reply(r, 250)
    mail, rcpts = last_envelope(sink)
    assert mail == "MAIL FROM:<bounces@example.org>", mail
    n = 12
    assert rcpts == ["RCPT TO:<b@example.com>"] + [f"RCPT TO:<hostile{i}@example.com>" for i in range(n)], rcpts
    assert not any("evil" in l or "DATA" in l for l in sink.lines())
    assert "evil@example.com" not in sink.messages[0].rcpt_tos
    dropped = p.wait_for_log(event="esmtp-param-dropped", count=n + 1)
    reasons = " ".join(l.get("reason") for l in dropped)
    for why in ("invalid parameter value", "invalid parameter keyword", "too many parameters",
                "parameter value too long", "parameters too long", "duplicate parameter NOTIFY"):
        assert why in reasons, (why, reasons)
    # The audit notes name the refusal, not the text.
    assert all("\r" not in l.get("reason") and "\n" not in l.get("reason") for l in dropped)
