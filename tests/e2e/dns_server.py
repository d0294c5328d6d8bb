"""A real DNS server for the end-to-end tests: /usr/sbin/unbound started on a
free loopback port, serving `local-data` records from a generated config
(the idea of tests/auth/dns_test_server.h), and a UDP socket that never
answers (for DNS time-outs). Also: DKIM keys and signing with dkimpy, the
TXT records that publish them, and the loopback sockets of the DNS servers
written in Python (faulty_dns.py, spf_suite.py). Nothing is mocked.

    with UnboundServer(["example.com. 300 IN TXT \\"v=spf1 -all\\""]) as dns:
        postern ... [dns] servers = [dns.address]   # "127.0.0.1@PORT"
"""

import base64
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from harness import stop_process
from ports import free_port

UNBOUND = "/usr/sbin/unbound"
DEFAULT_ZONES = ("example.com.", "example.org.", "example.net.")


def bind_udp_tcp():
    """(udp, tcp, port): a UDP and a TCP socket bound to one port on 127.0.0.1
    that was free for both; the TCP socket is not listening yet."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind(("127.0.0.1", port))
        except OSError:
            udp.close()
            tcp.close()
            continue
        return udp, tcp, port
    raise RuntimeError("no loopback port free for UDP and TCP")


def free_udp_tcp_port():
    """A port free for both UDP and TCP on 127.0.0.1 right now (ports.py)."""
    return free_port(udp=True)


def txt_record(name, value, ttl=300):
    """An unbound local-data TXT line; long values split in strings of <= 200."""
    parts = " ".join('"%s"' % value[i:i + 200] for i in range(0, len(value), 200))
    return "%s %d IN TXT %s" % (name if name.endswith(".") else name + ".", ttl, parts)


class UnboundServer:
    """unbound on 127.0.0.1:PORT, authoritative ("static") for `zones`, answering
    `records` (local-data lines) and NXDOMAIN / NODATA for the rest."""

    def __init__(self, records, zones=DEFAULT_ZONES):
        self.records = list(records)
        self.zones = list(zones)
        self.dir = None
        self.proc = None
        self.port = None

    def start(self, timeout=10.0):
        self.dir = tempfile.mkdtemp(prefix="postern-e2e-dns-")
        for _ in range(5):
            self.port = free_udp_tcp_port()
            conf = os.path.join(self.dir, "unbound.conf")
            with open(conf, "w") as f:
                f.write("server:\n"
                        "  interface: 127.0.0.1\n  port: %d\n"
                        "  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n"
                        "  directory: \"%s\"\n  pidfile: \"\"\n"
                        "  use-syslog: no\n  logfile: \"\"\n  verbosity: 0\n  do-ip6: no\n"
                        "  access-control: 127.0.0.0/8 allow\n  module-config: \"iterator\"\n"
                        "  num-threads: 1\n" % (self.port, self.dir))
                for z in self.zones:
                    f.write("  local-zone: \"%s\" static\n" % z)
                for r in self.records:
                    f.write("  local-data: '%s'\n" % r)
                f.write("remote-control:\n  control-enable: no\n")
            self.proc = subprocess.Popen([UNBOUND, "-d", "-c", conf], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return self
                except OSError:
                    time.sleep(0.05)
            err = b""
            if self.proc.poll() is not None:
                err = self.proc.stderr.read()
            self._kill()
            if b"address already in use" not in err.lower():
                raise RuntimeError("unbound did not start: %s" % err.decode(errors="replace"))
        raise RuntimeError("unbound did not start (ports in use)")

    def _kill(self):
        stop_process(self.proc)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def stop(self):
        self._kill()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    @property
    def address(self):
        """As postern's [dns] servers want it."""
        return "127.0.0.1@%d" % self.port

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def serve(records, **kw):
    """An UnboundServer answering `records`, for a pytest fixture to `yield from`;
    stopped after the fixture's last user."""
    with UnboundServer(records, **kw) as server:
        yield server


class BlackHoleDns:
    """A UDP socket on loopback that reads nothing and answers nothing."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    @property
    def address(self):
        return "127.0.0.1@%d" % self.port

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LoopbackDnsServer:
    """The transport of a DNS server written in Python: UDP and TCP on one
    port of 127.0.0.1, each served by a daemon thread. A subclass sets up
    what it answers, then calls this __init__; it reads and answers UDP in
    _serve_udp() and one TCP connection in _tcp_conn(conn), and stops when
    `stopped` is set or its socket fails."""

    def __init__(self):
        self.udp, self.tcp, self.port = bind_udp_tcp()
        self.tcp.listen(16)
        self.stopped = False
        self.threads = [threading.Thread(target=self._serve_udp, daemon=True),
                        threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self.threads:
            t.start()

    @property
    def address(self):
        """As postern's [dns] servers want it."""
        return "127.0.0.1@%d" % self.port

    def _serve_udp(self):
        raise NotImplementedError

    def _tcp_conn(self, conn):
        raise NotImplementedError

    def _serve_tcp(self):
        while not self.stopped:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def close(self):
        self.stopped = True
        for s in (self.udp, self.tcp):
            try:
                s.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept/recvfrom
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DkimKey:
    """An RSA key made by openssl; record() publishes it, sign() signs with dkimpy."""

    def __init__(self, domain, selector, bits=2048):
        self.domain = domain
        self.selector = selector
        self.pem = subprocess.run(["openssl", "genrsa", str(bits)], check=True,
                                  capture_output=True, timeout=60).stdout
        der = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=self.pem,
                             check=True, capture_output=True, timeout=60).stdout
        self.public_b64 = base64.b64encode(der).decode()

    def record(self):
        return txt_record("%s._domainkey.%s" % (self.selector, self.domain),
                          "v=DKIM1; k=rsa; p=%s" % self.public_b64)

    def sign(self, message, headers=(b"from", b"to", b"subject", b"date", b"message-id")):
        """The message with a DKIM-Signature (relaxed/relaxed, rsa-sha256) prepended."""
        import dkim
        sig = dkim.sign(message, self.selector.encode(), self.domain.encode(), self.pem,
                        canonicalize=(b"relaxed", b"relaxed"), include_headers=list(headers))
        return sig + message
