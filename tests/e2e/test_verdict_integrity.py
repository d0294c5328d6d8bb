"""Verdicts an attacker cannot bend (issue 15), end to end: postern with SPF,
DKIM, DMARC (enforce = "reject") and Authentication-Results, resolving
through a real unbound on loopback, in front of a recording aiosmtpd sink.

A message with `From: ceo@example.org` (p=reject, the client not allowed by
SPF, no signature) must be refused whatever an attacker wraps around it:
obsolete header syntax, several From fields or mailboxes, groups, comments,
quoted local parts, encoded words, padding fields beyond the parser's limits,
a loopback client. Written fields stay folded and escaped."""

import re

import pytest

from auth_setup import (GOOD_IP, QUEUE_REPLY, RCPT, SPOOF_IP, auth_sections, example_com, example_net, example_org,
                        proxy_client)
from dns_server import serve, txt_record
from harness import HOSTNAME, SmtpClient, check_reply, listener_ports, run_cli, wait_until, write_config


@pytest.fixture(scope="module")
def dns(dkim_key):
    yield from serve(example_com(dkim_key) + example_org() + example_net() + [
        # RFC 7489 6.4: WSP around "=" and tags in any case.
        txt_record("example.info", "v=spf1 -all"),
        txt_record("_dmarc.example.info", "v = DMARC1 ;  P = Reject"),
        # p=quarantine, for the strictest-policy cases.
        txt_record("example.edu", "v=spf1 -all"),
        txt_record("_dmarc.example.edu", "v=DMARC1; p=quarantine"),
        # An internationalized domain: its record is at the A-label (exämple.org).
        txt_record("_dmarc.xn--exmple-cua.org", "v=DMARC1; p=reject"),
    ])


def start_postern(postern, tmp_path, sink, dns_address, proxy=True, limits=None, dmarc=None, quarantine=None,
                  extra=None):
    sections = auth_sections(dns_address, dmarc=dmarc or {})
    if limits:
        sections["limits"] = limits
    if quarantine:
        sections["quarantine"] = {"dir": str(quarantine)}
    sections.update(extra or {})
    config = write_config(tmp_path / "postern.toml", [{"proxy_protocol": proxy}], upstream=sink.address,
                          sections=sections)
    proc = postern.start(config=config, listen=())
    return proc, listener_ports(proc)[0]


BODY = b"\r\nHello,\r\n\r\nThis is a test message.\r\n"


def message(headers):
    return (headers + b"To: <" + RCPT.encode() + b">\r\n"
            b"Subject: integrity\r\n"
            b"Date: Tue, 24 Nov 2026 02:00:00 +0000\r\n"
            b"Message-ID: <integrity@example.org>\r\n" + BODY)


@pytest.fixture
def spoof(postern, make_sink, tmp_path, dns):
    """Sends `headers` + a fixed rest from the spoofer's address; returns the reply."""
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port = start_postern(postern, tmp_path, sink, dns.address)

    def send(headers, mail_from="spoof@example.net"):
        with proxy_client(port, SPOOF_IP) as c:
            c.ehlo("spoofer.example")
            r = c.send_message(mail_from, [RCPT], message(headers))
            c.expect("QUIT", 221)
        return r
    send.sink = sink
    send.proc = proc
    return send


# Every member of the class: each must be refused with 550 5.7.1 and never
# reach the MTA.
SPOOFED_FROMS = {
    "plain": b"From: ceo@example.org\r\n",
    "obs field first": b"X-Obs : x\r\nFrom: ceo@example.org\r\n",
    "obs From": b"From : ceo@example.org\r\n",
    "obs From with tab": b"From\t:\tceo@example.org\r\n",
    "two From fields": b"From: ceo@example.org\r\nFrom: me@example.net\r\n",
    "two From fields, ours second": b"From: me@example.net\r\nFrom: ceo@example.org\r\n",
    "two mailboxes": b"From: ceo@example.org, me@example.net\r\n",
    "two mailboxes folded": b"From: me@example.net,\r\n ceo@example.org\r\n",
    "mixed-case duplicates": b"FROM: me@example.net\r\nfrom: ceo@example.org\r\n",
    "group syntax": b"From: Board: ceo@example.org;\r\n",
    "comments": b"From: ceo(the boss)@(really)example.org (CEO)\r\n",
    "quoted local part with specials": b"From: \"me@example.net, x\"@example.org\r\n",
    "display name with an address": b"From: \"me@example.net\" <ceo@example.org>\r\n",
    "encoded word display name": b"From: =?utf-8?q?me=40example=2Enet?= <ceo@example.org>\r\n",
    "source route": b"From: <@relay.example.net:ceo@example.org>\r\n",
    "upper-case domain": b"From: ceo@EXAMPLE.ORG\r\n",
    "record with WSP and upper case": b"From: ceo@example.info\r\n",
    "reject beats quarantine": b"From: a@example.edu, ceo@example.org\r\n",
    "Sender does not stand for From": b"Sender: me@example.net\r\nFrom: ceo@example.org\r\n",
    "8-bit display name": "From: \"Jöhn Dœ\" <ceo@example.org>\r\n".encode(),
    "folded inside the address": b"From: Ceo\r\n <ceo\r\n @example.org>\r\n",
    "internationalized domain": "From: ceo@exämple.org\r\n".encode(),
}


@pytest.mark.parametrize("case", sorted(SPOOFED_FROMS))
def test_a_spoofed_from_is_rejected_however_it_is_wrapped(spoof, case):
    r = spoof(SPOOFED_FROMS[case])
    check_reply(r, 550, "5.7.1")
    assert spoof.sink.messages == [], case
    assert spoof.sink.took_no_content(), "a rejected message must not reach the MTA"


UNUSABLE_FROMS = {
    "no From": b"Sender: ceo@example.org\r\n",
    "empty group": b"From: undisclosed-recipients:;\r\n",
    "no domain": b"From: ceo\r\n",
    "address literal": b"From: ceo@[192.0.2.1]\r\n",
    "one mailbox unreadable": b"From: ceo@example.org, nobody\r\n",
    "unclosed quote": b"From: \"ceo <ceo@example.org>\r\n",
    "empty": b"From:\r\n",
    "8-bit domain that is not UTF-8": b"From: ceo@ex\xe4mple.org\r\n",
}


@pytest.mark.parametrize("case", sorted(UNUSABLE_FROMS))
def test_a_message_without_a_usable_from_is_rejected_by_default(spoof, case):
    r = spoof(UNUSABLE_FROMS[case])
    check_reply(r, 550, "5.7.1")
    assert "From" in r.text
    assert spoof.sink.messages == []
    line = spoof.proc.wait_for_log("message", result="rejected")
    assert "dmarc=permerror" in line.get("reason"), line.raw


def test_unusable_from_none_relays_with_permerror(postern, make_sink, tmp_path, dns):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port = start_postern(postern, tmp_path, sink, dns.address, dmarc={"unusable_from": "none"})
    with proxy_client(port, SPOOF_IP) as c:
        c.ehlo("spoofer.example")
        check_reply(c.send_message("spoof@example.net", [RCPT], message(b"From: undisclosed:;\r\n")), 250)
    got = sink.wait_messages(1)[0]
    ar = " ".join(got.content.decode().split("Authentication-Results:", 1)[1].split("\r\n\r\n")[0].split())
    assert "dmarc=permerror" in ar, ar


def test_every_author_domain_aligned_passes(postern, make_sink, tmp_path, dns, dkim_key):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port = start_postern(postern, tmp_path, sink, dns.address)
    msg = dkim_key.sign(message(b"From: a@example.com, b@example.com\r\nFrom: c@EXAMPLE.com\r\n"))
    with proxy_client(port, GOOD_IP) as c:
        c.ehlo("client.example.com")
        check_reply(c.send_message("sender@example.com", [RCPT], msg), 250)
    got = sink.wait_messages(1)[0]
    assert b"dmarc=pass" in got.content


def test_header_fields_past_the_count_limit_are_refused_552(postern, make_sink, tmp_path, dns, dkim_key):
    """The issue's 10,000 tiny fields (40 kB) before a From and a forged A-R."""
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port = start_postern(postern, tmp_path, sink, dns.address)
    padding = b"a:\r\n" * 10000
    forged = b"Authentication-Results: " + HOSTNAME.encode() + b"; dmarc=pass header.from=example.org\r\n"
    with proxy_client(port, SPOOF_IP) as c:
        c.ehlo("spoofer.example")
        r = c.send_message("spoof@example.net", [RCPT], message(padding + forged + b"From: ceo@example.org\r\n"))
        check_reply(r, 552, "5.3.4")
        # The session goes on: a normal message after it is judged as usual.
        check_reply(c.send_message("spoof@example.net", [RCPT], message(b"From: x@example.net\r\n")), 250)
    line = proc.wait_for_log("header-section-too-big")
    assert line.get("limit_fields") == "10000", line.raw
    got = sink.wait_messages(1)
    assert len(got) == 1 and b"From: x@example.net" in got[0].content


@pytest.mark.parametrize("fields,ok", [(999, True), (1000, True), (1001, False)])
def test_the_field_count_limit_is_configurable(postern, make_sink, tmp_path, dns, fields, ok):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port = start_postern(postern, tmp_path, sink, dns.address, limits={"header_fields": 1000})
    # The fixed part of message() holds 5 fields with the From.
    msg = message(b"x:\r\n" * (fields - 5) + b"From: x@example.net\r\n")
    with proxy_client(port, SPOOF_IP) as c:
        c.ehlo("spoofer.example")
        r = c.send_message("spoof@example.net", [RCPT], msg)
    if ok:
        check_reply(r, 250)
    else:
        check_reply(r, 552, "5.3.4")
        assert sink.messages == []


def test_the_header_size_limit_is_configurable(postern, make_sink, tmp_path, dns):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port = start_postern(postern, tmp_path, sink, dns.address, limits={"header_section_size": 65536})
    big = b"X-Pad: " + b"p" * 900 + b"\r\n"
    with proxy_client(port, SPOOF_IP) as c:
        c.ehlo("spoofer.example")
        check_reply(c.send_message("spoof@example.net", [RCPT], message(big * 60 + b"From: x@example.net\r\n")), 250)
        r = c.send_message("spoof@example.net", [RCPT], message(big * 80 + b"From: ceo@example.org\r\n"))
        check_reply(r, 552, "5.3.4")
    assert len(sink.wait_messages(1)) == 1
    proc.wait_for_log("header-section-too-big")


def test_a_loopback_client_gets_no_spf_pass(postern, make_sink, tmp_path, dns):
    """HAProxy or stunnel on the same host without PROXY: the client is
    127.0.0.1, which SPF must judge like any address (RFC 7208 has no
    localhost exemption)."""
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port = start_postern(postern, tmp_path, sink, dns.address, proxy=False)
    with SmtpClient(port) as c:
        c.ehlo("spoofer.example")
        r = c.send_message("spoof@example.org", [RCPT], message(b"From: ceo@example.org\r\n"))
        check_reply(r, 550, "5.7.1")
        check_reply(c.send_message("x@example.net", [RCPT], message(b"From: x@example.net\r\n")), 250)
    got = sink.wait_messages(1)[0]
    text = got.content.decode()
    received_spf = re.search(r"^Received-SPF: (.*?)\r\n(?! )", text, re.M | re.S).group(1)
    assert received_spf.split()[0] == "fail", received_spf
    assert "designates 127.0.0.1" not in received_spf and "localhost" not in received_spf


def test_received_spf_comment_cannot_be_closed_by_the_sender(postern, make_sink, tmp_path, dns):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port = start_postern(postern, tmp_path, sink, dns.address)
    sender = '"x) client-ip=198.51.100.1; y=("@example.net'
    with proxy_client(port, SPOOF_IP) as c:
        c.ehlo("spoofer.example")
        check_reply(c.send_message(sender, [RCPT], message(b"From: x@example.net\r\n")), 250)
    got = sink.wait_messages(1)[0]
    text = got.content.decode()
    field = re.search(r"^Received-SPF: (.*?)\r\n(?! )", text, re.M | re.S).group(1)
    unfolded = re.sub(r"\r\n ", " ", field)
    # The comment, read as RFC 5322 reads it (quoted-pairs, nesting), ends
    # before the first key=value pair, and client-ip is the real one.
    depth, i = 0, unfolded.index("(")
    while True:
        ch = unfolded[i]
        if ch == "\\":
            i += 2
            continue
        depth += ch == "("
        depth -= ch == ")"
        i += 1
        if depth == 0:
            break
    pairs = re.sub(r'"(?:\\.|[^"\\])*"', '""', unfolded[i:])   # quoted values are values
    assert re.findall(r"client-ip=([^;]+);", pairs) == [SPOOF_IP], unfolded
    assert "y=" not in pairs.split("envelope-from=")[0], unfolded


def test_every_written_field_is_folded_whatever_the_client_sends(postern, make_sink, tmp_path, dns):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port = start_postern(postern, tmp_path, sink, dns.address)
    helo = "h" * 60 + "." + "e" * 60 + "." + "l" * 60 + ".example"
    local = "l" * 40
    with proxy_client(port, SPOOF_IP) as c:
        c.ehlo(helo)
        check_reply(c.send_message(local + "@example.net", [RCPT], message(b"From: x@example.net\r\n")), 250)
    got = sink.wait_messages(1)[0]
    head = got.content.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert len(line) <= 998, line[:80]
    written = head.split(b"\r\nTo: ")[0]     # everything above the client's fields is postern's
    for line in written.split(b"\r\n"):
        if helo.encode() in line:
            continue      # one token longer than 78 octets cannot be folded (RFC 5322 2.2.3)
        assert len(line) <= 78, line


def test_config_check_refuses_dmarc_enforce_without_spf_or_dkim(tmp_path):
    for off in ("spf", "dkim"):
        sections = {"dns": {"servers": ["127.0.0.1"]}, "spf": {"enabled": True}, "dkim": {"enabled": True},
                    "dmarc": {"enabled": True, "enforce": "reject"}}
        sections[off] = {"enabled": False}
        path = write_config(tmp_path / f"{off}.toml", [{}], upstream="127.0.0.1:10025", sections=sections)
        r = run_cli(["config", "check", path])
        assert r.returncode == 1, r.stdout
        assert "dmarc.enforce" in r.stderr and f"[{off}]" in r.stderr, r.stderr
    sections = {"dns": {"servers": ["127.0.0.1"]}, "dmarc": {"enabled": True, "enforce": "report"}}
    path = write_config(tmp_path / "report.toml", [{}], upstream="127.0.0.1:10025", sections=sections)
    r = run_cli(["config", "check", path])
    assert r.returncode == 0, r.stderr


def test_trusted_networks_skip_the_checks_and_say_why(postern, make_sink, tmp_path, dns):
    import json
    sink = make_sink(final_reply=QUEUE_REPLY)
    audit = tmp_path / "audit.jsonl"
    proc, port = start_postern(postern, tmp_path, sink, dns.address, extra={
        "authenticity": {"trusted_networks": ["10.9.8.0/24", "2001:db8::/32"]},
        "audit": {"path": str(audit), "fsync": "always"}})
    with proxy_client(port, "10.9.8.7") as c:
        c.ehlo("relay.internal")
        check_reply(c.send_message("spoof@example.org", [RCPT], message(b"From: ceo@example.org\r\n")), 250)
    with proxy_client(port, SPOOF_IP) as c:           # not listed: checked, refused
        c.ehlo("spoofer.example")
        check_reply(c.send_message("spoof@example.org", [RCPT], message(b"From: ceo@example.org\r\n")), 550)
    got = sink.wait_messages(1)[0]
    text = got.content.decode()
    ar = re.sub(r"\s+", " ", re.search(r"^Authentication-Results: (.*?)\r\n(?![ \t])", text, re.M | re.S).group(1))
    assert ar == f"{HOSTNAME}; none (checks skipped: client 10.9.8.7 in trusted_networks 10.9.8.0/24)", ar
    assert "Received-SPF" not in text
    wait_until(lambda: audit.exists() and len(audit.read_text().splitlines()) >= 2, 10, message="2 audit records")
    recs = [json.loads(l) for l in audit.read_text().splitlines()]
    assert recs[0]["auth_skipped"] == "client 10.9.8.7 in trusted_networks 10.9.8.0/24", recs[0]
    assert "spf" not in recs[0] and "dmarc" not in recs[0]
    assert "auth_skipped" not in recs[1] and recs[1]["dmarc"]["result"] == "fail"


def test_config_check_refuses_a_bad_trusted_network(tmp_path):
    path = write_config(tmp_path / "t.toml", [{}], upstream="127.0.0.1:10025",
                        sections={"authenticity": {"trusted_networks": ["10.0.0.0/33"]}})
    r = run_cli(["config", "check", path])
    assert r.returncode == 1 and "authenticity.trusted_networks" in r.stderr, r.stderr


def test_a_forged_authentication_results_in_obsolete_syntax_is_removed(postern, make_sink, tmp_path, dns):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port = start_postern(postern, tmp_path, sink, dns.address)
    forged = (b"authentication-results : " + HOSTNAME.encode() + b"; dmarc=pass header.from=example.org\r\n"
              b"AUTHENTICATION-RESULTS\t:\t" + HOSTNAME.upper().encode() + b"; spf=pass\r\n")
    with proxy_client(port, SPOOF_IP) as c:
        c.ehlo("spoofer.example")
        check_reply(c.send_message("x@example.net", [RCPT], message(forged + b"From: x@example.net\r\n")), 250)
    got = sink.wait_messages(1)[0]
    head = got.content.split(b"\r\n\r\n", 1)[0].decode()
    ars = re.findall(r"^authentication-results\s*:", head, re.M | re.I)
    assert len(ars) == 1, head       # ours only
    assert "dmarc=pass" not in head and "spf=pass" not in head, head


def test_a_bare_lf_fold_in_from_is_not_relayed(postern, make_sink, tmp_path, dns):
    """CR-less folding: the content is refused (bare LF, RFC 5321 2.3.8) or
    normalized and judged; never relayed with a From nobody read."""
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port = start_postern(postern, tmp_path, sink, dns.address)
    with proxy_client(port, SPOOF_IP) as c:
        c.ehlo("spoofer.example")
        c.expect("MAIL FROM:<x@example.net>", 250)
        c.expect(f"RCPT TO:<{RCPT}>", 250)
        c.expect("DATA", 354)
        c.send(b"X-A: 1\r\nFrom:\n ceo@example.org\r\nSubject: lf\r\n\r\nbody\r\n.\r\n")
        r = c.read_reply()
    assert r.code in (550, 554), r
    assert sink.messages == []


LUA_RULE = """postern.rule{ name = "OBS_FROM", stage = "eom", fn = function(ctx)
  -- the Lua header API reads the same parser: obsolete syntax, every field
  local n = ctx.headers:count("From")
  if ctx.headers:first("x-obs") == "x" and n == 2 then
    return postern.reject("5.7.1", "rule saw " .. n .. " From fields")
  end
end }
"""


def test_lua_rules_read_the_same_header_section(postern, make_sink, tmp_path, dns):
    sink = make_sink(final_reply=QUEUE_REPLY)
    script = tmp_path / "rules.lua"
    script.write_text(LUA_RULE)
    proc, port = start_postern(postern, tmp_path, sink, dns.address,
                               dmarc={"enforce": "report"}, extra={"lua": {"scripts": [str(script)]}})
    headers = b"a:\r\n" * 5000 + b"X-Obs : x\r\nFrom : me@example.net\r\nfrom: you@example.net\r\n"
    with proxy_client(port, SPOOF_IP) as c:
        c.ehlo("spoofer.example")
        r = c.send_message("x@example.net", [RCPT], message(headers))
    check_reply(r, 554, "5.7.1")     # a rule's rejection at end of data
    assert "rule saw 2 From fields" in r.text
    assert sink.messages == []
