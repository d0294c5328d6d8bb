"""Hostile clients against inbound TLS: STARTTLS injection in every place it
can hide (CVE-2011-0411), what an upgraded or resumed session may carry over
(nothing of the plaintext dialogue, nothing of the session that made its
ticket), resumption across listeners and reloads (a ticket never resumes
into a policy that would refuse its session), and TLS clients that stall,
break off, send garbage or try to renegotiate.

Clients are Python's ssl (with SSLSession and MemoryBIO where the test must
place every octet itself) and openssl s_client; the upstream is the
harness's recording sink; everything runs on loopback ports of its own.
"""

import os
import signal
import socket
import ssl
import subprocess
import time

import pytest

from harness import (HOSTNAME, IO_TIMEOUT, SCALE, ConnectionClosed, SmtpClient, check_reply,
                     client_tls_context, listener_ports, make_cert, make_message, write_config)

# aiosmtpd warns that it takes AUTH without TLS: postern->MTA is loopback plaintext
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

USER = "alice"
PASSWORD = "S3cr3t-pW-7f1c9e"
TLS13, TLS12 = ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2
VERSIONS = [pytest.param(TLS13, id="tls13"), pytest.param(TLS12, id="tls12")]


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("certs"), "attack")


def config(tmp_path, sink, cert, listeners=({"tls": "starttls"},), tls=None, sections=None,
           name="postern.toml"):
    t = {"cert_file": cert[0], "key_file": cert[1]}
    t.update(tls or {})
    return write_config(tmp_path / name, list(listeners), upstream=sink.address, tls=t, sections=sections)


def start(postern, tmp_path, sink, cert, **kw):
    p = postern.start(config=config(tmp_path, sink, cert, **kw), listen=())
    return p, listener_ports(p)


def reload(p, event="reloaded"):
    """SIGHUP and wait for its outcome (the count of such lines grows by one)."""
    before = len(p.events(event))
    p.send_signal(signal.SIGHUP)
    p.wait_for_log(event, count=before + 1)


_CONTEXTS = {}


def ctx_for(version, ciphers=None):
    """One client context per version and cipher list: Python resumes a
    session only through the context that made it."""
    if (version, ciphers) not in _CONTEXTS:
        ctx = client_tls_context()
        ctx.minimum_version = ctx.maximum_version = version
        if ciphers:
            ctx.set_ciphers(ciphers)
        _CONTEXTS[version, ciphers] = ctx
    return _CONTEXTS[version, ciphers]


def upgrade(c, ctx, session=None):
    """STARTTLS on SmtpClient `c`, the handshake offering `session`."""
    check_reply(c.cmd("STARTTLS"), 220, "2.0.0")
    assert not c.buf, f"bytes after the 220: {bytes(c.buf)!r}"
    c.sock = ctx.wrap_socket(c.sock, server_hostname=HOSTNAME, session=session)
    return c.sock.session_reused


def tls_session(port, ctx, session=None, helo="client.example"):
    """A whole STARTTLS session up to the EHLO under TLS: (client, reused)."""
    c = SmtpClient(port)
    c.ehlo(helo)
    reused = upgrade(c, ctx, session)
    c.ehlo(helo)
    return c, reused


def leave(c):
    """QUIT; the TLS session (with the ticket that came with a reply) for the next connection."""
    c.expect("QUIT", 221)
    session = c.sock.session
    c.close()
    return session


def mails(sink):
    return [e[2] for e in sink.commands("MAIL")]


# --------------------------------------------------------------------------
# 1. STARTTLS injection (CVE-2011-0411) wherever it hides


def test_plaintext_after_the_220_before_the_client_hello_is_never_executed(postern, sink, tmp_path, cert):
    """Commands that arrive after the 220, where the ClientHello belongs, are
    a failed handshake: logged, the connection closed at once, nothing run."""
    p, (port,) = start(postern, tmp_path, sink, cert)
    c = SmtpClient(port)
    c.ehlo()
    check_reply(c.cmd("STARTTLS"), 220, "2.0.0")
    c.send(b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n")
    assert c.wait_closed(5 * SCALE), "postern kept a connection whose handshake was plaintext"
    assert p.wait_for_log("tls-failed").get("error") != "timeout"
    assert "evil@example.net" not in mails(sink)
    with SmtpClient(port) as good:  # and it serves the next client
        good.ehlo()
        upgrade(good, client_tls_context())
        good.ehlo()
        check_reply(good.send_message("good@example.org", ["b@example.com"], make_message("next")), 250)
    assert mails(sink) == ["good@example.org"]


def test_injection_in_a_second_segment_before_the_220_is_read(postern, sink, tmp_path, cert):
    """STARTTLS and the injected commands in two segments, the second sent
    before the client read the 220: whether postern had read them with the
    STARTTLS (discarded) or after its 220 (a broken handshake), they never
    run; if the handshake works, the session starts before EHLO."""
    p, (port,) = start(postern, tmp_path, sink, cert)
    for attempt in range(5):
        c = SmtpClient(port)
        c.ehlo()
        c.send(b"STARTTLS\r\n")
        c.send(b"MAIL FROM:<evil@example.net>\r\n")
        check_reply(c.read_reply(), 220, "2.0.0")
        try:
            c.sock = client_tls_context().wrap_socket(c.sock, server_hostname=HOSTNAME)
        except (ssl.SSLError, OSError):
            c.close()
            continue  # postern read the MAIL as its ClientHello: refused
        c.expect("RCPT TO:<victim@example.com>", 503)  # no MAIL ran under TLS
        c.close()
    assert "evil@example.net" not in mails(sink)


@pytest.mark.parametrize("line", [b"starttls\r\n", b"StartTLS \r\n", b"STARTTLS\r\n\r\n",
                                  b"STARTTLS\n", b"STARTTLS\r"],
                         ids=["lower", "trailing-space", "empty-line-after", "bare-lf", "bare-cr"])
def test_starttls_spellings_with_injection(postern, sink, tmp_path, cert, line):
    """Each spelling of STARTTLS with a MAIL in the same segment: either a
    220 and the MAIL never runs under TLS, or no 220 and no TLS at all."""
    p, (port,) = start(postern, tmp_path, sink, cert)
    with SmtpClient(port) as c:
        c.ehlo()
        c.send(line + b"MAIL FROM:<evil@example.net>\r\n")
        r = c.read_reply()
        if r.code == 220:
            assert not c.buf, f"plaintext after the 220: {bytes(c.buf)!r}"
            c.sock = client_tls_context().wrap_socket(c.sock, server_hostname=HOSTNAME)
            c.expect("RCPT TO:<victim@example.com>", 503)
            c.expect("QUIT", 221)
            assert "evil@example.net" not in mails(sink)
        else:
            assert r.code >= 500, r  # refused in plaintext: the session never turned TLS
            assert not p.events("tls")


def test_starttls_inside_a_transaction_abandons_it(postern, sink, tmp_path, cert):
    """STARTTLS in the middle of MAIL/RCPT with the rest of the message
    pipelined after it: the plaintext transaction dies, the content is
    dropped, and under TLS there is neither sender nor recipient."""
    p, (port,) = start(postern, tmp_path, sink, cert)
    with SmtpClient(port) as c:
        c.ehlo()
        c.expect("MAIL FROM:<evil@example.net>", 250)
        c.expect("RCPT TO:<victim@example.com>", 250)
        c.send(b"STARTTLS\r\nDATA\r\nSubject: injected\r\n\r\nbody\r\n.\r\n")
        check_reply(c.read_reply(), 220, "2.0.0")
        assert not c.buf
        c.sock = client_tls_context().wrap_socket(c.sock, server_hostname=HOSTNAME)
        c.expect("DATA", 503)
        c.ehlo()
        c.expect("DATA", 503)  # EHLO under TLS: still no transaction
        c.expect("RCPT TO:<victim@example.com>", 503)
    time.sleep(0.3)
    assert sink.messages == [], "a message from the plaintext transaction was relayed"
    assert p.wait_for_log("starttls-injection")


@pytest.mark.parametrize("version", VERSIONS)
def test_injection_discarded_when_the_handshake_resumes(postern, sink, tmp_path, cert, version):
    """The same defence with a resumed handshake (no certificate, fewer
    round trips): the pipelined plaintext is gone and the session restarts
    before EHLO."""
    p, (port,) = start(postern, tmp_path, sink, cert)
    ctx = ctx_for(version)
    c, _ = tls_session(port, ctx)
    session = leave(c)
    with SmtpClient(port) as c:
        c.ehlo("plain.example")
        injected = b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@example.com>\r\n"
        c.send(b"STARTTLS\r\n" + injected)
        check_reply(c.read_reply(), 220, "2.0.0")
        assert not c.buf
        c.sock = ctx.wrap_socket(c.sock, server_hostname=HOSTNAME, session=session)
        assert c.sock.session_reused, "the test needs a resumed handshake"
        c.expect("NOOP", 250)  # nothing queued ahead of it
        c.expect("RCPT TO:<victim@example.com>", 503)
        c.expect("MAIL FROM:<good@example.org>", 503)  # EHLO forgotten too
    assert "evil@example.net" not in mails(sink)
    assert p.wait_for_log("starttls-injection").get("discarded_octets") == str(len(injected))


def test_starttls_where_it_is_not_offered_never_starts_a_handshake(postern, sink, tmp_path, cert):
    """STARTTLS under implicit TLS (502: not offered), under STARTTLS'd TLS
    and after AUTH (503), with an argument (501): each is refused with the
    session going on as before, the pipelined command after it run in order."""
    auth_sink = sink.__class__(auth=(USER, PASSWORD), auth_required=True).start()
    try:
        p, (implicit, starttls) = start(postern, tmp_path, auth_sink, cert,
                                        listeners=[{"tls": "implicit"},
                                                   {"tls": "starttls", "auth": "passthrough"}])
        with SmtpClient(implicit, tls_context=client_tls_context()) as c:
            c.ehlo()
            c.send(b"STARTTLS\r\nNOOP\r\n")
            check_reply(c.read_reply(), 502, "5.5.1")
            check_reply(c.read_reply(), 250)
        with SmtpClient(starttls) as c:
            c.ehlo()
            c.expect("STARTTLS now", 501)
            upgrade(c, client_tls_context())
            c.ehlo()
            import base64
            c.expect("AUTH PLAIN " + base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(), 235)
            c.send(b"STARTTLS\r\nNOOP\r\n")
            check_reply(c.read_reply(), 503, "5.5.1")
            check_reply(c.read_reply(), 250)
            # still authenticated: the MTA (auth_required) takes the MAIL
            check_reply(c.send_message("alice@example.org", ["b@example.com"], make_message("after")), 250)
        assert len(auth_sink.messages) == 1
    finally:
        auth_sink.stop()


# --------------------------------------------------------------------------
# 2. what an upgraded or resumed session carries over


@pytest.mark.parametrize("version", VERSIONS)
def test_resumed_session_carries_no_auth(postern, tmp_path, cert, make_sink, version):
    """A client authenticates, leaves with its ticket; the connection that
    resumes with that ticket is not authenticated: AUTH is offered again,
    and the MTA (which refuses MAIL before AUTH) refuses its MAIL."""
    import base64
    sink = make_sink(auth=(USER, PASSWORD), auth_required=True)
    p, (port,) = start(postern, tmp_path, sink, cert, listeners=[{"tls": "starttls", "auth": "passthrough"}])
    ctx = ctx_for(version)
    c, _ = tls_session(port, ctx)
    c.expect("AUTH PLAIN " + base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(), 235)
    check_reply(c.send_message("alice@example.org", ["b@example.com"], make_message("authed")), 250)
    session = leave(c)
    c = SmtpClient(port)
    c.ehlo()
    assert upgrade(c, ctx, session), "the test needs a resumed handshake"
    r = c.ehlo()
    assert any("AUTH PLAIN LOGIN" in l for l in r.lines), f"AUTH not offered after resumption: {r}"
    r = c.cmd("MAIL FROM:<alice@example.org>")
    assert r.code == 530, f"a resumed session was authenticated: {r}"
    c.close()
    assert len(sink.messages) == 1
    ends = [l for l in p.events("auth") if l.get("result") == "ok"]
    assert len(ends) == 1, ends


def test_resumed_session_starts_before_ehlo_with_its_own_helo(postern, sink, tmp_path, cert):
    """A resumed STARTTLS session is a new dialogue: MAIL before EHLO is
    503, and the Received header names this connection's EHLO and the
    TLS of this connection (ESMTPS), not the first one's."""
    p, (port,) = start(postern, tmp_path, sink, cert)
    ctx = ctx_for(TLS13)
    c, _ = tls_session(port, ctx, helo="first.example")
    session = leave(c)
    c = SmtpClient(port)
    c.ehlo("plain.example")
    assert upgrade(c, ctx, session)
    c.expect("MAIL FROM:<a@example.org>", 503)
    c.ehlo("second.example")
    check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("resumed")), 250)
    c.close()
    [m] = sink.wait_messages(1)
    received = m.received.decode() if isinstance(m.received, bytes) else m.received
    assert "second.example" in received and "first.example" not in received, received
    assert "plain.example" not in received and "ESMTPS" in received, received


# --------------------------------------------------------------------------
# 3. resumption across listeners and reloads


def test_ticket_from_one_listener_brings_nothing_to_another(postern, tmp_path, cert, make_sink):
    """A ticket from an implicit-TLS listener, resumed on a STARTTLS
    listener with require_tls and AUTH: the second listener's checks all
    still hold (530 before STARTTLS, EHLO first, AUTH offered, not done)."""
    sink = make_sink(auth=(USER, PASSWORD), auth_required=True)
    p, (implicit, strict) = start(postern, tmp_path, sink, cert,
                                  listeners=[{"tls": "implicit"},
                                             {"tls": "starttls", "require_tls": True, "auth": "passthrough"}])
    ctx = ctx_for(TLS13)
    with SmtpClient(implicit, tls_context=ctx) as c:
        c.ehlo()
        c.expect("QUIT", 221)
        session = c.sock.session
    c = SmtpClient(strict)
    c.ehlo()
    c.expect("MAIL FROM:<a@example.org>", 530, "5.7.0")
    assert upgrade(c, ctx, session), "one TLS context for both: the ticket resumes"
    c.expect("MAIL FROM:<a@example.org>", 503)
    r = c.ehlo()
    assert any("AUTH PLAIN LOGIN" in l for l in r.lines), r
    check_reply(c.cmd("MAIL FROM:<a@example.org>"), 530)  # the MTA: not authenticated
    c.close()
    assert sink.messages == []


def test_failed_reload_keeps_the_ticket_keys(postern, sink, tmp_path, cert):
    """A reload refused (here for a rule that does not compile) keeps the
    running configuration, ticket keys included: tickets sealed before it
    resume, and new tickets are sealed with the running keys, which the
    other hosts sharing the key file can open."""
    keys, other = tmp_path / "a.keys", tmp_path / "b.keys"
    keys.write_bytes(os.urandom(80))
    other.write_bytes(os.urandom(80))
    p, (port,) = start(postern, tmp_path, sink, cert, tls={"ticket_key_file": str(keys)})
    ctx = ctx_for(TLS13)
    c, _ = tls_session(port, ctx)
    session = leave(c)
    bad = tmp_path / "broken.lua"
    bad.write_text("this is not lua (\n")
    config(tmp_path, sink, cert, tls={"ticket_key_file": str(other)}, sections={"lua": {"scripts": [str(bad)]}})
    reload(p, "reload-failed")
    c, reused = tls_session(port, ctx, session)
    assert reused, "a refused reload replaced the ticket keys"
    session = leave(c)
    # a host that kept the running key file opens the tickets issued now
    peer, (peer_port,) = start(postern, tmp_path, sink, cert, tls={"ticket_key_file": str(keys)},
                               name="peer.toml")
    c, reused = tls_session(peer_port, ctx, session)
    assert reused, "a ticket issued after a refused reload was sealed with the refused keys"
    c.close()


def test_ticket_key_file_rotated_by_reload(postern, sink, tmp_path, cert):
    """Rotation in place: [A] -> [B, A] keeps A's tickets resuming (and
    renews them under B) -> [B] ends A's tickets."""
    a, b = os.urandom(80), os.urandom(80)
    keys = tmp_path / "ticket.keys"
    keys.write_bytes(a)
    p, (port,) = start(postern, tmp_path, sink, cert, tls={"ticket_key_file": str(keys)})
    for version in (TLS13, TLS12):
        keys.write_bytes(a)
        reload(p)
        ctx = ctx_for(version)
        c, _ = tls_session(port, ctx)
        under_a = leave(c)
        keys.write_bytes(b + a)
        reload(p)
        c, reused = tls_session(port, ctx, under_a)
        assert reused, f"{version}: the old key, second in the file, did not open its ticket"
        renewed = leave(c)
        keys.write_bytes(b)
        reload(p)
        c, reused = tls_session(port, ctx, under_a)
        assert not reused, f"{version}: a key no longer in the file opened a ticket"
        c.close()
        if version == TLS13:  # a TLS 1.3 resumption renews its ticket under the sealing key
            c, reused = tls_session(port, ctx, renewed)
            assert reused, "the ticket renewed under the new key did not resume"
            c.close()


def test_tickets_turned_off_by_reload_no_longer_resume(postern, sink, tmp_path, cert):
    p, (port,) = start(postern, tmp_path, sink, cert)
    sessions = {}
    for version in (TLS13, TLS12):
        c, _ = tls_session(port, ctx_for(version))
        sessions[version] = leave(c)
    config(tmp_path, sink, cert, tls={"session_tickets": False})
    reload(p)
    for version in (TLS13, TLS12):
        c, reused = tls_session(port, ctx_for(version), sessions[version])
        assert not reused, f"{version}: a ticket resumed with session_tickets = false"
        c.close()


def test_tls12_ticket_does_not_resume_a_cipher_a_reload_removed(postern, sink, tmp_path, cert):
    """tls.ciphers narrowed by a reload: a TLS 1.2 ticket whose session
    used a cipher no longer allowed makes a full handshake on an allowed
    one; a ticket with a still allowed cipher resumes."""
    both = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305"
    p, (port,) = start(postern, tmp_path, sink, cert, tls={"ciphers": "ECDHE+CHACHA20:ECDHE+AESGCM"})
    ctx = ctx_for(TLS12, both)
    c, _ = tls_session(port, ctx)
    assert c.sock.cipher()[0] == "ECDHE-RSA-CHACHA20-POLY1305", c.sock.cipher()
    chacha = leave(c)
    gcm_only = ctx_for(TLS12, "ECDHE-RSA-AES256-GCM-SHA384")
    c, _ = tls_session(port, gcm_only)
    gcm = leave(c)
    config(tmp_path, sink, cert, tls={"ciphers": "ECDHE+AESGCM"})
    reload(p)
    c, reused = tls_session(port, ctx, chacha)
    assert not reused and c.sock.cipher()[0] == "ECDHE-RSA-AES256-GCM-SHA384", \
        f"resumed a session with a cipher tls.ciphers no longer allows: {c.sock.cipher()}"
    c.close()
    c, reused = tls_session(port, gcm_only, gcm)
    assert reused, "a ticket with a cipher still allowed did not resume"
    c.close()


def test_tls12_ticket_is_refused_after_min_version_rises_to_tls13(postern, sink, tmp_path, cert):
    """tls.min_version raised to TLSv1.3 by a reload: a TLS 1.2 client with
    a ticket from before is refused (no resumption past the version floor),
    a TLS 1.3 client's ticket still resumes."""
    p, (port,) = start(postern, tmp_path, sink, cert)
    sessions = {}
    for version in (TLS13, TLS12):
        c, _ = tls_session(port, ctx_for(version))
        sessions[version] = leave(c)
    config(tmp_path, sink, cert, tls={"min_version": "TLSv1.3"})
    reload(p)
    c = SmtpClient(port)
    c.ehlo()
    check_reply(c.cmd("STARTTLS"), 220)
    with pytest.raises(ssl.SSLError):
        ctx_for(TLS12).wrap_socket(c.sock, server_hostname=HOSTNAME, session=sessions[TLS12])
    c.close()
    assert p.wait_for_log("tls-failed")
    c, reused = tls_session(port, ctx_for(TLS13), sessions[TLS13])
    assert reused
    c.close()


def test_session_lifetime_shortened_by_reload_ends_older_tickets(postern, sink, tmp_path, cert):
    """session_lifetime is the age past which no ticket resumes, whatever
    the lifetime was when it was sealed: shortened by a reload, it applies
    to the tickets already out (random keys and a key file alike), as it
    does to those of a process started with it. Waits 62 seconds."""
    keys = tmp_path / "ticket.keys"
    keys.write_bytes(os.urandom(80))
    long = {"session_lifetime": 86400}
    procs = {
        "started-short": start(postern, tmp_path, sink, cert, tls={"session_lifetime": 60}, name="short.toml"),
        "random-keys": start(postern, tmp_path, sink, cert, tls=long, name="random.toml"),
        "key-file": start(postern, tmp_path, sink, cert, tls=dict(long, ticket_key_file=str(keys)),
                          name="file.toml"),
    }
    sessions = {}
    for name, (p, (port,)) in procs.items():
        for version in (TLS13, TLS12):
            c, _ = tls_session(port, ctx_for(version))
            sessions[name, version] = leave(c)
    config(tmp_path, sink, cert, tls={"session_lifetime": 60}, name="random.toml")
    reload(procs["random-keys"][0])
    config(tmp_path, sink, cert, tls={"session_lifetime": 60, "ticket_key_file": str(keys)}, name="file.toml")
    reload(procs["key-file"][0])
    # still young: every ticket resumes
    for (name, version), session in list(sessions.items()):
        c, reused = tls_session(procs[name][1][0], ctx_for(version), session)
        assert reused, f"{name} {version}: a young ticket did not resume"
        c.close()  # no QUIT: keep the first ticket as it was
    time.sleep(62)
    for (name, version), session in sessions.items():
        c, reused = tls_session(procs[name][1][0], ctx_for(version), session)
        assert not reused, f"{name} {version}: a ticket older than session_lifetime resumed"
        c.close()


# --------------------------------------------------------------------------
# 4. hostile TLS clients


def assert_still_serving(port, sink, subject):
    with SmtpClient(port) as c:
        c.ehlo()
        upgrade(c, client_tls_context())
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message(subject)), 250)


def after_220(port):
    c = SmtpClient(port)
    c.ehlo()
    check_reply(c.cmd("STARTTLS"), 220, "2.0.0")
    return c


def client_hello():
    ctx = client_tls_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=HOSTNAME)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


HOSTILE_HANDSHAKES = {
    # an HTTP request where the ClientHello belongs
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    # a handshake record announcing a ClientHello of 16 MiB
    "huge-hello": b"\x16\x03\x01\x00\x04\x01\xff\xff\xff" + b"\x16\x03\x01\x40\x00" + b"\0" * 0x4000 * 2,
    # a record longer than TLS allows (2^14 + 2048 + 1)
    "oversized-record": b"\x16\x03\x01\x48\x01" + b"\0" * 0x4801,
    # an SSLv2-style hello
    "sslv2": b"\x80\x2e\x01\x00\x02" + b"\0" * 0x2b,
    # a ClientHello, then an alert-close before the handshake ends
    "hello-then-alert": None,
    # half a ClientHello, then the TCP close
    "half-hello-close": None,
}


@pytest.mark.parametrize("how", list(HOSTILE_HANDSHAKES))
def test_hostile_handshake_ends_with_a_log_line(postern, sink, tmp_path, cert, how):
    """Each broken handshake ends at once (not at a time-out) with a
    tls-failed line and the session's end; postern serves the next client."""
    p, (port,) = start(postern, tmp_path, sink, cert)
    c = after_220(port)
    hello = client_hello()
    if how == "hello-then-alert":
        c.send(hello + b"\x15\x03\x03\x00\x02\x02\x28")  # fatal handshake_failure
    elif how == "half-hello-close":
        c.send(hello[:len(hello) // 2])
        c.sock.shutdown(socket.SHUT_WR)
    else:
        try:
            c.send(HOSTILE_HANDSHAKES[how])
        except (BrokenPipeError, ConnectionResetError):
            pass
    t0 = time.monotonic()
    try:
        closed = c.wait_closed(10 * SCALE)
    except ConnectionResetError:
        closed = True
    c.close()
    assert closed, f"{how}: the connection stayed open"
    assert time.monotonic() - t0 < 5 * SCALE
    failed = p.wait_for_log("tls-failed")
    assert failed.get("error") != "timeout", failed
    p.wait_for_log("session-end", session=failed.get("session"))
    assert_still_serving(port, sink, how)
    assert p.alive()


def test_stalled_handshake_times_out_with_a_log_line(postern, sink, tmp_path, cert):
    """A ClientHello and then silence: after timeouts.command the session
    ends, logged tls-failed error=timeout, while others go on meanwhile."""
    p, (port,) = start(postern, tmp_path, sink, cert, sections={"timeouts": {"command": 2}})
    c = after_220(port)
    c.send(client_hello())
    assert_still_serving(port, sink, "during the stall")
    line = p.wait_for_log("tls-failed", timeout=10 * SCALE)
    assert line.get("error") == "timeout", line
    assert c.wait_closed(5 * SCALE)
    c.close()


def s_client(port, lines, *args):
    """openssl s_client -starttls smtp fed `lines` one at a time; its transcript.
    Without -ign_eof, so that s_client reads its commands (R renegotiates)."""
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", "smtp",
                             "-crlf"] + list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        for line in lines:
            time.sleep(0.5)
            try:
                proc.stdin.write(line)
                proc.stdin.flush()
            except BrokenPipeError:
                break
        out, _ = proc.communicate(timeout=20 * SCALE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out.decode(errors="replace")


def test_tls12_renegotiation_is_refused(postern, sink, tmp_path, cert):
    """A TLS 1.2 client asks to renegotiate (s_client's R, a ClientHello
    inside the session): postern refuses (no_renegotiation), never does a
    second handshake, the session ends with a log line, and the next
    client is served."""
    p, (port,) = start(postern, tmp_path, sink, cert)
    out = s_client(port, [b"EHLO client.example\n", b"R\n", b"NOOP\n", b"quit\n"], "-tls1_2")
    assert "RENEGOTIATING" in out, out
    assert "no renegotiation" in out, out
    end = p.wait_for_log("session-end")
    assert p.wait_for_log("client-lost", session=end.get("session"))
    assert len(p.events("tls")) == 1, "a second handshake"
    assert_still_serving(port, sink, "after renegotiation")
    assert p.alive()


def test_plaintext_after_close_notify_is_not_executed(postern, sink, tmp_path, cert):
    """The client sends close_notify and then, in the same segment,
    plaintext commands (and a second variant: TLS records after it). After
    close_notify nothing is read: the session ends, nothing reaches the MTA."""
    p, (port,) = start(postern, tmp_path, sink, cert)
    for variant in ("plaintext", "records"):
        c = SmtpClient(port)
        c.ehlo()
        check_reply(c.cmd("STARTTLS"), 220)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = client_tls_context().wrap_bio(incoming, outgoing, server_hostname=HOSTNAME)
        c.sock.settimeout(IO_TIMEOUT)
        while True:  # the handshake through memory BIOs: every octet placed by the test
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    c.sock.sendall(outgoing.read())
                data = c.sock.recv(65536)
                assert data, "closed during the handshake"
                incoming.write(data)
        if outgoing.pending:
            c.sock.sendall(outgoing.read())
        obj.write(b"EHLO client.example\r\n")
        c.sock.sendall(outgoing.read())
        reply = b""
        while b"250 " not in reply:
            incoming.write(c.sock.recv(65536))
            try:
                reply += obj.read(65536)
            except ssl.SSLWantReadError:
                pass
        try:
            obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        close_notify = outgoing.read()
        assert close_notify, "no close_notify produced"
        if variant == "plaintext":
            after = b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<b@example.com>\r\n"
        else:  # the same commands, encrypted on the same keys after the alert
            after = b"\x17\x03\x03\x00\x30" + os.urandom(0x30)
        c.sock.sendall(close_notify + after)
        assert c.wait_closed(5 * SCALE), f"{variant}: the session went on after close_notify"
        c.close()
    assert "evil@example.net" not in mails(sink)
    assert len(p.wait_for_log("session-end", count=2)) == 2
    assert_still_serving(port, sink, "after close_notify")


def test_reload_without_a_certificate_keeps_tls_for_the_running_listeners(postern, sink, tmp_path, cert):
    """Listeners change only at a start: a reload whose file has no [tls]
    (and its listeners set to tls = "none") must not leave the running
    implicit-TLS and STARTTLS listeners without a certificate. It is refused
    with a log line, and both listeners go on speaking TLS."""
    p, (implicit, starttls) = start(postern, tmp_path, sink, cert,
                                    listeners=[{"tls": "implicit"}, {"tls": "starttls", "require_tls": True}])
    cfg = write_config(tmp_path / "postern.toml", [{"tls": "none"}, {"tls": "none"}], upstream=sink.address)
    assert "[tls]" not in open(cfg).read()
    reload(p, "reload-failed")
    with SmtpClient(implicit, tls_context=client_tls_context()) as c:
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("implicit")), 250)
    with SmtpClient(starttls) as c:
        r = c.ehlo()
        assert any("STARTTLS" in l for l in r.lines), f"STARTTLS no longer offered: {r}"
        upgrade(c, client_tls_context())
        c.ehlo()
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("starttls")), 250)
    assert p.alive()
    assert len(sink.wait_messages(2)) == 2


def test_tickets_grant_no_early_data(postern, sink, tmp_path, cert):
    """0-RTT data is replayable (RFC 8446 8, E.5): postern's TLS 1.3
    tickets allow none (max_early_data 0), so a resuming client with
    commands ready for early data sends them only after the handshake, as
    ordinary input of the new dialogue."""
    p, (port,) = start(postern, tmp_path, sink, cert)
    sess = tmp_path / "ticket.pem"
    early = tmp_path / "early.txt"
    early.write_bytes(b"MAIL FROM:<early@example.net>\r\n")
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", "smtp", "-tls1_3", "-ign_eof"]
    r = subprocess.run(base + ["-sess_out", str(sess)], input=b"QUIT\r\n", capture_output=True,
                       timeout=30 * SCALE)
    out = r.stdout.decode(errors="replace")
    assert "Max Early Data: 0" in out, out
    r = subprocess.run(base + ["-sess_in", str(sess), "-early_data", str(early)], input=b"QUIT\r\n",
                       capture_output=True, timeout=30 * SCALE)
    out = r.stdout.decode(errors="replace")
    assert "Reused, TLSv1.3" in out and "Early data was not sent" in out, out
    time.sleep(0.3)
    assert "early@example.net" not in mails(sink)


@pytest.mark.parametrize("where", ["starttls", "implicit", "proxy-header", "greet-pause"])
def test_shutdown_does_not_wait_for_a_stalled_handshake(postern, sink, tmp_path, cert, where):
    """A client that stalls before its dialogue (in the TLS handshake after
    STARTTLS's 220, at once on an implicit-TLS port: any scanner; and, the
    same class, inside a PROXY header or through greet_pause) waits on the
    client as an idle session does: SIGTERM ends it at once, not after
    shutdown_timeout with a forced shutdown."""
    p, (starttls, implicit, proxied) = start(
        postern, tmp_path, sink, cert,
        listeners=[{"tls": "starttls"}, {"tls": "implicit"}, {"tls": "none", "proxy_protocol": True}],
        sections={"server": {"shutdown_timeout": 10},
                  "timeouts": {"greet_pause": 20 if where == "greet-pause" else 0}})
    if where == "starttls":
        stalled = after_220(starttls)
        stalled.send(client_hello()[:20])
    else:
        port = {"implicit": implicit, "proxy-header": proxied, "greet-pause": starttls}[where]
        stalled = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        stalled.sendall({"implicit": client_hello()[:20], "proxy-header": b"PROXY TCP4 192.0.2.1 ",
                         "greet-pause": b""}[where])
    time.sleep(0.3)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    rc = p.wait_exit(9 * SCALE)
    p.stopped = True
    elapsed = time.monotonic() - t0
    try:
        assert rc == 0, f"postern did not exit within 9 s of SIGTERM (a stalled client held it)\n{p.log_tail()}"
        assert elapsed < 3 * SCALE, elapsed
        assert not p.events("shutdown-forced")
        if where in ("starttls", "implicit"):
            assert [l.get("error") for l in p.events("tls-failed")] == ["shutdown"], p.log_tail()
        p.check_sanitizers()
    finally:
        stalled.close()
        p.kill()
