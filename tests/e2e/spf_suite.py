"""The openspf SPF conformance suites (RFC 7208, and RFC 4408 before it), run
through `postern check` against a real DNS server on loopback.

The suites come with Debian's python3-spf (/usr/share/doc/python3-spf/
rfc7208-tests.yml.gz, rfc4408-tests.yml.gz); they are read from there, never
copied. Each scenario is a DNS zone and tests (client address, HELO, sender,
expected result and explanation). ZoneDns is a dnslib-encoded UDP/TCP server
that answers from the current scenario's zone the way the suite's own driver
(pyspf's testspf.py) answers: SPF-type data doubles as TXT where a name has no
TXT, "TIMEOUT" and names under "error." are never answered, a CNAME is
followed one level. One server runs for a whole suite; the zone is swapped
per scenario, and each test is one `postern check` process (so no DNS cache
survives from one scenario into the next).

Rerun by hand:

    /usr/bin/python3 tests/e2e/spf_suite.py [--suite rfc7208|rfc4408] [--postern build/postern] [-v] [TEST...]
"""

import gzip
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile

import yaml
from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, TXT, A, DNSLabel, DNSRecord

from dns_server import LoopbackDnsServer

SUITE_DIR = "/usr/share/doc/python3-spf"

# RFC 4408 tests where RFC 7208 changed the answer on purpose: the RFC 4408
# suite lists the RFC 7208 answer as an alternative, and postern gives it, not
# the RFC 4408 one listed first. name -> why.
RFC4408_CHANGED = {
    "spfonly": "RFC 7208 3.1: the SPF RR type (99) is no longer queried; only a type-SPF record is no record: none",
    "spfoverride": "RFC 7208 3.1: type-SPF records are not consulted; the TXT record decides",
    "multispf2": "RFC 7208 3.1: type-SPF records are not consulted; the TXT record decides",
    "multitxt1": "RFC 7208 4.5: two v=spf1 TXT records are a permerror (no SPF-type record to prefer)",
    "txttimeout": "RFC 7208 4.4: a DNS error on the TXT lookup is a temperror (no fallback to the SPF type)",
    "exists-dnserr": "RFC 7208 5 / 2.6.6: a DNS error while evaluating a mechanism is a temperror",
    "invalid-domain-empty-label": "RFC 7208 4.8 / 5: a target that cannot be queried does not match (7208 suite: fail first)",
    "invalid-domain-long": "RFC 7208 4.8 / 5: a target that cannot be queried does not match (7208 suite: fail first)",
    "invalid-domain-long-via-macro": "RFC 7208 4.8 / 5: a target that cannot be queried does not match (7208 suite: fail first)",
    "mx-limit": "RFC 7208 4.6.4: more than 10 MX names is a permerror",
}
# Tests whose accepted answers depend on the order of a DNS answer, which a
# resolver may rotate (unbound does): either listed answer, run to run.
ORDER_DEPENDENT = {"ptr-limit", "p-macro-multiple"}


def load_suite(name):
    """[(scenario description, zone, {test name: test})] of one suite."""
    path = os.path.join(SUITE_DIR, "%s-tests.yml.gz" % name)
    if not os.path.isfile(path):
        raise FileNotFoundError("%s is missing: install the Debian package python3-spf (.ci/deps)" % path)
    with gzip.open(path, "rb") as f:
        docs = list(yaml.safe_load_all(f))
    return [(d.get("description", ""), load_zone(d.get("zonedata") or {}), d["tests"]) for d in docs]


def load_zone(zonedata):
    """name (lower case) -> list of "TIMEOUT" or (type, value), as testspf.py's loadZone."""
    zone = {}
    for name, records in zonedata.items():
        out, generated, has_txt = [], [], False
        for r in records or []:
            if not isinstance(r, dict):
                out.append(r)  # "TIMEOUT"
                continue
            for t, v in r.items():
                if t in ("TXT", "SPF") and isinstance(v, str):
                    v = [v]
                if t == "TXT":
                    has_txt = True
                elif t == "SPF":
                    generated.append(("TXT", v))
                if v != ["NONE"]:
                    out.append((t, v))
        if not has_txt:
            out.extend(generated)
        zone[name.lower().rstrip(".")] = out
    return zone


def txt_strings(value):
    """The character-strings of one TXT record: each given string in UTF-8, cut at 255 octets."""
    out = []
    for s in value:
        b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
        out.extend(b[i:i + 255] for i in range(0, len(b), 255)) if b else out.append(b"")
    # A TXT record of no strings (the suite's "null-text") cannot cross a
    # resolver: RFC 1035 §3.3.14 requires one or more, and libunbound drops
    # the answer as malformed. Served as its nearest legal form, one empty
    # string -- the same text, glued.
    return out or [b""]


class ZoneDns(LoopbackDnsServer):
    """A DNS server on 127.0.0.1 (UDP and TCP, one port) answering from `zone`."""

    def __init__(self):
        self.zone = {}
        self.queries = 0
        super().__init__()

    def _serve_udp(self):
        while not self.stopped:
            try:
                data, peer = self.udp.recvfrom(65535)
            except OSError:
                return
            try:
                reply = self.answer(data)
            except Exception as e:  # noqa: BLE001 -- report, keep serving
                print("ZoneDns: %r" % e, file=sys.stderr)
                continue
            if reply is None:
                continue
            request = DNSRecord.parse(data)
            limit = 512
            for ar in request.ar:
                if ar.rtype == QTYPE.OPT:
                    limit = max(512, ar.rclass)
            packed = reply.pack()
            if len(packed) > limit:
                reply.rr, reply.auth, reply.ar = [], [], []
                reply.header.tc = 1
                packed = reply.pack()
            try:
                self.udp.sendto(packed, peer)
            except OSError:
                return

    def _tcp_conn(self, conn):
        with conn:
            conn.settimeout(10)
            try:
                while True:
                    head = conn.recv(2, socket.MSG_WAITALL)
                    if len(head) < 2:
                        return
                    data = conn.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
                    try:
                        reply = self.answer(data)
                    except Exception as e:  # noqa: BLE001
                        print("ZoneDns: %r" % e, file=sys.stderr)
                        continue
                    if reply is None:
                        continue
                    packed = reply.pack()
                    conn.sendall(struct.pack("!H", len(packed)) + packed)
            except OSError:
                return

    def answer(self, data):
        """The reply to one query, or None for one the zone says times out."""
        self.queries += 1
        try:
            request = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 -- a malformed query gets no answer
            return None
        reply = request.reply()
        reply.header.ra = 1
        q = request.q
        qname = ".".join(l.decode("utf-8", "replace") for l in q.qname.label)  # unescaped
        qtype = QTYPE.get(q.qtype, str(q.qtype))
        records = self.lookup(qname.rstrip("."), qtype, level=0, owner=q.qname)
        if records is None:
            return None
        if records == "NXDOMAIN":
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for owner, rtype, rdata in records:
            reply.add_answer(RR(owner, getattr(QTYPE, rtype), rdata=rdata, ttl=300))
        return reply

    def lookup(self, name, qtype, level, owner=None):
        """[(owner, type, rdata)], "NXDOMAIN", or None (time out), as testspf.py's DNSLookup."""
        labels = [l for l in name.split(".") if l]
        key = ".".join(labels).lower()
        entries = self.zone.get(key)
        if entries is None:
            return None if key.startswith("error.") else "NXDOMAIN"
        out, matched = [], False
        for e in entries:
            if e == "TIMEOUT":
                if not matched:
                    return None
                return out
            t, v = e
            if t == qtype:
                matched = True
            if v == "TIMEOUT":
                if t == qtype:
                    return None
                continue
            rdata = None
            if t == qtype or t == "CNAME":
                if t == "A":
                    rdata = A(v)
                elif t == "AAAA":
                    rdata = AAAA(v)
                elif t in ("TXT", "SPF"):
                    rdata = TXT(txt_strings(v))
                elif t == "MX":
                    rdata = MX(v[1], v[0])
                elif t == "PTR":
                    rdata = PTR(DNSLabel(v.encode()))
                elif t == "CNAME":
                    rdata = CNAME(DNSLabel(v.encode()))
            if rdata is None:
                continue
            out.append((owner or DNSLabel(name.encode()), "TXT" if t == "SPF" and qtype == "TXT" else t, rdata))
            if t == "CNAME" and qtype != "CNAME" and not level:
                more = self.lookup(v, qtype, 1)
                if more is None:
                    return None
                if more != "NXDOMAIN":
                    out.extend(more)
        return out


MESSAGE = b"From: <suite@suite.invalid>\r\nSubject: SPF suite\r\n\r\nSPF suite.\r\n"


def data_payload_of(test_name):
    """The DATA of one test's message through the live proxy, dot included;
    its Message-ID names the test."""
    return (b"From: <suite@suite.invalid>\r\nSubject: SPF suite\r\nMessage-ID: <" + test_name.encode() +
            b"@suite.invalid>\r\n\r\nSPF suite.\r\n.\r\n")


def write_config(directory, dns):
    """A `postern check` configuration: the suite's DNS only, short time-outs."""
    path = os.path.join(directory, "suite.toml")
    with open(path, "w") as f:
        f.write('[server]\nhostname = "receiver.example.org"\n'
                '[dns]\nservers = ["%s"]\ntimeout = 0.5\nretries = 0\nclient_name = false\n'
                '[spf]\nenabled = true\ntimeout = 8\n' % dns.address)
    return path


def check(postern, config, message, test):
    """`postern check` for one suite test: (result, explanation)."""
    args = [postern, "check", "--config", config, "--auth-only", "--client-ip", str(test["host"]),
            "--helo", str(test["helo"]), "--mail-from", str(test["mailfrom"]), message]
    r = subprocess.run(args, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        return "exit %d: %s" % (r.returncode, r.stderr.decode(errors="replace").strip()), ""
    spf = json.loads(r.stdout)["spf"]
    if spf is None:
        return "no spf", ""
    return spf["result"], spf["explanation"]


def verdict(test, result, explanation):
    """'' when the outcome is one the test accepts, else what differs. pyspf's
    driver sets the default explanation "DEFAULT": postern's is empty."""
    expected = test["result"]
    accepted = expected if isinstance(expected, list) else [expected]
    problems = []
    if result not in accepted:
        problems.append("result %s, expected %s" % (result, "/".join(accepted)))
    if "explanation" in test and (explanation or "DEFAULT") != test["explanation"]:
        problems.append("explanation %r, expected %r" % (explanation, test["explanation"]))
    return "; ".join(problems)


def run_suite(name, postern, only=None, verbose=False, results=None):
    """{test name: problem ('' when it passed)} for one suite; each result
    into `results` too when given."""
    outcomes = {}
    with ZoneDns() as dns, tempfile.TemporaryDirectory(prefix="postern-spf-suite-") as tmp:
        config = write_config(tmp, dns)
        message = os.path.join(tmp, "message.eml")
        with open(message, "wb") as f:
            f.write(MESSAGE)
        for _, zone, tests in load_suite(name):
            dns.zone = zone
            for test_name, test in tests.items():
                if only and test_name not in only:
                    continue
                result, explanation = check(postern, config, message, test)
                outcomes[test_name] = verdict(test, result, explanation)
                if results is not None:
                    results[test_name] = result
                if verbose:
                    print("%-28s %-10s %s" % (test_name, result, outcomes[test_name] or "ok"), flush=True)
    return outcomes


def main(argv):
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="rfc7208", choices=["rfc7208", "rfc4408"])
    p.add_argument("--postern", default=os.environ.get("POSTERN_BIN", "build/postern"))
    p.add_argument("-v", action="store_true")
    p.add_argument("tests", nargs="*")
    a = p.parse_args(argv)
    results = {}
    outcomes = run_suite(a.suite, a.postern, set(a.tests) or None, a.v, results)
    failed = {k: v for k, v in outcomes.items() if v}
    for k, v in sorted(failed.items()):
        print("FAIL %s: %s" % (k, v))
    for k in sorted(not_preferred(a.suite, results)):
        why = RFC4408_CHANGED.get(k) if a.suite == "rfc4408" else None
        print("alternative %s: %s%s" % (k, results[k], " (%s)" % why if why else
                                        " (order of a DNS answer)" if k in ORDER_DEPENDENT else ""))
    print("%s: %d of %d pass" % (a.suite, len(outcomes) - len(failed), len(outcomes)))
    return 1 if failed else 0


def not_preferred(name, results):
    """Tests that passed with an answer other than the one listed first."""
    out = set()
    for _, _, tests in load_suite(name):
        for k, t in tests.items():
            if k in results and isinstance(t["result"], list) and results[k] != t["result"][0]:
                out.add(k)
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
