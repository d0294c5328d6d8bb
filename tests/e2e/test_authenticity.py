"""Sender authenticity end to end: postern with SPF, DKIM, DMARC and
Authentication-Results enabled, resolving through a real unbound on loopback
(dns_server.py), in front of a recording aiosmtpd sink; messages signed by
dkimpy. Each test also reads the audit log postern wrote for its messages,
and the last ones run `postern report` on it.

Clients come through a PROXY protocol listener with public source addresses
(198.51.100.7 allowed by example.com's SPF, 203.0.113.5 a spoofer). A
loopback client gets no SPF exemption (test_verdict_integrity.py)."""

import email
import json
import os
import re
import signal

import pytest

from auth_setup import (GOOD_IP, QUEUE_REPLY, RCPT, SPOOF_IP, audit_records, auth_sections, example_com, example_net,
                        example_org, message, proxy_client)
from dns_server import BlackHoleDns, serve
from harness import HOSTNAME, check_reply, listener_ports, run_cli, write_config


@pytest.fixture(scope="module")
def dns(dkim_key):
    # example.com: everything passes for a client in 198.51.100.0/24.
    # example.org: SPF does not allow the spoofer, no DKIM key: DMARC fails, p=reject.
    # example.net: SPF fails, DMARC only monitors (p=none).
    yield from serve(example_com(dkim_key) + example_org() + example_net())


def start_postern(postern, tmp_path, sink, dns_address, spf=None, dns_extra=None, name="postern.toml"):
    audit = tmp_path / "audit.jsonl"
    sections = auth_sections(dns_address, audit_path=audit, dns=dns_extra or {}, spf=spf or {})
    config = write_config(tmp_path / name, [{"proxy_protocol": True}], upstream=sink.address, sections=sections)
    proc = postern.start(config=config, listen=())
    port = listener_ports(proc)[0]
    return proc, port, audit


def headers_of(msg):
    return email.message_from_bytes(msg.content)


def test_signed_message_passes_spf_dkim_dmarc(postern, make_sink, tmp_path, dns, dkim_key):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start_postern(postern, tmp_path, sink, dns.address)
    forged = (b"Authentication-Results: " + HOSTNAME.encode() + b"; spf=pass smtp.mailfrom=forged@example.com;"
              b" dkim=pass header.d=example.com; dmarc=pass\r\n"
              b"Authentication-Results: other.example; spf=fail smtp.mailfrom=x@example.com\r\n")
    signed = dkim_key.sign(message("sender@example.com", "signed one", extra=forged))
    with proxy_client(port, GOOD_IP) as c:
        c.ehlo("client.example.com")
        check_reply(c.send_message("sender@example.com", [RCPT], signed), 250, "2.0.0")
        c.expect("QUIT", 221)
    got = sink.wait_messages(1)[0]
    h = headers_of(got)
    ars = h.get_all("Authentication-Results")
    ours = [a for a in ars if a.strip().startswith(HOSTNAME + ";")]
    assert len(ours) == 1, ars                              # the forged one is gone
    assert any(a.strip().startswith("other.example;") for a in ars), ars  # a foreign one is kept
    ar = " ".join(ours[0].split())
    assert "spf=pass smtp.mailfrom=sender@example.com" in ar, ar
    sig_field = re.sub(rb"\s+", b"", signed.split(b"\r\nFrom:", 1)[0])   # the DKIM-Signature, unfolded
    b_tag = re.search(rb";b=([A-Za-z0-9+/]{12})", sig_field)
    assert re.search(r"dkim=pass header\.d=example\.com header\.s=s1 .*header\.b=\"?" +
                     re.escape(b_tag.group(1).decode()), ar), ar
    assert "dmarc=pass" in ar and "header.from=example.com" in ar, ar
    assert "forged@example.com" not in got.content.decode()
    received_spf = h.get("Received-SPF")
    assert received_spf and received_spf.split()[0] == "pass", received_spf

    [rec] = audit_records(audit, 1)
    assert rec["action"] == "relayed"
    assert rec["queue_id"] == "XYZ789"
    assert rec["upstream_reply"].startswith("250 2.0.0 Ok: queued as XYZ789")
    assert rec["replied_by"] == "upstream"
    assert rec["client"]["ip"] == GOOD_IP and rec["client"]["port"] == 40000
    assert rec["helo"] == "client.example.com"
    assert rec["tls"]["active"] is False
    assert "auth_user" not in rec
    assert rec["mail_from"] == "sender@example.com"
    assert rec["rcpt_to"] == [RCPT]
    assert rec["message_id"] == "<signed.one@example.com>"
    assert rec["from_domain"] == "example.com"
    assert rec["spf"]["result"] == "pass" and rec["spf"]["domain"] == "example.com"
    [sig] = rec["dkim"]
    assert (sig["result"], sig["domain"], sig["selector"], sig["algorithm"]) == \
        ("pass", "example.com", "s1", "rsa-sha256")
    assert sig["key_bits"] == 2048
    assert rec["dmarc"]["result"] == "pass" and rec["dmarc"]["policy"] == "reject"
    assert rec["dmarc"]["spf_aligned"] is True and rec["dmarc"]["dkim_aligned"] is True
    names = {s["name"] for s in rec["symbols"]}
    assert {"SPF_PASS", "DKIM_PASS", "DMARC_PASS"} <= names, names
    assert rec["session"] and rec["transaction"].startswith(rec["session"])
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", rec["time"])


def test_dmarc_reject_policy_refuses_with_550_and_relays_nothing(postern, make_sink, tmp_path, dns):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start_postern(postern, tmp_path, sink, dns.address)
    with proxy_client(port, SPOOF_IP) as c:
        c.ehlo("spoofer.example")
        r = c.send_message("spoof@example.org", [RCPT], message("ceo@example.org", "dmarc fail"))
        check_reply(r, 550, "5.7.1")
        c.expect("QUIT", 221)
    assert sink.messages == [] and sink.refused_messages == []
    assert sink.took_no_content(), "a rejected message must not reach the MTA"
    [rec] = audit_records(audit, 1)
    assert rec["action"] == "rejected"
    assert rec["replied_by"] == "postern" and rec["queue_id"] == ""
    assert rec["upstream_reply"].startswith("550 5.7.1")
    assert rec["from_domain"] == "example.org"
    assert rec["spf"]["result"] == "fail"
    assert rec["dmarc"]["result"] == "fail" and rec["dmarc"]["policy"] == "reject"
    assert rec["dmarc"]["disposition"] == "reject"
    assert rec["dkim"] == []
    assert "DMARC_FAIL" in {s["name"] for s in rec["symbols"]}


def test_spf_fail_is_reported_and_relayed_by_default(postern, make_sink, tmp_path, dns):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start_postern(postern, tmp_path, sink, dns.address)
    with proxy_client(port, GOOD_IP) as c:
        c.ehlo("client.example.net")
        check_reply(c.send_message("x@example.net", [RCPT], message("x@example.net", "spf fail")), 250)
    got = sink.wait_messages(1)[0]
    h = headers_of(got)
    ar = " ".join(h["Authentication-Results"].split())
    assert "spf=fail smtp.mailfrom=x@example.net" in ar, ar
    assert "dmarc=fail" in ar, ar
    assert h["Received-SPF"].split()[0] == "fail"
    [rec] = audit_records(audit, 1)
    assert rec["action"] == "relayed" and rec["queue_id"] == "XYZ789"
    assert rec["spf"]["result"] == "fail"
    assert rec["dmarc"]["policy"] == "none"


def test_spf_fail_rejected_at_mail_when_configured(postern, make_sink, tmp_path, dns):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start_postern(postern, tmp_path, sink, dns.address, spf={"reject_fail": True})
    with proxy_client(port, GOOD_IP) as c:
        c.ehlo("client.example.net")
        c.expect("MAIL FROM:<x@example.net>", 550, "5.7.23")
        # A sender whose SPF passes still gets through on the same session.
        check_reply(c.send_message("sender@example.com", [RCPT], message("sender@example.com", "after")), 250)
    sink.wait_messages(1)
    assert [m.mail_from for m in sink.messages] == ["sender@example.com"]
    assert not [e for e in sink.commands("MAIL") if "x@example.net" in str(e)]
    recs = audit_records(audit, 2)
    refused = recs[0]
    assert refused["stage"] == "mail" and refused["action"] == "rejected"
    assert refused["mail_from"] == "x@example.net" and refused["rcpt_to"] == []
    assert refused["spf"]["result"] == "fail"
    assert refused["upstream_reply"].startswith("550 5.7.23") and refused["replied_by"] == "postern"
    assert recs[1]["action"] == "relayed" and recs[1]["spf"]["result"] == "pass"


def test_dns_that_never_answers_is_temperror_and_tempfails_when_configured(postern, make_sink, tmp_path):
    sink = make_sink(final_reply=QUEUE_REPLY)
    with BlackHoleDns() as hole:
        proc, port, audit = start_postern(postern, tmp_path, sink, hole.address,
                                          spf={"tempfail_temperror": True}, dns_extra={"timeout": 0.5})
        with proxy_client(port, GOOD_IP) as c:
            c.ehlo("client.example.com")
            c.expect("MAIL FROM:<sender@example.com>", 451, "4.7.24")
        [rec] = audit_records(audit, 1)
    assert sink.messages == []
    assert rec["stage"] == "mail" and rec["action"] == "tempfailed"
    assert rec["spf"]["result"] == "temperror"
    assert rec["upstream_reply"].startswith("451 4.7.24")


def test_dns_that_never_answers_continues_with_temperror_by_default(postern, make_sink, tmp_path):
    sink = make_sink(final_reply=QUEUE_REPLY)
    with BlackHoleDns() as hole:
        proc, port, audit = start_postern(postern, tmp_path, sink, hole.address, dns_extra={"timeout": 0.5})
        with proxy_client(port, GOOD_IP) as c:
            c.ehlo("client.example.com")
            r = c.send_message("sender@example.com", [RCPT], message("sender@example.com", "temperror"))
            check_reply(r, 250)
        [rec] = audit_records(audit, 1)
    got = sink.wait_messages(1)[0]
    ar = " ".join(headers_of(got)["Authentication-Results"].split())
    assert "spf=temperror" in ar, ar
    assert "dmarc=temperror" in ar, ar
    assert rec["action"] == "relayed" and rec["queue_id"] == "XYZ789"
    assert rec["spf"]["result"] == "temperror"
    assert rec["dmarc"]["result"] == "temperror"


def test_sighup_reopens_the_audit_log_after_logrotate(postern, make_sink, tmp_path, dns):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start_postern(postern, tmp_path, sink, dns.address)
    with proxy_client(port, GOOD_IP) as c:
        c.ehlo("client.example.com")
        check_reply(c.send_message("sender@example.com", [RCPT], message("sender@example.com", "before")), 250)
    audit_records(audit, 1)
    rotated = tmp_path / "audit.jsonl.1"
    os.rename(audit, rotated)                 # what logrotate does, then postrotate kill -HUP
    proc.send_signal(signal.SIGHUP)
    proc.wait_for_log("audit-reopened")
    with proxy_client(port, GOOD_IP) as c:
        c.ehlo("client.example.com")
        check_reply(c.send_message("sender@example.com", [RCPT], message("sender@example.com", "after")), 250)
    [after] = audit_records(audit, 1)
    assert after["message_id"] == "<after@example.com>"
    with open(rotated) as f:
        before = [json.loads(l) for l in f]
    assert [r["message_id"] for r in before] == ["<before@example.com>"]


def test_postern_report_on_the_audit_log(postern, make_sink, tmp_path, dns, dkim_key):
    sink = make_sink(final_reply=QUEUE_REPLY)
    proc, port, audit = start_postern(postern, tmp_path, sink, dns.address)
    with proxy_client(port, GOOD_IP) as c:
        c.ehlo("client.example.com")
        for i in range(3):
            signed = dkim_key.sign(message("sender@example.com", f"good {i}"))
            check_reply(c.send_message("sender@example.com", [RCPT], signed), 250)
    with proxy_client(port, SPOOF_IP) as c:
        c.ehlo("spoofer.example")
        for i in range(2):
            check_reply(c.send_message("spoof@example.org", [RCPT], message("ceo@example.org", f"bad {i}")),
                        550, "5.7.1")
    audit_records(audit, 5)
    with open(audit, "ab") as f:
        f.write(b"this line is not JSON\n")
    html = tmp_path / "report.html"
    r = run_cli(["report", str(audit), "--html", str(html)])
    assert r.returncode == 0, r.stderr
    out = r.stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.startswith(("example.com ", "example.org "))}
    assert rows["example.com"][1:6] == ["3", "100.0%", "100.0%", "100.0%", "100.0%"], out
    assert rows["example.org"][1] == "2" and rows["example.org"][2] == "0.0%" and rows["example.org"][4] == "0.0%", out
    assert "rejected=2" in out and "relayed=3" in out
    assert "example.org: top failing sources" in out
    failing = out.split("example.org: top failing sources", 1)[1].splitlines()
    assert any(l.split()[:3] == ["2", SPOOF_IP, "spoofer.example"] for l in failing), out
    assert "1 malformed line" in out and "not JSON" in out
    page = html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "example.com" in page and "example.org" in page and "<svg" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I), "external resource"
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    # --domain narrows the report to one domain.
    r = run_cli(["report", str(audit), "--domain", "example.org"])
    assert r.returncode == 0
    assert "example.org" in r.stdout and "\nexample.com " not in r.stdout
    # --help, and a missing file is a clear error.
    assert run_cli(["report", "--help"]).stdout.startswith("Usage: postern report")
    missing = run_cli(["report", str(tmp_path / "nope.jsonl")])
    assert missing.returncode == 2 and "cannot read" in missing.stderr
