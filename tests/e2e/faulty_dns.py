"""A small scriptable DNS server for fault-injection tests (dnslib).

Serves UDP and TCP on one loopback port. It answers from a zone given as
master-file lines, or misbehaves on purpose, per transport:

  answer     the records (NXDOMAIN for names it does not know, NODATA for
             known names without that type)
  drop       reads the query and never answers
  servfail   RCODE 2 (SERVFAIL)
  refused    RCODE 5 (REFUSED)
  truncate   an empty answer with the TC bit set (RFC 1035 §4.1.1): a resolver
             must retry over TCP
  garbage    a reply that is cut in the middle of its header (TCP: length
             prefix promises more than follows)

`udp_mode` / `tcp_mode` may be changed while it runs; `queries` records
(transport, name, type) of every query.
"""

import struct
import threading

from dnslib import QTYPE, RCODE, RR, DNSRecord

from dns_server import LoopbackDnsServer


class FaultyDns(LoopbackDnsServer):
    def __init__(self, zone=(), udp_mode="answer", tcp_mode="answer"):
        self.records = [RR.fromZone(line)[0] for line in zone]
        self.udp_mode = udp_mode
        self.tcp_mode = tcp_mode
        self.queries = []
        self._lock = threading.Lock()
        super().__init__()

    @property
    def server(self):
        """The forwarder string for postern's [dns] servers."""
        return self.address

    def count(self, transport=None):
        with self._lock:
            return len([q for q in self.queries if transport is None or q[0] == transport])

    # -- answers -----------------------------------------------------------

    def _answer(self, query):
        reply = query.reply()
        qname = str(query.q.qname).lower()
        qtype = query.q.qtype
        known = False
        for rr in self.records:
            if str(rr.rname).lower() == qname:
                known = True
                if rr.rtype == qtype or (rr.rtype == QTYPE.CNAME and qtype != QTYPE.CNAME):
                    reply.add_answer(rr)
        if not known:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply.pack()

    def _respond(self, data, mode, transport):
        """The bytes to send back for one query, or None for no answer."""
        try:
            query = DNSRecord.parse(data)
        except Exception:  # not DNS: ignore it
            return None
        with self._lock:
            self.queries.append((transport, str(query.q.qname).lower(), QTYPE.get(query.q.qtype)))
        if mode == "drop":
            return None
        if mode in ("servfail", "refused"):
            reply = query.reply()
            reply.header.rcode = RCODE.SERVFAIL if mode == "servfail" else RCODE.REFUSED
            return reply.pack()
        if mode == "truncate":
            reply = query.reply()
            reply.header.tc = 1
            return reply.pack()
        if mode == "garbage":
            return self._answer(query)[:7]
        return self._answer(query)

    # -- transports --------------------------------------------------------

    def _serve_udp(self):
        while not self.stopped:
            try:
                data, peer = self.udp.recvfrom(4096)
            except OSError:
                return
            out = self._respond(data, self.udp_mode, "udp")
            if out is not None:
                try:
                    self.udp.sendto(out, peer)
                except OSError:
                    pass

    def _tcp_conn(self, conn):
        conn.settimeout(10)
        try:
            while True:
                head = self._read(conn, 2)
                if head is None:
                    return
                data = self._read(conn, struct.unpack("!H", head)[0])
                if data is None:
                    return
                mode = self.tcp_mode
                out = self._respond(data, mode, "tcp")
                if out is None:
                    continue
                if mode == "garbage":
                    conn.sendall(struct.pack("!H", len(out) + 100) + out)
                    return
                conn.sendall(struct.pack("!H", len(out)) + out)
        except OSError:
            pass
        finally:
            conn.close()

    @staticmethod
    def _read(conn, n):
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def stop(self):
        self.close()
