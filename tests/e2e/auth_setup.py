"""The sender-authentication setup the end-to-end tests share, written once:
the example domains' SPF, DKIM and DMARC records for a real unbound on
loopback (dns_server.py), postern's sections that check them, clients that
arrive through a PROXY listener with public addresses, a test message, and
the audit log those checks write.

A test file states what its DNS holds and starts postern with the checks on
(the DKIM key, `dkim_key`, is a conftest.py fixture):

    @pytest.fixture(scope="module")
    def dns(dkim_key):
        yield from serve(example_com(dkim_key) + example_org() + example_net())   # dns_server.serve

    config = write_config(path, [{"proxy_protocol": True}], upstream=sink.address,
                          sections=auth_sections(dns.address, audit_path=audit))
    with proxy_client(port, GOOD_IP) as c: ...
"""

import json
import os

from dns_server import txt_record
from harness import IO_TIMEOUT, SmtpClient, check_reply, wait_until

GOOD_IP = "198.51.100.7"   # allowed by example.com's SPF
SPOOF_IP = "203.0.113.5"   # allowed by no domain's SPF
RCPT = "rcpt@example.net"
QUEUE_REPLY = "250 2.0.0 Ok: queued as XYZ789"


# -- the zone ----------------------------------------------------------------

def example_com(dkim_key=None, dmarc="v=DMARC1; p=reject"):
    """example.com: SPF allows 198.51.100.0/24 (GOOD_IP), `dkim_key`'s record
    (when given), and a DMARC record (p=reject unless told)."""
    records = [txt_record("example.com", "v=spf1 ip4:198.51.100.0/24 -all")]
    if dkim_key is not None:
        records.append(dkim_key.record())
    return records + [txt_record("_dmarc.example.com", dmarc)]


def example_org(dmarc="v=DMARC1; p=reject"):
    """example.org: SPF allows neither GOOD_IP nor SPOOF_IP, no DKIM key: a
    message From it fails DMARC (p=reject unless told)."""
    return [txt_record("example.org", "v=spf1 ip4:192.0.2.1 -all"),
            txt_record("_dmarc.example.org", dmarc)]


def example_net():
    """example.net: SPF fails for everyone, DMARC only monitors (p=none)."""
    return [txt_record("example.net", "v=spf1 -all"),
            txt_record("_dmarc.example.net", "v=DMARC1; p=none")]


# -- postern -----------------------------------------------------------------

def auth_sections(dns_address, audit_path=None, **overrides):
    """postern's [dns], [spf], [dkim], [dmarc] (enforce = "reject") and
    [authentication_results] against the DNS server at `dns_address`, and
    [audit] (fsync always) when `audit_path` is given. `overrides` merge into
    a section by name (a new name adds one; None removes it)."""
    sections = {
        "dns": {"servers": [dns_address], "timeout": 2, "retries": 0},
        "spf": {"enabled": True, "timeout": 5},
        "dkim": {"enabled": True, "timeout": 5},
        "dmarc": {"enabled": True, "enforce": "reject", "timeout": 5},
        "authentication_results": {"enabled": True},
    }
    if audit_path is not None:
        sections["audit"] = {"path": str(audit_path), "fsync": "always"}
    for name, values in overrides.items():
        if values is None:
            sections.pop(name, None)
        else:
            sections.setdefault(name, {}).update(values)
    return sections


def proxy_client(port, source_ip):
    """An SMTP client that postern sees as coming from source_ip (PROXY v1),
    greeted with 220."""
    c = SmtpClient(port, greeting=False)
    c.send(f"PROXY TCP4 {source_ip} 127.0.0.1 40000 25\r\n")
    c.greeting = check_reply(c.read_reply(), 220)
    return c


# -- messages and their records ----------------------------------------------

BODY = b"Hello,\r\n\r\nThis is a test message.\r\n"


def message(from_addr, subject, extra=b"", body=BODY):
    """A message From from_addr To RCPT; its Message-ID is the subject's
    words joined by dots @example.com; `extra` are more header fields."""
    return (b"From: Sender <" + from_addr.encode() + b">\r\n"
            b"To: <" + RCPT.encode() + b">\r\n"
            b"Subject: " + subject.encode() + b"\r\n"
            b"Date: Tue, 24 Nov 2026 02:00:00 +0000\r\n"
            b"Message-ID: <" + subject.replace(" ", ".").encode() + b"@example.com>\r\n" + extra +
            b"\r\n" + body)


def audit_records(path, n):
    """Every record of the audit log at `path` once it holds n or more."""
    def ready():
        return os.path.exists(path) and len(open(path, "rb").read().splitlines()) >= n
    wait_until(ready, IO_TIMEOUT, message=f"{n} audit line(s) in {path}")
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    return [json.loads(l.decode("utf-8")) for l in lines]   # strict: valid UTF-8 JSON
