"""DKIM verification through postern, the body hashed as DATA or BDAT
streams in: messages signed by dkimpy, keys served by a dnslib server on
loopback (postern's [dns] resolver asks it), the verdict read from the
Authentication-Results field the RecordingSink receives.
"""

import base64
import re
import subprocess

import dkim
import pytest
from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSServer

from harness import SmtpClient, check_reply, free_port, write_config

SELECTOR = b"stream"
DOMAIN = b"example.org"


class KeyResolver(BaseResolver):
    """Answers TXT for the test's one DKIM key; NXDOMAIN for the rest."""

    def __init__(self, records):
        self.records = records
        self.queries = []

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).lower()
        self.queries.append((name, QTYPE[request.q.qtype]))
        txt = self.records.get(name)
        if txt and request.q.qtype == QTYPE.TXT:
            parts = [txt[i:i + 200] for i in range(0, len(txt), 200)]
            reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(parts), ttl=60))
        elif not txt:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    d = tmp_path_factory.mktemp("dkim-verify")
    path = d / "k.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", str(path)], check=True, capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return path.read_bytes(), "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


@pytest.fixture
def dns(key):
    port = free_port()
    resolver = KeyResolver({"stream._domainkey.example.org.": key[1]})
    server = DNSServer(resolver, port=port, address="127.0.0.1")
    server.start_thread()
    try:
        yield port, resolver
    finally:
        server.stop()


def start(postern, sink, tmp_path, dns_port):
    cfg = write_config(tmp_path / "postern.toml", [{}], upstream=sink.address, sections={
        "dns": {"servers": [f"127.0.0.1@{dns_port}"], "timeout": 2},
        "dkim": {"enabled": True, "timeout": 5},
        "authentication_results": {"enabled": True, "authserv_id": "mx.postern.test"},
    })
    p = postern.start(config=cfg, listen=())
    p.wait_for_log("started")
    port = int(p.events("listening")[0].get("address").rsplit(":", 1)[1])
    return p, port


def signed_message(subject, key_pem, lines=400):
    body = b"".join(b"%04d the quick brown fox jumps over the lazy dog  \r\n" % i for i in range(lines))
    msg = (b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: " + subject.encode() + b"\r\n"
           b"Date: Tue, 24 Nov 2026 06:00:00 +0000\r\nMessage-ID: <" + subject.encode().replace(b" ", b".")
           + b"@example.org>\r\n\r\n" + body + b"\r\n\r\n")
    sig = dkim.sign(msg, SELECTOR, DOMAIN, key_pem, include_headers=[b"from", b"to", b"subject", b"date"])
    return sig + msg


def auth_results(content):
    text = content.decode("latin-1")
    m = re.search(r"^Authentication-Results: (.*?)\r\n(?![ \t])", text, re.S | re.M)
    assert m, text[:800]
    return re.sub(r"\s+", " ", m.group(1))


def send_data(port, content):
    with SmtpClient(port) as c:
        c.ehlo()
        check_reply(c.send_message("alice@example.org", ["bob@example.com"], content), 250)


def send_bdat(port, content, cuts):
    """BDAT chunks cut at `cuts`, each written in small pieces."""
    with SmtpClient(port) as c:
        c.ehlo()
        c.expect("MAIL FROM:<alice@example.org>", 250)
        c.expect("RCPT TO:<bob@example.com>", 250)
        bounds = [0] + list(cuts) + [len(content)]
        for i in range(len(bounds) - 1):
            chunk = content[bounds[i]:bounds[i + 1]]
            last = i == len(bounds) - 2
            wire = f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode() + chunk
            for pos in range(0, len(wire), 333):
                c.send(wire[pos:pos + 333])
            check_reply(c.read_reply(), 250)


def test_data_signed_message_passes(postern, sink, tmp_path, dns, key):
    p, port = start(postern, sink, tmp_path, dns[0])
    send_data(port, signed_message("data pass", key[0]))
    [m] = sink.wait_messages(1)
    ar = auth_results(m.content)
    assert ar.startswith("mx.postern.test;"), ar
    assert "dkim=pass" in ar and "header.d=example.org" in ar, ar
    assert ("stream._domainkey.example.org.", "TXT") in dns[1].queries


def test_bdat_chunks_cut_anywhere_pass(postern, sink, tmp_path, dns, key):
    p, port = start(postern, sink, tmp_path, dns[0])
    content = signed_message("bdat pass", key[0])
    header_end = content.index(b"\r\n\r\n")
    # chunk boundaries inside the empty line, inside a CRLF and inside the last line
    cuts = [50, header_end + 1, header_end + 3, 4001, len(content) - 5, len(content) - 1]
    send_bdat(port, content, cuts)
    [m] = sink.wait_messages(1)
    assert "dkim=pass" in auth_results(m.content)


@pytest.mark.parametrize("how", ["data", "bdat"])
def test_changed_body_fails(postern, sink, tmp_path, dns, key, how):
    p, port = start(postern, sink, tmp_path, dns[0])
    content = signed_message("changed " + how, key[0]).replace(b"0399 the quick", b"0399 the slow")
    if how == "data":
        send_data(port, content)
    else:
        send_bdat(port, content, [len(content) // 3, 2 * len(content) // 3])
    [m] = sink.wait_messages(1)
    assert "dkim=fail" in auth_results(m.content)


EDGE_BODIES = {
    "empty": b"",
    "only empty lines": b"\r\n\r\n\r\n",
    "white space": b"  a\t\t b  \r\n \t \r\nc\r\n \r\n\t\r\n",
    "empty lines inside": b"a\r\n\r\n\r\nb\r\n\r\n",
    "one line": b"hello\r\n",
    "long lines": b"".join(b"x" * 990 + b" \t\r\n" for _ in range(30)),
}


@pytest.mark.parametrize("canon", [b"relaxed", b"simple"])
@pytest.mark.parametrize("algorithm", [b"rsa-sha256", b"rsa-sha1"])
@pytest.mark.parametrize("length", [False, True], ids=["whole", "l="])
def test_body_canonicalization_edges_pass(postern, sink, tmp_path, dns, key, canon, algorithm, length):
    """postern hashes bodies itself (l= aside): every edge of RFC 6376 §3.4.3
    and §3.4.4 as dkimpy signs it -- empty body, trailing empty lines, white
    space runs and white-space-only lines -- passes, in both body
    canonicalizations and both digests. rsa-sha1 verifies but is "policy",
    never "pass" (RFC 8301 §3.1): a "fail" would mean its hash was wrong."""
    p, port = start(postern, sink, tmp_path, dns[0])
    for name, body in EDGE_BODIES.items():
        msg = (b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: " + name.encode() + b"\r\n"
               b"Message-ID: <" + name.replace(" ", ".").encode() + b"@example.org>\r\n\r\n" + body)
        sig = dkim.sign(msg, SELECTOR, DOMAIN, key[0], include_headers=[b"from", b"to", b"subject"],
                        canonicalize=(b"relaxed", canon), signature_algorithm=algorithm, length=length)
        send_data(port, sig + msg)
    got = sink.wait_messages(len(EDGE_BODIES))
    for m in got:
        subject = re.search(rb"^Subject: (.*?)\r\n", m.content, re.M).group(1).decode()
        ar = auth_results(m.content)
        expected = "dkim=pass" if algorithm == b"rsa-sha256" else "dkim=policy"
        assert expected in ar, (subject, ar)
