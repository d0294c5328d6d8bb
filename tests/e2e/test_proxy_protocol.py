"""PROXY protocol v1 and v2 (HAProxy spec) on listeners that enable it.

HAProxy (Debian's haproxy, foreground, loopback only) sits in front of postern
with send-proxy and send-proxy-v2; hand-made headers cover the rest. The real
client address must replace the socket peer in the logs and the Received
header; a listener that expects a header refuses connections without one; a
listener that does not expect one never parses one.
"""

import os
import socket
import ssl
import struct
import subprocess
import time

import pytest

from harness import (IO_TIMEOUT, SCALE, SmtpClient, check_reply, client_tls_context,
                     free_port, listener_ports, make_cert, make_message, parse_received_any,
                     stop_process, wait_port, write_config)

HAPROXY = "/usr/sbin/haproxy"
CLIENT_IP = "127.0.0.7"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(command, family=0x11, src="192.0.2.20", dst="127.0.0.1", sport=40002, dport=25,
              tlvs=b""):
    """A PROXY v2 header: command 0 = LOCAL, 1 = PROXY; family 0x11 TCP/IPv4,
    0x21 TCP/IPv6, 0x00 UNSPEC."""
    if family == 0x11:
        addr = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    elif family == 0x21:
        addr = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                + struct.pack("!HH", sport, dport))
    else:
        addr = b""
    body = addr + tlvs
    return V2_SIG + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


@pytest.fixture
def pp_postern(postern, sink, tmp_path):
    """postern with a PROXY-protocol listener and a plain one, before the sink."""
    cfg = write_config(tmp_path / "pp.toml", [{"proxy_protocol": True}, {"proxy_protocol": False}],
                       upstream=sink.address, sections={"log": {"level": "debug"}})
    p = postern.start(config=cfg, listen=())
    p.pp_port, p.plain_port = listener_ports(p)
    return p


class Haproxy:
    def __init__(self, tmp_path, backends):
        """backends: {name: (postern_port, "send-proxy" | "send-proxy-v2"[, [backend options]])}."""
        self.ports = {name: free_port() for name in backends}
        lines = ["global", "    maxconn 64", "defaults", "    mode tcp", "    timeout connect 5s",
                 "    timeout client 30s", "    timeout server 30s", ""]
        for name, (port, how, *options) in backends.items():
            lines += [f"frontend fe_{name}", f"    bind 127.0.0.1:{self.ports[name]}",
                      f"    default_backend be_{name}", f"backend be_{name}"]
            lines += [f"    {o}" for o in (options[0] if options else [])]
            lines += [f"    server postern 127.0.0.1:{port} {how}", ""]
        self.cfg = tmp_path / "haproxy.cfg"
        self.cfg.write_text("\n".join(lines))
        self.log = open(tmp_path / "haproxy.log", "wb")
        self.proc = subprocess.Popen([HAPROXY, "-f", str(self.cfg), "-db"], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            for port in self.ports.values():
                wait_port(port, 10 * SCALE)
        except OSError:
            self.stop()
            raise AssertionError("haproxy did not start:\n" + (tmp_path / "haproxy.log").read_text())

    def stop(self):
        stop_process(self.proc)
        self.log.close()


@pytest.fixture
def haproxy(tmp_path):
    if not os.access(HAPROXY, os.X_OK):
        pytest.fail(f"{HAPROXY} is missing (Debian package haproxy)")
    made = []

    def make(backends):
        h = Haproxy(tmp_path, backends)
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            h.stop()


def send_one(c, subject, sender="a@example.org"):
    c.ehlo()
    check_reply(c.send_message(sender, ["b@example.com"], make_message(subject)), 250, what=subject)
    c.expect("QUIT", 221)


def received_ip(msg):
    return parse_received_any(msg.received).group(2)


# --------------------------------------------------------------------------
# HAProxy in front


@pytest.mark.parametrize("how", ["send-proxy", "send-proxy-v2"])
def test_haproxy_real_client_address(pp_postern, sink, haproxy, how):
    h = haproxy({"pp": (pp_postern.pp_port, how)})
    with SmtpClient(h.ports["pp"], source=CLIENT_IP) as c:
        assert c.greeting.code == 220
        client_port = c.sock.getsockname()[1]
        send_one(c, f"via haproxy {how}")
    msg = sink.wait_messages(1)[0]
    assert received_ip(msg) == CLIENT_IP, msg.received
    # (haproxy's own start-up probes appear as sessions from 127.0.0.1)
    pp_postern.wait_for_log("session-start", client=f"{CLIENT_IP}:{client_port}")
    assert pp_postern.wait_for_log("message").get("client") == CLIENT_IP
    pp_postern.wait_for_log("session-end", client=CLIENT_IP)


@pytest.mark.parametrize("smart_connect", [False, True], ids=["header-alone", "tcp-smart-connect"])
def test_haproxy_v2_in_front_of_implicit_tls(postern, sink, haproxy, tmp_path, smart_connect):
    """header-alone: the client waits before its ClientHello, so haproxy's
    header arrives by itself. tcp-smart-connect: haproxy connects only when
    the client's first bytes are in and sends header + ClientHello at once,
    as any proxy may."""
    cert = make_cert(tmp_path, "pp")
    cfg = write_config(tmp_path / "pptls.toml", [{"proxy_protocol": True, "tls": "implicit"}],
                       upstream=sink.address, tls={"cert_file": cert[0], "key_file": cert[1]})
    p = postern.start(config=cfg, listen=())
    (port,) = listener_ports(p)
    options = ["option tcp-smart-connect"] if smart_connect else []
    h = haproxy({"tls": (port, "send-proxy-v2", options)})
    c = SmtpClient(h.ports["tls"], source=CLIENT_IP, greeting=False)
    with c:
        if not smart_connect:
            p.wait_for_log("session-start", client=f"{CLIENT_IP}:{c.sock.getsockname()[1]}")
        c.sock.settimeout(5 * SCALE)
        c.sock = client_tls_context().wrap_socket(c.sock, server_hostname="mx.postern.test")
        c.sock.settimeout(c.timeout)
        check_reply(c.read_reply(), 220)
        assert c.peer_cert_sha256() == cert[2]
        send_one(c, "proxy then tls")
    msg = sink.wait_messages(1)[0]
    m = parse_received_any(msg.received)
    assert m.group(2) == CLIENT_IP and m.group(4) == "ESMTPS", msg.received
    p.wait_for_log("tls", client=CLIENT_IP)


# --------------------------------------------------------------------------
# a listener that expects the header


def test_proxy_listener_refuses_plain_smtp(pp_postern, sink):
    with socket.create_connection(("127.0.0.1", pp_postern.pp_port), timeout=IO_TIMEOUT) as s:
        s.sendall(b"EHLO client.example\r\n")
        s.settimeout(5 * SCALE)
        got = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
    assert got == b"", f"a client without a PROXY header got {got!r}"
    err = pp_postern.wait_for_log("proxy-protocol-error")
    assert err.get("peer") == "127.0.0.1"
    assert not sink.commands("MAIL")


def test_proxy_listener_sends_no_greeting_before_the_header(pp_postern, sink):
    with SmtpClient(pp_postern.pp_port, greeting=False, source=CLIENT_IP) as c:
        with pytest.raises((socket.timeout, TimeoutError)):
            c.read_line(timeout=1.0)
        assert not c.buf
        c.send(b"PROXY TCP4 192.0.2.30 127.0.0.1 40030 25\r\n")
        check_reply(c.read_reply(), 220)
        send_one(c, "late header")
    assert received_ip(sink.wait_messages(1)[0]) == "192.0.2.30"


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 999.1.1.1 127.0.0.1 1 25\r\n",
    b"PROXY TCP4 192.0.2.1 127.0.0.1 1\r\n",
    b"PROXY TCP6 192.0.2.1 127.0.0.1 1 25\r\n",
    b"PROXY TCP4 192.0.2.1 127.0.0.1 65536 25\r\n",
    b"PROXY " + b"A" * 120 + b"\r\n",
    V2_SIG + b"\x31\x11\x00\x0c" + b"\x00" * 12,       # version 3
    V2_SIG + b"\x22\x11\x00\x0c" + b"\x00" * 12,       # command 2
], ids=["v1-bad-ip", "v1-5-fields", "v1-family-mismatch", "v1-bad-port", "v1-too-long",
        "v2-version-3", "v2-command-2"])
def test_proxy_listener_refuses_invalid_header(pp_postern, sink, header):
    with SmtpClient(pp_postern.pp_port, greeting=False) as c:
        c.send(header)
        assert c.wait_closed(5 * SCALE), "connection not closed"
        assert not c.buf, f"got {bytes(c.buf)!r}"
    pp_postern.wait_for_log("proxy-protocol-error")
    assert not sink.commands("MAIL")


# --------------------------------------------------------------------------
# a listener that does not expect it


def test_plain_listener_never_parses_proxy_header(pp_postern, sink):
    with SmtpClient(pp_postern.plain_port, source=CLIENT_IP) as c:
        assert c.greeting.code == 220
        r = c.cmd("PROXY TCP4 192.0.2.66 127.0.0.1 1111 25")
        assert r.code == 500, f"PROXY line on a plain listener: {r}"
        send_one(c, "no proxy here")
    assert received_ip(sink.wait_messages(1)[0]) == CLIENT_IP
    assert pp_postern.wait_for_log("session-start").get("client").startswith(CLIENT_IP + ":")
    assert not pp_postern.events("proxy-protocol")


def test_plain_listener_v2_signature_is_not_a_header(pp_postern, sink):
    """The v2 signature holds "QUIT\\n": a bare-LF line, an error, never a QUIT."""
    with SmtpClient(pp_postern.plain_port, source=CLIENT_IP) as c:
        c.send(v2_header(1) + b"\r\n")
        replies = []
        while True:
            try:
                replies.append(c.read_reply(timeout=1.0))
            except (socket.timeout, TimeoutError):
                break
        assert replies and all(r.code >= 500 for r in replies), replies
        assert not any(r.code == 221 for r in replies), replies
        send_one(c, "v2 bytes on plain")
    assert received_ip(sink.wait_messages(1)[0]) == CLIENT_IP
    assert not pp_postern.events("proxy-protocol")


# --------------------------------------------------------------------------
# hand-made headers


@pytest.mark.parametrize("header,ip,port", [
    (b"PROXY TCP4 192.0.2.10 127.0.0.1 40000 25\r\n", "192.0.2.10", 40000),
    (b"PROXY TCP6 2001:db8::5 ::1 40001 25\r\n", "2001:db8::5", 40001),
    (b"PROXY TCP6 ::ffff:192.0.2.11 ::1 40004 25\r\n", "192.0.2.11", 40004),
    (v2_header(1), "192.0.2.20", 40002),
    (v2_header(1, 0x21, "2001:db8::20", "::1", 40003), "2001:db8::20", 40003),
    (v2_header(1, tlvs=b"\x01\x00\x04smtp" + b"\x04\x00\x00"), "192.0.2.20", 40002),
], ids=["v1-tcp4", "v1-tcp6", "v1-v4mapped", "v2-tcp4", "v2-tcp6", "v2-tlvs"])
def test_handmade_header_gives_client_address(pp_postern, sink, header, ip, port):
    with SmtpClient(pp_postern.pp_port, greeting=False, source=CLIENT_IP) as c:
        c.send(header)
        check_reply(c.read_reply(), 220)
        send_one(c, "handmade")
    msg = sink.wait_messages(1)[0]
    expect = f"IPv6:{ip}" if ":" in ip else ip
    assert received_ip(msg) == expect, msg.received
    assert pp_postern.wait_for_log("session-start").get("client") == f"{ip}:{port}"
    assert pp_postern.wait_for_log("message").get("client") == ip


@pytest.mark.parametrize("header", [
    v2_header(0),                                    # LOCAL
    v2_header(0, tlvs=b"\x04\x00\x00"),              # LOCAL with a TLV
    v2_header(1, family=0x00),                       # PROXY, UNSPEC
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
], ids=["v2-local", "v2-local-tlv", "v2-unspec", "v1-unknown", "v1-unknown-long"])
def test_local_header_keeps_socket_peer(pp_postern, sink, header):
    with SmtpClient(pp_postern.pp_port, greeting=False, source=CLIENT_IP) as c:
        local_port = c.sock.getsockname()[1]
        c.send(header)
        check_reply(c.read_reply(), 220)
        send_one(c, "local")
    assert received_ip(sink.wait_messages(1)[0]) == CLIENT_IP
    assert pp_postern.wait_for_log("session-start").get("client") == f"{CLIENT_IP}:{local_port}"


def test_header_in_pieces_and_smtp_in_same_segment(pp_postern, sink):
    """A header split over several writes, and one followed at once by EHLO."""
    with SmtpClient(pp_postern.pp_port, greeting=False, source=CLIENT_IP) as c:
        h = v2_header(1, src="192.0.2.40", sport=40040)
        for i in range(0, len(h), 5):
            c.send(h[i:i + 5])
            time.sleep(0.02)
        check_reply(c.read_reply(), 220)
        send_one(c, "pieces")
    with SmtpClient(pp_postern.pp_port, greeting=False, source=CLIENT_IP) as c:
        c.send(b"PROXY TCP4 192.0.2.41 127.0.0.1 40041 25\r\nEHLO client.example\r\n")
        check_reply(c.read_reply(), 220)
        check_reply(c.read_reply(), 250)
        check_reply(c.send_message("a@example.org", ["b@example.com"], make_message("same")), 250)
    msgs = sink.wait_messages(2)
    assert sorted(received_ip(m) for m in msgs) == ["192.0.2.40", "192.0.2.41"]


def _pump_handshake(sock, tls, outgoing, incoming, first=b""):
    """Drives a MemoryBIO TLS handshake over sock; `first` goes out before
    the ClientHello in the same write."""
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    sock.sendall(first + outgoing.read())
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            data = outgoing.read()
            if data:
                sock.sendall(data)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection during the handshake")
            incoming.write(chunk)
    data = outgoing.read()
    if data:
        sock.sendall(data)


@pytest.mark.parametrize("together", [False, True], ids=["separate-writes", "one-write"])
def test_header_and_client_hello_implicit_tls(postern, sink, tmp_path, together):
    """A load balancer forwards the client's first bytes together with the
    header (haproxy does): the ClientHello after the header must not be lost."""
    cert = make_cert(tmp_path, "pp")
    cfg = write_config(tmp_path / "pptls.toml", [{"proxy_protocol": True, "tls": "implicit"}],
                       upstream=sink.address, tls={"cert_file": cert[0], "key_file": cert[1]})
    p = postern.start(config=cfg, listen=())
    (port,) = listener_ports(p)
    with socket.create_connection(("127.0.0.1", port), timeout=5 * SCALE) as s:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_tls_context().wrap_bio(incoming, outgoing, server_hostname="mx.postern.test")
        header = b"PROXY TCP4 192.0.2.50 127.0.0.1 40050 465\r\n"
        if not together:
            s.sendall(header)
            time.sleep(0.3)
        _pump_handshake(s, tls, outgoing, incoming, first=header if together else b"")
        greeting = b""
        while b"\r\n" not in greeting:
            try:
                greeting += tls.read(4096)
            except ssl.SSLWantReadError:
                chunk = s.recv(65536)
                assert chunk, "closed before the greeting"
                incoming.write(chunk)
        assert greeting.startswith(b"220 "), greeting
    p.wait_for_log("tls", client="192.0.2.50")


# --------------------------------------------------------------------------
# issue 18: one deadline for the header, trusted sources, limits from accept


def test_header_trickled_octet_by_octet_times_out_once(postern, sink, tmp_path):
    """timeouts.command bounds the whole header, not each octet: one octet
    every 0.5 s (a 45-octet header would take 22 s) is cut off after ~2 s."""
    cfg = write_config(tmp_path / "pp.toml", [{"proxy_protocol": True}], upstream=sink.address,
                       sections={"timeouts": {"command": 2}})
    p = postern.start(config=cfg, listen=())
    (port,) = listener_ports(p)
    header = b"PROXY TCP4 192.0.2.60 127.0.0.1 40060 25\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as s:
        start = time.monotonic()
        closed_after = None
        for octet in header:
            try:
                s.sendall(bytes([octet]))
            except OSError:
                closed_after = time.monotonic() - start
                break
            s.settimeout(0.5)
            try:
                if s.recv(100) == b"":
                    closed_after = time.monotonic() - start
                    break
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                closed_after = time.monotonic() - start
                break
    assert closed_after is not None, "the trickled header was read to its end"
    assert closed_after < 2 + 2 * SCALE, f"closed only after {closed_after:.1f} s"
    err = p.wait_for_log("proxy-protocol-error")
    assert err.get("error") == "timeout", err
    assert not p.events("session-start", client="192.0.2.60:40060")


def test_header_from_untrusted_source_is_refused(postern, sink, tmp_path):
    """proxy_protocol_from names the peers that may send the header; any
    other peer is closed without a word, with a log line, before its header
    is read; a trusted peer is served."""
    cfg = write_config(tmp_path / "pp.toml", [{"proxy_protocol": True,
                                                "proxy_protocol_from": ["127.0.0.5/32", "::1/128"]}],
                       upstream=sink.address)
    p = postern.start(config=cfg, listen=())
    (port,) = listener_ports(p)
    for header in (b"PROXY TCP4 192.0.2.70 127.0.0.1 40070 25\r\n", v2_header(1, src="192.0.2.71")):
        with SmtpClient(port, greeting=False, source=CLIENT_IP) as c:  # 127.0.0.7: not trusted
            c.send(header)
            assert c.wait_closed(5 * SCALE), "an untrusted peer's connection was not closed"
            assert not c.buf, f"an untrusted peer got {bytes(c.buf)!r}"
    lines = p.wait_for_log("proxy-protocol-untrusted", count=2)
    assert all(l.get("peer") == CLIENT_IP for l in lines), lines
    assert not p.events("session-start", client="192.0.2.70:40070")
    with SmtpClient(port, greeting=False, source="127.0.0.5") as c:
        c.send(b"PROXY TCP4 192.0.2.72 127.0.0.1 40072 25\r\n")
        check_reply(c.read_reply(), 220)
        send_one(c, "trusted")
    assert received_ip(sink.wait_messages(1)[0]) == "192.0.2.72"


def test_proxy_protocol_from_needs_proxy_protocol(tmp_path):
    from harness import run_cli
    cfg = write_config(tmp_path / "bad.toml", [{"proxy_protocol_from": ["127.0.0.1/32"]}])
    r = run_cli(["config", "check", cfg])
    assert r.returncode != 0 and "proxy_protocol_from" in r.stderr + r.stdout, r
    cfg = write_config(tmp_path / "bad2.toml", [{"proxy_protocol": True, "proxy_protocol_from": ["nonsense"]}])
    r = run_cli(["config", "check", cfg])
    assert r.returncode != 0 and "proxy_protocol_from" in r.stderr + r.stdout, r


def test_total_limit_applies_before_the_header(postern, sink, tmp_path):
    """limits.sessions counts from accept: with two connections holding the
    PROXY listener (no header sent), a third is refused with 421 at once,
    before any header octet is read."""
    cfg = write_config(tmp_path / "pp.toml", [{"proxy_protocol": True}], upstream=sink.address,
                       sections={"limits": {"sessions": 2}})
    p = postern.start(config=cfg, listen=())
    (port,) = listener_ports(p)
    held = [socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) for _ in range(2)]
    try:
        time.sleep(0.3 * SCALE)
        with SmtpClient(port, greeting=False) as c:
            check_reply(c.read_reply(timeout=5 * SCALE), 421, "4.3.2", "third connection, no header sent")
            assert c.wait_closed(5 * SCALE)
        line = p.wait_for_log("session-limit")
        assert line.get("limit") == "limits.sessions", line
    finally:
        for s in held:
            s.close()


def test_per_address_limit_applies_to_the_real_client(postern, sink, tmp_path):
    """Per-address limits count the client the header names, not the proxy."""
    cfg = write_config(tmp_path / "pp.toml", [{"proxy_protocol": True}], upstream=sink.address,
                       sections={"limits": {"sessions_per_ip": 1, "sessions_exempt": []}})
    p = postern.start(config=cfg, listen=())
    (port,) = listener_ports(p)
    with SmtpClient(port, greeting=False) as first:
        first.send(b"PROXY TCP4 192.0.2.80 127.0.0.1 40080 25\r\n")
        check_reply(first.read_reply(), 220)
        with SmtpClient(port, greeting=False) as other:  # same proxy, another client: served
            other.send(b"PROXY TCP4 192.0.2.81 127.0.0.1 40081 25\r\n")
            check_reply(other.read_reply(), 220)
            with SmtpClient(port, greeting=False) as again:  # the first client again: refused
                again.send(b"PROXY TCP4 192.0.2.80 127.0.0.1 40082 25\r\n")
                check_reply(again.read_reply(), 421, "4.7.0", "second session of 192.0.2.80")
    line = p.wait_for_log("session-limit")
    assert line.get("limit") == "limits.sessions_per_ip" and line.get("client") == "192.0.2.80", line


def test_limit_applies_before_the_implicit_tls_handshake(postern, sink, tmp_path):
    """An implicit-TLS listener over its limit closes before the handshake."""
    cert = make_cert(tmp_path, "lim")
    cfg = write_config(tmp_path / "tls.toml", [{"tls": "implicit"}], upstream=sink.address,
                       tls={"cert_file": cert[0], "key_file": cert[1]},
                       sections={"limits": {"sessions": 1}})
    p = postern.start(config=cfg, listen=())
    (port,) = listener_ports(p)
    held = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)  # no handshake
    try:
        time.sleep(0.3 * SCALE)
        with socket.create_connection(("127.0.0.1", port), timeout=5 * SCALE) as s:
            with pytest.raises((ssl.SSLError, OSError)):
                client_tls_context().wrap_socket(s, server_hostname="mx.postern.test")
        line = p.wait_for_log("session-limit")
        assert line.get("limit") == "limits.sessions" and line.get("action") == "closed", line
        assert not p.events("tls-failed"), "a handshake was attempted over the limit"
    finally:
        held.close()
