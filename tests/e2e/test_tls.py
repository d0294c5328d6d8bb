"""Inbound TLS: STARTTLS (RFC 3207), require_tls, implicit TLS (RFC 8314), the
STARTTLS plaintext-injection defence (CVE-2011-0411), the Received header's
ESMTPS (RFC 3848) and certificate reload on SIGHUP.

Clients are real programs: swaks, Python's smtplib and ssl, openssl s_client.
"""

import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess

import pytest

from harness import (HOSTNAME, IO_TIMEOUT, SCALE, SmtpClient, check_reply,
                     client_tls_context, data_payload, listener_ports, make_cert, make_message,
                     parse_received_any, run_swaks, strip_received, write_config)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    a = make_cert(d, "a")
    b = make_cert(d, "b")
    return {"a": a, "b": b, "dir": d}


def tls_section(cert):
    return {"cert_file": cert[0], "key_file": cert[1]}


def start_tls_postern(postern, sink, tmp_path, certs, listeners, name="postern.toml"):
    cfg = write_config(tmp_path / name, listeners, upstream=sink.address, tls=tls_section(certs["a"]))
    p = postern.start(config=cfg, listen=())
    return p, listener_ports(p)


def received_of(msg):
    assert msg.received is not None, f"no Received header: {msg!r}"
    return parse_received_any(msg.received)


def assert_tls_received(msg, helo="client.example"):
    m = received_of(msg)
    assert m.group(4) == "ESMTPS", f"not ESMTPS: {msg.received!r}"
    assert m.group(5) in ("TLSv1.2", "TLSv1.3"), msg.received
    assert m.group(6), msg.received
    assert m.group(1) == helo, msg.received
    return m


def subject_of(msg):
    for line in msg.content.split(b"\r\n"):
        if line.lower().startswith(b"subject:"):
            return line[8:].strip().decode()
    return None


# --------------------------------------------------------------------------
# STARTTLS


def test_swaks_starttls(postern, sink, tmp_path, certs):
    p, (port,) = start_tls_postern(postern, sink, tmp_path, certs, [{"tls": "starttls"}])
    r = run_swaks(["--server", f"127.0.0.1:{port}", "--tls", "--ehlo", "client.example",
                   "--from", "alice@example.org", "--to", "bob@example.com",
                   "--header", "Subject: swaks starttls", "--body", "over TLS\n"])
    assert r.returncode == 0, f"swaks failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    # swaks marks the lines it exchanged under TLS with "~"
    assert " -> STARTTLS" in r.stdout and " ~> MAIL FROM:<alice@example.org>" in r.stdout, r.stdout
    msgs = sink.wait_messages(1)
    assert msgs[0].mail_from == "alice@example.org"
    assert msgs[0].rcpt_tos == ["bob@example.com"]
    assert subject_of(msgs[0]) == "swaks starttls"
    m = assert_tls_received(msgs[0])
    tls = p.wait_for_log("tls")
    assert (m.group(5), m.group(6)) == (tls.get("version"), tls.get("cipher")), (msgs[0].received, tls)


def test_smtplib_starttls_and_ehlo_capabilities(postern, sink, tmp_path, certs):
    p, (port,) = start_tls_postern(postern, sink, tmp_path, certs, [{"tls": "starttls"}])
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=IO_TIMEOUT) as s:
        code, _ = s.ehlo()
        assert code == 250
        assert s.has_extn("starttls"), f"EHLO before TLS lacks STARTTLS: {s.esmtp_features}"
        code, text = s.starttls(context=client_tls_context())
        assert code == 220, text
        version, cipher = s.sock.version(), s.sock.cipher()[0]
        code, _ = s.ehlo()
        assert code == 250
        assert not s.has_extn("starttls"), f"EHLO under TLS still offers STARTTLS: {s.esmtp_features}"
        assert s.has_extn("pipelining") and s.has_extn("size")
        refused = s.sendmail("alice@example.org", ["bob@example.com"],
                             make_message("smtplib starttls"))
        assert refused == {}
    msgs = sink.wait_messages(1)
    m = assert_tls_received(msgs[0])
    assert (m.group(5), m.group(6)) == (version, cipher), msgs[0].received
    tls = p.wait_for_log("tls")
    assert tls.get("version") == version and tls.get("cipher") == cipher, tls


def test_starttls_content_across_records(postern, sink, tmp_path, certs):
    """Content under TLS is read a record (2^14 octets, RFC 8446 5.1) at a
    time: messages ending just before, at and after a record boundary, over
    several records and over many arrive octet for octet, by DATA and by one
    BDAT larger than a record (RFC 3030)."""
    p, (port,) = start_tls_postern(postern, sink, tmp_path, certs, [{"tls": "starttls"}])
    head = b"From: <alice@example.org>\r\nTo: <bob@example.com>\r\nSubject: records\r\n\r\n"
    bodies = []
    for size in (16383, 16384, 16385, 3 * 16384 + 7, 300000):
        line = (b"%d " % size) + b"abcdefghijklmnopqrstuvwxyz0123456789" * 2 + b"\r\n"
        body = (line * (size // len(line) + 1))[:size - 2] + b"\r\n"
        bodies.append(body)
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=IO_TIMEOUT) as s:
        s.ehlo()
        code, text = s.starttls(context=client_tls_context())
        assert code == 220, text
        s.ehlo()
        assert s.has_extn("chunking"), s.esmtp_features
        for body in bodies:
            assert s.sendmail("alice@example.org", ["bob@example.com"], head + body) == {}
        chunked = head + bodies[3]
        assert s.mail("alice@example.org")[0] == 250
        assert s.rcpt("bob@example.com")[0] == 250
        s.send(b"BDAT %d LAST\r\n" % len(chunked) + chunked)
        code, text = s.getreply()
        assert code == 250, text
    msgs = sink.wait_messages(len(bodies) + 1)
    for msg, body in zip(msgs, bodies + [bodies[3]]):
        _received, rest = strip_received(msg.content)
        assert rest == head + body, (len(rest), len(head + body))
        assert_tls_received(msg)


def test_starttls_twice_is_503(postern, sink, tmp_path, certs):
    _, (port,) = start_tls_postern(postern, sink, tmp_path, certs, [{"tls": "starttls"}])
    with SmtpClient(port) as c:
        c.ehlo()
        c.starttls()
        r = c.ehlo()
        assert "STARTTLS" not in r.lines
        c.expect("STARTTLS", 503, "5.5.1")
        # the session goes on under the same TLS
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("after 503")), 250)
    assert_tls_received(sink.wait_messages(1)[0])


def test_no_starttls_on_plain_listener(postern, sink, tmp_path, certs):
    _, (plain, tls) = start_tls_postern(postern, sink, tmp_path, certs,
                                        [{"tls": "none"}, {"tls": "starttls"}])
    with SmtpClient(plain) as c:
        assert "STARTTLS" not in c.ehlo().lines
        c.expect("STARTTLS", 502, "5.5.1")
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("plain")), 250)
    m = received_of(sink.wait_messages(1)[0])
    assert m.group(4) == "ESMTP" and m.group(5) is None
    with SmtpClient(tls) as c:
        assert "STARTTLS" in c.ehlo().lines


def test_require_tls(postern, sink, tmp_path, certs):
    _, (port,) = start_tls_postern(postern, sink, tmp_path, certs,
                                   [{"tls": "starttls", "require_tls": True}])
    with SmtpClient(port) as c:
        assert "STARTTLS" in c.ehlo().lines
        c.expect("MAIL FROM:<a@example.org>", 530, "5.7.0")
        c.expect("RCPT TO:<b@example.com>", 530, "5.7.0")
        c.expect("DATA", 530, "5.7.0")
        c.expect("NOOP", 250)
        c.starttls()
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("required")), 250)
    msgs = sink.wait_messages(1)
    assert_tls_received(msgs[0])
    # nothing of the refused plaintext transaction reached the MTA
    assert [e[2] for e in sink.commands("MAIL")] == ["a@example.org"]


def test_require_tls_bdat_chunk_is_dropped(postern, sink, tmp_path, certs):
    """A BDAT refused before TLS still has its chunk read and dropped (RFC 3030
    §2): octets that look like commands inside it are never commands, for
    every size from the empty chunk up."""
    _, (port,) = start_tls_postern(postern, sink, tmp_path, certs,
                                   [{"tls": "starttls", "require_tls": True}])
    for chunk in (b"", b"NOOP\r\n", b"QUIT\r\n", b"RSET\r\nQUIT\r\n", b"STARTTLS\r\n" * 40):
        with SmtpClient(port) as c:
            c.ehlo()
            c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
            check_reply(c.read_reply(), 530, "5.7.0")
            # The next reply is NOOP's own: nothing in the chunk was answered.
            c.expect("NOOP", 250)
            assert not c.buf, bytes(c.buf)
    assert sink.commands("MAIL") == []


def test_require_tls_swaks(postern, sink, tmp_path, certs):
    _, (port,) = start_tls_postern(postern, sink, tmp_path, certs,
                                   [{"tls": "starttls", "require_tls": True}])
    base = ["--server", f"127.0.0.1:{port}", "--ehlo", "client.example",
            "--from", "a@example.org", "--to", "b@example.com"]
    r = run_swaks(base)
    assert r.returncode != 0
    assert "530 5.7.0" in r.stdout, r.stdout
    r = run_swaks(base + ["--tls"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert_tls_received(sink.wait_messages(1)[0])


def tls12_context(ciphers=None):
    ctx = client_tls_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def test_min_version_tls13_refuses_tls12_client(postern, sink, tmp_path, certs):
    cfg = write_config(tmp_path / "v13.toml", [{"tls": "starttls"}], upstream=sink.address,
                       tls=dict(tls_section(certs["a"]), min_version="TLSv1.3"))
    p = postern.start(config=cfg, listen=())
    (port,) = listener_ports(p)
    with SmtpClient(port) as c:
        c.ehlo()
        with pytest.raises((ssl.SSLError, ConnectionError)):
            c.starttls(tls12_context())
    p.wait_for_log("tls-failed")
    with SmtpClient(port) as c:
        c.ehlo()
        c.starttls()
        assert c.sock.version() == "TLSv1.3"
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("v13")), 250)
    assert assert_tls_received(sink.wait_messages(1)[0]).group(5) == "TLSv1.3"


def test_default_policy_tls12_and_ciphers_setting(postern, sink, tmp_path, certs):
    # default policy: a TLS 1.2 client gets an ECDHE AEAD suite
    _, (port,) = start_tls_postern(postern, sink, tmp_path, certs, [{"tls": "starttls"}])
    with SmtpClient(port) as c:
        c.ehlo()
        c.starttls(tls12_context())
        assert c.sock.version() == "TLSv1.2"
        cipher = c.sock.cipher()[0]
        assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("tls12")), 250)
    m = assert_tls_received(sink.wait_messages(1)[0])
    assert (m.group(5), m.group(6)) == ("TLSv1.2", cipher)
    # an explicit cipher list is what the server accepts for TLS 1.2
    cfg = write_config(tmp_path / "ciphers.toml", [{"tls": "starttls"}], upstream=sink.address,
                       tls=dict(tls_section(certs["a"]), ciphers="ECDHE-RSA-AES128-GCM-SHA256"))
    p = postern.start(config=cfg, listen=())
    (port,) = listener_ports(p)
    with SmtpClient(port) as c:
        c.ehlo()
        with pytest.raises((ssl.SSLError, ConnectionError)):
            c.starttls(tls12_context("ECDHE-RSA-CHACHA20-POLY1305"))
    with SmtpClient(port) as c:
        c.ehlo()
        c.starttls(tls12_context())
        assert c.sock.cipher()[0] == "ECDHE-RSA-AES128-GCM-SHA256"


# --------------------------------------------------------------------------
# implicit TLS


def test_implicit_tls_swaks_tlsc(postern, sink, tmp_path, certs):
    _, (port,) = start_tls_postern(postern, sink, tmp_path, certs, [{"tls": "implicit"}])
    r = run_swaks(["--server", f"127.0.0.1:{port}", "--tlsc", "--ehlo", "client.example",
                   "--from", "alice@example.org", "--to", "bob@example.com",
                   "--header", "Subject: swaks tlsc"])
    assert r.returncode == 0, f"swaks failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    msgs = sink.wait_messages(1)
    assert subject_of(msgs[0]) == "swaks tlsc"
    assert_tls_received(msgs[0])


def test_implicit_tls_python_ssl(postern, sink, tmp_path, certs):
    _, (port,) = start_tls_postern(postern, sink, tmp_path, certs, [{"tls": "implicit"}])
    with SmtpClient(port, tls_context=client_tls_context()) as c:
        assert c.greeting.code == 220 and HOSTNAME in c.greeting.text
        assert c.peer_cert_sha256() == certs["a"][2]
        r = c.ehlo()
        assert "STARTTLS" not in r.lines, r
        c.expect("STARTTLS", 502, "5.5.1")   # already under TLS: not offered
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("implicit")), 250)
    assert_tls_received(sink.wait_messages(1)[0])


def test_implicit_tls_refuses_plaintext_and_keeps_serving(postern, sink, tmp_path, certs):
    p, (port,) = start_tls_postern(postern, sink, tmp_path, certs, [{"tls": "implicit"}])
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as s:
        s.sendall(b"EHLO plain.example\r\n")
        s.settimeout(5 * SCALE)
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
    assert b"220" not in got and b"250" not in got, f"plaintext client got SMTP: {got!r}"
    p.wait_for_log("tls-failed")
    # the listener still serves TLS clients
    with SmtpClient(port, tls_context=client_tls_context()) as c:
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("after")), 250)
    sink.wait_messages(1)
    assert p.alive()


# --------------------------------------------------------------------------
# STARTTLS command injection (CVE-2011-0411)


def test_starttls_injection_discarded(postern, sink, tmp_path, certs):
    p, (port,) = start_tls_postern(postern, sink, tmp_path, certs, [{"tls": "starttls"}])
    injected = b"MAIL FROM:<evil@x>\r\n"
    with SmtpClient(port) as c:
        c.ehlo()
        c.send(b"STARTTLS\r\n" + injected)           # one write, one segment
        check_reply(c.read_reply(), 220, "2.0.0", "STARTTLS")
        assert not c.buf, f"plaintext after the 220: {bytes(c.buf)!r}"
        c.sock = client_tls_context().wrap_socket(c.sock, server_hostname=HOSTNAME)
        # the first reply under TLS is the EHLO's: the injected MAIL is gone
        r = c.cmd("EHLO client.example")
        assert r.code == 250 and r.lines[0].startswith(HOSTNAME), f"first reply under TLS: {r}"
        # and the session was reset to before EHLO: no transaction is open
        c.expect("RCPT TO:<b@example.com>", 503)
        check_reply(c.send_message("good@example.org", ["b@example.com"], make_message("clean")), 250)
    msgs = sink.wait_messages(1)
    assert msgs[0].mail_from == "good@example.org"
    mails = [e[2] for e in sink.commands("MAIL")]
    assert "evil@x" not in mails and mails == ["good@example.org"], mails
    line = p.wait_for_log("starttls-injection")
    assert line.get("discarded_octets") == str(len(injected)), line


def test_starttls_injection_before_ehlo_is_not_executed(postern, sink, tmp_path, certs):
    """The injected text is a whole dialogue; none of it may run under TLS."""
    p, (port,) = start_tls_postern(postern, sink, tmp_path, certs, [{"tls": "starttls"}])
    injected = (b"EHLO evil.example\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@example.com>\r\n"
                b"DATA\r\n")
    with SmtpClient(port) as c:
        c.ehlo()
        c.send(b"STARTTLS\r\n" + injected)
        check_reply(c.read_reply(), 220, "2.0.0", "STARTTLS")
        c.sock = client_tls_context().wrap_socket(c.sock, server_hostname=HOSTNAME)
        c.expect("NOOP", 250)            # nothing queued ahead of it
        c.expect("MAIL FROM:<good@example.org>", 503)   # greeting forgotten
        c.ehlo()
        check_reply(c.send_message("good@example.org", ["b@example.com"], make_message("clean")), 250)
    assert [e[2] for e in sink.commands("MAIL")] == ["good@example.org"]
    assert [e[2] for e in sink.commands("RCPT")] == ["b@example.com"]
    assert p.wait_for_log("starttls-injection").get("discarded_octets") == str(len(injected))


def test_openssl_s_client_starttls(postern, sink, tmp_path, certs):
    _, (port,) = start_tls_postern(postern, sink, tmp_path, certs, [{"tls": "starttls"}])
    script = (b"EHLO client.example\r\nMAIL FROM:<ossl@example.org>\r\nRCPT TO:<b@example.com>\r\n"
              b"DATA\r\n" + make_message("s_client") +
              b".\r\nQUIT\r\n")
    r = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}",
                        "-servername", HOSTNAME, "-quiet"],
                       input=script, capture_output=True, timeout=30 * SCALE)
    out = r.stdout.decode("latin-1")
    assert "250 2.0.0 Ok: queued as ABC123" in out, f"s_client output:\n{out}\n{r.stderr!r}"
    assert "221" in out
    msgs = sink.wait_messages(1)
    assert msgs[0].mail_from == "ossl@example.org"
    assert_tls_received(msgs[0])


# --------------------------------------------------------------------------
# certificate reload


def install_cert(cert, live_cert, live_key):
    """Replace the live files atomically (as a deploy tool would)."""
    for src, dst in ((cert[0], live_cert), (cert[1], live_key)):
        shutil.copyfile(src, dst + ".new")
        os.replace(dst + ".new", dst)


def test_sighup_reloads_certificate_open_session_survives(postern, sink, tmp_path, certs):
    live_cert, live_key = str(tmp_path / "live.crt"), str(tmp_path / "live.key")
    install_cert(certs["a"], live_cert, live_key)
    cfg = write_config(tmp_path / "reload.toml", [{"tls": "starttls"}, {"tls": "implicit"}],
                       upstream=sink.address, tls={"cert_file": live_cert, "key_file": live_key})
    p = postern.start(config=cfg, listen=())
    starttls_port, implicit_port = listener_ports(p)

    old = SmtpClient(starttls_port)
    old.ehlo()
    old.starttls()
    assert old.peer_cert_sha256() == certs["a"][2]
    old.ehlo()
    old.expect("MAIL FROM:<old@example.org>", 250)    # a transaction open across the reload

    install_cert(certs["b"], live_cert, live_key)
    p.send_signal(signal.SIGHUP)
    p.wait_for_log("reloaded")

    with SmtpClient(starttls_port) as new:
        new.ehlo()
        new.starttls()
        assert new.peer_cert_sha256() == certs["b"][2], "new STARTTLS session still has cert A"
        new.ehlo()
        check_reply(new.send_message("new@example.org", ["b@example.com"], make_message("new")), 250)
    with SmtpClient(implicit_port, tls_context=client_tls_context()) as new:
        assert new.peer_cert_sha256() == certs["b"][2], "new implicit-TLS session still has cert A"

    # the session opened before the reload finishes its message under cert A
    assert old.peer_cert_sha256() == certs["a"][2]
    old.expect("RCPT TO:<b@example.com>", 250)
    old.expect("DATA", 354)
    old.send(data_payload(make_message("old")))
    check_reply(old.read_reply(), 250, what="old session's message")
    old.expect("QUIT", 221)
    old.close()
    msgs = sink.wait_messages(2)
    assert sorted(m.mail_from for m in msgs) == ["new@example.org", "old@example.org"]
    for m in msgs:
        assert_tls_received(m)


def test_sighup_with_bad_key_keeps_old_certificate(postern, sink, tmp_path, certs):
    live_cert, live_key = str(tmp_path / "live.crt"), str(tmp_path / "live.key")
    install_cert(certs["a"], live_cert, live_key)
    cfg = write_config(tmp_path / "reload.toml", [{"tls": "starttls"}], upstream=sink.address,
                       tls={"cert_file": live_cert, "key_file": live_key})
    p = postern.start(config=cfg, listen=())
    (port,) = listener_ports(p)
    # certificate B with key A: they do not match
    shutil.copyfile(certs["b"][0], live_cert)
    p.send_signal(signal.SIGHUP)
    p.wait_for_log("reload-failed")
    with SmtpClient(port) as c:
        c.ehlo()
        c.starttls()
        assert c.peer_cert_sha256() == certs["a"][2]
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("kept")), 250)
    assert p.alive()


# --------------------------------------------------------------------------
# RFC 3207 §4.2: nothing learned in plaintext survives STARTTLS (issue 18)

PLAINTEXT_FACTS_RULES = """
postern.rule{ name = "CONNECT_FACTS", stage = "connect", fn = function(ctx)
  ctx.session_notes.connect = "set at connect"
end }
postern.rule{ name = "PLAIN_FACTS", stage = "helo", fn = function(ctx)
  if not ctx.client.tls.active then
    ctx.session_notes.plain = "set in plaintext"
    ctx:symbol("PLAIN_SYMBOL", 0.5)
  end
end }
postern.rule{ name = "REPORT", stage = "eom", fn = function(ctx)
  ctx:add_header("X-Plain-Note", ctx.session_notes.plain or "gone")
  ctx:add_header("X-Plain-Symbol", ctx:has_symbol("PLAIN_SYMBOL") and "present" or "gone")
  ctx:add_header("X-Helo", ctx.client.helo)
  ctx:add_header("X-Connect-Note", ctx.session_notes.connect or "gone")
end }
"""


def header_of(msg, name):
    for line in msg.content.split(b"\r\n"):
        if line.lower().startswith(name.lower().encode() + b":"):
            return line.split(b":", 1)[1].strip().decode()
    return None


def test_starttls_forgets_session_notes_symbols_and_helo(postern, sink, tmp_path, certs):
    """A rule sets a session note and a session symbol in plaintext; after
    STARTTLS both are gone, and so is the plaintext HELO name; a session
    that stays in plaintext keeps them (the rule works). What the connect
    stage learned from the connection itself, before any command, stays."""
    rules = tmp_path / "facts.lua"
    rules.write_text(PLAINTEXT_FACTS_RULES)
    cfg = write_config(tmp_path / "postern.toml", [{"tls": "starttls"}], upstream=sink.address,
                       tls=tls_section(certs["a"]), sections={"lua": {"scripts": [str(rules)]}})
    p = postern.start(config=cfg, listen=())
    (port,) = listener_ports(p)
    with SmtpClient(port) as c:  # control: plaintext throughout
        c.ehlo("plain.example")
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("plain")), 250)
    with SmtpClient(port) as c:
        c.ehlo("plain.example")
        c.starttls()
        c.ehlo("tls.example")
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("tls")), 250)
    plain, tls = sink.wait_messages(2)
    assert header_of(plain, "X-Plain-Note") == "set in plaintext", plain.content[:600]
    assert header_of(plain, "X-Plain-Symbol") == "present", plain.content[:600]
    assert header_of(tls, "X-Plain-Note") == "gone", tls.content[:600]
    assert header_of(tls, "X-Plain-Symbol") == "gone", tls.content[:600]
    assert header_of(tls, "X-Helo") == "tls.example", tls.content[:600]
    assert header_of(tls, "X-Connect-Note") == "set at connect", tls.content[:600]
    assert header_of(plain, "X-Connect-Note") == "set at connect", plain.content[:600]
