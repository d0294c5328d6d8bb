"""The client's verified name (forward-confirmed reverse DNS) through a real
unbound on loopback: a client whose PTR name leads back to its address is
named to the rules; a PTR that does not lead back, or none at all, leaves
the name empty; `[dns] client_name = false` turns the lookups off. Clients
arrive through a PROXY listener with public source addresses: libunbound
answers the reverse zones of the documentation ranges (192.0.2.0/24,
2001:db8::/32, RFC 6303) locally, so the test uses ordinary ones."""
import re

import pytest

from dns_server import serve
from harness import SmtpClient, check_reply, listener_ports, make_message, write_config

RULE = """postern.rule{ name = "NAME", stage = "eom", fn = function(ctx)
  ctx:add_header("X-Client-Name", ctx.client.name == "" and "(none)" or ctx.client.name)
end }
"""

CONFIRMED_IP = "44.44.44.7"      # PTR mail.example.net, whose A is 44.44.44.7
UNCONFIRMED_IP = "44.44.44.8"     # PTR liar.example.net, whose A is elsewhere
NO_PTR_IP = "44.44.44.9"
V6_IP = "2a01:4f8::25"           # PTR v6.example.net, whose AAAA leads back


@pytest.fixture(scope="module")
def dns():
    records = [
        "7.44.44.44.in-addr.arpa. 300 IN PTR mail.example.net.",
        "mail.example.net. 300 IN A 44.44.44.7",
        "8.44.44.44.in-addr.arpa. 300 IN PTR liar.example.net.",
        "liar.example.net. 300 IN A 192.0.2.1",
        "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.f.4.0.1.0.a.2.ip6.arpa. 300 IN PTR v6.example.net.",
        "v6.example.net. 300 IN AAAA 2a01:4f8::25",
    ]
    yield from serve(records, zones=("44.44.44.in-addr.arpa.", "8.f.4.0.1.0.a.2.ip6.arpa.", "example.net."))


def start(postern, tmp_path, sink, dns, client_name=True):
    rules = tmp_path / "name.lua"
    rules.write_text(RULE)
    config = write_config(tmp_path / "postern.toml", [{"proxy_protocol": True}], upstream=sink.address,
                          sections={"dns": {"servers": [dns.address], "timeout": 2, "retries": 0,
                                            "client_name": client_name},
                                    "lua": {"scripts": [str(rules)]}})
    proc = postern.start(config=config, listen=())
    return listener_ports(proc)[0]


def name_seen(port, sink, source_ip):
    c = SmtpClient(port, greeting=False)
    family = "TCP6" if ":" in source_ip else "TCP4"
    dest = "::1" if ":" in source_ip else "127.0.0.1"
    c.send(f"PROXY {family} {source_ip} {dest} 40000 25\r\n")
    check_reply(c.read_reply(), 220)
    c.ehlo()
    check_reply(c.send_message("a@example.org", ["b@example.com"], make_message(source_ip)), 250)
    c.expect("QUIT", 221)
    got = sink.messages[-1].content
    line = [l for l in got.split(b"\r\n") if l.startswith(b"X-Client-Name:")]
    assert len(line) == 1, got
    return line[0].split(b":", 1)[1].strip().decode()


def test_a_confirmed_name_reaches_the_rules(postern, sink, tmp_path, dns):
    port = start(postern, tmp_path, sink, dns)
    assert name_seen(port, sink, CONFIRMED_IP) == "mail.example.net"
    assert name_seen(port, sink, V6_IP) == "v6.example.net"


def test_a_ptr_that_does_not_lead_back_or_no_ptr_gives_no_name(postern, sink, tmp_path, dns):
    port = start(postern, tmp_path, sink, dns)
    assert name_seen(port, sink, UNCONFIRMED_IP) == "(none)"
    assert name_seen(port, sink, NO_PTR_IP) == "(none)"


def test_the_lookup_can_be_turned_off(postern, sink, tmp_path, dns):
    port = start(postern, tmp_path, sink, dns, client_name=False)
    assert name_seen(port, sink, CONFIRMED_IP) == "(none)"


def postern_received(sink):
    """The Received field postern wrote on the last message, unfolded."""
    head = sink.messages[-1].content.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for field in re.sub(r"\r\n(?=[ \t])", " ", head).split("\r\n"):
        if field.startswith("Received:") and "(postern)" in field:
            return field
    raise AssertionError(f"no Received field of postern's in:\n{head}")


@pytest.mark.parametrize("source_ip,named", [
    (CONFIRMED_IP, f"mail.example.net [{CONFIRMED_IP}]"),
    (V6_IP, f"v6.example.net [IPv6:{V6_IP}]"),
    (UNCONFIRMED_IP, f"unknown [{UNCONFIRMED_IP}]"),
    (NO_PTR_IP, f"unknown [{NO_PTR_IP}]"),
])
def test_the_received_header_names_the_verified_client(postern, sink, tmp_path, dns, source_ip, named):
    """Postfix's form: `from HELO (verified-name [address])`, `unknown` when
    no name is confirmed (issue 18: it said `unknown` even when one was)."""
    port = start(postern, tmp_path, sink, dns)
    name_seen(port, sink, source_ip)
    received = postern_received(sink)
    assert received.startswith(f"Received: from client.example ({named})"), received


def test_no_name_when_the_lookup_is_off(postern, sink, tmp_path, dns):
    port = start(postern, tmp_path, sink, dns, client_name=False)
    name_seen(port, sink, CONFIRMED_IP)
    assert postern_received(sink).startswith(f"Received: from client.example (unknown [{CONFIRMED_IP}])")
