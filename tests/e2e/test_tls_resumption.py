"""Inbound TLS resumption and the handshake off other sessions' path (issue 23).

Returning clients resume their TLS session: TLS 1.3 and TLS 1.2 tickets
sealed with the process's ticket keys (which outlive a reload), TLS 1.2
session ids from the cache when tickets are off, and tickets shared between
postern processes through tls.ticket_key_file. A stalled or hostile handshake
does not delay another session's relay, even on a single I/O thread.

Clients are Python's ssl (OpenSSL) doing STARTTLS by hand, so that the
session of one connection can be offered on the next.
"""

import os
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest

from harness import (IO_TIMEOUT, POSTERN_BIN, SCALE, client_tls_context, listener_ports, make_cert,
                     write_config)


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("certs"), "resume")


def start(postern, sink, tmp_path, cert, tls_extra=None, server=None, name="postern.toml", listener=None):
    tls = {"cert_file": cert[0], "key_file": cert[1]}
    tls.update(tls_extra or {})
    sections = {"server": server} if server else None
    cfg = write_config(tmp_path / name, [listener or {"tls": "starttls"}], upstream=sink.address, tls=tls,
                       sections=sections)
    p = postern.start(config=cfg, listen=())
    return p, listener_ports(p)[0], cfg


def reply(f):
    """One SMTP reply (all its lines) from a file object."""
    lines = []
    while True:
        line = f.readline()
        assert line, f"connection closed after {lines!r}"
        lines.append(line.decode())
        if line[3:4] != b"-":
            return lines


class TlsSession:
    """One SMTP session: greeting, EHLO, STARTTLS offering `session`, EHLO."""

    def __init__(self, port, ctx, session=None):
        self.raw = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        f = self.raw.makefile("rb")
        assert reply(f)[0].startswith("220")
        self.raw.sendall(b"EHLO client.example\r\n")
        assert any("STARTTLS" in l for l in reply(f))
        self.raw.sendall(b"STARTTLS\r\n")
        assert reply(f)[0].startswith("220")
        self.tls = ctx.wrap_socket(self.raw, session=session)
        self.f = self.tls.makefile("rb")
        self.tls.sendall(b"EHLO client.example\r\n")
        assert reply(self.f)[-1].startswith("250")  # the TLS 1.3 ticket came before this reply
        self.reused = self.tls.session_reused
        self.version = self.tls.version()

    def send(self, subject):
        self.tls.sendall(b"MAIL FROM:<alice@example.org>\r\n")
        assert reply(self.f)[0].startswith("250")
        self.tls.sendall(b"RCPT TO:<bob@example.com>\r\n")
        assert reply(self.f)[0].startswith("250")
        self.tls.sendall(b"DATA\r\n")
        assert reply(self.f)[0].startswith("354")
        self.tls.sendall(f"Subject: {subject}\r\n\r\nbody\r\n.\r\n".encode())
        r = reply(self.f)
        assert r[0].startswith("250"), r

    def quit(self):
        session = self.tls.session
        try:
            self.tls.sendall(b"QUIT\r\n")
            reply(self.f)
        finally:
            self.tls.close()
        return session


def client_ctx(version):
    ctx = client_tls_context()
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


VERSIONS = [pytest.param(ssl.TLSVersion.TLSv1_3, id="tls13"), pytest.param(ssl.TLSVersion.TLSv1_2, id="tls12")]


@pytest.mark.parametrize("version", VERSIONS)
def test_returning_client_resumes(postern, sink, tmp_path, cert, version):
    p, port, _ = start(postern, sink, tmp_path, cert)
    ctx = client_ctx(version)
    first = TlsSession(port, ctx)
    assert not first.reused
    first.send("first")
    session = first.quit()
    assert session is not None and session.has_ticket, "postern issued no session ticket"
    for i in range(3):  # every return resumes, with the ticket of the last connection
        s = TlsSession(port, ctx, session)
        assert s.reused, f"connection {i + 2} did a full handshake"
        assert s.version == {ssl.TLSVersion.TLSv1_3: "TLSv1.3", ssl.TLSVersion.TLSv1_2: "TLSv1.2"}[version]
        s.send(f"again {i}")
        previous, session = session, s.quit()
        if version == ssl.TLSVersion.TLSv1_3:  # a fresh ticket on every resumption (RFC 8446 C.4)
            assert session.id != previous.id, "no new ticket after a TLS 1.3 resumption"
    assert len(sink.wait_messages(4)) == 4


@pytest.mark.parametrize("version", VERSIONS)
def test_tickets_survive_reload(postern, sink, tmp_path, cert, version):
    p, port, _ = start(postern, sink, tmp_path, cert)
    ctx = client_ctx(version)
    s = TlsSession(port, ctx)
    session = s.quit()
    p.proc.send_signal(signal.SIGHUP)  # a new TLS context (certificates re-read)
    p.wait_for_log("reloaded")
    again = TlsSession(port, ctx, session)
    assert again.reused, "a reload threw away the ticket keys"
    again.send("after reload")
    again.quit()
    sink.wait_messages(1)


def test_tickets_off_session_id_cache(postern, sink, tmp_path, cert):
    """session_tickets = false: no ticket; TLS 1.2 resumes by session id."""
    p, port, _ = start(postern, sink, tmp_path, cert, {"session_tickets": False})
    ctx = client_ctx(ssl.TLSVersion.TLSv1_2)
    s = TlsSession(port, ctx)
    session = s.quit()
    assert not session.has_ticket, "a ticket was issued with session_tickets = false"
    again = TlsSession(port, ctx, session)
    assert again.reused, "the session id was not resumed"
    again.quit()


def test_tickets_off_tls13_resumes_from_the_cache(postern, sink, tmp_path, cert):
    """session_tickets = false, TLS 1.3: the one ticket a handshake gets
    names a session in postern's cache (stateful), and a returning client
    resumes with it, connection after connection."""
    p, port, _ = start(postern, sink, tmp_path, cert, {"session_tickets": False})
    ctx = client_ctx(ssl.TLSVersion.TLSv1_3)
    s = TlsSession(port, ctx)
    session = s.quit()
    for i in range(3):
        again = TlsSession(port, ctx, session)
        assert again.reused and again.version == "TLSv1.3", f"connection {i + 2} did not resume"
        session = again.quit()


def test_ticket_key_file_shared_between_processes(postern, sink, tmp_path, cert):
    """Two postern processes with the same tls.ticket_key_file resume each
    other's tickets; a process with other keys does a full handshake."""
    keys = tmp_path / "ticket.keys"
    keys.write_bytes(os.urandom(160))  # two keys: the first seals
    os.chmod(keys, 0o600)
    other = tmp_path / "other.keys"
    other.write_bytes(os.urandom(80))
    a, port_a, _ = start(postern, sink, tmp_path, cert, {"ticket_key_file": str(keys)}, name="a.toml")
    b, port_b, _ = start(postern, sink, tmp_path, cert, {"ticket_key_file": str(keys)}, name="b.toml")
    c, port_c, _ = start(postern, sink, tmp_path, cert, {"ticket_key_file": str(other)}, name="c.toml")
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = client_ctx(version)
        session = TlsSession(port_a, ctx).quit()
        on_b = TlsSession(port_b, ctx, session)
        assert on_b.reused, f"{version}: b did not open a's ticket"
        on_b.quit()
        on_c = TlsSession(port_c, ctx, session)
        assert not on_c.reused, f"{version}: c opened a ticket sealed with keys it does not have"
        on_c.quit()
    # the second key of the file opens tickets too (a rotation: the new key first, the old one second)
    rotated = tmp_path / "rotated.keys"
    data = keys.read_bytes()
    rotated.write_bytes(os.urandom(80) + data[:80])
    d, port_d, _ = start(postern, sink, tmp_path, cert, {"ticket_key_file": str(rotated)}, name="d.toml")
    ctx = client_ctx(ssl.TLSVersion.TLSv1_3)
    session = TlsSession(port_a, ctx).quit()
    on_d = TlsSession(port_d, ctx, session)
    assert on_d.reused, "the previous key (second in the file) did not open the ticket"
    on_d.quit()


@pytest.mark.parametrize("size", [0, 48, 79, 81, 80 * 17])
def test_ticket_key_file_of_wrong_size_is_refused(tmp_path, cert, size):
    keys = tmp_path / "bad.keys"
    keys.write_bytes(os.urandom(size))
    cfg = write_config(tmp_path / "bad.toml", [{"tls": "starttls"}], upstream="127.0.0.1:1",
                       tls={"cert_file": cert[0], "key_file": cert[1], "ticket_key_file": str(keys)})
    r = subprocess.run([POSTERN_BIN, "run", "--config", cfg], capture_output=True, text=True,
                       timeout=30 * SCALE, cwd=str(tmp_path))
    assert r.returncode != 0
    assert "tls.ticket_key_file" in r.stderr and f"{size} octets" in r.stderr, r.stderr


def test_session_lifetime_bounds(tmp_path, cert):
    cfg = write_config(tmp_path / "bad.toml", [{"tls": "starttls"}], upstream="127.0.0.1:1",
                       tls={"cert_file": cert[0], "key_file": cert[1], "session_lifetime": 5})
    r = subprocess.run([POSTERN_BIN, "run", "--config", cfg], capture_output=True, text=True,
                       timeout=30 * SCALE, cwd=str(tmp_path))
    assert r.returncode != 0 and "tls.session_lifetime" in r.stderr, r.stderr


# --------------------------------------------------------------------------
# a stalled handshake must not hold up anyone else


def stall_handshake(port, how):
    """A session that starts a TLS handshake and stops in the middle."""
    s = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    f = s.makefile("rb")
    assert reply(f)[0].startswith("220")
    s.sendall(b"EHLO stall.example\r\nSTARTTLS\r\n")
    reply(f)
    assert reply(f)[0].startswith("220")
    if how == "header":      # a record header promising 16 KiB, then nothing
        s.sendall(b"\x16\x03\x01\x40\x00")
    elif how == "partial":   # a real ClientHello, cut short
        hello = client_hello_bytes()
        s.sendall(hello[:len(hello) // 2])
    elif how == "after-hello":  # a whole ClientHello, then no answer to the server's flight
        s.sendall(client_hello_bytes())
    return s


_HELLO = []


def client_hello_bytes():
    """The first flight of a real TLS client (its ClientHello), from a memory BIO."""
    if not _HELLO:
        ctx = client_tls_context()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing)
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        _HELLO.append(outgoing.read())
    return _HELLO[0]


@pytest.mark.parametrize("threads", [1, 2])
def test_stalled_handshakes_do_not_delay_another_sessions_relay(postern, sink, tmp_path, cert, threads):
    p, port, _ = start(postern, sink, tmp_path, cert, server={"threads": threads})
    ctx = client_ctx(ssl.TLSVersion.TLSv1_3)
    # the baseline: one whole STARTTLS session and message, nothing stalled
    t0 = time.monotonic()
    s = TlsSession(port, ctx)
    s.send("baseline")
    s.quit()
    baseline = time.monotonic() - t0
    stalled = [stall_handshake(port, how) for how in ("header", "partial", "after-hello") for _ in range(5)]
    try:
        # a client opening a session every few ms while the stalled ones hold
        # their handshakes open: each must go through as fast as the baseline
        times = []
        for i in range(5):
            t0 = time.monotonic()
            s = TlsSession(port, ctx)
            s.send(f"while stalled {i}")
            s.quit()
            times.append(time.monotonic() - t0)
        sink.wait_messages(6)
        # generous: a stall that blocked the I/O thread would cost the
        # handshake time-out (seconds), not milliseconds
        assert max(times) < max(1.0, 10 * baseline) * SCALE, (baseline, times)
        # the stalled sessions are still open: postern did not drop them to get on
        for st in stalled:
            st.setblocking(False)
            try:
                assert st.recv(1) != b"", "a stalled handshake was closed at once"
            except BlockingIOError:
                pass
    finally:
        for st in stalled:
            st.close()


def test_handshake_flood_while_relaying(postern, sink, tmp_path, cert):
    """Full handshakes from 4 threads (CPU work on postern's I/O thread)
    while one session relays 20 messages: each message still goes through."""
    p, port, _ = start(postern, sink, tmp_path, cert, server={"threads": 1})
    stop = threading.Event()
    done = [0]

    def flood():
        ctx = client_ctx(ssl.TLSVersion.TLSv1_3)
        while not stop.is_set():
            try:
                TlsSession(port, ctx).quit()
                done[0] += 1
            except OSError:
                pass

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        ctx = client_ctx(ssl.TLSVersion.TLSv1_3)
        s = TlsSession(port, ctx)
        worst = 0.0
        for i in range(20):
            t0 = time.monotonic()
            s.send(f"under flood {i}")
            worst = max(worst, time.monotonic() - t0)
        s.quit()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    sink.wait_messages(20)
    assert done[0] > 0
    assert worst < 2.0 * SCALE, worst


def s_client(port, *args):
    """openssl s_client -starttls smtp, QUIT, the transcript: -ign_eof reads on until postern
    closes after its 221, so the ticket (sent after the handshake) is always seen."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", "smtp",
                        "-tls1_3", "-ign_eof"] + list(args), input="QUIT\r\n", capture_output=True,
                       text=True, timeout=30 * SCALE)
    return r.stdout + r.stderr


def test_tls13_resumption_issues_a_fresh_ticket(postern, sink, tmp_path, cert):
    """A client that uses each ticket once (RFC 8446 C.4) resumes on every
    return: postern sends a new ticket after each resumption too."""
    p, port, _ = start(postern, sink, tmp_path, cert)
    first, second = tmp_path / "s1.pem", tmp_path / "s2.pem"
    out = s_client(port, "-sess_out", str(first))
    assert "New, TLSv1.3" in out and out.count("Post-Handshake New Session Ticket arrived") == 1, out
    out = s_client(port, "-sess_in", str(first), "-sess_out", str(second))
    assert "Reused, TLSv1.3" in out, out
    # exactly one: the renewal, sent with the reply to QUIT (proxy/tls.cpp)
    assert out.count("Post-Handshake New Session Ticket arrived") == 1, "not one ticket after a resumption:\n" + out
    out = s_client(port, "-sess_in", str(second))
    assert "Reused, TLSv1.3" in out, out
